"""download_model: fetch or build resources/models/<model>/ (a checkpoint in the model's own layout)."""

from __future__ import annotations

import argparse
import json
import logging

from tissuelens import cli
from tissuelens.models import fetch_model

log = logging.getLogger("download_model")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="model name (key under models:)")
    ap.add_argument("--entry", required=True, type=cli.settings_arg, help="the model's config entry as JSON")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--genes-h5ad", default=None, help="random source: preprocessed.h5ad giving the vocabulary")
    ap.add_argument("--cache-dir", default=None, help="Hugging Face cache (default: HF_HUB_CACHE / HF_HOME)")
    ap.add_argument("--offline", action="store_true", help="use only the local Hugging Face cache")
    args = ap.parse_args(argv)
    ckpt = fetch_model(args.model, args.entry, args.out, genes_h5ad=args.genes_h5ad, cache_dir=args.cache_dir, local_files_only=args.offline)
    log.info("%s: %s", args.model, json.dumps({k: v for k, v in ckpt.describe().items()}))


if __name__ == "__main__":
    cli.run(main)
