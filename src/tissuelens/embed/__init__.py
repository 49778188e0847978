"""Foundation-model embeddings: tokenizers, extraction, activations for SAEs, perturbation, metrics.

Model-agnostic parts: `activations` (the on-disk token-activation contract) and `metrics`.
Geneformer: `geneformer_tokenizer`, `geneformer_extract`, `geneformer_perturb` (+ `perturb_stats`), and the pipeline
functions in `geneformer` that the scripts call.
"""
