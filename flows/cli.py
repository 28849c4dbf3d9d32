"""The `zooflow` command: `run` (the Prefect flow), one subcommand per stage (what `dvc repro` calls),
and the registry's manual steps. Bad input exits 2 with one line naming the key, file or value."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tasks.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

ParamsFile = Annotated[Path, typer.Option("--params", "-p", help="the params file")]
Overrides = Annotated[
    Optional[list[str]], typer.Option("--set", "-S", help="override a param: key.path=value (repeatable)")
]
Arch = Annotated[str, typer.Option("--arch", "-a", help="architecture name, as in `zooflow zoo`")]
Json = Annotated[bool, typer.Option("--json", help="print the stage's whole summary as JSON, not one line")]


def _params(params_file: Path, overrides: list[str] | None, check_zoo: bool = True):
    from tasks.params import load_params

    if params_file != Path("params.yaml") and not params_file.exists():  # a typo, not "use the defaults"
        raise UserError(f"{params_file}: no such params file; pass an existing one with --params, or leave it out "
                        f"to use ./params.yaml")
    return load_params(params_file, overrides or [], check_zoo=check_zoo)


def _layout():
    from tasks.layout import Layout

    return Layout(Path("."))


@app.command()
def run(
    params_file: ParamsFile = Path("params.yaml"),
    overrides: Overrides = None,
    warm_start: Annotated[Optional[str], typer.Option(
        "--warm-start", metavar="ALIAS",
        help="retrain the architectures of register.model_name@ALIAS from its weights (e.g. staging)")] = None,
) -> None:
    """Run the whole pipeline as the Prefect flow `zoo-pipeline`."""
    params = _params(params_file, overrides)  # fail on bad params before Prefect starts
    typer.echo(params.recipe_note())
    from tasks import tracking

    tracking.check_server(params)
    from flows.pipeline import zoo_pipeline
    from tasks.leaderboard import format_leaderboard
    from tasks.lock import project_lock

    # The folder is held before Prefect starts: a second run is refused at once, not after the API is up.
    with project_lock(_layout(), "zooflow run", params.orchestration.lock_wait_seconds):
        state = zoo_pipeline(params_file=str(params_file), overrides=overrides or [], warm_start=warm_start,
                             return_state=True)
    if not state.is_completed():
        _failed_run(state)
    summary = state.result()
    typer.echo("\n" + format_leaderboard(summary["leaderboard"]))
    registered, promoted = summary["registered"], summary["promoted"]
    name = params.register.model_name
    typer.echo(f"\n{name} version {registered['version']} is @challenger: {registered['candidate']} (marked "
               f"`registered` above; {registered['why']}); @staging is version {promoted.get('staging')}: "
               f"{promoted.get('why', '')}\n")
    typer.echo(_next_steps(params, name))


def _next_steps(params, name: str) -> str:
    """Where to look next, as commands that run as printed: from this folder, in a venv activated or not."""
    from tasks import tracking

    uri = tracking.tracking_uri(params)
    experiment = tracking.experiment_id(params)
    if tracking.is_server(params):
        ui = f"open {uri.rstrip('/')}/#/experiments/{experiment}                # the runs of this pipeline"
    else:
        ui = (f"{_tool('mlflow')} ui --backend-store-uri {uri}   # then http://127.0.0.1:5000/#/experiments/"
              f"{experiment}: the runs (or \"Model training\" at the top left, Experiments > "
              f"{params.mlflow.experiment}); the registry: \"Model registry\"")
    return (f"Next:  {ui}\n"
            f"       {_tool('zooflow')} history {name}   # who moved @staging, when and why\n"
            f"       {_tool('zooflow')} serve {name}     # REST at http://127.0.0.1:5001/invocations (README: Serving)")


def _tool(name: str) -> str:
    """`name`, a command of this environment, as a user types it: bare when the shell finds this very one
    (an activated venv), else its path (relative when it lies under the working directory)."""
    import shutil

    mine = Path(sys.executable).parent / name
    found = shutil.which(name)
    if found and Path(found).resolve() == mine.resolve():
        return name
    try:
        return str(mine.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(mine)


def _failed_run(state) -> None:
    """A failed flow run: the user's error as such (exit 2, 75); failed architectures: the leaderboard and
    one line (exit 1); anything else is a bug, raised with its traceback."""
    from tasks.errors import ArchitecturesFailed
    from tasks.leaderboard import format_leaderboard

    exc = state.result(raise_on_failure=False)
    if isinstance(exc, ArchitecturesFailed):
        typer.echo("\n" + format_leaderboard(exc.summary["leaderboard"]))
        typer.echo(f"error: the run failed: {exc}", err=True)
        raise typer.Exit(exc.exit_code)
    if isinstance(exc, BaseException):
        raise exc
    raise RuntimeError(f"the zoo-pipeline flow run ended {state.name}: {state.message}")


def _stage(stage: str, fn, params, *args, arch: str | None = None):
    """Run one stage in this project folder (held for the time), its outputs stamped with their inputs."""
    from tasks import caching
    from tasks.lock import project_lock

    layout = _layout()
    if stage in ("train", "evaluate", "explain", "register", "promote"):  # they log to MLflow: is it there?
        from tasks import tracking

        tracking.check_server(params)
    with project_lock(layout, f"zooflow {stage}", params.orchestration.lock_wait_seconds):
        if stage in caching.STAGES:
            return caching.run_stage(stage, fn, params, layout, *args, arch=arch)
        return fn(params, layout, *args)


@app.command()
def ingest(params_file: ParamsFile = Path("params.yaml"), overrides: Overrides = None, as_json: Json = False) -> None:
    """Prepare the dataset into data/prepared/."""
    from tasks.ingest import ingest as stage

    _done("ingest", _stage("ingest", stage, _params(params_file, overrides, check_zoo=False)), as_json)  # no torch


@app.command()
def validate(params_file: ParamsFile = Path("params.yaml"), overrides: Overrides = None, as_json: Json = False) -> None:
    """Check data/prepared/ with the Great Expectations suite; reports/validation/."""
    from tasks.validate import validate as stage

    _done("validate", _stage("validate", stage, _params(params_file, overrides)), as_json)


@app.command()
def augment(params_file: ParamsFile = Path("params.yaml"), overrides: Overrides = None, as_json: Json = False) -> None:
    """Normalisation stats, augmentation policy and preview into data/augment/."""
    from tasks.augment import augment as stage

    _done("augment", _stage("augment", stage, _params(params_file, overrides)), as_json)


@app.command()
def train(
    arch: Arch,
    params_file: ParamsFile = Path("params.yaml"),
    overrides: Overrides = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="processes (GPUs) for one model: DDP via torchrun")] = 1,
    as_json: Json = False,
) -> None:
    """Train one architecture into outputs/train/<arch>/, logged to its own MLflow run."""
    from tasks import distributed
    from tasks.train import train, train_tracked

    params, layout = _params(params_file, overrides), _layout()
    _check_arch(params, arch)
    if nproc > 1 and not distributed.launched():
        import models

        if models.available()[arch].trained_by == "fit":
            raise UserError(f"--nproc: {arch} is fitted in one pass, not trained with SGD; run it without --nproc")
        argv = ["flows.cli", "train", "--arch", arch, "--params", str(params_file)] + (["--json"] if as_json else [])
        for override in overrides or []:
            argv += ["--set", override]
        from tasks.lock import project_lock

        with project_lock(layout, f"zooflow train --arch {arch} --nproc {nproc}",
                          params.orchestration.lock_wait_seconds):
            code = distributed.launch(nproc, argv)
        if code:
            raise typer.Exit(code)
        return
    try:
        if not distributed.launched():
            _done("train", {**_stage("train", train_tracked, params, arch, arch=arch), "world_size": 1}, as_json)
        elif os.environ.get("RANK", "0") == "0":  # DDP's rank 0: the MLflow run and the stamp (the launcher holds the folder)
            from tasks import caching

            summary = caching.run_stage("train", train_tracked, params, layout, arch, arch=arch)
            _done("train", {**summary, "world_size": distributed.world_size()}, as_json)
        else:
            train(params, layout, arch)
    finally:
        distributed.shutdown()


@app.command()
def evaluate(arch: Arch, params_file: ParamsFile = Path("params.yaml"), overrides: Overrides = None,
             as_json: Json = False) -> None:
    """Evaluate one trained architecture on val and test into outputs/eval/<arch>/."""
    from tasks.evaluate import evaluate_tracked as stage

    params = _params(params_file, overrides)
    _check_arch(params, arch)
    _done("evaluate", _stage("evaluate", stage, params, arch, arch=arch), as_json)


@app.command()
def explain(
    arch: Arch,
    params_file: ParamsFile = Path("params.yaml"),
    overrides: Overrides = None,
    images: Annotated[Optional[list[Path]], typer.Option(
        "--images", help="explain these image files instead (repeatable), into outputs/explain-images/<arch>/")] = None,
    as_json: Json = False,
) -> None:
    """What a trained architecture sees: filters, Grad-CAM or attention, occlusion, receptive field, mistakes;
    into outputs/explain/<arch>/, logged to its MLflow run."""
    from tasks.explain import explain_files, explain_tracked

    params = _params(params_file, overrides)
    _check_arch(params, arch)
    if images:
        _done("explain-images", _stage("explain-images", explain_files, params, arch, images), as_json)
        return
    _done("explain", _stage("explain", explain_tracked, params, arch, arch=arch), as_json)


@app.command()
def ensemble(params_file: ParamsFile = Path("params.yaml"), overrides: Overrides = None, as_json: Json = False) -> None:
    """Combine the models' saved logits; chosen on val."""
    from tasks.ensemble import ensemble as stage

    _done("ensemble", _stage("ensemble", stage, _params(params_file, overrides)), as_json)


@app.command()
def leaderboard(params_file: ParamsFile = Path("params.yaml"), overrides: Overrides = None) -> None:
    """Print (and write) the leaderboard of the evaluated models."""
    from tasks.leaderboard import format_leaderboard, leaderboard as stage

    typer.echo(format_leaderboard(_stage("leaderboard", stage, _params(params_file, overrides))))


@app.command()
def register(params_file: ParamsFile = Path("params.yaml"), overrides: Overrides = None, as_json: Json = False) -> None:
    """Register the best model on val as a new version, alias @challenger."""
    from tasks.register import register as stage

    _done("register", _stage("register", stage, _params(params_file, overrides)), as_json)


@app.command()
def promote(
    name: Annotated[Optional[str], typer.Argument(help="registered model (manual promotion)")] = None,
    version: Annotated[Optional[str], typer.Argument(help="its version (manual promotion)")] = None,
    to: Annotated[str, typer.Option("--to", help="alias to move: staging or production")] = "staging",
    params_file: ParamsFile = Path("params.yaml"),
    overrides: Overrides = None,
    as_json: Json = False,
) -> None:
    """Without arguments: the champion/challenger gate. With NAME VERSION --to ALIAS: a manual move."""
    params = _params(params_file, overrides)
    if name is None:
        from tasks.promote import promote as stage

        _done("promote", _stage("promote", stage, params), as_json)
        return
    if version is None or to not in ("staging", "production"):
        raise UserError("usage: zooflow promote NAME VERSION --to staging|production")
    from tasks.promote import promote_version

    _done("promote_version", {**promote_version(params, name, version, to), "name": name}, as_json)


@app.command()
def history(
    name: Annotated[str, typer.Argument(help="registered model")],
    params_file: ParamsFile = Path("params.yaml"),
    overrides: Overrides = None,
) -> None:
    """Every alias move of a registered model: from, to, when, why."""
    from tasks.promote import alias_history, format_history

    typer.echo(format_history(alias_history(_params(params_file, overrides), name)))


@app.command()
def serve(
    name: Annotated[Optional[str], typer.Argument(help="registered model; default: register.model_name")] = None,
    alias: Annotated[str, typer.Option("--alias", help="the alias (or a version number) to serve")] = "staging",
    port: Annotated[int, typer.Option("--port", help="port of the REST API")] = 5001,  # -p is --params
    host: Annotated[str, typer.Option("--host", help="interface to listen on")] = "127.0.0.1",
    params_file: ParamsFile = Path("params.yaml"),
    overrides: Overrides = None,
) -> None:
    """Serve a registered model over REST: `mlflow models serve` on NAME@ALIAS (README: Serving)."""
    from tasks import tracking

    params = _params(params_file, overrides, check_zoo=False)
    tracking.check_server(params)
    name = name or params.register.model_name
    uri = f"models:/{name}/{alias}" if alias.isdigit() else f"models:/{name}@{alias}"
    bin_dir = Path(sys.executable).parent  # the scoring server execs `uvicorn` from PATH: this environment's
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(params),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    typer.echo(f"serving {uri} at http://{host}:{port}/invocations (POST {{\"inputs\": [uint8 images]}}; "
               f"README: Serving); Ctrl-C stops it", err=True)
    os.execve(str(bin_dir / "mlflow"), ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                                       "-h", host, "-p", str(port)], env)


@app.command()
def notify(
    webhook: Annotated[str, typer.Option("--webhook", help="URL that receives a JSON POST when a run fails")],
    as_json: Json = False,
) -> None:
    """On the Prefect server (PREFECT_API_URL): an automation that POSTs to WEBHOOK when a zoo-pipeline run
    ends Failed, Crashed or TimedOut (docs/schedule.md)."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise UserError("notify: no Prefect server to hold the automation; start one and point at it "
                        "(`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`, docs/schedule.md)")
    if not webhook.startswith(("http://", "https://")):
        raise UserError(f"--webhook {webhook!r}: expected an http:// or https:// URL")
    from tasks.orchestration import failure_notification

    made = failure_notification(webhook)
    typer.echo(json.dumps(made, indent=2) if as_json else
               f"automation '{made['automation']}' ({made['id']}): a zoo-pipeline run that ends Failed, Crashed "
               f"or TimedOut POSTs {{\"subject\", \"body\"}} to {webhook}")


@app.command("params")
def show_params(
    params_file: ParamsFile = Path("params.yaml"),
    overrides: Overrides = None,
    reference: Annotated[bool, typer.Option("--reference", help="every key with its default, as Markdown")] = False,
) -> None:
    """The effective parameters (params.yaml + overrides, defaults filled in), as YAML."""
    import yaml

    from tasks.params import reference_markdown

    if reference:
        typer.echo(reference_markdown())
        return
    params = _params(params_file, overrides)
    typer.echo(yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False))


@app.command()
def zoo() -> None:
    """The architecture catalogue: family, year, input channels, params and FLOPs at 32×32 and 224×224,
    paper (counted by `python -m models.catalogue --write` into models/catalogue.json)."""
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "family", "year", "in ch", "params", "params at", "GFLOPs 32² (10 cls)",
                  "GFLOPs 224² (1000 cls)", "paper", box=None)
    for row in _catalogue_rows():
        table.add_row(
            row["name"], row["family"], str(row["year"]), str(row["in_channels"]), f"{row['params']:,}",
            f"{row['design_size']}², {row['design_classes']} cls", _gflops(row["flops_32"]), _gflops(row["flops_224"]),
            row["paper"],
        )
    Console(width=250).print(table)


experiment_app = typer.Typer(add_completion=False, no_args_is_help=True,
                              help="The lab: the lecture notes' claims as experiments (experiments/*.yaml).")
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("list")
def experiment_list() -> None:
    """Every experiment: its claim, variations and seeds at the cpu size, its last verdict here."""
    from rich.console import Console
    from rich.table import Table

    from tasks import experiment

    table = Table("name", "claim", "variations", "seeds (cpu)", "last verdict", box=None)
    for name in experiment.names():
        row = experiment.describe(name)
        verdict = f"{row['verdict']} ({row['size']})" if row["verdict"] else "not run"
        table.add_row(name, row["title"], str(row["variations"]), str(row["seeds"]), verdict)
    Console(width=200).print(table)


@experiment_app.command("run")
def experiment_run(
    name: Annotated[str, typer.Argument(help="the experiment, as in `zooflow experiment list`")],
    size: Annotated[str, typer.Option("--size", help="cpu (minutes on a CPU), gpu (the paper-like setting) or tiny "
                                                     "(a smoke test)")] = "cpu",
    overrides: Overrides = None,
    as_json: Json = False,
) -> None:
    """Train the experiment's variations (the Prefect flow `zoo-experiment`) and print its verdict, a line
    per check (--json: result.json's content and verdict_md, its page); outputs/experiments/NAME/ gets
    result.json, the plot and verdict.md."""
    from tasks import experiment, tracking

    plan = experiment.plan(name, size, overrides or [])  # bad names and params: one line, before Prefect starts
    tracking.check_server(plan.base)
    from flows.experiment import zoo_experiment

    state = zoo_experiment(name=name, size=size, overrides=overrides or [], return_state=True)
    if not state.is_completed():
        exc = state.result(raise_on_failure=False)
        if isinstance(exc, UserError):
            raise exc
        typer.echo(f"error: the experiment failed: {state.message}", err=True)
        raise typer.Exit(1)
    _done("experiment", {**state.result(), "verdict_md": str(plan.root / "verdict.md")}, as_json)


@experiment_app.command("report")
def experiment_report(
    out: Annotated[Path, typer.Option("--out", help="the page to write")] = Path("docs/experiments.md"),
    as_json: Json = False,
) -> None:
    """Write the lab's page (docs/experiments.md) from every outputs/experiments/*/result.json: one line,
    or with --json the summary."""
    from tasks import experiment

    _done("experiment report", experiment.report(Path("."), out), as_json)


def _catalogue_rows() -> list[dict]:
    """The committed catalogue, found without importing `models` (and torch): a second, not half a
    minute. Without the file (a broken install), the zoo is counted now."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("models")
    folders = spec.submodule_search_locations if spec else None
    path = Path(next(iter(folders))) / "catalogue.json" if folders else None
    if path is not None and path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    from models.catalogue import catalogue

    return catalogue()


def _gflops(flops: int | None) -> str:
    return "—" if flops is None else f"{flops / 1e9:.3f}"


def _check_arch(params, arch: str) -> None:
    if arch not in params.train.architectures:
        allowed = ", ".join(params.train.architectures)
        raise UserError(f"--arch {arch!r} is not in train.architectures; allowed: {allowed}")


def _done(stage: str, summary: dict, as_json: bool = False) -> None:
    """What a stage command prints: one line (what it made, where), or with --json its whole summary."""
    typer.echo(json.dumps(summary, indent=2, default=str) if as_json else _line(stage, summary))


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _line(stage: str, s: dict) -> str:
    if stage == "experiment":  # the verdict, then a line per check
        from tasks import evidence

        holding, counted = evidence.held(s)
        lines = [f"experiment {s['name']} ({s['size']}): {s['verdict']}; {holding} of {counted} counted checks "
                 f"hold; {s['runs']} runs, {s['wall_seconds']:.0f} s -> {s['verdict_md']}"]
        for c in s["checks"]:
            effect = "nothing measured" if c["effect"] is None else f"{c['effect']:.3g} ± {c['spread']:.2g}"
            counts = "" if c.get("counts", True) else " (not counted)"
            lines.append(f"  {c['verdict']}{counts}: {c['says']} ({c['metric']} {evidence.compared(c)}: {effect})")
        return "\n".join(lines)
    if stage == "experiment report":
        missing = f"; not run yet: {', '.join(s['missing'])}" if s["missing"] else ""
        return f"experiment report: {len(s['experiments'])} experiment(s){missing} -> {s['page']}"
    if stage == "ingest":
        counts = ", ".join(f"{split} {n:,}" for split, n in s["counts"].items())
        bad = f"; {s['bad_files']} bad file(s) skipped, see data/prepared/manifest.csv" if s["bad_files"] else ""
        return (f"ingest: {sum(s['counts'].values()):,} images ({counts}), {s['num_classes']} classes, "
                f"{s['image_size']}x{s['image_size']}x{s['channels']}{bad} -> data/prepared/")
    if stage == "validate":
        return (f"validate: passed, {s['passed']} of {s['expectations']} expectations met, {s['warnings']} "
                f"warning(s){': ' + ', '.join(s['warning_checks']) if s['warning_checks'] else ''} "
                f"-> reports/validation/report.html")
    if stage == "augment":
        return (f"augment: {s['train_images']:,} train images; mean {[round(m, 3) for m in s['mean']]}, "
                f"std {[round(v, 3) for v in s['std']]} -> data/augment/")
    if stage == "train":
        how = "fitted" if s.get("trained_by") == "fit" else (
            f"best of {s['epochs_run']} epochs at epoch {s['best_epoch'] + 1}")
        return (f"train {s['arch']}: val accuracy {_pct(s['best_val_acc'])} ({how}), {s['params']:,} parameters, "
                f"{s['train_seconds']:.1f} s on {s['device']} -> outputs/train/{s['arch']}/")
    if stage == "evaluate":
        return (f"evaluate {s['arch']}: val accuracy {_pct(s['val_accuracy'])}, test {_pct(s['test_accuracy'])} "
                f"-> outputs/eval/{s['arch']}/metrics.json")
    if stage == "explain":
        if "made" not in s:
            return f"explain {s['arch']}: skipped ({s['skipped']})"
        return (f"explain {s['arch']}: {', '.join(s['made'])}; {s['errors']} of {s['n']} images wrong "
                f"-> outputs/explain/{s['arch']}/")
    if stage == "explain-images":
        said = ", ".join(f"{Path(p).name}: {label}" for p, label in s["predicted"].items())
        return f"explain: {said} -> {s['folder']}"
    if stage == "ensemble":
        return (f"ensemble: {s['method']} vote of {len(s['members'])} models, val accuracy {_pct(s['val_accuracy'])}, "
                f"test {_pct(s['test_accuracy'])} ({100 * s['gain_test_accuracy']:+.2f} pts on test over "
                f"{s['best_single']}) -> outputs/ensemble/")
    if stage == "register":
        return (f"register: {s['name']} version {s['version']} is @challenger: {s['candidate']}, val accuracy "
                f"{_pct(s['val_accuracy'])} ({s['why']})")
    if stage == "promote":
        return f"promote: @staging is version {s['staging']} ({'moved' if s['moved'] else 'kept'}: {s['why']})"
    return (f"promote: @{s['alias']} is version {s['version']} of {s['name']} "
            f"({s['why'] if s['moved'] else 'kept: ' + s['why']})")


def main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The embedded Prefect API starts in a subprocess; 20 s (Prefect's default) is short on a busy laptop.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Loading the @staging model for the gate fetches a handful of small files: no progress bar for that.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if "--debug" in sys.argv[1:]:
        sys.argv.remove("--debug")
        os.environ["ZOOFLOW_DEBUG"] = "1"
    sys.exit(run_cli())


def run_cli() -> int:
    """The command line, with one error path: a problem the user can fix is one line `error: ...` and its
    exit code (2, or 75 for a busy folder); only a bug shows a traceback, with a line asking to report it.
    `--debug` (or ZOOFLOW_DEBUG=1) shows the traceback of any error."""
    import click

    from tasks.errors import user_error

    debug = os.environ.get("ZOOFLOW_DEBUG", "") not in ("", "0")
    try:
        # Outside standalone mode typer returns a typer.Exit's code (Ctrl-C becomes Exit(130)) instead of
        # raising it: that code is this command's exit status.
        code = app(standalone_mode=False, prog_name="zooflow")
        code = code if isinstance(code, int) and not isinstance(code, bool) else 0
        if code == 130:
            typer.echo("interrupted: what finished is kept (a training run resumes from its checkpoint)", err=True)
        return code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:  # usage errors carry their own exit code
        exc.show()
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - sorted into the user's problems and our bugs below
        known = user_error(exc)
        if debug or known is None:
            import traceback

            traceback.print_exc()
        if known is None:
            typer.echo(f"error: {type(exc).__name__}: {exc}\nThis is a bug in zooflow, not in your input: please "
                       f"report it with the traceback above (re-run with --debug for the full context).", err=True)
            return 1
        typer.echo(f"error: {known}", err=True)
        return known.exit_code


if __name__ == "__main__":
    main()
