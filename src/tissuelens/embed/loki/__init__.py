"""Loki/OmiCLIP: gene-sentence text and H&E patch image embeddings of spots, and Loki's tasks on them.

* `sentences`: each spot as the space-joined symbols of its top genes (Loki's `generate_gene_df`);
* `patches`: the H&E image of each spot's section and its square patch around the spot;
* `encode`: the text and image encoders, BPE tokens per gene, the token index of the activations;
* `agreement`: per-spot text-image cosine and neighbour retrieval of the embed step;
* `inputs`: what the task rules read (embeddings, labels, markers, curated sentences, bulk samples);
* `tasks`: the math of annotation, retrieval and PredEx;
* `decompose`: Tangram cell-type decomposition (Loki's `cell_type_decompose`);
* `run`: what the scripts call (`embed_spots`, `quality_metrics` for embed_loki.py; `run_annotate`,
  `run_retrieve`, `run_predex`, `run_decompose` for the task scripts).

Imported by the Loki stack (workflow/envs/loki.yaml, Python 3.9, numpy 1.25): valid Python 3.9, and only
that stack's packages (tests/test_loki_model.py checks the import closure).
"""
