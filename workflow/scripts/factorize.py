"""Rule `factorize`: preprocessed.h5ad -> results/{dataset}/factorize/{variant}/model/ and elbo.csv."""

import json

from tissuelens import cli
from tissuelens.device import set_threads
from tissuelens.factorize.run import complete_settings, train_variant
from tissuelens.io import read_h5ad


def main(argv=None):
    args = cli.variant_parser(__doc__).parse_args(argv)  # --model and --elbo are this rule's outputs
    set_threads(args.threads)
    settings = complete_settings(args.settings, args.seed)
    training = train_variant(read_h5ad(args.h5ad), args.variant, settings, args.model, args.elbo, str(args.h5ad))
    print(json.dumps(training, indent=2))


if __name__ == "__main__":
    cli.run(main)
