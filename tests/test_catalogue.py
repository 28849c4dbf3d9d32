"""The committed catalogue (models/catalogue.json, what `zooflow zoo` prints) is the zoo's own count."""

from __future__ import annotations

import pytest

from models import catalogue


@pytest.mark.slow
def test_committed_catalogue_is_current():
    """Recounts every variant (half a minute on the meta device). When it fails, the zoo changed:
    run `python -m models.catalogue --write` and commit models/catalogue.json."""
    committed = catalogue.PATH.read_text(encoding="utf-8")
    assert catalogue.dumps(catalogue.catalogue()) == committed, (
        "models/catalogue.json is stale: run `python -m models.catalogue --write` and commit it")


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
