# Input functions and params of the rules in ../sae.smk, which includes this file (snakemake --lint wants
# functions and rules in separate files).

# keys that only select jobs or inputs (kept out of the settings params so editing them reruns nothing)
SAE_SELECTION_KEYS = ("enabled", "models", "link_factors")
# keys read only by analyze_sae (kept out of train_sae's params)
SAE_ANALYSIS_KEYS = ("analysis_batch_size", "top_genes", "min_gene_tokens", "top_cells", "moran_neighbors",
                     "dashboard_features")


def sae_settings(part):
    """Input function: the sae settings one rule reads (part = train or analyze), as a JSON string param."""
    return settings_of("sae", SAE_SELECTION_KEYS + (SAE_ANALYSIS_KEYS if part == "train" else ()))


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
    variant = plan_of(wildcards.dataset).factor_link
    if variant is not None:
        inputs["factors"] = f"results/{wildcards.dataset}/factorize/{variant}/factors.npy"
    return inputs
