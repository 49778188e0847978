"""config/README.md, written from the schemas in workflow/schemas/ (so the reference cannot drift from them).

    python -m tissuelens.config_reference > config/README.md   # regenerate
    python -m tissuelens.config_reference --check               # exit 1 when config/README.md is stale

One table per schema, in workflow order; one row per key (nested keys by dotted path) with its type,
default and description. The few keys a user sets for their own data are marked (ESSENTIAL).
Torch-free: it needs only PyYAML.
"""

from __future__ import annotations

import argparse
import re
import sys

import yaml

from tissuelens.config import REPO_CONFIG_DIR, load_schemas

REFERENCE = REPO_CONFIG_DIR / "README.md"
REGENERATE = "python -m tissuelens.config_reference > config/README.md"

# (schema file, key prefix, heading): datasets first, then the stages in the order they run
SECTIONS = (
    ("config.schema.yaml", "", "Top level"),
    ("dataset.schema.yaml", "datasets.<name>.", "Datasets"),
    ("synthetic.schema.yaml", "datasets.<name>.synthetic.", "The synthetic source (the demo)"),
    ("datasets_sheet.schema.yaml", "", "Datasets sheet (columns)"),
    ("preprocess.schema.yaml", "preprocess.", "Preprocess"),
    ("factorize.schema.yaml", "factorize.", "Factorize (PNMF-GP)"),
    ("models.schema.yaml", "models.<name>.", "Models"),
    ("embed.schema.yaml", "embed.", "Embed (Geneformer, Loki, Tahoe-x1)"),
    ("sae.schema.yaml", "sae.", "Sparse autoencoders"),
    ("analyze.schema.yaml", "analyze.", "Analyze"),
    ("report.schema.yaml", "report.", "Report"),
)

# What a user sets to run their own data; everything else has a working default.
ESSENTIAL = frozenset(
    {
        "datasets.<name>.source",
        "datasets.<name>.spatial",
        "datasets.<name>.path",
        "datasets.<name>.group_key",
        "datasets.<name>.section_key",
        "factorize.n_factors",
        "embed.models",
    }
)


def _type(prop: dict) -> str:
    if "enum" in prop:
        return "one of " + ", ".join(_value(v) for v in prop["enum"])
    if "const" in prop:
        return "= " + _value(prop["const"])
    if "oneOf" in prop:
        return " or ".join(_type(p) for p in prop["oneOf"])
    kinds = prop.get("type", "object" if "properties" in prop else "")
    text = " or ".join(kinds) if isinstance(kinds, list) else kinds
    if text == "array" and "type" in prop.get("items", {}):
        text = f"array of {_type(prop['items'])}"
    bounds = [f"{sign} {prop[key]}" for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                                      ("maximum", "≤"), ("exclusiveMaximum", "<")) if key in prop]
    return ", ".join([text or "any", *bounds])


def _value(value) -> str:
    # YAML flow style: what a user would type in config.yaml
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().replace("|", "\\|")


def _resolve(prop: dict, schema: dict) -> dict:
    ref = prop.get("$ref", "")
    if ref.startswith("#/$defs/"):
        return schema["$defs"][ref.removeprefix("#/$defs/")]
    return prop


def _rows(node: dict, prefix: str, schema: dict):
    """(path, prop, required) for every key under `node`, depth first; $refs to other schema files are left to their section."""
    required = set(node.get("required", ()))
    for key, prop in node.get("properties", {}).items():
        if "$ref" in prop and not prop["$ref"].startswith("#/"):
            continue
        prop = _resolve(prop, schema)
        yield prefix + key, prop, key in required
        yield from _rows(prop, f"{prefix}{key}.", schema)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("$ref", "").startswith("#/"):
        yield from _rows(_resolve(extra, schema), prefix, schema)


def _table(schema: dict, prefix: str) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for path, prop, required in _rows(schema, prefix, schema):
        mark = "★ " if path in ESSENTIAL else ""
        default = f"`{_cell(_value(prop['default']))}`" if "default" in prop else ("required" if required else "")
        lines.append(f"| {mark}`{path}` | {_cell(_type(prop))} | {default} | {_cell(prop.get('description', ''))} |")
    return lines


def all_paths(schemas: dict[str, dict] | None = None) -> set[str]:
    """Every key path the reference lists."""
    schemas = schemas or load_schemas()
    return {path for name, prefix, _ in SECTIONS for path, *_ in _rows(schemas[name], prefix, schemas[name])}


def render(schemas: dict[str, dict] | None = None) -> str:
    schemas = schemas or load_schemas()
    out = [
        "# Configuration reference",
        "",
        f"Generated from `workflow/schemas/*.schema.yaml` by `{REGENERATE}`; do not edit by hand.",
        "",
        "`config/config.yaml` holds the datasets and one section per stage. A stage's settings for a dataset",
        "are the defaults below, overridden by the top-level section (`preprocess:`, ...), overridden by the",
        "same section inside the dataset's entry (`datasets.<name>.preprocess:`). `snakemake --configfile",
        "<file>` merges a file onto `config/config.yaml` key by key. ★ marks the keys to set for your own",
        "data (start from `config/examples/template.yaml`); every other key has a working default.",
        "",
    ]
    for name, prefix, heading in SECTIONS:
        schema = schemas[name]
        out += [f"## {heading}", "", f"`workflow/schemas/{name}`: {_cell(schema.get('description', ''))}", ""]
        out += _table(schema, prefix) + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 when {REFERENCE.name} differs from the schemas")
    args = parser.parse_args(argv)
    text = render()
    if not args.check:
        sys.stdout.write(text)
        return 0
    if REFERENCE.exists() and REFERENCE.read_text() == text:
        return 0
    print(f"error: config/README.md is stale (the schemas changed); regenerate it: {REGENERATE}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
