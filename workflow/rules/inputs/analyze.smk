# Input functions and params of the rules in ../analyze.smk, which includes this file (snakemake --lint wants
# functions and rules in separate files).


def domain_settings(wildcards):
    return as_param(settings(wildcards.dataset, "analyze")["domains"])


def analyze_settings(wildcards):
    """The analyze job's settings: everything but the domain settings and the group source (other rules')."""
    return as_param(settings(wildcards.dataset, "analyze"), ("domains", "group_source"))


def group_source_arg(wildcards):
    return plan_of(wildcards.dataset).group_source or ""


def analyze_markers_file(wildcards):
    """The marker file (marker_input) when annotation is on."""
    path = marker_input(settings(wildcards.dataset, "analyze")["markers"].get("path"))
    return [path] if path else []


def agreement_factors(dataset):
    """{variant: factors.npy} of the dataset's PNMF-GP variants (empty when factorize is off)."""
    return {v: f"results/{dataset}/factorize/{v}/factors.npy" for v in plan_of(dataset).variants}


def agreement_embeddings(dataset):
    return {m: f"results/{dataset}/embed/{m}/embeddings.h5ad" for m in plan_of(dataset).models}


def agreement_inputs(wildcards):
    dataset = wildcards.dataset
    inputs = {"h5ad": f"results/{dataset}/preprocessed.h5ad", "domains": domains_path(dataset),
              "factors": list(agreement_factors(dataset).values()),
              "embeddings": list(agreement_embeddings(dataset).values())}
    if inputs["factors"]:
        inputs["comparison"] = f"results/{dataset}/factorize/comparison.csv"
    return inputs


def agreement_args(wildcards, input):
    """--comparison/--factors/--embeddings arguments, each left out when its stage is off."""
    factors, embeddings = agreement_factors(wildcards.dataset), agreement_embeddings(wildcards.dataset)
    args = [input_flag("comparison")(wildcards, input),
            flag("factors", *(f"{v}={path}" for v, path in factors.items())),
            flag("embeddings", *(f"{m}={path}" for m, path in embeddings.items()))]
    return " ".join(a for a in args if a)
