# Input functions and params of the rules in ../factorize.smk, which includes this file (snakemake --lint wants
# functions and rules in separate files).

from tissuelens.factorize.variants import VARIANTS, variant_settings

# keys that only select jobs (kept out of the params so editing them reruns nothing)
FACTORIZE_SELECTION_KEYS = ("enabled", "variants")


def factorize_settings(part):
    """Input function: the factorize settings one variant reads, for training (without `analysis`) or for
    analysis; keys of other variants stay out, so editing them reruns nothing here."""
    drop = FACTORIZE_SELECTION_KEYS + (("analysis",) if part == "train" else ())

    def param(wildcards):
        return as_param(variant_settings(settings(wildcards.dataset, "factorize"), wildcards.variant), drop)

    return param


def factorize_gpu(wildcards):
    """Training holds a GPU unless the dataset's factorize.device is cpu."""
    return int(settings(wildcards.dataset, "factorize")["device"] != "cpu")


def factorize_metrics(wildcards):
    """metrics.json of every variant run for the dataset (non-spatial: pnmf; no groups: no mggp_)."""
    variants = plan_of(wildcards.dataset).variants
    if not variants:
        raise WorkflowError(f"datasets.{wildcards.dataset}: factorize runs no variant for this dataset")
    return [f"results/{wildcards.dataset}/factorize/{v}/metrics.json" for v in variants]
