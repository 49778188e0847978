import json
import re
import shlex
import sys
from pathlib import Path

# This checkout's workflow/ folder, from this file's own location: right also when the workflow is used as a
# module of another (workflow.basedir is then the including workflow's folder).
WORKFLOW_DIR = Path(str(workflow.current_basedir)).parent
# scripts and this file import the library from src/ without an install
SRC = str(WORKFLOW_DIR.parent / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
# Jobs (local, conda, cluster) see the same library through PYTHONPATH, and name their entry point as
# "$TISSUELENS_SCRIPTS/<name>.py": a path in the shell environment, not a param, so a moved checkout reruns nothing.
shell.prefix(f"export PYTHONPATH={shlex.quote(SRC)}${{{{PYTHONPATH:+:$PYTHONPATH}}}} "
             f"TISSUELENS_SCRIPTS={shlex.quote(str(WORKFLOW_DIR / 'scripts'))}; ")

from tissuelens.config import STEPS, step_settings, validate_config
from tissuelens.errors import InputError
from tissuelens.sheet import merge_sheet

try:
    merge_sheet(config)
    validate_config(config, source="config")
except InputError as exc:
    raise WorkflowError(str(exc)) from None

DATASETS = list(config["datasets"])
# Rules that take CUDA when present (device: auto) hold one `gpu`. On one machine at most one such job runs at a
# time unless `--resources gpu=N` says otherwise (on a CPU-only machine it only serialises them); a cluster
# executor leaves GPUs to its scheduler.
if workflow.local_exec and "gpu" not in workflow.global_resources:
    workflow.global_resources["gpu"] = 1
# Tahoe-x1's own image (llm-foundry, composer, flash-attn for CUDA 12); the Tahoe rule's `container:`.
# workflow/envs/tahoe.yaml is the conda alternative. workflow/envs/tahoe_cpu.yaml (no flash-attn) is download_model's env for
# Tahoe models (MODEL_ENVS); embed_tahoe keeps a fixed env, since --containerize refuses a conda function on a
# rule outside the DAG; on a CPU, run its script in the tahoe_cpu.yaml env (README, Tahoe-x1).
TAHOE_IMAGE = "docker://ghcr.io/tahoebio/tahoe-x1:1.0.0"


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),


def dataset_entry(wildcards):
    """The dataset's source options as JSON, without its step overrides (those rerun only their step)."""
    entry = config["datasets"][wildcards.dataset]
    return json.dumps({k: v for k, v in entry.items() if k not in STEPS}, sort_keys=True)


def dataset_seed(wildcards):
    return config["datasets"][wildcards.dataset].get("seed", config.get("seed", 0))


def settings_of(step):
    """Input function: a step's effective settings for the dataset, as a JSON string param."""

    def settings(wildcards):
        return json.dumps(step_settings(config, wildcards.dataset, step), sort_keys=True)

    return settings


def download_inputs(wildcards):
    """Local files a download reads, so that editing them reruns it."""
    entry = config["datasets"][wildcards.dataset]
    files = []
    if entry["source"] == "local" and Path(entry["path"]).is_file():
        files.append(entry["path"])
    if "labels" in entry:
        files.append(entry["labels"]["path"])
    return files


# --- factorize stage -------------------------------------------------------------------------------
from tissuelens.report.stages import factorize_variants
from tissuelens.factorize.variants import variant_settings

# keys that only select jobs (kept out of the params so editing them reruns nothing)
FACTORIZE_SELECTION_KEYS = ("enabled", "variants")


def factorize_settings(part):
    """Input function: the factorize settings one variant reads, for training (without `analysis`) or for
    analysis; keys of other variants stay out, so editing them reruns nothing here."""

    def settings(wildcards):
        values = variant_settings(step_settings(config, wildcards.dataset, "factorize"), wildcards.variant)
        drop = set(FACTORIZE_SELECTION_KEYS) | ({"analysis"} if part == "train" else set())
        return json.dumps({k: v for k, v in values.items() if k not in drop}, sort_keys=True)

    return settings


def factorize_gpu(wildcards):
    """Training holds a GPU unless the dataset's factorize.device is cpu."""
    return int(step_settings(config, wildcards.dataset, "factorize")["device"] != "cpu")


def factorize_metrics(wildcards):
    """metrics.json of every variant run for the dataset (non-spatial: pnmf; no group_key: no mggp_)."""
    variants = factorize_variants(config, wildcards.dataset)
    if not variants:
        raise WorkflowError(f"datasets.{wildcards.dataset}: factorize runs no variant for this dataset")
    return [f"results/{wildcards.dataset}/factorize/{v}/metrics.json" for v in variants]


# --- sae stage -------------------------------------------------------------------------------------
# keys that only select jobs or inputs (kept out of the settings params so editing them reruns nothing)
SAE_SELECTION_KEYS = ("enabled", "models", "link_factors")
# keys read only by analyze_sae (kept out of train_sae's params)
SAE_ANALYSIS_KEYS = ("analysis_batch_size", "top_genes", "min_gene_tokens", "top_cells", "moran_neighbors",
                     "dashboard_features")


def sae_settings(part):
    """Input function: the sae settings one rule reads (part = train or analyze), as a JSON string param."""

    def settings(wildcards):
        values = step_settings(config, wildcards.dataset, "sae")
        drop = set(SAE_SELECTION_KEYS) | (set(SAE_ANALYSIS_KEYS) if part == "train" else set())
        return json.dumps({k: v for k, v in values.items() if k not in drop}, sort_keys=True)

    return settings


def sae_factor_variant(dataset):
    """PNMF-GP variant whose factors the SAE features are correlated with (None: no linking)."""
    link = step_settings(config, dataset, "sae").get("link_factors")
    if link is False or not config["datasets"][dataset].get("spatial", False):
        return None
    variants = factorize_variants(config, dataset)  # [] when factorize is off for the dataset
    if link is None or link is True:
        return variants[0] if variants else None
    if link not in variants:
        raise WorkflowError(f"datasets.{dataset}: sae.link_factors '{link}' is not a factorize variant run for it")
    return link


def sae_factors_path(dataset):
    variant = sae_factor_variant(dataset)
    return None if variant is None else f"results/{dataset}/factorize/{variant}/factors.npy"


def sae_analysis_inputs(wildcards):
    """Inputs of analyze_sae: the SAE, its activations, the preprocessed data, factors when linked."""
    base = f"results/{wildcards.dataset}/sae/{wildcards.model}"
    inputs = {
        "sae": f"{base}/sae",
        "metrics": f"{base}/metrics.json",
        "curve": f"{base}/loss_curve.png",
        "activations": f"results/{wildcards.dataset}/embed/{wildcards.model}/activations",
        "preprocessed": f"results/{wildcards.dataset}/preprocessed.h5ad",
    }
    factors = sae_factors_path(wildcards.dataset)
    if factors is not None:
        inputs["factors"] = factors
    return inputs


def sae_factors_flag(wildcards):
    """The --factors argument of analyze_sae ('' when the dataset links no factors)."""
    factors = sae_factors_path(wildcards.dataset)
    return "" if factors is None else f"--factors {shlex.quote(factors)}"


# --- report stage ----------------------------------------------------------------------------------
from tissuelens.report.stages import LOKI_TASK_FILES, loki_task_enabled, plan_files, stage_plan


def producible(path):
    """True when some rule of this workflow writes `path` (a stage whose rules are not included is absent)."""
    return any(rule.is_producer(path) for rule in workflow.rules)


def report_plan(dataset):
    """Per stage: status (built, disabled, absent) and the files the report reads (tissuelens.report.stages)."""
    return stage_plan(config, dataset, producible)


def report_plan_json(wildcards):
    return json.dumps(report_plan(wildcards.dataset), sort_keys=True)


def narrative_config(dataset):
    return step_settings(config, dataset, "report")["narrative"]


def narrative_settings(wildcards):
    return json.dumps(narrative_config(wildcards.dataset), sort_keys=True)


def narrative_gpu(wildcards):
    """The narrative holds a GPU only when it runs a model on one."""
    settings = narrative_config(wildcards.dataset)
    return int(bool(settings.get("checkpoint")) and settings.get("device", "auto") != "cpu")


def report_settings(wildcards):
    values = step_settings(config, wildcards.dataset, "report")
    return json.dumps({k: v for k, v in values.items() if k != "narrative"}, sort_keys=True)


def report_run_config(wildcards):
    """The dataset's effective config (entry, seed, every step's settings) for the provenance section."""
    dataset = wildcards.dataset
    entry = config["datasets"][dataset]
    return json.dumps({
        "dataset": dataset,
        "seed": dataset_seed(wildcards),
        "entry": {k: v for k, v in entry.items() if k not in STEPS},
        "steps": {step: step_settings(config, dataset, step) for step in STEPS},
    }, sort_keys=True)


def narrative_inputs(wildcards):
    """The narrative reads QC, the preprocessed data (tissue image) and every built stage's files."""
    dataset = wildcards.dataset
    return {
        "qc": f"results/{dataset}/qc.json",
        "preprocessed": f"results/{dataset}/preprocessed.h5ad",
        "stages": plan_files(report_plan(dataset)),
    }


def report_inputs(wildcards):
    inputs = narrative_inputs(wildcards)
    if narrative_config(wildcards.dataset).get("enabled", True):
        inputs["narrative"] = f"results/{wildcards.dataset}/report/narrative.json"
    return inputs


def report_narrative_arg(wildcards):
    """The --narrative argument of the report ('' when the narrative is turned off)."""
    if not narrative_config(wildcards.dataset).get("enabled", True):
        return ""
    return f"--narrative {shlex.quote(f'results/{wildcards.dataset}/report/narrative.json')}"


def dataset_targets(dataset):
    """The end target of one dataset: its report, whose inputs pull in every stage enabled for it."""
    return ([f"results/{dataset}/report/index.html"] + embed_kind_targets(dataset, "loki") + embed_kind_targets(dataset, "tahoe")
            + geneformer_targets(dataset) + loki_task_targets(dataset))


# --- embed stage: Loki / Tahoe-x1 rules (workflow/rules/embed_loki.smk) ----------------------------


def kind_models(kind):
    """Names of the models in `models:` of one kind (loki, tahoe, ...)."""
    return [name for name, entry in (config.get("models") or {}).items() if entry.get("kind") == kind]


def kind_model_pattern(kind):
    """Wildcard constraint matching exactly the models of one kind (so each embed rule owns its models)."""
    names = kind_models(kind)
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


def embed_kind_targets(dataset, kind):
    """embeddings.h5ad of every model of `kind` listed in the dataset's embed.models."""
    models = step_settings(config, dataset, "embed").get("models") or []
    names = [m if isinstance(m, str) else m["name"] for m in models]
    return [f"results/{dataset}/embed/{m}/embeddings.h5ad" for m in names if m in kind_models(kind)]


LOKI_TASKS = ("annotate", "retrieve", "predex", "decompose")


def embed_kind_settings(kind):
    """Input function: the dataset's embed.<kind> settings as a JSON string param (the Loki tasks' own
    settings left out, so that changing them does not re-embed)."""

    def settings(wildcards):
        values = step_settings(config, wildcards.dataset, "embed").get(kind) or {}
        return json.dumps({k: v for k, v in values.items() if k not in LOKI_TASKS}, sort_keys=True)

    return settings


def loki_task_config(dataset, task):
    return step_settings(config, dataset, "embed")["loki"][task]


def loki_task_settings(task):
    """Input function: embed.loki.<task> settings as a JSON string param (annotate: the marker file resolved
    as the analyze stage's)."""

    def settings(wildcards):
        values = loki_task_config(wildcards.dataset, task)
        if task == "annotate":
            values["markers"] = resolve_marker_file(values["markers"])
            values["sentences"] = resolve_marker_file(values.get("sentences"))
            values["bulk"] = resolve_marker_file(values.get("bulk"))
        return json.dumps(values, sort_keys=True)

    return settings


def loki_task_targets(dataset):
    models = [m for m in embed_models_of(dataset) if m in kind_models("loki")]
    if models and loki_task_enabled(config, dataset, "retrieve"):
        loki_retrieve_reference(dataset)  # a reference that is not a dataset fails before any job
    if models and loki_task_enabled(config, dataset, "decompose"):
        loki_decompose_reference(dataset)
    if models and loki_task_enabled(config, dataset, "predex"):
        loki_predex_references(dataset)
    return [f"results/{dataset}/loki/{m}/{name}" for m in models for task in LOKI_TASKS
            if loki_task_enabled(config, dataset, task) for name in LOKI_TASK_FILES[task]]


def loki_markers(wildcards):
    """The annotation's input files: curated sentences (else the marker file) and the bulk table."""
    settings = loki_task_config(wildcards.dataset, "annotate")
    files = [resolve_marker_file(settings.get("sentences") or settings["markers"]), resolve_marker_file(settings.get("bulk"))]
    return [f for f in files if f]


def loki_retrieve_reference(dataset):
    reference = loki_task_config(dataset, "retrieve")["reference"]
    if reference is not None and reference not in DATASETS:
        raise WorkflowError(f"datasets.{dataset}: embed.loki.retrieve.reference names '{reference}', which is not a "
                            f"dataset of this config (datasets: {', '.join(DATASETS)})")
    return reference


def loki_retrieve_inputs(wildcards):
    inputs = {"embeddings": f"results/{wildcards.dataset}/embed/{wildcards.model}/embeddings.h5ad"}
    reference = loki_retrieve_reference(wildcards.dataset)
    if reference is not None:
        inputs["reference"] = f"results/{reference}/embed/{wildcards.model}/embeddings.h5ad"
    return inputs


def loki_predex_references(dataset):
    """The slides PredEx trains on (embed.loki.predex.reference: a name or a list); [] = within the slide."""
    reference = loki_task_config(dataset, "predex").get("reference")
    names = [] if reference is None else [reference] if isinstance(reference, str) else list(reference)
    for name in names:
        if name not in DATASETS or name == dataset:
            raise WorkflowError(f"datasets.{dataset}: embed.loki.predex.reference names '{name}', which is not another "
                                f"dataset of this config (datasets: {', '.join(DATASETS)})")
    return names


def loki_predex_inputs(wildcards):
    inputs = {"embeddings": f"results/{wildcards.dataset}/embed/{wildcards.model}/embeddings.h5ad",
              "preprocessed": f"results/{wildcards.dataset}/preprocessed.h5ad"}
    for i, name in enumerate(loki_predex_references(wildcards.dataset)):
        inputs[f"reference{i}_embeddings"] = f"results/{name}/embed/{wildcards.model}/embeddings.h5ad"
        inputs[f"reference{i}_preprocessed"] = f"results/{name}/preprocessed.h5ad"
    return inputs


def loki_predex_reference_args(wildcards):
    return " ".join(f"--reference {shlex.quote(name)} {shlex.quote(f'results/{name}/embed/{wildcards.model}/embeddings.h5ad')} "
                    f"{shlex.quote(f'results/{name}/preprocessed.h5ad')}" for name in loki_predex_references(wildcards.dataset))


def loki_decompose_reference(dataset):
    reference = loki_task_config(dataset, "decompose")["reference"]
    if reference not in DATASETS:
        raise WorkflowError(f"datasets.{dataset}: embed.loki.decompose.reference names '{reference}', which is not a "
                            f"dataset of this config (datasets: {', '.join(DATASETS)})")
    return reference


def loki_decompose_inputs(wildcards):
    reference = loki_decompose_reference(wildcards.dataset)
    return {"embeddings": f"results/{wildcards.dataset}/embed/{wildcards.model}/embeddings.h5ad",
            "reference": f"results/{reference}/embed/{wildcards.model}/embeddings.h5ad"}


def loki_decompose_reference_name(wildcards):
    return loki_decompose_reference(wildcards.dataset)


def loki_reference_args(wildcards):
    reference = loki_retrieve_reference(wildcards.dataset)
    if reference is None:
        return ""
    path = f"results/{reference}/embed/{wildcards.model}/embeddings.h5ad"
    return f"--reference {shlex.quote(path)} --reference-name {shlex.quote(reference)}"



# --- models and the Geneformer embed stage (workflow/rules/embed.smk) -----------------------------
MODELS = list(config.get("models") or {})
ENVS = WORKFLOW_DIR / "envs"
# keys of embed settings that only select jobs or belong to other kinds' rules (kept out of params)
EMBED_SELECTION_KEYS = ("models", "loki", "tahoe")


def model_config(wildcards):
    """The model's entry under models:, or an error naming the defined models."""
    models = config.get("models") or {}
    if wildcards.model not in models:
        raise WorkflowError(f"config: model '{wildcards.model}' is not defined under models: "
                            f"(defined: {', '.join(sorted(models)) or 'none'})")
    return models[wildcards.model]


def model_entry(wildcards):
    return json.dumps(model_config(wildcards), sort_keys=True)


def model_vocab_dataset(wildcards):
    """random source: the dataset whose preprocessed.h5ad gives the vocabulary (None otherwise)."""
    entry = model_config(wildcards)
    if entry["source"] != "random":
        return None
    dataset = (entry.get("random") or {}).get("genes_from_dataset")
    if dataset is not None and dataset not in DATASETS:
        raise WorkflowError(f"models.{wildcards.model}.random.genes_from_dataset: no dataset named '{dataset}'")
    return dataset


def model_inputs(wildcards):
    """Files a model build reads: a random model's gene source; a local checkpoint's config.json."""
    entry = model_config(wildcards)
    files = []
    dataset = model_vocab_dataset(wildcards)
    if dataset is not None:
        files.append(f"results/{dataset}/preprocessed.h5ad")
    genes_file = (entry.get("random") or {}).get("genes_file") if entry["source"] == "random" else None
    if genes_file and dataset is None:
        files.append(genes_file)
    return files


def model_genes_arg(wildcards):
    dataset = model_vocab_dataset(wildcards)
    return "" if dataset is None else f"--genes-h5ad {shlex.quote(f'results/{dataset}/preprocessed.h5ad')}"


# download_model's env per kind where it is not workflow/envs/<kind>.yaml: fetching or building a Tahoe model
# needs no flash-attn, so it uses the Tahoe stack that builds anywhere
MODEL_ENVS = {"tahoe": "tahoe_cpu.yaml"}


def model_env(wildcards):
    """The conda env of the model's kind (workflow/envs/<kind>.yaml), absolute so it resolves from any rule file."""
    kind = model_config(wildcards)["kind"]
    env = ENVS / MODEL_ENVS.get(kind, f"{kind}.yaml")
    return str(env if env.exists() else ENVS / "geneformer.yaml")


def embed_settings(part):
    """Input function: the embed settings one Geneformer step reads (embed, perturb or metrics)."""

    def settings(wildcards):
        values = step_settings(config, wildcards.dataset, "embed")
        if part == "metrics":
            return json.dumps({"metrics": values["metrics"]}, sort_keys=True)
        drop = set(EMBED_SELECTION_KEYS) | {"metrics"} | ({"perturb"} if part == "embed" else set())
        return json.dumps({k: v for k, v in values.items() if k not in drop}, sort_keys=True)

    return settings


def embed_models_of(dataset):
    """Models listed in the dataset's embed.models (names, or entries with a name)."""
    models = step_settings(config, dataset, "embed").get("models") or []
    names = [m if isinstance(m, str) else m["name"] for m in models]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise WorkflowError(f"datasets.{dataset}: embed.models names {', '.join(unknown)}, not defined under models: "
                            f"(defined: {', '.join(MODELS) or 'none'})")
    return names


def geneformer_targets(dataset):
    """Embeddings, activations and metrics of the dataset's Geneformer models, and perturbation tables."""
    models = [m for m in embed_models_of(dataset) if m in kind_models("geneformer")]
    perturb = step_settings(config, dataset, "embed")["perturb"]
    targets = []
    for m in models:
        base = f"results/{dataset}/embed/{m}"
        targets += [f"{base}/embeddings.h5ad", f"{base}/embedding_metrics.json", f"{base}/activations"]
        if perturb["genes"] or perturb["auto_genes"]:
            targets.append(f"{base}/perturbation.tsv")
    return targets


def all_targets():
    return [t for d in DATASETS for t in dataset_targets(d)]


# --- analyze stage (workflow/rules/analyze.smk) -----------------------------------------------------
from tissuelens.analyze.groups import group_source
from tissuelens.report.stages import embed_models

# refuse group_source next to group_key before any job runs
for _dataset in DATASETS:
    try:
        group_source(config, _dataset)
    except InputError as exc:
        raise WorkflowError(str(exc)) from None



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


def removes_doublets(dataset):
    """preprocess.remove_doublets on a single-cell dataset (spatial data keeps every spot)."""
    on = step_settings(config, dataset, "preprocess")["remove_doublets"]
    return bool(on) and not config["datasets"][dataset].get("spatial", False)


def doublet_rate_arg(wildcards):
    """--doublet-rate of the jobs that preprocess ('' unless they remove doublets: the rate reruns nothing else)."""
    if not removes_doublets(wildcards.dataset):
        return ""
    return f"--doublet-rate {step_settings(config, wildcards.dataset, 'analyze')['doublets']['expected_rate']}"


def preprocess_doublets_arg(wildcards):
    """--doublet-rate and --seed of preprocess ('' unless it removes doublets: the seed reruns nothing else)."""
    rate = doublet_rate_arg(wildcards)
    return f"{rate} --seed {dataset_seed(wildcards)}" if rate else ""


def group_source_arg(wildcards):
    return group_source(config, wildcards.dataset) or ""


def domain_settings(wildcards):
    return json.dumps(step_settings(config, wildcards.dataset, "analyze")["domains"], sort_keys=True)


def analyze_settings(wildcards):
    """The analyze job's settings: everything but the domain settings and the group source (other rules')."""
    values = step_settings(config, wildcards.dataset, "analyze")
    return json.dumps({k: v for k, v in values.items() if k not in ("domains", "group_source")}, sort_keys=True)


REPO_DIR = WORKFLOW_DIR.parent


def markers_path(dataset):
    """The analyze stage's marker file (resolve_marker_file); None when annotation is off."""
    return resolve_marker_file(step_settings(config, dataset, "analyze")["markers"].get("path"))


def resolve_marker_file(path):
    """A relative marker path is looked up in the working directory, then in this repository (so the
    shipped config/markers/demo.csv serves a demo run from any directory)."""
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
