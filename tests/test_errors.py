"""Every bad value and every fault a user can fix: one line `error: ...`, the right exit code, no
traceback, nothing half-written. Only a bug shows a traceback, with a line asking to report it."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import cli

REPO = Path(__file__).resolve().parents[1]


def zooflow(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """Run the CLI in this process: (exit code, the lines it printed on stderr)."""
    monkeypatch.setattr(sys, "argv", ["zooflow", *args])
    code = cli.run_cli()
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# (override, the one line expected after "error: params.yaml: ")
BAD_PARAMS = [
    ("train.epochs=0", r"train\.epochs: Input should be greater than or equal to 1 \(got 0\)"),
    ("train.epochs=-1", r"train\.epochs: Input should be greater than or equal to 1"),
    ("train.epochs=1000000000000000000000000000000", r"train\.epochs: Input should be less than or equal to 100000"),
    ("train.epochs=10**30", r"train\.epochs: Input should be a valid integer"),
    ("train.epochs=abc", r"train\.epochs: Input should be a valid integer"),
    ("train.epochs=[3]", r"train\.epochs: Input should be a valid integer"),
    ("train.optimizer.lr=.inf", r"train\.optimizer\.lr: Input should be a finite number"),
    ("train.optimizer.lr=.nan", r"train\.optimizer\.lr: Input should be a finite number"),
    ("train.optimizer.lr=0", r"train\.optimizer\.lr: Input should be greater than 0"),
    ("train.optimizer.lr=1e9", r"train\.optimizer\.lr: Input should be less than or equal to 1000"),
    ("train.optimizer.betas=[0.9, 1.5]", r"train\.optimizer\.betas\.1: Input should be less than 1"),
    ("train.batch_size=0", r"train\.batch_size: Input should be greater than or equal to 1"),
    ("train.label_smoothing=1", r"train\.label_smoothing: Input should be less than 1"),
    ("seed=1180591620717411303424", r"seed: Input should be less than or equal to 9223372036854775807"),
    ("seed=-1", r"seed: Input should be greater than or equal to 0"),
    ("data.split_seed=-1", r"data\.split_seed: Input should be greater than or equal to 0"),
    ("data.val_fraction=1.5", r"data\.val_fraction: Input should be less than 1"),
    ("data.image_size=4", r"data\.image_size: Input should be greater than or equal to 8"),
    ("data.classes=[a, b, a]", r"data\.classes: class names listed twice: 'a'"),
    ("data.classes=[]", r"data\.classes: class names must be non-empty"),
    ("evaluate.throughput_batch=100000000", r"evaluate\.throughput_batch: Input should be less than or equal to 16384"),
    ("orchestration.timeout_seconds={trian: 5}", r"orchestration\.timeout_seconds: unknown stage 'trian'"),
    ("orchestration.timeout_seconds={train: -5}", r"orchestration\.timeout_seconds\.train: Input should be greater than 0"),
    ("augment.random_resized_crop=[0.5, 2]", r"augment\.random_resized_crop: expected \[low, high\] with 0 < low <= high <= 1"),
    ("augment.hue=0.9", r"augment\.hue: Input should be less than or equal to 0\.5"),
    ("register.model_name=bad name!", r"register\.model_name: String should match pattern"),
    ("train.architectures=[nope]", r"train\.architectures: unknown architecture 'nope' at position 0; allowed: "),
    ("train.architectures=[knn, knn]", r"train\.architectures: architectures are listed twice"),
    ("train.architectures=[]", r"train\.architectures: List should have at least 1 item"),
    ("train.model_options.lenet5={foo: 1}", r"train\.model_options\.lenet5\.foo: not an option of lenet5; it takes: output"),
    ("train.model_options.resnet20={wdths: [8]}", r"train\.model_options\.resnet20\.wdths: not an option of resnet20"),
    ("train.model_options.lenet5={output: 3}", r"train\.model_options\.lenet5\.output: 3 is not a str"),
    ("train.model_options.lenet5={num_classes: 3}", r"train\.model_options\.lenet5\.num_classes: set from the data"),
    ("train.model_options.nope={width: 1}", r"train\.model_options\.nope: unknown architecture"),
    ("train.overrides.lenet5={epochs: 0}", r"train\.overrides\.lenet5\.epochs: Input should be greater than or equal to 1"),
    ("data.image_size=64", r"train\.architectures: lenet5: lenet5 cannot be built at data\.image_size=64"),
    ("train.init=models:/digits-classifier", r"train\.init: 'models:/digits-classifier' is not a registered "
                                              r"version: expected models:/NAME@ALIAS or models:/NAME/VERSION$"),
    ("train.init=models:/digits-classifier@staging", r"train\.init: bayes is fitted, not trained: it cannot start "
                                                     r"from weights; set the init of the trained architectures only"),
    ("train.overrides.lenet5.init=IMAGENET1K_V1", r"train\.overrides\.lenet5\.init: lenet5 is not one of torchvision's "
                                                  r"models, so it has no torchvision weights 'IMAGENET1K_V1'; those exist for: "),
    ("train.overrides.resnet18.init=IMAGENET1K_V2", r"train\.overrides\.resnet18\.init: resnet18 has no torchvision "
                                                    r"weights 'IMAGENET1K_V2'; it has: IMAGENET1K_V1$"),
    ("train.finetune.backbone_lr_mult=0", r"train\.finetune\.backbone_lr_mult: Input should be greater than 0"),
    ("nosuchsection.x=1", r"nosuchsection: unknown key"),
    ("train.epochz=3", r"train\.epochz: unknown key"),
]


@pytest.mark.parametrize("override, expected", BAD_PARAMS, ids=[case[0][:40] for case in BAD_PARAMS])
def test_bad_param_is_one_line_and_exit_2(project, monkeypatch, capsys, override, expected):
    code, lines = zooflow(monkeypatch, capsys, "params", "-S", override)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert re.match(r"error: params\.yaml: " + expected, lines[0]), lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-S", "train.epochs"], r"error: override 'train\.epochs': expected key\.path=value"),
        (["-S", "=3"], r"error: override '=3': expected key\.path=value"),
        (["-S", "train.epochs=[1"], r"error: override 'train\.epochs=\[1': value '\[1' is not valid YAML"),
        (["-S", "train.epochs.x=1"], r"error: override 'train\.epochs\.x=1': epochs is not a section"),
        (["--params", "missing.yaml"], r"error: missing\.yaml: no such params file"),
        (["--params", "."], r"error: \.: cannot be read as a params file \(Is a directory\); pass a YAML file"),
    ],
)
def test_bad_override_or_file_is_one_line(project, monkeypatch, capsys, args, expected):
    code, lines = zooflow(monkeypatch, capsys, "params", *args)
    assert (code, len(lines)) == (2, 1), lines
    assert re.match(expected, lines[0]), lines[0]


def test_yaml_syntax_error_names_line_and_column(project, monkeypatch, capsys):
    (project / "params.yaml").write_text("seed: 0\ntrain:\n  epochs: 3\n   batch_size: 4\n")
    code, lines = zooflow(monkeypatch, capsys, "params")
    assert (code, lines) == (2, ["error: params.yaml, line 4, column 14: not valid YAML (mapping values are not "
                                 "allowed here); fix the syntax there (`zooflow params` checks it)"])
    (project / "params.yaml").write_text("- a list\n- not sections\n")
    code, lines = zooflow(monkeypatch, capsys, "params")
    assert (code, lines) == (2, ["error: params.yaml: expected a mapping of sections at the top level"])


def test_every_command_refuses_bad_params_before_any_work(project, monkeypatch, capsys):
    """Every command that reads the zoo refuses a bad option before it works. (`ingest` reads only the
    data section, checks that, and keeps torch out of its memory: 250 MB instead of 980 MB.)"""
    for command in (["run"], ["train", "--arch", "lenet5"], ["evaluate", "--arch", "lenet5"], ["register"]):
        code, lines = zooflow(monkeypatch, capsys, *command, "-S", "train.model_options.lenet5={foo: 1}")
        assert code == 2 and len(lines) == 1 and "lenet5.foo: not an option" in lines[0], (command, lines)
    assert sorted(p.name for p in project.iterdir()) == ["dvc.yaml", "params.yaml"]  # nothing written
    code, lines = zooflow(monkeypatch, capsys, "ingest", "-S", "data.image_size=0")
    assert code == 2 and lines == ["error: params.yaml: data.image_size: Input should be greater than or equal to 8 "
                                   "(got 0)"]


def test_unknown_arch_for_a_command(project, monkeypatch, capsys):
    code, lines = zooflow(monkeypatch, capsys, "train", "--arch", "vgg16")
    assert code == 2 and lines == [f"error: --arch 'vgg16' is not in train.architectures; allowed: "
                                   f"{', '.join(__import__('tasks.params', fromlist=['x']).load_params('params.yaml').train.architectures)}"]


# --------------------------------------------------------------------------- faults


TINY = ["-S", "data.limit_per_class=20", "-S", "validate.min_per_class=2", "-S", "train.architectures=[linear]",
        "-S", "train.epochs=1", "-S", "evaluate.measure_speed=false"]


@pytest.fixture
def trained(project, monkeypatch, capsys):
    for command in (["ingest"], ["augment"], ["train", "--arch", "linear"]):
        code, lines = zooflow(monkeypatch, capsys, *command, *TINY)
        assert code == 0, lines
    return project


class Tampered:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


@pytest.mark.parametrize("content, reason", [
    (b"not a zip file at all", r"not a readable weights file \(.*\)"),
    (b"", r"not a readable weights file \(.*\)"),
    (None, r"not a readable weights file \(it holds pickled objects, not plain tensors: refused unread\)"),
])
def test_corrupt_or_tampered_model_is_named_with_its_reason(trained, monkeypatch, capsys, content, reason):
    import torch

    model = trained / "outputs" / "train" / "linear" / "model.pt"
    if content is None:
        torch.save({"weight": Tampered()}, model)
    else:
        model.write_bytes(content)
    code, lines = zooflow(monkeypatch, capsys, "evaluate", "--arch", "linear", *TINY)
    assert code == 2 and len(lines) == 1, lines
    assert re.match(rf"error: {re.escape(str(model))}: {reason}; delete .* and re-run `zooflow train --arch linear`",
                    lines[0]), lines[0]
    assert not (trained / "pwned.txt").exists()


def test_corrupt_checkpoint_is_moved_aside_with_a_warning(trained, monkeypatch, capsys):
    out = trained / "outputs" / "train" / "linear"
    (out / "checkpoint.pt").write_bytes(b"\x00garbage")
    code, lines = zooflow(monkeypatch, capsys, "train", "--arch", "linear", *TINY, "-S", "train.epochs=2")
    assert code == 0, lines
    warning = [line for line in lines if line.startswith("warning:")]
    assert len(warning) == 1 and "checkpoint.pt is not a readable checkpoint" in warning[0]
    assert "training starts from scratch" in warning[0]
    aside = list(out.glob("checkpoint.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"\x00garbage"  # kept for a look, not deleted


def test_disk_full_is_named_and_leaves_nothing_half_written(trained, monkeypatch, capsys):
    import pathlib

    real = pathlib.Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".stats.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    code, lines = zooflow(monkeypatch, capsys, "augment", *TINY, "-S", "seed=3")
    assert code == 2 and len(lines) == 1, lines
    assert re.match(rf"error: disk full writing {re.escape(str(trained / 'data' / 'augment' / 'stats.json'))} "
                    r"\(\d+ MiB free on that disk\); free some space and re-run", lines[0]), lines[0]
    assert not list((trained / "data" / "augment").glob(".*tmp"))


def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """ingest on a 1 MiB tmpfs: where the test may mount one (root), else skipped."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        shutil.copy(REPO / "params.yaml", mount / "params.yaml")
        done = subprocess.run([sys.executable, "-m", "flows.cli", "ingest"], cwd=mount, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
        assert re.match(rf"error: disk full writing {re.escape(str(mount))}/data/prepared.* MiB free on that disk", lines[0])
        assert sorted(p.name for p in mount.iterdir()) == [".zooflow.lock", "data", "params.yaml"]
        assert list((mount / "data").iterdir()) == []  # no half-written prepared data, no temporary folder
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_mlflow_server_down_is_one_line_at_once(project, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.monotonic()
    code, lines = zooflow(monkeypatch, capsys, "run", *TINY)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: MLflow server at http://127.0.0.1:9 is not reachable (")
    assert time.monotonic() - started < 60
    assert not (project / "data").exists()  # stopped before any stage


def test_cuda_asked_for_on_a_machine_without_it(project, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, lines = zooflow(monkeypatch, capsys, "ingest", *TINY)
    code, lines = zooflow(monkeypatch, capsys, "train", "--arch", "linear", *TINY, "-S", "device=cuda")
    assert code == 2 and lines[-1] == ("error: device: cuda was asked for, but torch sees no CUDA device; "
                                       "use device: auto or cpu")


def test_a_bug_shows_its_traceback_and_asks_for_a_report(project, monkeypatch, capsys):
    import tasks.params

    def broken(*args, **kwargs):
        raise KeyError("a key zooflow forgot")

    monkeypatch.setattr(tasks.params, "load_params", broken)
    code, lines = zooflow(monkeypatch, capsys, "params")
    assert code == 1
    assert lines[0] == "Traceback (most recent call last):"
    assert "This is a bug in zooflow, not in your input: please report it" in lines[-1]


def test_ctrl_c_exits_130_with_one_line(project, monkeypatch, capsys):
    import tasks.params

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks.params, "load_params", interrupted)
    code, lines = zooflow(monkeypatch, capsys, "params")
    assert (code, len(lines)) == (130, 1) and lines[0].startswith("interrupted"), lines


def test_debug_shows_the_traceback_of_a_user_error(project, monkeypatch, capsys):
    code, lines = zooflow(monkeypatch, capsys, "params", "-S", "train.epochs=0")
    assert code == 2 and len(lines) == 1
    monkeypatch.setenv("ZOOFLOW_DEBUG", "1")
    code, lines = zooflow(monkeypatch, capsys, "params", "-S", "train.epochs=0")
    assert code == 2 and lines[0] == "Traceback (most recent call last):" and lines[-1].startswith("error: params.yaml")
