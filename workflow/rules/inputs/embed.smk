# Input functions and params of the rules in ../embed.smk, which includes this file (snakemake --lint wants
# functions and rules in separate files).

from tissuelens.plan import LOKI_TASKS

ENVS = WORKFLOW_DIR / "envs"
# download_model's env per kind where it is not workflow/envs/<kind>.yaml: fetching or building a Tahoe model
# needs no flash-attn, so it uses the Tahoe stack that builds anywhere
MODEL_ENVS = {"tahoe": "tahoe_cpu.yaml"}
# keys of embed settings that only select jobs or belong to other kinds' rules (kept out of params)
EMBED_SELECTION_KEYS = ("models", "loki", "tahoe")


def model_config(wildcards):
    """The model's entry under models:, or an error naming the defined models."""
    if wildcards.model not in MODELS:
        raise WorkflowError(f"config: model '{wildcards.model}' is not defined under models: "
                            f"(defined: {', '.join(sorted(MODELS)) or 'none'})")
    return config["models"][wildcards.model]


def model_entry(wildcards):
    return as_param(model_config(wildcards))


def model_inputs(wildcards):
    """Files a model build reads: a random model's gene source (a dataset's preprocessed.h5ad, or a genes file)."""
    entry = model_config(wildcards)
    if entry["source"] != "random":
        return {}
    random = entry.get("random") or {}
    dataset = random.get("genes_from_dataset")
    if dataset is not None:
        if dataset not in DATASETS:
            raise WorkflowError(f"models.{wildcards.model}.random.genes_from_dataset: no dataset named '{dataset}'")
        return {"genes_h5ad": f"results/{dataset}/preprocessed.h5ad"}
    return {"genes_file": random["genes_file"]} if random.get("genes_file") else {}


def model_env(wildcards):
    """The conda env of the model's kind (workflow/envs/<kind>.yaml), absolute so it resolves from any rule file."""
    kind = model_config(wildcards)["kind"]
    env = ENVS / MODEL_ENVS.get(kind, f"{kind}.yaml")
    return str(env if env.exists() else ENVS / "geneformer.yaml")


def embed_settings(part):
    """Input function: the embed settings one Geneformer step reads (embed, perturb or metrics)."""
    drop = EMBED_SELECTION_KEYS + ("metrics",) + (("perturb",) if part == "embed" else ())

    def param(wildcards):
        values = settings(wildcards.dataset, "embed")
        return as_param({"metrics": values["metrics"]}) if part == "metrics" else as_param(values, drop)

    return param


def embed_targets(dataset):
    """Embeddings of the dataset's Loki and Tahoe models; embeddings, activations, metrics (and perturbation
    tables when asked for) of its Geneformer models."""
    plan = plan_of(dataset)
    base = f"results/{dataset}/embed"
    targets = [f"{base}/{m}/embeddings.h5ad" for kind in ("loki", "tahoe") for m in plan.of_kind(kind)]
    for m in plan.of_kind("geneformer"):
        targets += [f"{base}/{m}/embeddings.h5ad", f"{base}/{m}/embedding_metrics.json", f"{base}/{m}/activations"]
        if plan.perturb:
            targets.append(f"{base}/{m}/perturbation.tsv")
    return targets


def embed_kind_settings(kind):
    """Input function: the dataset's embed.<kind> settings as a JSON string param (the Loki tasks' own
    settings left out, so that changing them does not re-embed)."""

    def param(wildcards):
        return as_param(settings(wildcards.dataset, "embed").get(kind) or {}, LOKI_TASKS)

    return param
