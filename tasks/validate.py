"""Stage `validate`: a Great Expectations 1.x suite over the prepared dataset.

The dataset is turned into tables that GX checks with its own expectations:
- `images`, one row per prepared image: split, index, source path, label, source size and mode,
  shape, dtype, sha256 of the pixels, mean and std intensity, and the duplicate/leak flags
  derived from the hashes;
- `class_counts`, one row per (split, class), zeros included;
- `splits`, one row per split: its size and class imbalance ratio.

Every check (`CHECKS`) is one or more GX expectations tagged with the check's name and severity
(`validate.severity` overrides the default). The result JSON, the Data Docs HTML and `report.html` go
to `reports/validation/`; a failed blocking check raises `DataError` naming the checks and the first
offending images, after the report is written. GX's Data Docs load their styles and scripts from
CDNs; `report.html` is the same result in one self-contained file that opens offline.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tasks.errors import DataError  # noqa: E402
from tasks.files import atomic_dir, write_json, write_text  # noqa: E402
from tasks.readers import SPLITS, PreparedData, load_prepared  # noqa: E402
from tasks.layout import Layout  # noqa: E402
from tasks.params import VALIDATION_CHECKS, Params  # noqa: E402

CHECKS = VALIDATION_CHECKS  # name -> (default severity, what it guards)
_FIRST = 10  # offending rows named per failed check
_CHUNK = 4096


# ---------------------------------------------------------------- the tables


def image_table(prepared: PreparedData) -> pd.DataFrame:
    """One row per prepared image, with the per-image facts the suite checks."""
    source = {(r["split"], int(r["index"])): r for r in prepared.manifest if r["outcome"] == "ok" and r["index"] != ""}
    frames = []
    for split in SPLITS:
        images, labels = prepared.split(split)
        n = len(labels)  # one row per label; images without a label show in the splits table
        sha = np.full(n, "", dtype=object)
        mean = np.full(n, np.nan)
        std = np.full(n, np.nan)
        for start in range(0, min(n, len(images)), _CHUNK):
            block = np.asarray(images[start:min(start + _CHUNK, n)])
            flat = block.reshape(len(block), -1).astype(np.float32)
            mean[start:start + len(block)] = flat.mean(axis=1)
            std[start:start + len(block)] = flat.std(axis=1)
            for i, image in enumerate(block):
                sha[start + i] = hashlib.sha256(image.tobytes()).hexdigest()
        rows = [source.get((split, i), {}) for i in range(n)]
        shape = images.shape
        frames.append(pd.DataFrame({
            "split": split,
            "index": np.arange(n),
            "path": [r.get("path", "") for r in rows],
            "label": labels,
            "class_name": [prepared.classes[l] if 0 <= l < prepared.num_classes else "?" for l in labels.tolist()],
            "source_width": pd.array([_int(r.get("width")) for r in rows], dtype="Int64"),
            "source_height": pd.array([_int(r.get("height")) for r in rows], dtype="Int64"),
            "source_mode": [r.get("mode", "") for r in rows],
            "height": shape[1] if len(shape) == 4 else -1,
            "width": shape[2] if len(shape) == 4 else -1,
            "channels": shape[3] if len(shape) == 4 else -1,
            "ndim": len(shape),
            "dtype": images.dtype.name,
            "label_dtype": labels.dtype.name,
            "sha256": sha,
            "mean": mean,
            "std": std,
        }))
    table = pd.concat(frames, ignore_index=True)
    test_hashes = set(table.loc[table.split == "test", "sha256"])
    trainval_hashes = set(table.loc[table.split != "test", "sha256"])
    train_hashes = set(table.loc[table.split == "train", "sha256"])
    val_hashes = set(table.loc[table.split == "val", "sha256"])
    table["test_leak"] = np.where(table.split == "test", table.sha256.isin(trainval_hashes),
                                  table.sha256.isin(test_hashes))
    table["train_val_overlap"] = np.where(table.split == "val", table.sha256.isin(train_hashes),
                                          (table.split == "train") & table.sha256.isin(val_hashes))
    table["duplicate_in_split"] = table.duplicated(["split", "sha256"], keep="first")
    return table


def count_tables(table: pd.DataFrame, prepared: PreparedData) -> tuple[pd.DataFrame, pd.DataFrame]:
    counts = []
    splits = []
    for split in SPLITS:
        images, _ = prepared.split(split)
        labels = table.loc[table.split == split, "label"].to_numpy()
        known = labels[(labels >= 0) & (labels < prepared.num_classes)]
        per_class = np.bincount(known, minlength=prepared.num_classes)
        for label, name in enumerate(prepared.classes):
            counts.append({"split": split, "label": label, "class_name": name, "count": int(per_class[label])})
        smallest = per_class.min() if len(per_class) else 0
        ratio = float(per_class.max() / smallest) if smallest else float("inf")
        splits.append({"split": split, "count": len(labels), "images": len(images),
                       "meta_count": int(prepared.meta["splits"][split]["count"]), "imbalance_ratio": ratio})
    return pd.DataFrame(counts), pd.DataFrame(splits)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- the suite


def expectations(params: Params, prepared: PreparedData) -> dict[str, list[tuple[str, Any]]]:
    """table name -> [(check name, GX expectation)]."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    v = params.validate_
    size = params.data.image_size
    channels = params.data.channels or prepared.channels
    total = sum(s["count"] for s in prepared.meta["splits"].values())
    images = [
        ("labels_in_class_set", gxe.ExpectColumnValuesToNotBeNull(column="label")),
        ("labels_in_class_set", gxe.ExpectColumnValuesToBeInSet(column="label",
                                                                value_set=list(range(prepared.num_classes)))),
        ("shapes_and_dtypes", gxe.ExpectTableRowCountToEqual(value=total)),
        ("shapes_and_dtypes", gxe.ExpectColumnValuesToBeInSet(column="ndim", value_set=[4])),
        ("shapes_and_dtypes", gxe.ExpectColumnValuesToBeInSet(column="height", value_set=[size])),
        ("shapes_and_dtypes", gxe.ExpectColumnValuesToBeInSet(column="width", value_set=[size])),
        ("shapes_and_dtypes", gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[channels])),
        ("shapes_and_dtypes", gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"])),
        ("shapes_and_dtypes", gxe.ExpectColumnValuesToBeInSet(column="label_dtype", value_set=["int64"])),
        ("shapes_and_dtypes", gxe.ExpectColumnValuesToBeBetween(column="mean", min_value=0, max_value=255)),
        ("no_test_leakage", gxe.ExpectColumnValuesToBeInSet(column="test_leak", value_set=[False])),
        ("no_train_val_overlap", gxe.ExpectColumnValuesToBeInSet(column="train_val_overlap", value_set=[False])),
    ]
    for split in SPLITS:  # fractions are per split
        where = {"row_condition": Column("split") == split}
        images += [
            ("duplicates_within_split", gxe.ExpectColumnValuesToBeInSet(
                column="duplicate_in_split", value_set=[False], mostly=1.0 - v.max_duplicate_fraction, **where)),
            ("near_constant_images", gxe.ExpectColumnValuesToBeBetween(
                column="std", min_value=v.constant_std, mostly=1.0 - v.max_constant_fraction, **where)),
        ]
    counts = [
        ("min_per_class", gxe.ExpectColumnValuesToBeBetween(column="count", min_value=v.min_per_class)),
    ]
    splits = [
        ("shapes_and_dtypes", gxe.ExpectColumnPairValuesToBeEqual(column_A="images", column_B="count")),
        ("shapes_and_dtypes", gxe.ExpectColumnPairValuesToBeEqual(column_A="meta_count", column_B="count")),
        ("min_per_class", gxe.ExpectColumnValuesToBeBetween(column="count", min_value=1)),
        ("imbalance_ratio", gxe.ExpectColumnValuesToBeBetween(column="imbalance_ratio", max_value=v.max_imbalance_ratio)),
    ]
    return {"images": images, "class_counts": counts, "splits": splits}


_INDEX_COLUMNS = {"images": ["split", "index", "path"], "class_counts": ["split", "class_name"], "splits": ["split"]}


def severity_of(params: Params, check: str) -> str:
    return params.validate_.severity.get(check, CHECKS[check][0])


def run_suite(params: Params, prepared: PreparedData, tables: dict[str, pd.DataFrame], docs_dir: Path
              ) -> tuple[list[dict], list[Any]]:
    """Run the GX suites over the tables; build Data Docs into `docs_dir`. -> (one record per expectation, GX results)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={"zooflow": {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    datasource = context.data_sources.add_pandas("prepared")
    records: list[dict] = []
    results = []
    for table_name, pairs in expectations(params, prepared).items():
        batch = datasource.add_dataframe_asset(table_name).add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add(gx.ExpectationSuite(name=f"zooflow-{table_name}"))
        for check, expectation in pairs:
            severity = severity_of(params, check)
            expectation.meta = {"check": check, "severity": severity, "why": CHECKS[check][1]}
            expectation.notes = f"zooflow check `{check}` ({severity}): {CHECKS[check][1]}"
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"prepared-{table_name}", data=batch, suite=suite))
        result = definition.run(
            batch_parameters={"dataframe": tables[table_name]},
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": _FIRST,
                           "unexpected_index_column_names": _INDEX_COLUMNS[table_name]},
        )
        results.append(result)
        for item in result.results:
            config = item.expectation_config
            records.append({
                "check": config.meta["check"],
                "severity": config.meta["severity"],
                "table": table_name,
                "expectation": config.type,
                "kwargs": {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "value_set") or
                           len(str(v)) < 200},
                "success": bool(item.success),
                "observed": _observed(item.result),
                "first_offending": _offending(item.result, _INDEX_COLUMNS[table_name]),
                "exception": (item.exception_info or {}).get("exception_message") if not item.success else None,
            })
    context.build_data_docs(site_names=["zooflow"])
    return records, results


def _observed(result: dict) -> dict:
    keys = ("observed_value", "element_count", "unexpected_count", "unexpected_percent")
    return {k: _plain(result[k]) for k in keys if k in result}


def _offending(result: dict, columns: list[str]) -> list[dict]:
    rows = result.get("partial_unexpected_index_list") or []
    return [{k: _plain(row.get(k)) for k in columns + [c for c in row if c not in columns]} for row in rows[:_FIRST]]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


# ---------------------------------------------------------------- the stage


def validate(params: Params, layout: Layout) -> dict:
    started = time.perf_counter()
    prepared = load_prepared(layout.prepared)
    table = image_table(prepared)
    counts, splits = count_tables(table, prepared)
    tables = {"images": table, "class_counts": counts, "splits": splits}
    with atomic_dir(layout.validation) as tmp:
        records, results = run_suite(params, prepared, tables, tmp / "data_docs")
        failed = [r for r in records if not r["success"]]
        blocking = sorted({r["check"] for r in failed if r["severity"] == "blocking"})
        warnings = sorted({r["check"] for r in failed if r["severity"] == "warning"})
        report = {
            "success": not blocking,
            "all_expectations_met": not failed,
            "blocking_failed": blocking,
            "warnings": warnings,
            "checks": {name: {"severity": severity_of(params, name), "why": CHECKS[name][1],
                              "success": all(r["success"] for r in records if r["check"] == name)}
                       for name in CHECKS},
            "expectations": records,
            "data_sha256": prepared.meta.get("data_sha256"),
            "counts": {s["split"]: s["count"] for s in splits.to_dict("records")},
            "data_docs": "data_docs/index.html",
            "gx_results": [r.describe_dict() for r in results],
        }
        write_json(tmp / "result.json", report)
        write_text(tmp / "report.html", static_report(report))
        table.to_csv(tmp / "images.csv", index=False)  # the per-image table, for a look in a spreadsheet
    summary = {
        "success": not blocking,
        "expectations": len(records),
        "passed": sum(r["success"] for r in records),
        "failed": sum(not r["success"] and r["severity"] == "blocking" for r in records),
        "warnings": sum(not r["success"] and r["severity"] == "warning" for r in records),
        "blocking_failed": blocking,
        "warning_checks": warnings,
        "report": str(layout.validation / "result.json"),
        "html": str(layout.validation / "report.html"),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if blocking:
        raise DataError(_failure_message(failed, layout))
    return summary


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top;font-size:90%}
th{background:#f3f3f3}.pass{color:#17692b}.fail{color:#b00020;font-weight:bold}.warn{color:#9a6700}"""


def static_report(report: dict) -> str:
    """The validation result as one HTML file with its style inline: no network, no scripts."""
    import html

    def verdict(ok: bool, severity: str) -> str:
        return '<span class="pass">pass</span>' if ok else (
            '<span class="fail">FAIL</span>' if severity == "blocking" else '<span class="warn">warning</span>')

    checks = pd.DataFrame([{"check": name, "severity": c["severity"], "result": verdict(c["success"], c["severity"]),
                            "what it guards": html.escape(c["why"])} for name, c in report["checks"].items()])
    expectations = pd.DataFrame([{
        "check": r["check"], "table": r["table"], "expectation": r["expectation"],
        "result": verdict(r["success"], r["severity"]),
        "observed": html.escape(", ".join(f"{k}={v}" for k, v in r["observed"].items())),
        "first offending": html.escape("; ".join(", ".join(f"{k}={v}" for k, v in o.items() if v not in ("", None))
                                                 for o in r["first_offending"][:5])),
    } for r in report["expectations"]])
    counts = ", ".join(f"{split}: {n}" for split, n in report["counts"].items())
    state = "passed" if report["success"] else "FAILED: " + ", ".join(report["blocking_failed"])
    met = sum(r["success"] for r in report["expectations"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>zooflow data validation</title>"
            f"<style>{_STYLE}</style></head><body><h1>Data validation: {html.escape(state)}</h1>"
            f"<p>{met} of {len(report['expectations'])} Great Expectations expectations met; "
            f"warnings: {html.escape(', '.join(report['warnings']) or 'none')}. Images per split: {counts}. "
            f"Data sha256 <code>{report['data_sha256']}</code>.</p><h2>Checks</h2>"
            f"{checks.to_html(index=False, escape=False, border=0)}<h2>Expectations</h2>"
            f"{expectations.to_html(index=False, escape=False, border=0)}"
            f"<p>Great Expectations' own Data Docs: <a href='data_docs/index.html'>data_docs/index.html</a> "
            f"(their styles and scripts come from CDNs).</p></body></html>\n")


def _failure_message(failed: list[dict], layout: Layout) -> str:
    lines = []
    for check in sorted({r["check"] for r in failed if r["severity"] == "blocking"}):
        lines.append(f"- {check}: {CHECKS[check][1]}")
        for r in (r for r in failed if r["check"] == check):
            observed = r["observed"]
            what = r["expectation"]
            if "unexpected_count" in observed:
                what += f" failed on {observed['unexpected_count']} of {observed.get('element_count')} rows"
            elif "observed_value" in observed:
                what += f" failed (observed {observed['observed_value']})"
            if r["exception"]:
                what += f" raised {r['exception']}"
            lines.append(f"    {what}; first offending:" if r["first_offending"] else f"    {what}")
            for o in r["first_offending"][:5]:
                lines.append("      " + ", ".join(f"{k}={v}" for k, v in o.items() if v not in ("", None)))
    count = sum(line.startswith("- ") for line in lines)
    head = f"validation failed: {count} blocking check{'s' if count > 1 else ''} (report: {layout.validation / 'result.json'})"
    return "\n".join([head, *lines])
