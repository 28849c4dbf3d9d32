"""The `zooflow` command as a user meets it: bad input is one clear line and exit code 2."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


def zooflow(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.epochs=-1", "train.epochs"),
        ("train.architectures=[nope]", "unknown architecture 'nope'"),
        ("data.image_size=big", "data.image_size"),
    ],
)
def test_bad_override_exits_2_before_any_work(project, override, named):
    result = zooflow("run", "-S", override, cwd=project)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "data").exists() and not (project / "mlflow.db").exists()


def test_bad_params_file_exits_2(project):
    (project / "params.yaml").write_text("train: {epochs: 3, optimiser: {}}\n")
    result = zooflow("ingest", cwd=project)
    assert result.returncode == 2
    assert "train.optimiser: unknown key" in result.stderr


def test_arch_not_in_params_exits_2(project):
    result = zooflow("train", "--arch", "vgg16", "-S", "train.architectures=[knn]", cwd=project)
    assert result.returncode == 2
    assert "--arch 'vgg16'" in result.stderr and "allowed: knn" in result.stderr
