"""SAE step settings: schema defaults merged under what the rule passes, validated against the schema.

Scripts run by hand get the same checks as the workflow's config validation.
"""

from __future__ import annotations

from tissuelens.config import deep_merge, step_defaults, validate_step_settings
from tissuelens.errors import InputError


def resolve_settings(given: dict | None, source: str = "--settings") -> dict:
    settings = deep_merge(step_defaults("sae"), given or {})
    validate_step_settings(settings, "sae", source)
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
