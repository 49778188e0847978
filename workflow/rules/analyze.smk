# --- analyze stage: input functions (beside the rules that use them) --------------------------------
from tissuelens.analyze.groups import group_source
from tissuelens.report.stages import embed_models

# refuse group_source next to group_key before any job runs
for _dataset in DATASETS:
    try:
        group_source(config, _dataset)
    except InputError as exc:
        raise WorkflowError(str(exc)) from None

# keys read by the domains rule only (the rest of analyze: settings never rerun the domains)
ANALYZE_DOMAIN_KEYS = ("domains",)


def domains_path(dataset):
    return f"results/{dataset}/analyze/domains.parquet"


def preprocess_groups(wildcards):
    """domains.parquet when the dataset's groups come from its domains (no group_key), else nothing."""
    return [domains_path(wildcards.dataset)] if group_source(config, wildcards.dataset) else []


def preprocess_groups_arg(wildcards):
    source = group_source(config, wildcards.dataset)
    if source is None:
        return ""
    return f"--groups {shlex.quote(domains_path(wildcards.dataset))} --group-column {source}"


def group_source_arg(wildcards):
    return group_source(config, wildcards.dataset) or ""


def domain_settings(wildcards):
    return json.dumps(step_settings(config, wildcards.dataset, "analyze")["domains"], sort_keys=True)


def analyze_settings(wildcards):
    """Settings of rule analyze: everything but the domain settings and the group source (other rules')."""
    values = step_settings(config, wildcards.dataset, "analyze")
    return json.dumps({k: v for k, v in values.items() if k not in ("domains", "group_source")}, sort_keys=True)


REPO_DIR = Path(workflow.basedir).parent


def markers_path(dataset):
    """The marker file: a relative path is looked up in the working directory, then in this repository (so the
    shipped config/markers/demo.csv serves a demo run from any directory); None when annotation is off."""
    path = step_settings(config, dataset, "analyze")["markers"].get("path")
    if not path:
        return None
    if not Path(path).is_absolute() and not Path(path).exists() and (REPO_DIR / path).is_file():
        return str(REPO_DIR / path)
    return path


def analyze_markers_file(wildcards):
    path = markers_path(wildcards.dataset)
    return [path] if path else []


def analyze_markers_arg(wildcards):
    path = markers_path(wildcards.dataset)
    return f"--markers {shlex.quote(path)}" if path else ""


def agreement_factors(dataset):
    """{variant: factors.npy} of the dataset's PNMF-GP variants (empty when factorize is off)."""
    variants = factorize_variants(config, dataset)
    return {v: f"results/{dataset}/factorize/{v}/factors.npy" for v in variants}


def agreement_embeddings(dataset):
    return {m: f"results/{dataset}/embed/{m}/embeddings.h5ad" for m in embed_models(config, dataset)}


def agreement_inputs(wildcards):
    dataset = wildcards.dataset
    inputs = {"h5ad": f"results/{dataset}/preprocessed.h5ad", "domains": domains_path(dataset),
              "factors": list(agreement_factors(dataset).values()),
              "embeddings": list(agreement_embeddings(dataset).values())}
    if inputs["factors"]:
        inputs["comparison"] = f"results/{dataset}/factorize/comparison.csv"
    return inputs


def agreement_args(wildcards):
    """--comparison/--factors/--embeddings arguments ('' parts when a stage is off)."""
    dataset = wildcards.dataset
    factors = agreement_factors(dataset)
    embeddings = agreement_embeddings(dataset)
    args = []
    if factors:
        args.append(f"--comparison {shlex.quote(f'results/{dataset}/factorize/comparison.csv')}")
        args.append("--factors " + " ".join(shlex.quote(f"{v}={p}") for v, p in factors.items()))
    if embeddings:
        args.append("--embeddings " + " ".join(shlex.quote(f"{m}={p}") for m, p in embeddings.items()))
    return " ".join(args)


# --- analyze stage: rules -------------------------------------------------------------------------


rule domains:
    """Leiden on the expression PCA and spatial domains on neighbour-smoothed PCA (no labels needed)."""
    input:
        "resources/datasets/{dataset}/raw.h5ad",
    output:
        "results/{dataset}/analyze/domains.parquet",
    params:
        script=script("domains"),
        entry=dataset_entry,
        preprocess=settings_of("preprocess"),
        settings=domain_settings,
        seed=dataset_seed,
    log:
        "logs/{dataset}/analyze/domains.log",
    benchmark:
        "benchmarks/{dataset}/analyze/domains.tsv"
    conda:
        "../../envs/core.yaml"
    shell:
        "python {params.script:q} --raw {input:q} --entry {params.entry:q} "
        "--preprocess-settings {params.preprocess:q} --settings {params.settings:q} --seed {params.seed} "
        "--out {output:q} > {log:q} 2>&1"


rule analyze:
    """Marker annotation (decoupler), doublets (single-cell data), spatial statistics (squidpy), summary."""
    input:
        h5ad="results/{dataset}/preprocessed.h5ad",
        domains="results/{dataset}/analyze/domains.parquet",
        markers=analyze_markers_file,
    output:
        annotation="results/{dataset}/analyze/annotation.parquet",
        doublets="results/{dataset}/analyze/doublets.parquet",
        majority="results/{dataset}/analyze/domain_types.csv",
        net="results/{dataset}/analyze/markers_used.csv",
        nhood="results/{dataset}/analyze/nhood_enrichment.csv",
        cooccurrence="results/{dataset}/analyze/co_occurrence.csv",
        svg="results/{dataset}/analyze/spatially_variable_genes.csv",
        summary="results/{dataset}/analyze/summary.json",
    params:
        script=script("analyze"),
        entry=dataset_entry,
        settings=analyze_settings,
        source=group_source_arg,
        markers=analyze_markers_arg,
        seed=dataset_seed,
        outdir=subpath(output.summary, parent=True),
    log:
        "logs/{dataset}/analyze/analyze.log",
    benchmark:
        "benchmarks/{dataset}/analyze/analyze.tsv"
    conda:
        "../../envs/core.yaml"
    shell:
        "python {params.script:q} --h5ad {input.h5ad:q} --domains {input.domains:q} --entry {params.entry:q} "
        "--settings {params.settings:q} {params.markers} --group-source '{params.source}' --seed {params.seed} "
        "--outdir {params.outdir:q} > {log:q} 2>&1"


rule agreement:
    """ARI / NMI between domains, labels, the best PNMF-GP variant's dominant factor and embedding Leiden."""
    input:
        unpack(agreement_inputs),
    output:
        "results/{dataset}/analyze/agreement.csv",
    params:
        script=script("agreement"),
        settings=domain_settings,
        source=group_source_arg,
        args=agreement_args,
        seed=dataset_seed,
    log:
        "logs/{dataset}/analyze/agreement.log",
    benchmark:
        "benchmarks/{dataset}/analyze/agreement.tsv"
    conda:
        "../../envs/core.yaml"
    shell:
        "python {params.script:q} --h5ad {input.h5ad:q} --domains {input.domains:q} {params.args} "
        "--settings {params.settings:q} --group-source '{params.source}' --seed {params.seed} "
        "--out {output:q} > {log:q} 2>&1"
