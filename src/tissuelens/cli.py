"""Shared command-line plumbing for workflow/scripts/*.py: settings parsing and one-line errors."""

from __future__ import annotations

import argparse
import json
import logging
import sys
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
