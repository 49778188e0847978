"""Geneformer tokenizer: hand-computed cells, V1 vs V2, ties, truncation, duplicates, the per-cell reference."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tissuelens.embed.geneformer.tokenizer import GeneVocab, tokenize, tokenize_per_cell
from tissuelens.errors import InputError

IDS = {"A": "ENSG00000000001", "B": "ENSG00000000002", "C": "ENSG00000000003", "D": "ENSG00000000004", "E": "ENSG00000000005"}
MEDIANS = {IDS["A"]: 1.0, IDS["B"]: 2.0, IDS["C"]: 1.0, IDS["D"]: 0.5, IDS["E"]: 1.0}


def vocab(version: str, size: int) -> GeneVocab:
    specials = {"<pad>": 0, "<mask>": 1} | ({"<cls>": 2, "<eos>": 3} if version == "V2" else {})
    tok = dict(specials)
    tok.update({IDS[g]: len(specials) + i for i, g in enumerate("ABCDE")})
    return GeneVocab(tok, MEDIANS, None, tok.get("<cls>"), tok.get("<eos>"), size)


def hand_adata() -> ad.AnnData:
    # columns: A, b (B's id lower-cased), C, A again (summed with A), X (not in the dictionary), E, D
    var_ids = [IDS["A"], IDS["B"].lower(), IDS["C"], IDS["A"], "ENSG99999999999", IDS["E"], IDS["D"]]
    counts = np.array(
        [
            [2, 2, 1, 1, 100, 0, 0],  # A=3 -> 3; B=2/2 -> 1; C=1/1 -> 1 (tie with B: B first, stable)
            [0, 0, 3, 0, 0, 6, 1],  # E=6; C=3; D=1/0.5=2
            [0, 0, 0, 0, 5, 0, 0],  # only an unknown gene: no token
        ]
    )
    a = ad.AnnData(X=np.zeros(counts.shape, dtype=np.float32), var=pd.DataFrame({"gene_ids": var_ids}, index=[f"v{i}" for i in range(7)]))
    a.layers["counts"] = sp.csr_matrix(counts)
    return a


@pytest.mark.parametrize("impl", [tokenize, tokenize_per_cell])
def test_hand_computed_v2(impl):
    t = impl(hand_adata(), vocab("V2", 4096))
    a, b, c, d, e = 4, 5, 6, 7, 8
    assert t.as_lists() == [[2, a, b, c, 3], [2, e, c, d, 3], [2, 3]]
    assert t.n_genes.tolist() == [3, 3, 0]
    assert t.empty_cells.tolist() == [2]
    assert (t.n_var_genes, t.n_known_genes) == (7, 6)


@pytest.mark.parametrize("impl", [tokenize, tokenize_per_cell])
def test_hand_computed_v1_and_truncation(impl):
    a, b, c, d, e = 2, 3, 4, 5, 6
    assert impl(hand_adata(), vocab("V1", 2048)).as_lists() == [[a, b, c], [e, c, d], []]
    # V1 truncates to the input size; V2 keeps <cls> first and <eos> last within it
    assert impl(hand_adata(), vocab("V1", 2)).as_lists() == [[a, b], [e, c], []]
    assert impl(hand_adata(), vocab("V2", 4)).as_lists() == [[2, 4, 5, 3], [2, 8, 6, 3], [2, 3]]


def test_mapping_dict_collapses_ids():
    v = vocab("V2", 4096)
    # an alias id maps onto C: its counts are summed with C's
    v.mapping_dict = {g: g for g in MEDIANS} | {"ENSG99999999999": IDS["C"]}
    t = tokenize(hand_adata(), v)
    # cell 0: C = 1 + 100 = 101 now ranks first; cell 2 has C only
    assert t.as_lists()[0][:2] == [2, 6]
    assert t.as_lists()[2] == [2, 6, 3]


def random_case(seed: int, n_cells=300, n_genes=400, density=0.15):
    rng = np.random.default_rng(seed)
    x = sp.random(n_cells, n_genes, density=density, format="csr", random_state=seed, data_rvs=lambda k: rng.integers(1, 5, k))
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    ids[5] = ids[7]  # a duplicate id (summed)
    ids[9] = "NOT_AN_ID"
    a = ad.AnnData(X=sp.csr_matrix(x.shape, dtype=np.float32), var=pd.DataFrame({"gene_ids": ids}, index=[f"g{i}" for i in range(n_genes)]))
    a.layers["counts"] = x.astype(np.int64)
    tok = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
    tok.update({g: 4 + i for i, g in enumerate(sorted(set(ids) - {"NOT_AN_ID"}))})
    # few distinct integer medians: many exact ties, so the stable order matters
    med = {g: float(rng.integers(1, 4)) for g in tok if g.startswith("ENSG")}
    return a, tok, med


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("version,size", [("V2", 4096), ("V2", 12), ("V1", 2048), ("V1", 7)])
def test_vectorised_matches_per_cell_reference(seed, version, size):
    a, tok, med = random_case(seed)
    if version == "V1":
        tok = {g: t - 2 for g, t in tok.items() if g not in ("<cls>", "<eos>")} | {"<pad>": 0, "<mask>": 1}
    v = GeneVocab(tok, med, None, tok.get("<cls>"), tok.get("<eos>"), size)
    fast, ref = tokenize(a, v), tokenize_per_cell(a, v)
    assert np.array_equal(fast.offsets, ref.offsets)
    assert np.array_equal(fast.input_ids, ref.input_ids)
    assert fast.input_ids.size > a.n_obs  # not trivially empty
    # every cell's gene tokens are unique and ranked by non-increasing value
    i = int(np.argmax(fast.n_genes))
    genes = fast.cell(i)[1:-1] if version == "V2" else fast.cell(i)
    assert len(set(genes.tolist())) == genes.size


def test_ties_keep_column_order():
    # four genes with equal value in one cell: the order is the column order, not token order
    ids = ["ENSG3", "ENSG1", "ENSG4", "ENSG2"]
    a = ad.AnnData(X=np.zeros((1, 4), np.float32), var=pd.DataFrame({"gene_ids": ids}, index=list("wxyz")))
    a.layers["counts"] = sp.csr_matrix(np.array([[1, 1, 1, 1]]))
    tok = {"<pad>": 0, "<mask>": 1, "ENSG1": 2, "ENSG2": 3, "ENSG3": 4, "ENSG4": 5}
    v = GeneVocab(tok, {g: 1.0 for g in ids}, None, None, None, 2048)
    assert tokenize(a, v).as_lists() == [[4, 2, 5, 3]] == tokenize_per_cell(a, v).as_lists()


def test_bad_inputs_name_the_problem():
    v = vocab("V2", 4096)
    a = hand_adata()
    with pytest.raises(InputError, match=r"data.h5ad: var has no column 'ensembl_id'"):
        tokenize(a, v, gene_id_key="ensembl_id", where="data.h5ad")
    b = a.copy()
    b.var["gene_ids"] = [f"X{i}" for i in range(7)]
    with pytest.raises(InputError, match="none of the 7 ids"):
        tokenize(b, v)
    c = a.copy()
    c.layers["counts"] = sp.csr_matrix(c.layers["counts"].toarray() * 0.5)
    with pytest.raises(InputError, match="non-integer"):
        tokenize(c, v)
    with pytest.raises(InputError, match=r"no layers\['raw'\]"):
        tokenize(a, v, counts_layer="raw")


def one_cell_case(counts: np.ndarray, medians: np.ndarray):
    ids = [f"ENSG{i:011d}" for i in range(counts.size)]
    a = ad.AnnData(X=np.zeros((1, counts.size), np.float32), var=pd.DataFrame({"gene_ids": ids}, index=ids))
    a.layers["counts"] = sp.csr_matrix(counts.reshape(1, -1))
    tok = {"<pad>": 0, "<mask>": 1} | {g: 2 + i for i, g in enumerate(ids)}
    return a, GeneVocab(tok, dict(zip(ids, medians.tolist())), None, None, None, 2048)


@pytest.mark.parametrize(
    "case",
    ["ulp_pairs_collide", "outlier_merges_100_keys", "forty_equal_values", "wide_spread"],
)
def test_radix_ranking_is_exact(case):
    # each case drives one branch of the radix ranking: keys that collide after the shift, runs of
    # equal keys long enough for the merge sort, a single key value, and keys spread over many binades
    rng = np.random.default_rng(7)
    if case == "ulp_pairs_collide":
        # medians over many binades, each followed by one a few ulps smaller: the pair's values share a
        # shifted key and the second, larger one must move ahead in the exact fix-up
        base = np.exp(rng.normal(0, 6, 50))
        med = np.column_stack([base, np.nextafter(np.nextafter(base, 0), 0)]).ravel()
        counts = np.ones(100, np.int64)
    elif case == "outlier_merges_100_keys":
        med = np.concatenate([[1e-200], 1.0 + 1e-9 * rng.permutation(100)])
        counts = np.ones(101, np.int64)
    elif case == "forty_equal_values":
        med, counts = np.full(40, 2.0), np.full(40, 3, np.int64)
    else:
        med = np.exp(rng.normal(0, 8, 500))
        counts = rng.integers(1, 50, 500)
    a, v = one_cell_case(counts, med)
    fast = tokenize(a, v).cell(0)
    assert np.array_equal(fast, tokenize_per_cell(a, v).cell(0))
    values = (counts / counts.sum() * 10_000 / med)[fast - 2]
    assert np.all(np.diff(values) <= 0)
    ties = np.diff(values) == 0
    assert np.all(np.diff(fast)[ties] > 0)  # equal values keep column order
    if case == "forty_equal_values":
        assert fast.tolist() == list(range(2, 42))


def test_unsorted_and_duplicate_entries_equal_canonical():
    canonical = sp.csr_matrix(np.array([[3, 0, 1, 2], [0, 5, 5, 0]]))
    # same counts: row 0 with columns out of order and a count split over two entries
    messy = sp.csr_matrix((np.array([2, 1, 2, 1, 5, 5]), np.array([3, 2, 0, 0, 2, 1]), np.array([0, 4, 6])), shape=(2, 4))
    assert not messy.has_canonical_format
    ids = [f"ENSG{i}" for i in range(4)]
    tok = {"<pad>": 0, "<mask>": 1} | {g: 2 + i for i, g in enumerate(ids)}
    v = GeneVocab(tok, {g: 1.0 for g in ids}, None, None, None, 2048)
    out = []
    for x in (canonical, messy):
        a = ad.AnnData(X=np.zeros((2, 4), np.float32), var=pd.DataFrame({"gene_ids": ids}, index=ids))
        a.layers["counts"] = x
        out.append(tokenize(a, v).as_lists())
    assert out[0] == out[1] == [[2, 5, 4], [3, 4]]


def test_non_positive_median_is_named():
    v = vocab("V2", 4096)
    v.median_dict = MEDIANS | {IDS["D"]: 0.0}
    with pytest.raises(InputError, match=r"gene median of ENSG00000000004 is 0.0"):
        tokenize(hand_adata(), v)
