"""What every section reads: the dataset, its QC, the stage plan, settings and the figure sink."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tissuelens.report.html import Figures, Section, note


@dataclass
class Context:
    dataset: str
    adata: object  # preprocessed AnnData
    qc: dict
    plan: dict  # stages.stage_plan output (only files that exist as inputs)
    settings: dict  # effective report settings
    run_config: dict  # the dataset's entry and every step's effective settings
    figures: Figures
    paths: dict = field(default_factory=dict)  # named input paths (qc, preprocessed, narrative)
    report_dir: Path = Path(".")
    shared: dict = field(default_factory=dict)  # values one section computes for a later one

    @property
    def groups(self):
        """obs["group"] as a categorical, or None."""
        if "group" in self.adata.obs:
            return self.adata.obs["group"].astype("category")
        return None

    @property
    def sections(self):
        """The recorded sections (categorical, tissuelens.sections) or None for one section."""
        from tissuelens.sections import section_labels

        return section_labels(self.adata)

    @property
    def coords(self):
        """Map coordinates: obsm["spatial"], with several sections drawn side by side (one region each)."""
        import numpy as np

        from tissuelens.sections import tile_sections

        if "spatial" not in self.adata.obsm:
            return None
        xy = np.asarray(self.adata.obsm["spatial"], dtype=float)[:, :2]
        labels = self.sections
        if labels is None:
            return xy
        return tile_sections(xy, np.asarray(labels.codes), len(labels.categories))


STAGE_TITLES = {"factorize": "spatial factorisation", "embed": "embedding", "sae": "sparse-autoencoder",
                "analyze": "analysis (domains and annotation)"}


def stage_unavailable(ctx: Context, stage: str, sid: str, title: str) -> Section | None:
    """A section saying plainly why a stage has nothing to show, or None when it was built."""
    entry = ctx.plan.get(stage, {"status": "absent", "reason": "not planned"})
    if entry["status"] == "built":
        return None
    what = STAGE_TITLES.get(stage, stage)
    if entry["status"] == "disabled":
        text = f"The {what} stage was not run for this dataset: {entry['reason']}."
    else:
        text = f"The {what} stage has not been built: {entry['reason']}."
    return Section(sid, title, note(text, "missing"), status="skipped")
