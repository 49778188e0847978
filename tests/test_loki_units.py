"""Loki units: gene sentences, patch geometry, token bookkeeping, agreement metrics (no model)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tissuelens.embed.loki import agreement, encode, patches
from tissuelens.embed.loki import sentences as gs
from tissuelens.errors import InputError


def test_filters_ties_and_order():
    symbols = ["A.1", "MT-CO1", "GAPDH", "B", "C", "D", "E"]
    x = np.array([[9, 9, 9, 1, 3, 3, 0]], dtype=float)  # C, D tie at 3: var order
    sent, idx, n_expr = gs.gene_sentences(x, symbols, ["GAPDH"], n_top=3)
    assert list(sent) == ["C D B"]
    assert idx.tolist() == [[4, 5, 3]] and n_expr.tolist() == [3]


def test_fewer_expressed_than_n_top_appends_zero_genes_in_var_order():
    symbols = [f"G{i}" for i in range(8)]
    x = sp.csr_matrix(np.array([[0, 0, 5, 0, 2, 0, 0, 0], [0] * 8], dtype=float))
    sent, _, n_expr = gs.gene_sentences(x, symbols, [], n_top=4)
    assert list(sent) == ["G2 G4 G0 G1", "G0 G1 G2 G3"]
    assert n_expr.tolist() == [2, 0]


def test_fewer_genes_than_n_top_uses_all():
    sent, idx, _ = gs.gene_sentences(np.array([[1.0, 2.0, 0.0]]), ["X", "Y", "Z"], [], n_top=50)
    assert list(sent) == ["Y X Z"] and idx.shape == (1, 3)


def test_vectorised_matches_per_spot_reference():
    rng = np.random.default_rng(3)
    for trial in range(25):
        n, g = int(rng.integers(1, 40)), int(rng.integers(3, 90))
        x = sp.random(n, g, density=float(rng.uniform(0.02, 0.9)), random_state=trial, format="csr")
        x.data = np.round(x.data * 4)  # many ties, explicit zeros
        symbols = [f"S{j}" for j in range(g)]
        symbols[0] = "RPL.3"
        symbols[1] = "HLA-A"
        n_top = int(rng.integers(1, 60))
        vec, _, _ = gs.gene_sentences(x, symbols, ["S5"], n_top)
        assert list(vec) == gs.sentences_per_spot(x, symbols, ["S5"], n_top)


def test_row_blocks_give_the_same_sentences(monkeypatch):
    """Large data is ranked in blocks of rows (bounded memory): blocks of 7 rows, dense and sparse input,
    give what one block gives."""
    x = sp.random(50, 30, density=0.4, random_state=4, format="csr")
    x.data = np.round(x.data * 3)
    symbols = [f"S{j}" for j in range(30)]
    whole = gs.gene_sentences(x, symbols, [], 10)
    monkeypatch.setattr(gs, "ROW_BLOCK", 7)  # blocks of 7 rows
    for inp in (x, x.toarray()):
        parts = gs.gene_sentences(inp, symbols, [], 10)
        assert list(parts[0]) == list(whole[0])
        np.testing.assert_array_equal(parts[1], whole[1])
        np.testing.assert_array_equal(parts[2], whole[2])


def test_shipped_housekeeping_list_and_csv():
    hk = gs.load_housekeeping()
    assert len(hk) == 394 and {"GAPDH", "ACTB", "B2M", "RPL13A"} <= set(hk)
    header = gs.HOUSEKEEPING_FILE.read_text().splitlines()[:12]
    assert any("HSIAO_HOUSEKEEPING_GENES" in ln for ln in header) and any("Loki" in ln for ln in header)


def test_housekeeping_csv_layout(tmp_path):
    f = tmp_path / "hk.csv"
    f.write_text(",genesymbol\n1,ACTB\n2,GAPDH\n")
    assert gs.load_housekeeping(f) == ["ACTB", "GAPDH"]
    with pytest.raises(InputError, match="not found"):
        gs.load_housekeeping(tmp_path / "missing.txt")


def test_no_symbols_and_negative_values_fail():
    with pytest.raises(InputError, match="not gene symbols"):
        gs.check_symbols([f"ENSG{i:011d}" for i in range(5)], "x.h5ad")
    with pytest.raises(InputError, match="negative"):
        gs.gene_sentences(np.array([[-1.0, 2.0]]), ["A", "B"], [])
    with pytest.raises(InputError, match="no gene is left"):
        gs.gene_sentences(np.array([[1.0]]), ["MT-CO1"], [])


def test_patch_geometry_as_loki_segment_patches():
    """Loki: x1 = round(xcenter - width / 2) (Python round, half to even) on hires pixel coordinates."""
    xy = np.array([[100.0, 200.0], [0.0, 0.0], [21.0, 43.0]])
    x0, y0, centre = patches.patch_boxes(xy, scale=0.5, side=20)
    assert centre.tolist() == [[50.0, 100.0], [0.0, 0.0], [10.5, 21.5]]
    loki_x1 = [round(c[0] - 20 / 2) for c in centre]  # transcription of segment_patches
    loki_y1 = [round(c[1] - 20 / 2) for c in centre]
    assert x0.tolist() == loki_x1 == [40, -10, 0] and y0.tolist() == loki_y1 == [90, -10, 12]
    assert patches.patch_boxes(xy[:1], scale=0.5, side=7)[0].tolist() == [round(50 - 3.5)]


def test_patch_side_px_or_um():
    im = patches.SpotImage(np.zeros((10, 10, 3), np.uint8), scale=0.2, spot_diameter_fullres=110.0, library="l", key="hires")
    assert patches.patch_side(im) == 20  # Loki's default
    assert patches.patch_side(im, patch_px=3) == 3  # small patches are kept: the model's transform resizes
    assert patches.patch_side(im, patch_um=55.0) == 22  # 55 um = one spot = 110 px full-res = 22 px hires
    assert patches.patch_side(im, patch_um=0.01) == 1


def test_edge_patches_are_flagged():
    x0, y0 = np.array([0, -1, 5, 5]), np.array([0, 0, 0, 6])
    assert patches.patch_padded(x0, y0, 5, (10, 10, 3)).tolist() == [False, True, False, True]


def test_crop_content_and_white_padding():
    img = np.zeros((20, 30, 3), dtype=np.uint8)
    img[..., 0] = np.arange(30)[None, :]  # red = column
    img[..., 1] = np.arange(20)[:, None]  # green = row
    padded = patches.pad_image(img, 4)
    crops = patches.crop_patches(padded, 4, np.array([10, -2]), np.array([5, 0]), 4)
    assert crops.shape == (2, 4, 4, 3)
    assert crops[0, :, :, 0].tolist() == [[10, 11, 12, 13]] * 4
    assert crops[0, :, 0, 1].tolist() == [5, 6, 7, 8]
    assert (crops[1, :, :2] == 255).all() and crops[1, 0, 2, 0] == 0  # left of the image is white


def test_spots_outside_image_fail():
    centre = np.array([[5.0, 5.0], [50.0, 5.0]])
    with pytest.raises(InputError, match="1 spots lie outside the 20x10 H&E image .*'b'"):
        patches.check_patches(centre, (10, 20, 3), ["a", "b"], "d.h5ad")
    patches.check_patches(centre[:1], (10, 20, 3), ["a"], "d.h5ad")


def test_missing_image_fails(small_synthetic):
    adata = small_synthetic
    im = patches.spot_image(adata, "d.h5ad")
    assert im.image.dtype == np.uint8 and im.image.shape[2] == 3 and im.library == "demo"
    del adata.uns["spatial"]
    with pytest.raises(InputError, match="no H&E image"):
        patches.spot_image(adata, "d.h5ad")


def test_float_image_to_uint8():
    out = patches.as_rgb_uint8(np.full((2, 2), 0.5), "img")
    assert out.shape == (2, 2, 3) and (out == 128).all()


def test_text_positions_counts_genes_in_context():
    token_len = np.array([3, 1, 5, 2])
    gene_idx = np.array([[0, 1, 2, 3], [2, 2, 2, 3]])
    n_text, in_ctx, token_gene, off = encode.text_positions(gene_idx, token_len, context_length=10)
    assert n_text.tolist() == [8, 8] and in_ctx.tolist() == [2, 1]  # budget 8 tokens: 3+1 fit, +5 does not
    assert token_gene[: off[1]].tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    index = encode.token_index(n_text, token_gene, np.array(["g0", "g1", "g2", "g3"], dtype=object), np.array(["s0", "s1"]), 10)
    first = index[index.cell == 0]
    assert first.gene.tolist()[:2] == [encode.SOT, "g0"] and first.gene.tolist()[-2:] == [encode.EOT, encode.CLS]
    assert first.position.tolist()[-2:] == [9, 10] and len(index) == 2 * (8 + 3)


def test_agreement_and_retrieval_known_answers():
    text = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    image = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert np.allclose(agreement.cosine_agreement(text, image), [1.0, 0.0, 1.0])
    nbrs = np.array([[1], [0], [0]])
    assert agreement.retrieval_hits(text, image, nbrs).tolist() == [True, False, True]
    assert np.allclose(np.linalg.norm(agreement.l2_normalise(text), axis=1), 1.0)
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    assert agreement.spatial_neighbours(xy, 1).ravel().tolist() == [1, 0, 1]
