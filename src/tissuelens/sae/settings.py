"""SAE step settings: schema defaults merged under what the rule passes, validated against the schema.

Scripts run by hand get the same checks as the workflow's config validation.
"""

from __future__ import annotations

import yaml

from tissuelens.config import SCHEMA_DIR, deep_merge, schema_defaults
from tissuelens.errors import InputError

SCHEMA_PATH = SCHEMA_DIR / "sae.schema.yaml"


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def resolve_settings(given: dict | None, source: str = "--settings") -> dict:
    from jsonschema import Draft202012Validator

    schema = load_schema()
    settings = deep_merge(schema_defaults(schema), given or {})
    errors = sorted(Draft202012Validator(schema).iter_errors(settings), key=lambda e: list(map(str, e.path)))
    if errors:
        lines = []
        for err in errors:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            if err.validator == "additionalProperties":
                extra = sorted(set(err.instance) - set(schema["properties"]))
                lines.append(f"unknown key {', '.join(repr(k) for k in extra)}")
            else:
                lines.append(f"{where}: {err.message}")
        raise InputError(f"{source}: invalid sae settings: " + "; ".join(lines))
    return settings


def check_sizes(settings: dict, d_in: int, where: str) -> int:
    """d_sae for this width; k must fit in it. Returns d_sae."""
    factor = settings["expansion_factor"]
    if not 1 <= factor <= 256:
        raise InputError(f"{where}: expansion_factor {factor} out of range 1..256")
    d_sae = int(factor * d_in)
    if settings["architecture"] == "topk" and not 1 <= settings["k"] <= d_sae:
        raise InputError(
            f"{where}: k {settings['k']} out of range 1..{d_sae} (d_sae = expansion_factor {factor} x d_in {d_in})"
        )
    return d_sae
