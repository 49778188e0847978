"""Rule `analyze_factors`: a trained variant -> factors, loadings, metrics, enrichment and figures."""

import json
from pathlib import Path

from tissuelens import cli
from tissuelens.device import set_threads
from tissuelens.factorize.run import analyse_variant, complete_settings
from tissuelens.io import read_h5ad


def main(argv=None):
    parser = cli.variant_parser(__doc__)  # --model and --elbo: the factorize rule's outputs
    parser.add_argument("--outdir", required=True, type=Path)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    settings = complete_settings(args.settings, args.seed)
    metrics = analyse_variant(read_h5ad(args.h5ad), args.variant, settings, args.model, args.elbo, args.outdir,
                              str(args.h5ad))
    print(json.dumps({k: metrics[k] for k in ("variant", "train_deviance", "val_deviance", "moran_i")}, indent=2))


if __name__ == "__main__":
    cli.run(main)
