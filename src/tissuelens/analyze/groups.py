"""Where a dataset's obs["group"] comes from: its labels (group_key), or a domain column of the analyze
stage (`analyze.group_source`), or nowhere."""

from __future__ import annotations

from tissuelens.config import step_settings
from tissuelens.errors import InputError


def group_source(config: dict, dataset: str) -> str | None:
    """`spatial_domain` / `expr_leiden` when domains supply the groups; None for labelled or group-less data."""
    entry = config["datasets"][dataset]
    own = (entry.get("analyze") or {}).get("group_source")
    if entry.get("group_key"):
        if own not in (None, "none"):
            raise InputError(f"datasets.{dataset}: analyze.group_source '{own}' is set together with group_key "
                             f"'{entry['group_key']}'; the labels would be used, so remove one of them")
        return None
    source = step_settings(config, dataset, "analyze")["group_source"]
    if source == "none":
        return None
    if source == "spatial_domain" and not entry.get("spatial", False):
        return "expr_leiden"  # non-spatial data has no spatial domains
    return source


def has_groups(config: dict, dataset: str) -> bool:
    return bool(config["datasets"][dataset].get("group_key")) or group_source(config, dataset) is not None
