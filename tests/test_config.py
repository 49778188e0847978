"""Config schema: valid configs pass, each kind of mistake names the dataset and key; files named in config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from helpers.configs import with_changes

from tissuelens.config import REPO, REPO_CONFIG_DIR, config_path, step_defaults, step_settings, validate_config
from tissuelens.errors import InputError

DEMO = yaml.safe_load((REPO_CONFIG_DIR / "config.yaml").read_text())


def with_change(path: str, value):
    return with_changes(DEMO, **{path: value})


def test_default_config_is_valid():
    validate_config(DEMO)


def as_snakemake_loads(example: Path) -> dict:
    """`snakemake --configfile <example>`: the file merged key by key onto config/config.yaml."""
    from snakemake.utils import update_config

    config = copy.deepcopy(DEMO)
    update_config(config, yaml.safe_load(example.read_text()))
    return config


@pytest.mark.parametrize("example", sorted((REPO_CONFIG_DIR / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_are_valid_merged_onto_the_default(example: Path):
    validate_config(as_snakemake_loads(example), source=str(example))


def test_template_gives_the_users_dataset_the_defaults_not_the_demos_sizes():
    config = as_snakemake_loads(REPO_CONFIG_DIR / "examples" / "template.yaml")
    assert step_settings(config, "mine", "factorize") == step_defaults("factorize")
    assert step_settings(config, "mine", "embed")["models"] == []
    assert step_settings(config, "mine", "analyze")["markers"]["path"] is None


def test_example_configs_cover_the_field():
    names = {p.stem for p in (REPO_CONFIG_DIR / "examples").glob("*.yaml")}
    expected = {"slideseqv2", "visium_hne", "merfish", "sdmbench_dlpfc", "liver_merfish", "colon_vizgen", "osmfish", "pbmc3k", "sciplex2"}
    assert expected <= names
    for name in expected:
        config = yaml.safe_load((REPO_CONFIG_DIR / "examples" / f"{name}.yaml").read_text())
        assert all("group_key" in entry for entry in config["datasets"].values()), name


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("datasets.demo.spatail", True, "datasets.demo: unknown key 'spatail'"),
        ("datasets.demo.preprocess.min_counts", "ten", "datasets.demo.preprocess.min_counts: 'ten' is not of type 'integer'"),
        ("datasets.demo.preprocess.min_countz", 3, "datasets.demo.preprocess: unknown key 'min_countz'"),
        ("preprocess.min_group_fraction", 2, "preprocess.min_group_fraction: 2 is greater than the maximum of 1"),
        ("datasets.demo.source", "ftp", "datasets.demo.source: 'ftp' is not one of"),
        ("datasets.demo.spatial", "yes", "datasets.demo.spatial: 'yes' is not of type 'boolean'"),
        ("datasets.demo.synthetic.n_groups", 20, "datasets.demo.synthetic.n_groups: 20 is greater than the maximum of 8"),
        ("datasets.demo.sha256", "abc", "datasets.demo.sha256: 'abc' does not match"),
        ("colour", "red", "(top level): unknown key 'colour'"),
    ],
)
def test_schema_rejections_name_the_key(path, value, message):
    with pytest.raises(InputError) as info:
        validate_config(with_change(path, value), source="config.yaml")
    assert str(info.value).startswith("config.yaml: invalid config: ")
    assert message in str(info.value)


def test_missing_required_option_per_source():
    config = copy.deepcopy(DEMO)
    config["datasets"]["mine"] = {"source": "local", "spatial": True}
    config["datasets"]["sq"] = {"source": "squidpy", "spatial": True}
    with pytest.raises(InputError) as info:
        validate_config(config)
    assert "datasets.mine: 'path' is required" in str(info.value)
    assert "datasets.sq: 'name' is required" in str(info.value)


def test_missing_spatial_flag():
    config = copy.deepcopy(DEMO)
    del config["datasets"]["demo"]["spatial"]
    with pytest.raises(InputError, match="datasets.demo: 'spatial' is required"):
        validate_config(config)


def test_step_settings_merge_defaults_section_and_dataset_override():
    config = copy.deepcopy(DEMO)
    config["preprocess"] = {"min_counts": 50}
    config["datasets"]["other"] = {"source": "synthetic", "spatial": True, "preprocess": {"min_counts": 7, "max_pct_mt": 20}}
    demo, other = step_settings(config, "demo", "preprocess"), step_settings(config, "other", "preprocess")
    assert demo["min_counts"] == 50 and demo["max_pct_mt"] is None and demo["min_cells"] == 3
    assert other["min_counts"] == 7 and other["max_pct_mt"] == 20 and other["min_cells"] == 3
    with pytest.raises(InputError, match="no dataset named 'nope'"):
        step_settings(config, "nope", "preprocess")


def test_a_file_named_in_config_is_looked_up_in_the_working_directory_then_in_the_checkout(tmp_path, monkeypatch):
    from tissuelens.analyze.markers import read_markers

    monkeypatch.chdir(tmp_path)
    shipped = "config/markers/demo.csv"
    assert config_path(shipped) == REPO / shipped  # a module deployment or a test: the checkout's copy
    assert set(read_markers(shipped, "csv", None)["source"]) == {"domain_1", "domain_2", "domain_3", "domain_4"}
    (tmp_path / shipped).parent.mkdir(parents=True)
    (tmp_path / shipped).write_text("gene,cell_type\nG1,T\n")
    assert config_path(shipped) == Path(shipped)  # the run's own file comes first
    assert config_path("nope.csv") == Path("nope.csv")  # missing everywhere: as written, for the error line
    assert config_path(REPO / shipped) == REPO / shipped


def test_a_file_only_the_checkout_holds_is_in_no_planned_input_or_param(tmp_path):
    """The demo planned from another folder: its marker file comes from the checkout, found by the jobs, so
    moving the checkout reruns no annotation (the planned commands and inputs name no path in it)."""
    from helpers.configs import write_config
    from helpers.workflow import snakemake

    write_config(tmp_path, copy.deepcopy(DEMO))
    out = snakemake(tmp_path, "-n", "-p", "results/demo/analyze/summary.json",
                    "results/demo/loki/loki_tiny/annotation.json").stdout
    assert "rule analyze:" in out and "rule loki_annotate:" in out
    assert str(REPO / "config") not in out
    assert '"markers": "config/markers/demo.csv"' in out  # Loki annotate's settings, as written
