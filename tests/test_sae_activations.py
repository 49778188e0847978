"""Activation exports: validation, and the shuffled minibatch stream the SAE trainer consumes."""

import json

import numpy as np
import pandas as pd
import pytest

from tissuelens.errors import InputError
from tissuelens.sae.activations import (
    ShuffledBatches,
    epoch_batches,
    gather,
    open_activations,
    sequential_batches,
    split_rows,
)
from tissuelens.sae.synthetic import write_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    directory = tmp_path_factory.mktemp("acts") / "activations"
    write_export(directory, n_side=6, n_genes=12, tokens_per_cell=8, d_model=16, layers=(0, 2))
    return directory


def test_open_validates_and_skips_special_tokens(export):
    acts = open_activations(export)
    assert acts.layer == 2  # -1 = deepest exported layer
    assert acts.array.dtype == np.float16 and isinstance(acts.array, np.memmap)
    assert acts.d_in == 16 and acts.array.shape[0] == len(acts.index) == 36 * 9
    assert not acts.index.loc[acts.rows, "gene"].str.startswith("<").any()
    assert acts.rows.size == 36 * 8
    with_special = open_activations(export, layer=0, include_special_tokens=True)
    assert with_special.layer == 0 and with_special.rows.size == 36 * 9


def test_every_token_once_per_epoch_in_the_endless_stream(export):
    acts = open_activations(export)
    rows = acts.rows
    stream = ShuffledBatches(acts.array, rows, batch_size=50, seed=3)
    n_batches = (3 * rows.size) // 50
    seen = np.concatenate([b for _, b in zip(range(n_batches), stream.row_batches())])
    for epoch in range(2):  # the stream is epochs laid end to end: each slice of len(rows) is a permutation
        part = seen[epoch * rows.size : (epoch + 1) * rows.size]
        assert np.array_equal(np.sort(part), rows)
    # the data batches follow the same order and hold exactly those rows' activations
    stream = ShuffledBatches(acts.array, rows, batch_size=50, seed=3)
    first = next(stream)
    assert first.shape == (50, 16) and str(first.dtype) == "torch.float32"
    np.testing.assert_array_equal(first.numpy(), acts.array[seen[:50]].astype(np.float32))


def test_one_epoch_numpy_batches_cover_rows_once(export):
    acts = open_activations(export)
    chunks = list(epoch_batches(acts.array, acts.rows, batch_size=64, seed=1))
    got = np.concatenate([r for r, _ in chunks])
    assert np.array_equal(np.sort(got), acts.rows) and got.size == acts.rows.size
    assert [r.size for r, _ in chunks] == [64] * 4 + [acts.rows.size - 256]  # 288 rows: the last batch is short
    for r, x in chunks:
        np.testing.assert_array_equal(x, acts.array[r].astype(np.float32))


def test_shuffle_is_fixed_by_seed(export):
    acts = open_activations(export)

    def order(seed):
        return ShuffledBatches(acts.array, acts.rows, 32, seed).epoch_order(0)

    assert np.array_equal(order(0), order(0))
    assert not np.array_equal(order(0), order(1))
    assert not np.array_equal(order(0), np.sort(order(0)))  # actually shuffled
    s = ShuffledBatches(acts.array, acts.rows, 32, 0)
    assert not np.array_equal(s.epoch_order(0), s.epoch_order(1))  # a new order each epoch


def test_gather_and_sequential_batches(export):
    acts = open_activations(export)
    rows = np.array([5, 1, 300, 7])
    np.testing.assert_array_equal(gather(acts.array, rows), acts.array[rows].astype(np.float32))
    got = np.concatenate([r for r, _ in sequential_batches(acts.array, acts.rows[::-1], 100)])
    assert np.array_equal(got, acts.rows)


def test_split_rows_holds_out_at_most_a_fifth():
    rows = np.arange(100)
    train, evaluation = split_rows(rows, 50, seed=0)
    assert evaluation.size == 20 and train.size == 80
    assert np.array_equal(np.sort(np.concatenate([train, evaluation])), rows)
    assert np.array_equal(split_rows(rows, 50, seed=0)[1], evaluation)


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_dir", "activations directory does not exist"),
        ("no_layer_file", "layer_2.npy: missing"),
        ("no_index", "index.parquet: missing"),
        ("index_rows", "rows but layer_2.npy holds"),
        ("width", "does not match d_model"),
        ("nan", "non-finite activation (NaN or inf) at token row 17"),
        ("bad_layer", "has no exported layer 5"),
    ],
)
def test_bad_exports_raise_one_clear_error(export, tmp_path, breakage, message):
    d = tmp_path / "activations"
    layer = -1
    if breakage == "no_dir":
        pass
    else:
        _copy(export, d)
    if breakage == "no_layer_file":
        (d / "layer_2.npy").unlink()
    elif breakage == "no_index":
        (d / "index.parquet").unlink()
    elif breakage == "index_rows":
        pd.read_parquet(d / "index.parquet").iloc[:-3].to_parquet(d / "index.parquet")
    elif breakage == "width":
        meta = json.loads((d / "meta.json").read_text())
        meta["d_model"] = 17
        (d / "meta.json").write_text(json.dumps(meta))
    elif breakage == "nan":
        x = np.load(d / "layer_2.npy")
        x[17, 3] = np.nan
        np.save(d / "layer_2.npy", x)
    elif breakage == "bad_layer":
        layer = 5
    with pytest.raises(InputError) as err:
        open_activations(d, layer=layer)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
