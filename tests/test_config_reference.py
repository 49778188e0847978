"""config/README.md is generated from the schemas: it lists every key and is never stale."""

from __future__ import annotations

from tissuelens import config_reference
from tissuelens.config import load_schemas


def test_config_readme_is_current():
    # fails after a schema edit until the reference is regenerated
    assert config_reference.main(["--check"]) == 0, f"config/README.md is stale: run {config_reference.REGENERATE}"


def test_every_schema_is_a_section():
    assert {name for name, _, _ in config_reference.SECTIONS} == set(load_schemas())


def test_every_key_has_a_row_and_the_essential_keys_exist():
    text = config_reference.REFERENCE.read_text()
    paths = config_reference.all_paths()
    assert {"factorize.n_inducing", "embed.loki.decompose.weights", "models.<name>.random.version"} <= paths
    assert all(f"`{path}`" in text for path in paths)
    assert config_reference.ESSENTIAL <= paths, "an essential key was renamed in the schemas"
    assert text.count("★ `") == len(config_reference.ESSENTIAL)


def test_stale_reference_names_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config_reference, "REFERENCE", tmp_path / "README.md")
    (tmp_path / "README.md").write_text("old\n")
    assert config_reference.main(["--check"]) == 1
    assert config_reference.REGENERATE in capsys.readouterr().err
