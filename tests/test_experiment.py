"""The lab: every experiment of experiments/ validated and planned at every size (cpu, gpu, tiny: its file,
every variation's params, every run) and run end to end at the tiny size (one epoch of two steps, two seeds,
five images a class and split: about a minute for all fifteen on the 2-core box), writing result, plot,
verdict and the page; the verdict rule on synthetic results; runs reused only when identical; bad input as
one line; the flow with its MLflow parent and child runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tasks import evidence, experiment
from tasks.errors import ParamsError, UserError
from tests.conftest import REPO

HOLDS, FAILS, INCONCLUSIVE = evidence.HOLDS, evidence.FAILS, evidence.INCONCLUSIVE


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("effect, spread, expect, than, verdict", [
    (0.10, 0.02, "greater", 0.0, HOLDS),          # 0.10 - 2 x 0.02 > 0
    (0.03, 0.02, "greater", 0.0, INCONCLUSIVE),   # the interval 0.03 ± 0.04 straddles 0
    (-0.10, 0.02, "greater", 0.0, FAILS),         # the opposite of the claim
    (0.0, 0.0, "greater", 0.0, FAILS),            # no effect at all, exactly
    (-0.10, 0.02, "less", 0.0, HOLDS),
    (0.10, 0.02, "less", 0.0, FAILS),
    (5.0, 0.5, "greater", 3.0, HOLDS),            # a ratio beyond a threshold of three
    (3.5, 0.5, "greater", 3.0, INCONCLUSIVE),
    (2.0, 0.4, "greater", 3.0, FAILS),
    (None, 0.0, "greater", 0.0, INCONCLUSIVE),    # nothing measured: nothing decided
])
def test_the_rule(effect, spread, expect, than, verdict):
    assert evidence.decide(effect, spread, expect, than, k=2.0) == verdict


def synthetic(a: list[float], b: list[float] | None, **check) -> dict:
    """A check decided on synthetic per-seed values of variations a and b."""
    variations = {"a": {"label": "A", "metrics": {"test_error": evidence.summary(a)}}}
    if b is not None:
        variations["b"] = {"label": "B", "metrics": {"test_error": evidence.summary(b)}}
    spec = experiment.Check(says="s", metric="test_error", a="a", b="b" if b is not None else None, **check)
    return experiment._decide(spec, variations, 2.0)


def test_checks_on_synthetic_results():
    # A clearly lower error than B, seeds scattered by about a point: holds.
    held = synthetic([0.10, 0.11, 0.09], [0.20, 0.21, 0.19], expect="less")
    assert held["verdict"] == HOLDS and held["effect"] == pytest.approx(-0.10)
    assert held["spread"] == pytest.approx(0.01)  # pooled sd of the two variations
    # The same numbers read the other way round: does not hold.
    assert synthetic([0.10, 0.11, 0.09], [0.20, 0.21, 0.19], expect="greater")["verdict"] == FAILS
    # An effect inside the seeds' scatter: inconclusive at this size.
    assert synthetic([0.10, 0.15, 0.05], [0.12, 0.17, 0.07], expect="less")["verdict"] == INCONCLUSIVE
    # A ratio: per-seed a_i / b_i against a threshold.
    ratio = synthetic([6.0, 6.6, 5.4], [1.0, 1.1, 0.9], expect="greater", compare="ratio", than=3)
    assert ratio["effect"] == pytest.approx(6.0) and ratio["verdict"] == HOLDS
    # One variation against a constant.
    assert synthetic([0.02, 0.03, 0.025], None, expect="less", than=0.05)["verdict"] == HOLDS


def test_a_difference_of_differences():
    variations = {name: {"label": name, "metrics": {"test_error": evidence.summary(values)}}
                  for name, values in {"rule0": [0.3, 0.3, 0.3], "rule30": [0.6, 0.62, 0.58],
                                       "knn0": [0.02, 0.02, 0.02], "knn30": [0.05, 0.06, 0.04]}.items()}
    check = experiment.Check(says="s", metric="test_error", expect="greater",
                             a={"variation": "rule30", "metric": "test_error", "minus": "rule0"},
                             b={"variation": "knn30", "metric": "test_error", "minus": "knn0"})
    decided = experiment._decide(check, variations, 2.0)
    assert decided["effect"] == pytest.approx(0.30 - 0.03) and decided["verdict"] == HOLDS
    assert decided["a_label"] == "rule30 − rule0"


def test_an_experiment_holds_only_when_every_counted_check_does():
    def check(verdict, counts=True):
        return {"verdict": verdict, "counts": counts}

    assert evidence.overall([check(HOLDS), check(HOLDS), check(FAILS, counts=False)]) == HOLDS
    assert evidence.overall([check(HOLDS), check(FAILS)]) == FAILS
    assert evidence.overall([check(HOLDS), check(INCONCLUSIVE)]) == INCONCLUSIVE
    assert evidence.overall([check(FAILS, counts=False)]) == INCONCLUSIVE


# --------------------------------------------------------------------------- the data of a variation


def test_balanced_subsets_and_label_noise():
    labels = np.repeat(np.arange(10), 50)
    rng = np.random.default_rng(0)
    subset = experiment.balanced_subset(labels, 103, rng)
    assert len(subset) == 103 and len(set(subset)) == 103
    assert np.bincount(labels[subset], minlength=10).max() - np.bincount(labels[subset], minlength=10).min() <= 1
    noisy = experiment.noisy_labels(labels, 0.4, 10, np.random.default_rng(1))
    changed = noisy != labels
    assert 0.33 < changed.mean() < 0.47  # about the rate, and a changed label is always another class
    assert (noisy[changed] != labels[changed]).all() and noisy.min() >= 0 and noisy.max() <= 9
    assert (experiment.noisy_labels(labels, 0.4, 10, np.random.default_rng(1)) == noisy).all()  # a seed fixes it


# --------------------------------------------------------------------------- every experiment planned


@pytest.mark.parametrize("size", experiment.SIZES)
@pytest.mark.parametrize("name", experiment.names())
def test_every_experiment_is_planned_at_every_size(name, size):
    """Its file validated, every variation's params validated (architecture, options, overrides) at this
    size, every run planned: what the lab fixture does not run end to end is still checked this far."""
    spec = experiment.load(name)
    plan = experiment.plan(name, size, project=REPO)
    assert {r.variation for r in plan.runs} == set(spec.variations)
    assert len(plan.runs) == len(spec.variations) * len(plan.seeds()) and len(plan.seeds()) >= 2
    if size == "tiny" and spec.measure.ensemble:
        assert len(plan.seeds()) == 2 * spec.measure.ensemble  # two ensembles, each its own seeds
    for run in plan.runs:
        assert run.params.train.architectures == [run.arch] == [spec.variations[run.variation].arch]


# --------------------------------------------------------------------------- end to end, tiny

END_TO_END = experiment.names()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Every experiment at the tiny size in one project folder (one prepared dataset per data
    section, shared): {name: result or the exception it raised}."""
    project = tmp_path_factory.mktemp("lab")
    outcomes = {}
    for name in END_TO_END:
        try:
            outcomes[name] = experiment.run_experiment(name, "tiny", project=project)
        except Exception as exc:  # noqa: BLE001 - reported by that experiment's own test
            outcomes[name] = exc
    return project, outcomes


def test_the_lab_has_at_least_twelve_experiments():
    assert len(experiment.names()) >= 12


@pytest.mark.parametrize("name", END_TO_END)
def test_experiment_runs_end_to_end(lab, name):
    project, outcomes = lab
    result = outcomes[name]
    if isinstance(result, Exception):
        raise result
    spec = experiment.load(name)
    folder = project / "outputs" / "experiments" / name
    on_disk = json.loads((folder / "result.json").read_text())
    assert on_disk["verdict"] == result["verdict"] in (HOLDS, FAILS, INCONCLUSIVE)
    assert result["runs"] == len(spec.variations) * len(result["seeds"]) and len(result["seeds"]) >= 2
    assert set(result["variations"]) == set(spec.variations)
    assert len(result["checks"]) == len(spec.checks)
    for check in result["checks"]:
        assert check["verdict"] in (HOLDS, FAILS, INCONCLUSIVE)
        assert check["a_stat"]["n"] >= 2, f"{check['says']}: measured on fewer than two seeds"
    for variation in result["variations"].values():
        assert variation["metrics"]["test_error"]["n"] == len(result["seeds"])
    assert (folder / result["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verdict = (folder / "verdict.md").read_text()
    assert spec.claim in verdict and spec.paper.number in verdict and result["verdict"] in verdict
    assert f"Size `tiny`" in verdict
    for correction in spec.corrections:  # the notes' error, with what the runs here measured of it
        section = verdict.split("*Where the notes part from the paper.*", 1)[1]
        assert correction.paper.strip() in section
        for i in correction.checks:
            assert f"{result['checks'][i]['says']}: **{result['checks'][i]['verdict']}**" in section


def test_the_page_is_written_from_the_results(lab):
    project, outcomes = lab
    written = experiment.report(project)
    page = (project / "docs" / "experiments.md").read_text()
    ran = {n for n, r in outcomes.items() if not isinstance(r, Exception)}
    assert written["missing"] == [n for n in experiment.names() if n not in ran]  # listed as not run yet
    assert written["experiments"] == [n for n in experiment.names() if n in ran]
    for name, result in outcomes.items():
        if isinstance(result, Exception):
            continue
        assert f"## {result['title']}" in page and f"**{result['verdict']}**" in page
        assert (project / "docs" / "experiments" / f"{name}.png").exists()
        assert f"](experiments/{name}.png)" in page


# --------------------------------------------------------------------------- reuse


def test_an_identical_run_is_reused_and_a_changed_one_trained_again(lab):
    project, outcomes = lab
    first = outcomes["relu_vs_tanh"]
    again = experiment.run_experiment("relu_vs_tanh", "tiny", project=project)
    assert first["reused_runs"] == 0 and again["reused_runs"] == again["runs"]
    assert again["variations"]["relu"]["metrics"] == first["variations"]["relu"]["metrics"]
    changed = experiment.run_experiment("relu_vs_tanh", "tiny", ["train.optimizer.lr=0.02"], project=project)
    assert changed["reused_runs"] == 0 and changed["overrides"] == ["train.optimizer.lr=0.02"]
    verdict = (project / "outputs" / "experiments" / "relu_vs_tanh" / "verdict.md").read_text()
    assert "Overrides: `train.optimizer.lr=0.02`." in verdict  # numbers not from the file alone say so


def test_same_seed_same_numbers(lab, tmp_path):
    """Another project, the same experiment and seeds: the same measurements (a run reused from the first
    project would prove nothing, so none is)."""
    project, outcomes = lab
    two = experiment.run_experiment("optimizers", "tiny", project=tmp_path)
    one = outcomes["optimizers"]
    assert two["reused_runs"] == 0
    for name in one["variations"]:
        for metric in ("test_error", "train_loss", "effective_step"):
            assert one["variations"][name]["metrics"][metric] == two["variations"][name]["metrics"][metric]


# --------------------------------------------------------------------------- bad input


def test_bad_experiments_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no experiment 'nope'"):
        experiment.load("nope")
    spec = yaml.safe_load((REPO / "experiments" / "relu_vs_tanh.yaml").read_text())
    spec["checks"][0]["a"] = "relu_typo"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ParamsError, match=r"broken.yaml: checks.0.a: .*no variation 'relu_typo'"):
        experiment.load("broken", tmp_path)
    with pytest.raises(ParamsError, match=r"relu_vs_tanh.yaml: sizes.cpu: train.nope: unknown key"):
        experiment.plan("relu_vs_tanh", "cpu", ["train.nope=1"])
    with pytest.raises(ParamsError, match=r"variations.relu: train.model_options.lenet5.activation"):
        experiment.plan("relu_vs_tanh", "cpu", ["train.model_options.lenet5.activation=swish"])
    with pytest.raises(UserError, match="--size 'huge'"):
        experiment.plan("relu_vs_tanh", "huge")


def zooflow(*args, cwd):
    import os

    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_command_line(project):
    listed = zooflow("experiment", "list", cwd=project)
    assert listed.returncode == 0, listed.stderr
    for name in experiment.names():
        assert name in listed.stdout
    bad = zooflow("experiment", "run", "relu_vs_tanh", "-S", "train.epochs=0", cwd=project)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "relu_vs_tanh.yaml: sizes.cpu: train.epochs" in bad.stderr  # the size's own params, checked first
    assert not (project / "outputs").exists() and not (project / "mlflow.db").exists()


def test_dvc_reproduces_every_experiment():
    """experiments/dvc.yaml reproduces each one; the root pipeline (a plain `dvc repro`) trains none."""
    assert "experiment" not in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stage = yaml.safe_load((REPO / "experiments" / "dvc.yaml").read_text())["stages"]["experiment"]
    assert stage["do"]["wdir"] == ".."
    assert sorted(stage["foreach"]) == experiment.names()
    assert stage["do"]["cmd"] == "bin/zooflow experiment run ${item}"
    assert "experiments/${item}.yaml" in stage["do"]["deps"]


# --------------------------------------------------------------------------- the flow


@pytest.mark.slow
def test_the_flow_tracks_the_experiment_and_each_run(project, prefect_harness):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.experiment import zoo_experiment

    state = zoo_experiment("relu_vs_tanh", "tiny", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    client = MlflowClient()
    lab_id = client.get_experiment_by_name("zooflow-lab").experiment_id
    runs = client.search_runs([lab_id])
    parents = [r for r in runs if r.info.run_name == "experiment-relu_vs_tanh"]
    assert len(parents) == 1 and parents[0].data.tags["zooflow.verdict"] == result["verdict"]
    parent = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert sorted(r.info.run_name for r in children) == sorted(
        f"{v}-s{s}" for v in result["variations"] for s in result["seeds"])
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all("test_error" in r.data.metrics for r in children)
    logged = {a.path for a in client.list_artifacts(parent, "experiment")}
    assert logged == {"experiment/relu_vs_tanh.png", "experiment/verdict.md", "experiment/result.json"}
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    table = {a.key: a for a in artifacts}["experiment-relu-vs-tanh"].data
    assert result["verdict"] in table and "| check |" in table
