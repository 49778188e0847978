"""Sparse autoencoders (SAELens 6) on exported foundation-model activations.

Modules, in pipeline order:

* `activations`: open and validate an `embed/{model}/activations/` export; stream shuffled minibatches
  from the float16 memmap (every token once per epoch, order fixed by the seed).
* `train`: build a SAELens training SAE (TopK by default, standard L1 as option) and fit it with the
  SAELens `SAETrainer` fed by our iterator; save in SAELens' on-disk format.
* `metrics`: reconstruction and sparsity metrics on held-out tokens (L0, FVE, MSE, dead, dense).
* `features`: per-feature genes, cells, groups, spatial autocorrelation and factor correlations.
* `dashboard`: the self-contained HTML feature dashboard.
* `cell_activations`: `cell_activations.npz`, per-cell mean feature activations for the report.
* `run`: what the scripts call (`train` for train_sae.py, `analyze` for analyze_sae.py).

Support modules: `settings` (schema defaults and checks for scripts run by hand), `outputs` (several outputs
of one script written atomically together), `synthetic` (planted-feature exports for tests and benchmarks).

Heavy imports (torch, sae_lens, squidpy) happen inside functions, so bad input fails fast.
"""
