"""The committed catalogue (models/catalogue.json, what `zooflow zoo` prints) is the zoo's own count."""

from __future__ import annotations

import json

import models
from models import catalogue

# Recounted by the test: a variant of each kind of count (a fitted baseline, a 1-channel paper net, a
# CIFAR ResNet, the ImageNet forms at 224² and 32², inception branches, depthwise convolutions,
# attention, deformable sampling). The rest is held by the digest of the sources counted.
SAMPLE = ["knn", "lenet5", "resnet20", "resnet18", "googlenet", "mobilenet_v1", "vit_tiny_patch4", "coatnet_0",
          "deform_resnet18"]


def test_committed_catalogue_is_current():
    """The committed digest is that of the models/ sources now, the committed rows name every registered
    variant, and a recount of SAMPLE gives the committed rows. When it fails, the zoo changed: run
    `python -m models.catalogue --write` and commit models/catalogue.json and models/catalogue.sha256."""
    stale = "models/catalogue.json is stale: run `python -m models.catalogue --write` and commit it"
    assert catalogue.DIGEST_PATH.read_text(encoding="utf-8").strip() == catalogue.sources_digest(), stale
    committed = {row["name"]: row for row in json.loads(catalogue.PATH.read_text(encoding="utf-8"))}
    assert set(committed) == set(models.available()), stale
    sample = [name for name in SAMPLE if name in committed]
    assert len(sample) == len(SAMPLE), f"SAMPLE names a variant the zoo no longer has: {set(SAMPLE) - set(sample)}"
    for row in catalogue.catalogue(sample):
        assert row == committed[row["name"]], stale


def test_the_digest_sees_any_change_to_a_model_source(tmp_path):
    for name in ("lenet.py", "blocks.py"):
        (tmp_path / name).write_text("x = 1\n")
    before = catalogue.sources_digest(tmp_path)
    (tmp_path / "lenet.py").write_text("x = 2\n")
    assert catalogue.sources_digest(tmp_path) != before
def test_zoo_command_reads_the_committed_catalogue():
    """`zooflow zoo` prints the committed counts without importing torch (a second, not thirty),
    each variant with its paper's input channels and the scale its parameters are counted at."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; from typer.testing import CliRunner; from flows.cli import app; "
            "result = CliRunner().invoke(app, ['zoo']); print(result.output); "
            "assert result.exit_code == 0; assert 'torch' not in sys.modules, 'zoo imported torch'")
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "params at" in lines["name"] and "GFLOPs 224² (1000 cls)" in lines["name"]
    assert "60,850" in lines["lenet5"] and "32², 10 cls" in lines["lenet5"]
    assert "11,689,512" in lines["resnet18"] and "224², 1000 cls" in lines["resnet18"]
