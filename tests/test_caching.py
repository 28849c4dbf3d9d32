"""Cache keys follow the real inputs, declared once; a stage is reused only when the stamp on its outputs
says they were made by this run's inputs."""

from __future__ import annotations

import yaml
from prefect import flow

from tasks import caching
from tasks.caching import READS, cache_key
from tasks.ingest import ingest
from tasks.layout import Layout
from tasks.orchestration import configured, stage_task
from tasks.params import load_params
from tasks.readers import load_prepared
from tests.imagetree import tree_files, write_tree
from tests.test_orchestration import task_states


def keys(overrides, stage_archs):
    params = load_params("params.yaml", overrides)
    return {(s, a): cache_key(s, params, Layout(), a) for s, a in stage_archs}


STAGES = [("ingest", None), ("validate", None), ("augment", None), ("train", "lenet5"), ("evaluate", "lenet5")]


def test_epochs_change_retrains_but_keeps_data_stages(project):
    ingest(load_params("params.yaml"), Layout())
    before = keys([], STAGES)
    after = keys(["train.epochs=3"], STAGES)
    assert {s for s in before if before[s] != after[s]} == {("train", "lenet5")}
    # evaluate reads the trained weights, not train.epochs: it re-runs because model.pt changes


def test_execution_only_keys_keep_the_cache(project):
    before = keys([], [("train", "lenet5")])
    assert keys(["train.progress=off", "train.num_threads=1", "train.resume=false"], [("train", "lenet5")]) == before


def test_image_size_change_invalidates_ingest(project):
    before = keys([], [("ingest", None)])
    after = keys(["data.image_size=28", "train.architectures=[knn, resnet20]"], [("ingest", None)])  # lenet5: 32 px
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


def test_dvc_yaml_declares_what_the_stages_read(project):
    """dvc.yaml's deps and params are the READS of tasks/caching.py: code, upstream outputs, params."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    for name, reads in READS.items():
        stage = stages[name]["do"] if "foreach" in stages[name] else stages[name]
        deps = {d.replace("${item}", "{arch}") for d in stage["deps"]}
        assert deps == set(reads.code) | set(caching.COMMON_CODE) | set(reads.outputs), name
        assert set(stage.get("params", [])) == set(reads.params), name


@flow
def ingest_twice_flow(overrides: list[str]):
    params = load_params("params.yaml", overrides)
    return configured(stage_task(ingest, "ingest"), params, Layout())(params, Layout())


def test_a_stamp_from_other_data_is_not_a_cache_hit(project, prefect_harness):
    """digits, then a folder, then digits again in one project: ingest re-runs whenever its outputs
    were made from another source, and is Cached only over its own."""
    write_tree(project / "images", tree_files(per_class=8))
    digits = ["data.limit_per_class=20"]
    folder = ["data.source=folder", "data.path=images", "validate.min_per_class=1"]
    seen = []
    for overrides in (digits, folder, digits, digits):
        state = ingest_twice_flow(overrides, return_state=True)
        seen.append((task_states(state.state_details.flow_run_id)["ingest"],
                     load_prepared(project / "data" / "prepared").meta["source"]["kind"]))
    assert seen == [("Completed", "digits"), ("Completed", "folder"), ("Completed", "digits"), ("Cached", "digits")]
    stamp = caching.read_stamp("ingest", Layout())
    assert stamp["inputs"]["params"]["data"]["source"] == "digits"
