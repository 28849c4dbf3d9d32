"""Promotion with aliases and an audit trail (MLflow stages are deprecated since 2.9).

`promote`: the champion/challenger gate. The version at `@challenger` and the one at `@staging`
are both loaded as pyfuncs and scored on the *current* val split; `staging` moves to the
challenger only if it is strictly better by at least `register.min_delta` (or there is no staging
yet). Every decision — move or keep — is an audit event.

`promote_version`: the manual step (`zooflow promote NAME VERSION --to staging|production`).
`alias_history`: every alias move and keep, oldest first (`zooflow history NAME`).

Audit events are JSON in registered-model tags `zooflow.audit.<UTC time>` (the registry keeps no
history of aliases itself); the versions involved also get `zooflow.<alias>.*` tags.
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime, timezone
from typing import Any

import numpy as np

from tasks.errors import UserError
from tasks.files import write_json
from tasks.layout import Layout
from tasks.params import Params
from tasks.readers import load_prepared
from tasks.register import TAG, connect, server_errors

AUDIT = f"{TAG}audit."
ALIASES = ("staging", "production")


# --------------------------------------------------------------------------- registry helpers


def version_at(client, name: str, alias: str):
    """The model version an alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in (exc.error_code or "") or "not found" in str(exc).lower() \
                or "does not exist" in str(exc).lower():
            return None
        raise


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in (exc.error_code or "") or "not found" in str(exc).lower():
            names = sorted(m.name for m in client.search_registered_models())
            raise UserError(f"no registered model {name!r}; registered: {', '.join(names) or 'none'}") from None
        raise


def score_version(name: str, version: str, images: np.ndarray, labels: np.ndarray) -> float:
    """Val accuracy of a registered version, loaded exactly as a service loads it."""
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    predicted = np.asarray(model.predict(np.ascontiguousarray(images))["label"], dtype=np.int64)
    return float((predicted == np.asarray(labels)).mean())


def record(client, name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Write one audit event on the registered model, and tags on the versions it concerns."""
    now = datetime.now(timezone.utc)
    event = {"when": now.isoformat(timespec="milliseconds"), "by": _user(), **event}
    key = f"{AUDIT}{now.strftime('%Y%m%dT%H%M%S%f')}-{event['alias']}"
    client.set_registered_model_tag(name, key, json.dumps(event, sort_keys=True, default=str)[:4900])
    alias = event["alias"]
    if event["action"] == "move":
        client.set_model_version_tag(name, event["to"], f"{TAG}{alias}.since", event["when"])
        client.set_model_version_tag(name, event["to"], f"{TAG}{alias}.why", event["why"][:4900])
        if event.get("from"):
            client.set_model_version_tag(name, event["from"], f"{TAG}{alias}.until", event["when"])
    if event.get("challenger"):
        client.set_model_version_tag(name, event["challenger"], f"{TAG}gate.{alias}",
                                     f"{event['action']}: {event['why']}"[:4900])
    return event


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "unknown"


def alias_history(params: Params, name: str) -> list[dict]:
    """Every audited alias decision on `name`, oldest first."""
    client = connect(params)
    with server_errors(params, "reading the alias history"):
        model = _registered_model(client, name)
        events = [json.loads(v) for k, v in sorted(model.tags.items()) if k.startswith(AUDIT)]
    return sorted(events, key=lambda e: e["when"])


def format_history(events: list[dict]) -> str:
    """The text `zooflow history NAME` prints."""
    if not events:
        return "no alias moves recorded"
    lines = []
    for e in events:
        change = f"v{e.get('from') or '-'} -> v{e['to']}" if e["action"] == "move" else f"kept v{e.get('from') or '-'}"
        lines.append(f"{e['when']}  {e['alias']:<10} {e['action']:<4}  {change:<14} by {e.get('by', '?')}: {e['why']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the gate


def gate(challenger_acc: float, staging_acc: float | None, min_delta: float) -> tuple[bool, str]:
    """Move `staging` to the challenger? Strictly better by at least `min_delta`, or no staging yet."""
    if staging_acc is None:
        return True, "no staging version yet"
    delta = challenger_acc - staging_acc
    if delta > 0 and delta >= min_delta:
        return True, (f"challenger val accuracy {challenger_acc:.4f} beats staging {staging_acc:.4f} "
                      f"by {delta:+.4f} (min_delta {min_delta})")
    return False, (f"challenger val accuracy {challenger_acc:.4f} vs staging {staging_acc:.4f}: "
                   f"delta {delta:+.4f} is not a win of at least {min_delta} (and > 0)")


def promote(params: Params, layout: Layout) -> dict:
    """Champion/challenger gate on the current val split; moves or keeps `@staging`, audited."""
    images, labels = load_prepared(layout.prepared).split("val")
    result = promote_on(params, np.asarray(images), np.asarray(labels))
    write_json(layout.register / "promoted.json", result)
    return result


def promote_on(params: Params, images: np.ndarray, labels: np.ndarray) -> dict:
    """The gate on given val images and labels (`promote` reads them from the prepared data)."""
    name = params.register.model_name
    client = connect(params)
    with server_errors(params, "promoting"):
        challenger = version_at(client, name, "challenger")
        if challenger is None:
            raise UserError(f"model {name!r} has no @challenger version; run `zooflow register` first")
        challenger = str(challenger.version)  # the sqlite store says 3, the REST one "3"
        staging = version_at(client, name, "staging")
        previous = str(staging.version) if staging is not None else None
        metrics: dict[str, Any] = {"min_delta": params.register.min_delta, "val_n": int(len(labels))}
        try:
            challenger_acc = score_version(name, challenger, images, labels)
        except Exception as exc:  # noqa: BLE001 - a challenger that cannot be scored is refused, not fatal
            client.set_model_version_tag(name, challenger, f"{TAG}eval_status", "failed")
            event = record(client, name, {"alias": "staging", "action": "keep", "from": previous, "to": previous,
                                          "challenger": challenger, "metrics": metrics,
                                          "why": f"challenger failed evaluation: {type(exc).__name__}: {exc}"[:500]})
            return {"moved": False, "staging": previous, "previous": previous, "challenger": challenger,
                    "why": event["why"], "metrics": metrics}
        metrics["challenger_val_accuracy"] = challenger_acc
        client.set_model_version_tag(name, challenger, f"{TAG}current_val_accuracy", f"{challenger_acc:.6f}")
        if previous == challenger:
            move, why = False, f"challenger v{challenger} is already staging"
        elif previous is None:
            move, why = gate(challenger_acc, None, params.register.min_delta)
        else:
            try:
                staging_acc = score_version(name, previous, images, labels)
            except Exception as exc:  # noqa: BLE001 - a champion that no longer loads is replaced
                move = True
                why = f"staging v{previous} failed evaluation on current val: {type(exc).__name__}: {exc}"[:500]
            else:
                metrics["staging_val_accuracy"] = staging_acc
                metrics["delta"] = challenger_acc - staging_acc
                move, why = gate(challenger_acc, staging_acc, params.register.min_delta)
        if move:
            client.set_registered_model_alias(name, "staging", challenger)
        record(client, name, {"alias": "staging", "action": "move" if move else "keep", "from": previous,
                              "to": challenger if move else previous, "challenger": challenger,
                              "why": why, "metrics": metrics})
    return {"moved": move, "staging": challenger if move else previous, "previous": previous,
            "challenger": challenger, "why": why, "metrics": metrics}


# --------------------------------------------------------------------------- the manual step


def promote_version(params: Params, name: str, version: str | int, to: str) -> dict:
    """Point alias `to` (staging|production) at `name` version `version`, audited.

    Refuses (UserError) an unknown alias, model or version, a version that is not READY, and one
    whose evaluation failed (tag `zooflow.eval_status=failed`).
    """
    from mlflow.exceptions import MlflowException

    if to not in ALIASES:
        raise UserError(f"--to {to!r}: allowed: {', '.join(ALIASES)}")
    version = str(version).strip()
    if not version.isdigit():
        raise UserError(f"version {version!r}: expected a version number, e.g. 3")
    client = connect(params)
    with server_errors(params, "promoting"):
        _registered_model(client, name)
        try:
            mv = client.get_model_version(name, version)
        except MlflowException:
            versions = sorted((int(v.version) for v in client.search_model_versions(f"name='{name}'")))
            raise UserError(f"model {name!r} has no version {version}; versions: "
                            f"{', '.join(map(str, versions)) or 'none'}") from None
        if mv.status != "READY":
            raise UserError(f"model {name!r} version {version} is {mv.status}, not READY; refusing to promote it")
        if (mv.tags or {}).get(f"{TAG}eval_status") == "failed":
            raise UserError(f"model {name!r} version {version} failed evaluation (tag {TAG}eval_status=failed); "
                            f"refusing to promote it")
        current = version_at(client, name, to)
        previous = str(current.version) if current is not None else None
        if previous == version:
            why = f"manual: v{version} is already {to}"
            event = record(client, name, {"alias": to, "action": "keep", "from": previous, "to": previous,
                                          "why": why, "metrics": {}})
            return {"moved": False, "alias": to, "version": version, "previous": previous, "why": why,
                    "when": event["when"]}
        client.set_registered_model_alias(name, to, version)
        metrics = {k.removeprefix(TAG): v for k, v in (mv.tags or {}).items()
                   if k.endswith("accuracy") and k.startswith(TAG)}
        why = f"manual promotion to {to} by {_user()}"
        event = record(client, name, {"alias": to, "action": "move", "from": previous, "to": version,
                                      "why": why, "metrics": metrics})
    return {"moved": True, "alias": to, "version": version, "previous": previous, "why": why, "when": event["when"]}
