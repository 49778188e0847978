"""The five variants and which settings each reads (no torch here: the Snakefile imports it)."""

from __future__ import annotations

SPATIAL_VARIANTS = ("svgp", "mggp_svgp", "lcgp", "mggp_lcgp")
GROUP_VARIANTS = ("mggp_svgp", "mggp_lcgp")
VARIANTS = ("pnmf",) + SPATIAL_VARIANTS
SVGP_VARIANTS, LCGP_VARIANTS = ("svgp", "mggp_svgp"), ("lcgp", "mggp_lcgp")
# settings only some variants read: each variant's jobs carry only their own, so editing n_inducing
# retrains the SVGPs and leaves pnmf and the LCGPs (hours on real data) alone
VARIANT_ONLY_KEYS = {
    "n_inducing": SVGP_VARIANTS, "kmeans_n_init": SVGP_VARIANTS, "kl_scaling": SVGP_VARIANTS,
    "inducing_allocation": ("mggp_svgp",),
    "n_neighbors": LCGP_VARIANTS, "lcgp_rank": LCGP_VARIANTS,
    "lengthscale": SPATIAL_VARIANTS, "amplitude": SPATIAL_VARIANTS, "jitter": SPATIAL_VARIANTS,
    "kernel_lr_multiplier": SPATIAL_VARIANTS, "kernel_every": SPATIAL_VARIANTS, "spatial_scale": SPATIAL_VARIANTS,
    "group_diff": GROUP_VARIANTS, "train_group_diff": GROUP_VARIANTS,
}


def variant_settings(settings: dict, variant: str) -> dict:
    """The settings `variant` reads (the others are left to the schema defaults by the scripts)."""
    return {k: v for k, v in settings.items() if variant in VARIANT_ONLY_KEYS.get(k, VARIANTS)}
