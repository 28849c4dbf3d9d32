"""One run at a time per project folder: a second run refuses at once (exit 75, naming the holder) or
waits its turn; two `zooflow run`s in one folder never mix their outputs."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasks.layout import Layout
from tasks.lock import LOCK, ProjectBusy, project_lock

REPO = Path(__file__).resolve().parents[1]

HOLD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from tasks.layout import Layout
    from tasks.lock import project_lock
    with project_lock(Layout(sys.argv[1]), "a test holder"):
        print("HELD", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def hold(folder: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO)), str(folder), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path):
    first = hold(tmp_path, 30)
    try:
        with pytest.raises(ProjectBusy, match=r"is in use by another zooflow run \(a test holder, pid \d+") as err:
            with project_lock(Layout(tmp_path), "the second"):
                pass
        assert err.value.exit_code == 75
    finally:
        first.kill()
        first.wait()
    with project_lock(Layout(tmp_path), "after a kill"):  # the OS released the killed holder's lock
        with project_lock(Layout(tmp_path), "nested, same process"):
            pass


def test_a_second_holder_waits_its_turn(tmp_path, capsys):
    first = hold(tmp_path, 2)
    started = time.monotonic()
    with project_lock(Layout(tmp_path), "the second", wait_seconds=60):
        waited = time.monotonic() - started
    first.wait()
    assert 0.5 < waited < 30
    assert "waiting up to 60 s for another zooflow run (a test holder" in capsys.readouterr().err


def lock_is_held(folder: Path) -> bool:
    if not (folder / LOCK).exists():
        return False
    with open(folder / LOCK) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


@pytest.mark.slow
def test_two_zooflow_runs_in_one_folder_never_mix(project):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "flows.cli", "run", "-S", "data.limit_per_class=20", "-S", "validate.min_per_class=2",
            "-S", "train.architectures=[linear]", "-S", "evaluate.measure_speed=false"]
    first = subprocess.Popen(base + ["-S", "train.optimizer.lr=0.02"], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not lock_is_held(project) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert lock_is_held(project), "the first run never held the folder"
    second = subprocess.run(base + ["-S", "train.optimizer.lr=0.5"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 75
    assert second.stderr.strip().splitlines()[-1].startswith(f"error: {project} is in use by another zooflow run "
                                                            f"(zooflow run, pid {first.pid} ")
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    # Everything on disk is the first run's: its learning rate, its model, its leaderboard.
    stamp = json.loads((project / "outputs" / "train" / "linear" / "stage.json").read_text())
    assert stamp["inputs"]["params"]["train"]["optimizer"]["lr"] == 0.02
    with open(project / "outputs" / "leaderboard" / "leaderboard.csv", newline="") as fh:
        rows = {r["arch"]: r for r in csv.DictReader(fh)}
    assert rows["linear"]["status"] == "ok"
    assert f"{float(rows['linear']['val_acc']) * 100:.2f}%" in out
