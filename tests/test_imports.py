"""The engine, the zoo and the stages that do the work import and train where Prefect, MLflow, Great
Expectations and DVC are not installed (the GPU machine has only torch, numpy, Pillow and a few wheels)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests import no_services

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    sys.path.insert(0, {root!r})

    import numpy as np
    import models
    from tasks import augment, engine, ensemble, evaluate, explain, ingest, leaderboard, optim, readers, serving, train
    from tasks.layout import Layout
    from tasks.params import Params

    rng = np.random.default_rng(0)
    def split(n):
        y = np.arange(n) % 2
        x = rng.integers(0, 60, (n, 8, 8, 1)).astype(np.uint8)
        x[y == 1] += 150
        return x, y
    layout = Layout(sys.argv[1])
    readers.write_prepared(layout.prepared, {{"train": split(64), "val": split(16), "test": split(16)}}, ["a", "b"])
    params = Params.model_validate({{"device": "cpu", "train": {{"architectures": ["linear"], "epochs": 2,
                                     "batch_size": 16, "progress": "off"}}}})
    augment.augment(params, layout)
    summary = train.train(params, layout, "linear")
    metrics = evaluate.evaluate(params, layout, "linear")
    loaded = sorted(m for m in BLOCKED if m in sys.modules)
    print("OK", summary["epochs_run"], metrics["val_accuracy"], loaded)
    """
)


def test_engine_zoo_and_stages_run_without_prefect_or_mlflow(tmp_path):
    script = tmp_path / "no_services.py"
    script.write_text(no_services.SOURCE + SCRIPT.format(root=str(ROOT)))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "project")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _, epochs, val_accuracy, loaded = done.stdout.split("\n")[-2].split(" ", 3)
    assert epochs == "2" and float(val_accuracy) == 1.0 and loaded == "[]"
