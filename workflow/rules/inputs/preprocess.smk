# Input functions and params of the rules in ../preprocess.smk, which includes this file (snakemake --lint wants
# functions and rules in separate files).


def domains_path(dataset):
    return f"results/{dataset}/analyze/domains.parquet"


def preprocess_groups(wildcards):
    """domains.parquet when the dataset's groups come from its domains (no group_key), else nothing."""
    return [domains_path(wildcards.dataset)] if plan_of(wildcards.dataset).group_source else []


def preprocess_groups_arg(wildcards, input):
    source = plan_of(wildcards.dataset).group_source
    return f"{flag('groups', *input.groups)} {flag('group-column', source)}" if source else ""


def removes_doublets(dataset):
    """preprocess.remove_doublets on a single-cell dataset (spatial data keeps every spot)."""
    on = settings(dataset, "preprocess")["remove_doublets"]
    return bool(on) and not config["datasets"][dataset].get("spatial", False)


def doublet_rate_arg(wildcards):
    """--doublet-rate of the jobs that preprocess ('' unless they remove doublets: the rate reruns nothing else)."""
    rate = settings(wildcards.dataset, "analyze")["doublets"]["expected_rate"]
    return flag("doublet-rate", rate if removes_doublets(wildcards.dataset) else None)


def preprocess_doublets_arg(wildcards):
    """--doublet-rate and --seed of preprocess ('' unless it removes doublets: the seed reruns nothing else)."""
    rate = doublet_rate_arg(wildcards)
    return f"{rate} {flag('seed', dataset_seed(wildcards))}" if rate else ""
