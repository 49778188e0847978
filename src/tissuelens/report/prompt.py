"""Tissue-blind prompt from aggregated metrics only.

What goes in: orders of magnitude of spots and genes, the share kept by QC, group proportions under
letters (A, B, ...), the analyze stage's domain counts and shares, annotation certainty, spatial statistics,
partition agreement and doublet rate (no cell-type names), PNMF-GP model comparison, per-factor spatial autocorrelation and the group each
factor is enriched in, embedding and SAE summary metrics. What never goes in: tissue or organ words,
cell-type names, gene symbols, group labels, raw counts, the dataset name or any sample id (the sample
is named by a hash). Each data line is checked by `leakage.check_prompt`; a line that would leak is
withheld (counted in the result), and the whole prompt is checked again before it is returned.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np

from tissuelens.report import leakage, readers

COUNT_KEY = re.compile(r"(^|[._])(n|num)_|count|tokens|cells|spots|seconds", re.IGNORECASE)

SYSTEM = (
    "You are an expert in histopathology and spatial transcriptomics. You receive anonymised, aggregated results "
    "of an analysis of one stained sample (one section or several) and an image of it. The origin of the sample, "
    "gene names and group labels are withheld on purpose. Reason only from the image and the numbers given; do "
    "not invent numbers."
)
TASK = (
    "Task: write a short summary for a biologist. (1) Describe what the image shows: architecture, compartments, "
    "staining patterns. (2) Relate it to the spatial structure in the metrics: how many spatially coherent "
    "expression programmes there are, how strongly they are autocorrelated, and how they align with the "
    "annotated groups. (3) Comment on data and model quality. (4) Propose hypotheses about the kind of sample "
    "and its compartments, with your confidence and the evidence that would confirm them."
)


def sample_id(dataset: str, entry: dict | None = None) -> str:
    """A stable pseudonym: 'sample-' + 10 letters from sha256 of the dataset name and source."""
    entry = entry or {}
    key = "|".join([dataset] + [str(entry.get(k, "")) for k in ("source", "name", "path", "url")])
    digest = hashlib.sha256(key.encode()).digest()
    return "sample-" + "".join(chr(ord("a") + b % 26) for b in digest[:10])


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) if i < 26 else f"G{i + 1}" for i in range(n)]


def num(x) -> str:
    """A metric for the prompt: 3 significant digits, scientific from 100 up (never a raw integer)."""
    x = float(x)
    if not math.isfinite(x):
        return "not available"
    if abs(x) >= 100:
        return f"{x:.2e}"
    return f"{x:.3g}"


def magnitude(n: int) -> str:
    return f"10^{int(round(math.log10(max(n, 1))))}" if n >= 1 else "none"


def quantity(n: int) -> str:
    """A small count as it is (sections), a large one as its order of magnitude (a raw count would leak)."""
    return str(n) if n < 100 else f"about {magnitude(n)}"


def pretty(key: str) -> str:
    return re.sub(r"[_.]+", " ", str(key)).strip()


def identifiers_of(dataset: str, entry: dict, adata) -> set[str]:
    """Everything that names the sample: dataset, library ids, source names, barcodes, group labels, gene ids."""
    ids = {dataset}
    for key in ("name", "path", "url"):
        if entry.get(key):
            value = str(entry[key])
            ids.add(value)
            p = Path(value.rstrip("/"))
            ids.update({p.name, p.stem, p.stem.split(".")[0]})
    spatial = adata.uns.get("spatial", {}) if hasattr(adata, "uns") else {}
    if isinstance(spatial, dict):
        ids.update(str(k) for k in spatial)
    origin = adata.uns.get("tissuelens", {}) if hasattr(adata, "uns") else {}
    for key in ("dataset", "origin"):
        if origin.get(key):
            ids.add(str(origin[key]))
    ids.update(adata.obs_names.astype(str))
    if "group" in adata.obs:
        ids.update(str(c) for c in adata.obs["group"].astype("category").cat.categories)
    if "gene_ids" in adata.var:
        ids.update(adata.var["gene_ids"].astype(str))
    return {i for i in ids if i and not re.fullmatch(r"[\d.]+", i)}


def genes_of(adata) -> set[str]:
    return {g for g in adata.var_names.astype(str) if not re.fullmatch(r"[\d.]+", g)}


class PromptBuilder:
    def __init__(self, identifiers=(), genes=()):
        self.identifiers = set(identifiers)
        self.genes = set(genes)
        self.lines: list[str] = []
        self.withheld: list[str] = []  # why each withheld line leaked (the line itself is not kept)

    def add(self, line: str) -> None:
        findings = leakage.check_prompt(line, self.identifiers, self.genes)
        if findings:
            self.withheld.append(", ".join(f.kind for f in findings))
        else:
            self.lines.append(line)


PARTITIONS = {"expr_leiden": "expression clusters", "spatial_domain": "spatial domains", "labels": "annotated groups"}


def partition_name(name: str) -> str:
    """agreement.csv's partition names in words (factors_<variant>, leiden_<model>)."""
    if name.startswith("factors_"):
        return f"dominant factor of {name[len('factors_'):]}"
    if name.startswith("leiden_"):
        return f"clusters of the {name[len('leiden_'):]} embedding"
    return PARTITIONS.get(name, name)


def _group_lines(b: PromptBuilder, qc: dict, adata) -> dict:
    counts = qc.get("groups") or (adata.obs["group"].value_counts(sort=False).to_dict() if "group" in adata.obs else {})
    if not counts:
        b.add("- No annotated groups.")
        return {}
    names = list(counts)
    mapping = dict(zip(names, letters(len(names))))
    total = sum(counts.values()) or 1
    shares = ", ".join(f"{mapping[g]} {100 * counts[g] / total:.1f}%" for g in names)
    source = qc.get("group_source")
    what = (f"Groups: {len(names)} unsupervised {PARTITIONS[source]} (the sample has no annotation; labels "
            "replaced by letters)" if source in ("spatial_domain", "expr_leiden")
            else f"Annotated groups: {len(names)} (labels replaced by letters)")
    b.add(f"- {what}; share of spots: {shares}.")
    return mapping


def _factor_lines(b: PromptBuilder, plan: dict, adata, mapping: dict) -> None:
    from tissuelens.report.factorize import _comparison

    entry = plan.get("factorize", {})
    if entry.get("status") != "built":
        b.add("- Spatial factorisation: not run.")
        return
    units = entry["units"]
    metrics = {v: readers.read_json(f["metrics.json"]) for v, f in units.items() if "metrics.json" in f}
    rows, best = _comparison(metrics)
    b.add("- Spatial factorisation (Poisson non-negative matrix factorisation with Gaussian-process priors); "
          "variants compared:")
    for r in rows:
        vals = "; ".join(f"{k} {num(v)}" for k, v in r.items() if k not in ("variant", "iterations") and v is not None)
        b.add(f"  - {r['variant']}: {vals or 'no metrics'}.")
    best = best or next(iter(units), None)
    if best is None:
        return
    b.add(f"  - Best variant by held-out deviance: {best}.")
    raw = metrics.get(best, {})
    moran = next((v for k, v in raw.items() if "moran" in k.lower() and isinstance(v, list)), None)
    if moran:
        b.add(f"  - Moran's I of each factor of {best}: " + ", ".join(num(x) for x in moran) + ".")
    files = units.get(best, {})
    if "factors.npy" in files and "group" in adata.obs and mapping:
        f = readers.read_npy(files["factors.npy"], ndim=2)
        groups = adata.obs["group"].astype("category")
        if f.shape[0] == len(groups):
            codes = groups.cat.codes.to_numpy()
            cats = list(groups.cat.categories)
            overall = f.mean(axis=0) + 1e-9
            parts = []
            for k in range(f.shape[1]):
                means = np.array([f[codes == g, k].mean() if (codes == g).any() else 0.0 for g in range(len(cats))])
                lfc = np.log2((means + 1e-9) / overall[k])
                g = int(np.argmax(lfc))
                parts.append(f"factor {k + 1} highest in group {mapping.get(cats[g], '?')} (log2 enrichment {num(lfc[g])})")
            b.add("  - Factor-group association: " + "; ".join(parts) + ".")


def _domain_lines(b: PromptBuilder, plan: dict, qc: dict) -> None:
    """Unsupervised domains, marker annotation (no cell-type names), spatial statistics, agreement, doublets."""
    entry = plan.get("analyze", {})
    if entry.get("status") != "built":
        b.add("- Unsupervised domains and marker annotation: not run.")
        return
    files = entry["files"]
    summary = readers.read_json(files["summary.json"]) if "summary.json" in files else {}
    if "markers_used.csv" in files:  # cell-type names count as identifiers: a line naming one is withheld
        net = readers.read_csv(files["markers_used.csv"])
        b.identifiers |= set(net["source"].astype(str)) if "source" in net else set()
    if "domains.parquet" in files:
        domains = readers.read_parquet(files["domains.parquet"])
        for col, what in (("spatial_domain", "Spatial domains (Leiden on neighbour-smoothed expression)"),
                          ("expr_leiden", "Expression clusters (Leiden)")):
            values = domains[col].dropna().astype(str) if col in domains else []
            if len(values):
                shares = values.value_counts(normalize=True)
                b.add(f"- {what}: {len(shares)}; share of spots, largest first: "
                      + ", ".join(f"{100 * v:.1f}%" for v in shares) + ".")
    ann = summary.get("annotation")
    if ann:
        line = f"- Marker-based annotation (cell-type names withheld): {ann['n_types_called']} types called"
        if ann.get("mean_confidence") is not None:
            line += f"; mean confidence of the call {num(ann['mean_confidence'])} (1 - its adjusted p-value)"
        if ann.get("mean_majority_share") is not None:
            line += f"; mean share of each domain's most frequent type {num(ann['mean_majority_share'])}"
        b.add(line + ".")
    moran = summary.get("moran")
    if moran and "spatially_variable_genes.csv" in files:
        n = moran.get("n_genes_tested") or len(readers.read_csv(files["spatially_variable_genes.csv"]))
        b.add(f"- Spatially variable genes (Moran's I): a share of "
              f"{num(moran['n_significant_fdr_0.05'] / max(n, 1))} of the genes is significant at FDR 0.05; highest I "
              f"{num(moran['top_I'])}, median {num(moran['median_top_I'])}.")
    nhood = summary.get("nhood_enrichment")
    if nhood:
        b.add(f"- Neighbourhood enrichment of the {PARTITIONS.get(nhood['key'], nhood['key'])}: mean z-score "
              f"with itself {num(nhood['mean_self_zscore'])}, between different ones {num(nhood['mean_other_zscore'])}.")
    if "agreement.csv" in files:
        table = readers.read_csv(files["agreement.csv"])
        pairs = [f"{partition_name(r.a)} vs {partition_name(r.b)} {num(r.ari)} / {num(r.nmi)}"
                 for r in table.itertuples()]
        if pairs:
            b.add("- Agreement between partitions of the spots (ARI / NMI): " + "; ".join(pairs) + ".")
    doublets = qc.get("doublets") or summary.get("doublets")
    if doublets and "rate" in doublets:
        kept = "removed before analysis" if qc.get("doublets") or doublets.get("removed") else "kept"
        b.add(f"- Doublets (Scrublet): rate {100 * doublets['rate']:.2f}% of cells, {kept}.")


def _embed_lines(b: PromptBuilder, plan: dict) -> None:
    entry = plan.get("embed", {})
    if entry.get("status") != "built":
        b.add("- Foundation-model embeddings: not run.")
        return
    for model, files in entry["units"].items():
        if "embedding_metrics.json" in files:
            flat = readers.scalars(readers.read_json(files["embedding_metrics.json"]))
        elif "metrics.json" in files:  # a Loki model: its rule's quality block, text-image cosine, retrieval
            m = readers.read_json(files["metrics.json"])
            flat = readers.scalars({k: m[k] for k in ("quality", "text_image_cosine", "retrieval") if m.get(k)})
        else:
            continue
        vals = [f"{pretty(k)} {num(v)}" for k, v in flat.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not COUNT_KEY.search(k)]
        if vals:
            b.add(f"- Embedding {model}: " + "; ".join(vals[:16]) + ".")


def _sae_lines(b: PromptBuilder, plan: dict) -> None:
    entry = plan.get("sae", {})
    if entry.get("status") != "built":
        b.add("- Sparse-autoencoder features: not run.")
        return
    for model, files in entry["units"].items():
        vals = []
        if "metrics.json" in files:
            m = readers.read_json(files["metrics.json"])
            for key, label in (("l0", "mean active features per token"), ("fraction_variance_explained",
                               "fraction of variance explained"), ("dead_fraction", "dead fraction")):
                if isinstance(m.get(key), (int, float)):
                    vals.append(f"{label} {num(m[key])}")
        if "features.parquet" in files:
            feat = readers.read_parquet(files["features.parquet"])
            live = feat[~feat["dead"].astype(bool)] if "dead" in feat else feat
            if len(live):
                if "moran_i" in live:
                    vals.append(f"share of live features with Moran's I above 0.3: {num((live['moran_i'] > 0.3).mean())}")
                if "top_group_auroc" in live:
                    vals.append(f"share with group AUROC above 0.8: {num((live['top_group_auroc'] > 0.8).mean())}")
                if "best_factor_r" in live:
                    vals.append(f"median best factor correlation {num(live['best_factor_r'].abs().median())}")
        if vals:
            b.add(f"- Sparse autoencoder on {model}: " + "; ".join(vals) + ".")


def build_prompt(dataset: str, entry: dict, qc: dict, adata, plan: dict, picture: str | None) -> dict:
    """{'system', 'prompt', 'sample_id', 'withheld'}; raises InputError if the final prompt leaks.
    `picture`: the sentence on the attached image (`attached_picture`), None without one."""
    from tissuelens.sections import section_labels

    b = PromptBuilder(identifiers_of(dataset, entry, adata), genes_of(adata))
    sid = sample_id(dataset, entry)
    sections = section_labels(adata)
    n_sections = len(sections.categories) if sections is not None else 1
    where = ("one section." if n_sections == 1 else f"{quantity(n_sections)} sections, analysed apart (no spatial "
             "statistic links cells of different sections).")
    b.add(f"Sample {sid}: spatially resolved gene expression measured on spots of {where}")
    if picture:
        b.add(picture + " (resized and padded to a square).")
    b.add("Aggregated measurements:")
    n_raw, n_cells = qc.get("n_cells_raw"), qc.get("n_cells", adata.n_obs)
    g_raw, n_genes = qc.get("n_genes_raw"), qc.get("n_genes", adata.n_vars)
    line = f"- Scale: on the order of {magnitude(n_cells)} spots and {magnitude(n_genes)} genes after quality control"
    if n_raw and g_raw:
        line += f"; quality filters kept {100 * n_cells / n_raw:.1f}% of spots and {100 * n_genes / g_raw:.1f}% of genes"
    b.add(line + ".")
    mapping = _group_lines(b, qc, adata)
    _domain_lines(b, plan, qc)
    _factor_lines(b, plan, adata, mapping)
    _embed_lines(b, plan)
    _sae_lines(b, plan)
    b.add("")
    b.add(TASK)
    prompt = "\n".join(b.lines)
    leakage.assert_tissue_blind(SYSTEM + "\n" + prompt, b.identifiers, b.genes, where="narrative prompt")
    return {"system": SYSTEM, "prompt": prompt, "sample_id": sid, "withheld": b.withheld}


def attached_picture(adata):
    """(picture, the prompt's sentence on it), or (None, None) without an image. With several sections
    (tissuelens.sections): each section's own image side by side, left to right in section order, else the one
    image of the slide they share; several images that are not one per section are not attached."""
    from tissuelens.report.medgemma import side_by_side
    from tissuelens.report.plots import section_images, tissue_image
    from tissuelens.sections import section_labels

    sections = section_labels(adata)
    if sections is None:
        found = tissue_image(adata)
        return (found[0], "An image of the stained section is attached") if found else (None, None)
    images = section_images(adata, sections)
    if images:
        return side_by_side(images), f"Images of the {quantity(len(images))} stained sections are attached side by side, left to right"
    spatial = adata.uns.get("spatial")
    found = tissue_image(adata) if isinstance(spatial, dict) and len(spatial) == 1 else None
    return (found[0], "An image of the stained slide that holds the sections is attached") if found else (None, None)


def make_narrative(dataset: str, entry: dict, qc: dict, adata, plan: dict, settings: dict, narrator=None) -> dict:
    """The narrative record: prompt (tissue-blind), letterboxed image, and the model's text when a
    checkpoint is configured (or a `narrator` callable is given, as tests do)."""
    import base64
    import io

    from tissuelens.report.medgemma import DEFAULT_SIZE, Narrator, checkpoint_info, letterbox

    picture, sentence = attached_picture(adata)
    record = build_prompt(dataset, entry, qc, adata, plan, sentence)
    checkpoint = settings.get("checkpoint")
    model_info = None
    if narrator is None and checkpoint:
        narrator = Narrator(checkpoint, settings.get("device", "auto"), settings.get("dtype", "auto"))
    if narrator is not None:
        model_info = getattr(narrator, "info", None) or (checkpoint_info(checkpoint) if checkpoint else {"name": "custom"})
    size = int(getattr(narrator, "input_size", None) or settings.get("image_size", DEFAULT_SIZE))
    image = None
    record["image"] = None
    if picture is not None:
        image = letterbox(picture, size)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        record["image"] = {"size": [size, size], "original_size": list(np.asarray(picture).shape[:2]),
                           "png_base64": base64.b64encode(buf.getvalue()).decode("ascii")}
    record["mode"] = "model" if narrator is not None else "prompt"
    record["model"] = model_info
    record["text"] = None
    if narrator is not None:
        record["text"] = narrator(record["system"], record["prompt"], image, int(settings.get("max_new_tokens", 512)))
    record["settings"] = settings
    return record
