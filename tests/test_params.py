"""params.yaml and `-S` overrides: typed, and wrong input is named before any work starts."""

import pytest

from tasks.errors import ParamsError
from tasks.params import Params, load_params


def test_repo_params_parse(project):
    params = load_params("params.yaml")
    assert params.data.source == "digits"
    assert params.train.architectures


def test_missing_file_gives_defaults(tmp_path):
    assert load_params(tmp_path / "absent.yaml") == Params()


def test_overrides_use_yaml_values(project):
    params = load_params("params.yaml", ["train.epochs=3", "train.architectures=[knn]", "augment.hflip=true"])
    assert params.train.epochs == 3
    assert params.train.architectures == ["knn"]
    assert params.augment.hflip is True


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.epochs=-1", "train.epochs"),
        ("train.architectures=[nope]", "unknown architecture 'nope'"),
        ("train.epoch=3", "train.epoch: unknown key"),
        ("data.source=imagenet", "data.source"),
        ("train.optimizer.name=lbfgs", "train.optimizer.name"),
        ("train.batch_size=many", "train.batch_size"),
    ],
)
def test_bad_values_name_the_key(project, override, named):
    with pytest.raises(ParamsError) as exc:
        load_params("params.yaml", [override])
    assert named in str(exc.value)


def test_unknown_architecture_lists_allowed(project):
    with pytest.raises(ParamsError) as exc:
        load_params("params.yaml", ["train.architectures=[nope]"])
    assert "allowed:" in str(exc.value) and "lenet5" in str(exc.value)


def test_per_architecture_override_is_validated(project):
    params = load_params("params.yaml", ["train.overrides={lenet5: {epochs: 2}}"])
    assert params.train.for_arch("lenet5").epochs == 2
    assert params.train.for_arch("knn").epochs == params.train.epochs
    with pytest.raises(ParamsError, match="train.overrides.lenet5.epochs"):
        load_params("params.yaml", ["train.overrides={lenet5: {epochs: 0}}"])


def test_override_without_equals_is_refused(project):
    with pytest.raises(ParamsError, match="key.path=value"):
        load_params("params.yaml", ["train.epochs"])


def test_every_section_dvc_tracks_is_in_params_yaml(project):
    """DVC refuses a stage whose params section is missing from params.yaml."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        for key in (stage.get("do") or stage).get("params", []):
            node = params
            for part in key.split("."):
                assert part in node, f"dvc.yaml stage {name} tracks {key}, absent from params.yaml"
                node = node[part]


def test_readme_params_reference_is_current():
    """The README's params reference is the schema's, every key with its default and a description."""
    from tasks.params import reference_markdown, reference_rows
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- params:begin -->\n", 1)[1].split("\n<!-- params:end -->", 1)[0]
    assert block == reference_markdown(), "run `zooflow params --reference` and paste it into README.md"
    undocumented = [key for key, _, text in reference_rows() if not text]
    assert not undocumented, f"params without a description: {undocumented}"


def test_recipes_for_other_architectures_do_not_block_a_narrower_run(project):
    params = load_params("params.yaml", ["train.architectures=[knn]", "train.overrides={lenet5: {epochs: 2}}"])
    assert params.train.architectures == ["knn"]
    with pytest.raises(ParamsError, match="train.overrides.lenett5: unknown architecture"):
        load_params("params.yaml", ["train.overrides={lenett5: {epochs: 2}}"])


def test_recipes_apply_only_to_their_data(project):
    """params.yaml's digits recipe (narrow widths, no flips) is the digits'; a folder of natural images
    starts from the general settings (the papers' widths, flips), and the run's note says which."""
    digits = load_params("params.yaml")
    assert digits.recipe == "digits" and digits.augment.hflip is False
    assert digits.train.for_arch("resnet20").model_options["resnet20"]["widths"] == [8, 16, 32]
    assert digits.recipe_note().startswith("recipe: recipes.digits")
    pets = load_params("params.yaml", ["data.source=folder", "data.path=/data/pets"])
    assert pets.recipe is None and pets.augment.hflip is True and "resnet20" not in pets.train.model_options
    assert pets.train.for_arch("vit_tiny_patch4").optimizer.name == "adamw"  # general: transformers take AdamW
    assert "none for data 'pets'" in pets.recipe_note() and "recipes.pets" in pets.recipe_note()
    # A recipe named after the folder applies to it; -S overrides beat any recipe.
    named = load_params("params.yaml", ["data.source=folder", "data.path=/data/pets", "recipes.pets={augment: {cutout: 8}}",
                                        "augment.hflip=false"])
    assert named.recipe == "pets" and named.augment.cutout == 8 and named.augment.hflip is False
    assert load_params("params.yaml", ["augment.hflip=true"]).augment.hflip is True
    with pytest.raises(ParamsError, match=r"recipes\.cifar10: train\.epochz: unknown key"):
        load_params("params.yaml", ["recipes.cifar10={train: {epochz: 3}}"])
    with pytest.raises(ParamsError, match="a recipe sets only augment and train"):
        load_params("params.yaml", ["recipes.cifar10={data: {image_size: 64}}"])
