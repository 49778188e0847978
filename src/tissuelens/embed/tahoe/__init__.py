"""Tahoe-x1: cell embeddings and per-layer token activations.

* `prepare`: the checkpoint's vocabulary, gene mapping and tokenised, binned cells (no model needed);
* `encode`: the model call, only where tahoe-x1 imports (and which attention this machine supports);
* `run`: what embed_tahoe.py calls (`embed_dataset`).

Runs in the Tahoe stack (workflow/envs/tahoe*.yaml): imports only what that stack holds.
"""
