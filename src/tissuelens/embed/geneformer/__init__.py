"""Geneformer: cell embeddings, token activations and in-silico perturbation from rank-value gene tokens.

* `tokenizer`: Geneformer's rank-value encoding of counts (median-normalised, ranked, special tokens);
* `extract`: the encoder call, pooling and batched extraction of embeddings and hidden states;
* `perturb`: in-silico perturbation (delete, overexpress, inhibit, activate) and its cosine shifts;
* `perturb_stats`: statistics over the perturbation results (InSilicoPerturberStats' definitions);
* `run`: what the scripts call (`run_embed` for embed_geneformer.py, `run_perturb` for perturb_geneformer.py).
"""
