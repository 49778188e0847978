"""Config validation and per-dataset step settings.

The config schema lives in workflow/schemas/: `config.schema.yaml` for the top level and datasets,
one `<step>.schema.yaml` per stage. A stage's settings for a dataset are the schema defaults,
overridden by the top-level `<step>:` section, overridden by `datasets.<name>.<step>:`.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

from tissuelens.errors import InputError

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO / "workflow" / "schemas"
REPO_CONFIG_DIR = REPO / "config"
STEPS = ("preprocess", "factorize", "embed", "sae", "analyze", "report")


def config_path(path) -> Path:
    """Where a file named in config lies: as written (absolute, or relative to the working directory), else in
    this checkout, so that config/markers/demo.csv serves a run in any folder. Only the first kind is a job input
    (common.smk: marker_input): a moved checkout then reruns nothing."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (REPO / p).is_file():
        return REPO / p
    return p


# libyaml's loader where PyYAML has it: the pure-Python one spends a second of every dry run on the schemas
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=None)
def _schema(path: Path, mtime_ns: int) -> dict:
    return yaml.load(path.read_text(), Loader=_LOADER)


def read_schema(path: Path) -> dict:
    """A schema file, parsed once per process while it is unchanged (shared: do not modify)."""
    return _schema(path, path.stat().st_mtime_ns)


def load_schemas(schema_dir: Path = SCHEMA_DIR) -> dict[str, dict]:
    return {p.name: read_schema(p) for p in sorted(schema_dir.glob("*.schema.yaml"))}


def _validator(schemas: dict[str, dict]):
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (name, Resource.from_contents(schema, default_specification=_draft())) for name, schema in schemas.items()
    )
    return Draft202012Validator(schemas["config.schema.yaml"], registry=registry)


def _draft():
    from referencing.jsonschema import DRAFT202012

    return DRAFT202012


def _describe(error) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{where}: unknown key {', '.join(repr(k) for k in extra)}"
    if error.validator == "required":
        return f"{where}: {error.message.replace(' is a required property', '')} is required"
    return f"{where}: {error.message}"


def validate_config(config: dict, source: str = "config", schema_dir: Path = SCHEMA_DIR) -> None:
    """Raise InputError with one line per problem, each naming the key path (e.g. datasets.demo.path)."""
    validator = _validator(load_schemas(schema_dir))
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if errors:
        # the deepest errors are the most specific; `if/then` wrappers add nothing
        lines = [_describe(e) for e in errors if e.validator not in ("if", "then", "allOf")]
        raise InputError(f"{source}: invalid config: " + "; ".join(dict.fromkeys(lines)))


def schema_defaults(schema: dict) -> dict:
    """Defaults declared in a step schema's `properties` (nested objects included)."""
    out = {}
    for key, prop in schema.get("properties", {}).items():
        if "default" in prop:
            out[key] = copy.deepcopy(prop["default"])
        elif prop.get("type") == "object" and "properties" in prop:
            out[key] = schema_defaults(prop)
    return out


def deep_merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@functools.lru_cache(maxsize=None)
def _step_defaults(schema_file: Path) -> dict:
    # cached: a dry run asks for settings thousands of times (callers get deep copies via deep_merge)
    return schema_defaults(read_schema(schema_file)) if schema_file.exists() else {}


def step_defaults(step: str, schema_dir: Path = SCHEMA_DIR) -> dict:
    """The defaults declared in `<step>.schema.yaml` (a fresh copy the caller may change)."""
    return copy.deepcopy(_step_defaults(schema_dir / f"{step}.schema.yaml"))


def validate_step_settings(settings: dict, step: str, source: str, schema_dir: Path = SCHEMA_DIR) -> None:
    """Check one stage's settings (as a script run by hand gets them) against `<step>.schema.yaml`."""
    from jsonschema import Draft202012Validator

    schema = read_schema(schema_dir / f"{step}.schema.yaml")
    errors = sorted(Draft202012Validator(schema).iter_errors(settings), key=lambda e: list(map(str, e.path)))
    if errors:
        raise InputError(f"{source}: invalid {step} settings: " + "; ".join(_describe(e) for e in errors))


def step_settings(config: dict, dataset: str, step: str, schema_dir: Path = SCHEMA_DIR) -> dict:
    """Effective settings of `step` for `dataset` (defaults < top-level section < dataset override)."""
    if dataset not in config.get("datasets", {}):
        raise InputError(f"config: no dataset named '{dataset}' under datasets:")
    merged = deep_merge(_step_defaults(schema_dir / f"{step}.schema.yaml"), config.get(step))
    return deep_merge(merged, config["datasets"][dataset].get(step))
