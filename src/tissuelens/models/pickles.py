"""A restricted unpickler for Geneformer's dictionary pickles.

The real `token_dictionary_*.pkl`, `gene_median_dictionary_*.pkl`, `ensembl_mapping_dict_*.pkl` and
`gene_name_id_dict_*.pkl` are plain dicts, but a pickle can run arbitrary code on load. We accept only
the builtin containers and scalars plus numpy's numeric scalar reconstruction (the V1 token dictionary
stores numpy int16 values), and reject every other global before it is imported or called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from tissuelens.errors import InputError

_NUMERIC_KINDS = "biuf"  # bool, int, uint, float


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or not isinstance(data, bytes):
        raise pickle.UnpicklingError("only numeric numpy scalars are allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec)
    if dtype.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not numeric")
    return np.dtype(spec, align, copy)


def _codecs_encode(text, encoding="utf-8"):
    # protocol-2 pickles spell bytes as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin1 byte strings are allowed")
    return text.encode("latin1")


_ALLOWED = {
    ("_codecs", "encode"): _codecs_encode,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # noqa: D401 - pickle hook
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed") from None


def _plain(value, path: str):
    if isinstance(value, np.generic) and value.dtype.kind in _NUMERIC_KINDS:
        return value.item()
    if isinstance(value, (str, bool, int, float)):
        return value
    raise InputError(f"{path}: dictionary holds a value of type {type(value).__name__} (only str/int/float allowed)")


def load_dict_pickle(path: str | Path) -> dict:
    """Load a pickled dict of str -> str/int/float; InputError for anything else (never executes code)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        obj = _RestrictedUnpickler(io.BytesIO(raw)).load()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise InputError(f"{path}: refused or unreadable pickle ({exc})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise InputError(f"{path}: dictionary key {key!r} is not a string")
        out[key] = _plain(value, str(path))
    return out


def save_dict_pickle(obj: dict, path: str | Path) -> None:
    """Write a plain dict the way Geneformer ships its dictionaries (pickle protocol 4)."""
    with open(path, "wb") as fh:
        pickle.dump(dict(obj), fh, protocol=4)
