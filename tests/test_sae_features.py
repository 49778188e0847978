"""Association statistics of SAE features on hand-made inputs with known answers."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tissuelens.sae import features as F


@pytest.fixture
def tiny():
    """6 tokens, 3 genes, 2 cells, 3 features (feature 2 never fires).

    token: gene cell  f0  f1
      0     a    0    2   0
      1     a    1    4   0
      2     b    0    0   1
      3     b    1    0   3
      4     c    0    0   0
      5     c    1    1   0
    """
    acts = np.array([[2, 0, 0], [4, 0, 0], [0, 1, 0], [0, 3, 0], [0, 0, 0], [1, 0, 0]], dtype=float)
    genes = np.array([0, 0, 1, 1, 2, 2])
    cells = np.array([0, 1, 0, 1, 0, 1])
    batches = [(np.arange(0, 4), acts[:4]), (np.arange(4, 6), acts[4:])]  # two batches
    return F.accumulate(batches, genes, cells, 3, 2, 3)


def test_accumulate_sums(tiny):
    assert tiny.n_tokens == 6
    np.testing.assert_allclose(tiny.feature_sum, [7, 4, 0])
    np.testing.assert_array_equal(tiny.feature_fired, [3, 2, 0])
    np.testing.assert_allclose(tiny.feature_max, [4, 3, 0])
    np.testing.assert_allclose(tiny.frequency, [0.5, 1 / 3, 0])
    np.testing.assert_allclose(tiny.gene_sum.toarray(), [[6, 0, 0], [0, 4, 0], [1, 0, 0]])
    np.testing.assert_allclose(tiny.gene_fired.toarray(), [[2, 0, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_array_equal(tiny.gene_tokens, [2, 2, 2])
    # cell activation = mean over its 3 tokens
    np.testing.assert_allclose(tiny.cell_matrix().toarray(), [[2 / 3, 1 / 3, 0], [5 / 3, 1, 0]])


def test_gene_table_known_values(tiny):
    t = F.gene_table(tiny, np.array(["ENSGA", "ENSGB", "ENSGC"]), np.array(["A", "B", "C"]), top_n=2, min_tokens=1)
    f0 = t[t.feature == 0].set_index("symbol")
    assert list(f0.index[:2]) == ["A", "C"]  # by mean activation: A (3.0) then C (0.5)
    assert f0.loc["A", "mean_activation"] == pytest.approx(3.0)
    assert f0.loc["A", "frac_active"] == pytest.approx(1.0)
    assert f0.loc["C", "frac_active"] == pytest.approx(0.5)
    assert f0.loc["A", "share"] == pytest.approx(6 / 7)
    eps = 0.01 * 7 / 6 + 1e-12
    # mean on A's tokens 3.0; on the other 4 tokens (7 - 6) / 4
    assert f0.loc["A", "log2_enrichment"] == pytest.approx(np.log2((3.0 + eps) / (0.25 + eps)))
    assert f0.loc["A", "rank_mean"] == 1 and f0.loc["A", "rank_specificity"] == 1
    assert set(t.feature) == {0, 1}  # the dead feature lists no genes
    # genes seen in fewer than min_tokens tokens are not ranked
    assert F.gene_table(tiny, np.array(["a", "b", "c"]), np.array(["A", "B", "C"]), min_tokens=3).empty


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=60)
    values = np.round(rng.random((60, 4)) * 3) * (rng.random((60, 4)) < 0.5)  # many ties and zeros
    values[:, 1] += labels == 1  # feature 1 prefers group 1
    got = F.auroc_one_vs_rest(values, labels, 3)
    for g in range(3):
        for f in range(4):
            assert got[g, f] == pytest.approx(roc_auc_score(labels == g, values[:, f]))
    assert got[1, 1] > 0.7


def test_group_table_known_values():
    # 4 cells: groups x, x, y, y; feature 0 fires only in x, feature 1 everywhere the same
    m = sp.csr_matrix(np.array([[2.0, 1.0], [4.0, 1.0], [0.0, 1.0], [0.0, 1.0]]))
    t = F.group_table(m, pd.Categorical(["x", "x", "y", "y"]))
    row = t[(t.feature == 0) & (t.group == "x")].iloc[0]
    assert row.n_cells == 2 and row.mean_activation == pytest.approx(3.0) and row.mean_rest == 0
    eps = 0.01 * 1.5 + 1e-12
    assert row.log2fc == pytest.approx(np.log2((3 + eps) / eps))
    assert row.auroc == pytest.approx(1.0)
    assert t[(t.feature == 0) & (t.group == "y")].auroc.iloc[0] == pytest.approx(0.0)
    flat = t[t.feature == 1]
    assert np.allclose(flat.auroc, 0.5) and np.allclose(flat.log2fc, 0.0)
    assert len(t) == 4


def test_morans_i_separates_gradient_from_noise():
    n = 20
    yy, xx = np.divmod(np.arange(n * n), n)
    coords = np.stack([xx, yy], axis=1).astype(float)
    rng = np.random.default_rng(0)
    m = sp.csr_matrix(np.stack([xx / n, rng.random(n * n), np.zeros(n * n)], axis=1))
    res = F.morans_i(m, coords, np.array([0, 1]), n_neighs=6).set_index("feature")
    assert res.loc[0, "moran_i"] > 0.8 and res.loc[0, "moran_pval"] < 1e-6
    assert abs(res.loc[1, "moran_i"]) < 0.1


def test_factor_correlations_known_r():
    rng = np.random.default_rng(1)
    factors = rng.random((50, 2))
    acts = np.stack([2 * factors[:, 0] + 1, -factors[:, 1], np.zeros(50)], axis=1)
    r = F.factor_correlations(sp.csr_matrix(acts), factors, chunk=2)
    assert r[0, 0] == pytest.approx(1.0) and r[1, 1] == pytest.approx(-1.0)
    assert r[0, 1] == pytest.approx(np.corrcoef(acts[:, 0], factors[:, 1])[0, 1])
    assert np.isnan(r[2]).all()  # constant feature: no correlation
    long = F.factor_table(r)
    assert len(long) == 6 and list(long.columns) == ["feature", "factor", "pearson_r"]


def test_feature_table_flags_and_links(tiny):
    genes = F.gene_table(tiny, np.array(["a", "b", "c"]), np.array(["A", "B", "C"]), min_tokens=1)
    cells = tiny.cell_matrix()
    groups = F.group_table(cells, pd.Categorical(["x", "y"]))
    r = np.array([[0.2, 0.9], [0.5, -0.1], [np.nan, np.nan]])
    names = F.top_cells(cells, np.array(["c0", "c1"]), 1)
    t = F.feature_table(tiny, genes, groups, None, r, names, dense_threshold=0.4)
    assert list(t.dead) == [False, False, True]
    assert list(t.dense) == [True, False, False]  # frequencies 0.5, 1/3, 0
    assert t.top_genes[0].startswith("A,") and t.top_genes[2] == ""
    assert list(t.top_cells) == ["c1", "c1", ""]
    assert list(t.best_factor) == [1, 0, -1] and t.best_factor_r[0] == pytest.approx(0.9)
    assert t.top_group[0] == "y"  # cell c1 (group y) is the more active one
