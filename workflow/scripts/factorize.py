"""Rule `factorize`: preprocessed.h5ad -> results/{dataset}/factorize/{variant}/model/ and elbo.csv."""

import argparse
import json
from pathlib import Path

from tissuelens import cli
from tissuelens.factorize.run import complete_settings, train_variant
from tissuelens.io import read_h5ad


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--h5ad", required=True, type=Path)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--settings", required=True, type=cli.settings_arg)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--model", required=True, type=Path, help="output model directory")
    parser.add_argument("--elbo", required=True, type=Path, help="output ELBO history CSV")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = complete_settings(args.settings, args.seed)
    training = train_variant(read_h5ad(args.h5ad), args.variant, settings, args.model, args.elbo, str(args.h5ad))
    print(json.dumps(training, indent=2))


if __name__ == "__main__":
    cli.run(main)
