"""The user's view of bad data: `zooflow ingest` / `zooflow validate` exit 2 with the file and the
reason on one line of stderr, no traceback, and nothing half-written. Skips where the CLI is absent."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imagetree import image_bytes, tree_files, write_tree

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("flows.cli") is None, reason="flows.cli not present")


def zooflow(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI in `cwd`, with an empty params file `none.yaml` there (every default)."""
    (cwd / "none.yaml").write_text("{}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bad_file_exits_2_without_traceback(tmp_path):
    write_tree(tmp_path / "src", tree_files(per_class=5) | {"dog/broken.png": image_bytes(1)[:40]})
    project = tmp_path / "project"
    project.mkdir()
    done = zooflow(project, "ingest", "-p", "none.yaml", "-S", "data.source=folder", "-S", f"data.path={tmp_path / 'src'}",
                   "-S", "data.on_bad_file=fail", "-S", "data.image_size=8")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "dog/broken.png" in done.stderr and "truncated" in done.stderr
    assert not (project / "data" / "prepared").exists()
    assert sorted(p.name for p in project.rglob("*")) in ([".zooflow.lock", "none.yaml"],
                                                          [".zooflow.lock", "data", "none.yaml"])


def test_leakage_exits_2_and_keeps_the_report(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    common = ["-p", "none.yaml", "-S", "data.limit_per_class=50", "-S", "validate.min_per_class=3"]
    from tasks.ingest import ingest
    from tasks.layout import Layout
    from tasks.params import load_params

    ingest(load_params(project / "none.yaml", [common[3], common[5]], check_zoo=False), Layout(project))
    prepared = project / "data" / "prepared"
    test = np.load(prepared / "test_images.npy", mmap_mode="r+")
    test[0] = np.load(prepared / "train_images.npy")[0]
    test.flush()
    done = zooflow(project, "validate", *common)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no_test_leakage" in done.stderr and "split=test, index=0" in done.stderr
    assert (project / "reports" / "validation" / "result.json").exists()
