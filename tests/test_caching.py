"""Cache keys follow the real inputs: change a stage's params and that stage (and what reads its
outputs) re-runs; change something it does not read and it stays cached."""

from tasks.caching import cache_key
from tasks.ingest import ingest
from tasks.layout import Layout
from tasks.params import load_params


def keys(overrides, stage_archs):
    params = load_params("params.yaml", overrides)
    return {(s, a): cache_key(s, params, Layout(), a) for s, a in stage_archs}


STAGES = [("ingest", None), ("validate", None), ("augment", None), ("train", "lenet5"), ("evaluate", "lenet5")]


def test_epochs_change_retrains_but_keeps_data_stages(project):
    ingest(load_params("params.yaml"), Layout())
    before = keys([], STAGES)
    after = keys(["train.epochs=3"], STAGES)
    assert {s for s in before if before[s] != after[s]} == {("train", "lenet5"), ("evaluate", "lenet5")}


def test_image_size_change_invalidates_ingest(project):
    before = keys([], [("ingest", None)])
    after = keys(["data.image_size=28"], [("ingest", None)])
    assert before != after


def test_override_for_one_arch_keeps_the_others(project):
    stages = [("train", "lenet5"), ("train", "resnet20")]
    base = ["train.architectures=[lenet5, resnet20]"]
    before = keys(base, stages)
    after = keys(base + ["train.overrides.resnet20.epochs=2"], stages)
    assert before[("train", "lenet5")] == after[("train", "lenet5")]
    assert before[("train", "resnet20")] != after[("train", "resnet20")]


def test_new_data_invalidates_training(project):
    params = load_params("params.yaml")
    ingest(params, Layout())
    before = cache_key("train", params, Layout(), "lenet5")
    ingest(load_params("params.yaml", ["data.split_seed=1"]), Layout())
    assert cache_key("train", params, Layout(), "lenet5") != before


def test_same_inputs_in_another_project_folder_is_not_a_cache_hit(project, tmp_path):
    # Prefect keeps cache records per user, not per folder: a second clone with the same data and
    # params must train for itself rather than report "Cached" over outputs it does not have.
    params = load_params("params.yaml")
    here = cache_key("train", params, Layout(), "lenet5")
    assert cache_key("train", params, Layout(tmp_path / "clone"), "lenet5") != here
    assert cache_key("train", params, Layout(), "lenet5") == here
