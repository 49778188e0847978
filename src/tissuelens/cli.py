"""Shared command-line plumbing for workflow/scripts/*.py: settings parsing, one-line errors, and the
arguments that several scripts share (one parser each, so that the rules' commands name them one way).

Imported by the scripts of every stack (the Loki one is Python 3.9): no third-party import."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from tissuelens.errors import InputError


def settings_arg(text: str) -> dict:
    """Parse the JSON settings string a rule passes with `--settings`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--settings is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--settings must be a JSON object")
    return value


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a script's main; bad input becomes one `error:` line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def variant_parser(doc: str) -> argparse.ArgumentParser:
    """factorize.py's and analyze_factors.py's arguments: one PNMF-GP variant of a dataset and its model."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--h5ad", required=True, type=Path)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--settings", required=True, type=settings_arg)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--model", required=True, type=Path, help="the variant's model directory")
    parser.add_argument("--elbo", required=True, type=Path, help="its ELBO history CSV")
    return parser


def geneformer_parser(doc: str) -> argparse.ArgumentParser:
    """The inputs of embed_geneformer.py and perturb_geneformer.py; each adds its outputs."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--h5ad", required=True, help="preprocessed.h5ad (layers['counts'], var gene ids)")
    parser.add_argument("--checkpoint", required=True, help="resources/models/<model>/")
    parser.add_argument("--model", required=True)
    parser.add_argument("--settings", required=True, type=settings_arg, help="embed settings (JSON)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch and numba CPU threads")
    return parser


def loki_task_parser(doc: str, task: str) -> argparse.ArgumentParser:
    """What the four loki_<task>.py scripts share: the Loki embeddings in, the task's settings, its JSON summary out."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--embeddings", required=True, type=Path, help="the Loki embed rule's embeddings.h5ad")
    parser.add_argument("--settings", required=True, type=settings_arg, help=f"embed.loki.{task} settings as JSON")
    parser.add_argument("--summary", required=True, type=Path, help="the task's summary (JSON)")
    return parser
