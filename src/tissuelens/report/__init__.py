"""The per-dataset HTML report and the tissue-blind narrative.

One module per report section, each a function `section(ctx) -> Section` that reads its stage's files
and returns HTML (figures embedded as base64 PNG, so the page opens offline and can be mailed):

* `dataset`: source, QC filters, counts per group, the tissue image with spots;
* `analyze`: where the groups came from, domain and cell-type maps, annotation confidence, marker dot plot,
  neighbourhood enrichment, spatially variable genes, cross-stage agreement, doublets (single-cell data);
* `factorize`: PNMF-GP variant comparison, factors of the best model, ELBO curves, top genes, groups;
* `embed`: UMAP per model by group and leiden cluster, embedding metrics, Loki text-image agreement;
* `sae`: SAE metrics, the most interpretable features, feature-factor correlations, dashboard link;
* `narrative`: the tissue-blind prompt (and the model's text when a checkpoint ran);
* `provenance`: effective settings, package versions, checkpoints, untrained-weight notes.

Support modules: `html` (page, tables, figures), `readers` (stage files -> objects, one-line errors),
`stages` (which stage outputs a dataset has, from tissuelens.plan), `build` (assemble the page),
`leakage` (the tissue-blind checker), `prompt` (aggregated metrics -> prompt), `medgemma` (image
letterbox and the image-text-to-text pipeline).

Adding a stage's section: write `report/<stage>.py` with `section(ctx)`, add it to `build.SECTIONS`,
and list its files in `stages.UNIT_FILES` / `STAGE_FILES` (the analyze stage: `ANALYZE_FILES`).
"""
