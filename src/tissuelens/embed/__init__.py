"""The embed stage: foundation-model embeddings of every cell or spot, and token activations for the SAE stage.

One package per model, each with `run.py` = what its workflow/scripts/ entry calls (as in analyze/ and
factorize/):

* `geneformer` (rank-value gene tokens; `embed_geneformer.py`, `perturb_geneformer.py`);
* `loki` (Loki/OmiCLIP gene sentences and H&E patches, CLIP-style; `embed_loki.py` and the Loki task
  scripts `loki_annotate.py`, `loki_retrieve.py`, `loki_predex.py`, `loki_decompose.py`);
* `tahoe` (Tahoe-x1; `embed_tahoe.py`).

Shared by every model: `activations` (the on-disk token-activation contract the SAE stage reads) and `metrics`
(label, spatial and run-to-run quality of an embedding; `embedding_metrics.py`).

The Loki and Tahoe scripts run in their own stacks (Python 3.9 / the Tahoe venv): these packages import
nothing at package level, and heavy imports happen inside functions.
"""
