"""Read stage outputs for the report: a corrupt file is one InputError line naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tissuelens.errors import InputError, why
from tissuelens.io import read_json  # noqa: F401  (re-exported: the report reads every stage's JSON through it)


def read_csv(path, sep: str = ","):
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, sep=sep)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: corrupt CSV ({why(exc)})") from None
    return frame


def read_parquet(path):
    import pandas as pd

    path = Path(path)
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Exception as exc:  # pyarrow raises several types (ArrowInvalid, OSError) for damaged files
        raise InputError(f"{path}: corrupt parquet ({why(exc)})") from None


def read_npy(path, ndim: int | None = None):
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: corrupt .npy ({why(exc)})") from None
    if ndim is not None and array.ndim != ndim:
        raise InputError(f"{path}: expected a {ndim}-d array, found shape {array.shape}")
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        raise InputError(f"{path}: contains NaN or infinite values")
    return array


def scalars(mapping: dict, prefix: str = "") -> dict:
    """Flatten nested dicts to {dotted.key: scalar}; lists of numbers become their mean (key + ' (mean)')."""
    out = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            out[f"{name} (mean)"] = float(np.mean(value))
    return out
