"""Shared test helpers (importable as `helpers.<module>`: pytest puts tests/ on sys.path; benches add it).

workflow             the one Snakemake runner: snakemake(), plan(), planned_jobs(), list_rules(), rule_info(), copy_run()
configs              the config builders: demo_config(), scaleout_config(), size_config(), write_config()
factorize_fixtures   the demo AnnData and factorize settings for the factorisation unit tests
geneformer_fixtures  a tiny random Geneformer checkpoint, a small AnnData, embed settings
report_fixtures      a preprocessed.h5ad and every stage's output files for report unit tests
platforms, tenx      writers of each platform's on-disk layout (10x, Visium HD, Xenium, MERSCOPE, CosMx, SpatialData)
stacks               builds a rule's software stack (workflow/envs/*.yaml) as a cached venv and runs in it
tahoe_probe          a script run inside the Tahoe stack by tests/test_tahoe_model.py (imports none of these)
slurm_cluster        a one-node SLURM on localhost for tests/test_slurm.py (also runnable by hand)

Nothing is imported here, so a module runs alone (tahoe_probe under the Tahoe stack's Python).
"""
