"""PNMF-GP spatial factorisation: Poisson NMF with independent, SVGP, MGGP-SVGP, LCGP or MGGP-LCGP priors.

Modules: data (inputs and checks), kernels, pnmf / svgp / lcgp (priors), elbo, model, train, store,
metrics, analysis, plots, run (the rule-level steps called by workflow/scripts/).
"""
