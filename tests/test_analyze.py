"""Units of the analyze stage: marker scoring (decoupler ULM and ORA against their arithmetic), confidence,
PanglaoDB filters, marker files, neighbour smoothing, the agreement table, where groups come from, and the
planted synthetic markers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr

from tissuelens.analyze import agreement, domains, markers
from tissuelens.analyze.groups import group_source, has_groups
from tissuelens.datasets.synthetic import make_synthetic
from tissuelens.errors import InputError
from tissuelens.plan import factorize_variants

GENES = [f"g{i}" for i in range(8)]
NET = pd.DataFrame({"source": ["A"] * 3 + ["B"] * 3, "target": GENES[:3] + GENES[3:6], "weight": 1.0})


def ulm_by_hand(x_row: np.ndarray, members: np.ndarray) -> float:
    """decoupler's ULM score: the t-value of the slope of expression on set membership over genes,
    t = r * sqrt(df / ((1 - r)(1 + r))), df = genes - 2."""
    r = pearsonr(x_row, members.astype(float))[0]
    df = x_row.size - 2
    return r * np.sqrt(df / ((1 - r) * (1 + r)))


def test_ulm_scores_match_the_t_value_of_a_univariate_fit():
    x = np.random.default_rng(0).random((5, 8))
    scores = markers.score(sp.csr_matrix(x), [f"c{i}" for i in range(5)], GENES, NET)
    assert list(scores.columns) == ["A", "B"] and scores.shape == (5, 2)
    for i in range(5):
        for t, members in (("A", np.arange(8) < 3), ("B", (np.arange(8) >= 3) & (np.arange(8) < 6))):
            assert scores.loc[f"c{i}", t] == pytest.approx(ulm_by_hand(x[i], members), rel=1e-9)


def ora_by_hand(x_row: np.ndarray, members: dict, n_measured: int, n_top: int) -> tuple[dict, dict]:
    """ORA on one cell: the cell's top `n_top` genes against each set in a universe of `n_measured` genes;
    log odds ratio with 0.5 added to each cell of the 2x2 table, two-sided Fisher's exact p-value."""
    from scipy.stats import fisher_exact

    top = set(np.argsort(x_row)[::-1][:n_top])
    score, p = {}, {}
    for name, genes in members.items():
        s = set(genes)
        a, b, c = len(top & s), len(top - s), len(s - top)
        d = n_measured - a - b - c
        score[name] = np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
        p[name] = fisher_exact([[a, b], [c, d]], alternative="two-sided")[1]
    return score, p


def bh(p: np.ndarray) -> np.ndarray:
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    out = np.empty_like(p)
    out[order] = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    return out


def test_ora_universe_is_the_measured_genes():
    # a 60-gene panel; g59 is measured but no cell detects it: it stays in the universe
    genes = [f"g{i}" for i in range(60)]
    members = {"A": list(range(0, 6)), "B": list(range(6, 12)), "C": list(range(40, 46))}
    net = pd.DataFrame([(t, genes[g], 1.0) for t, gs in members.items() for g in gs], columns=["source", "target", "weight"])
    rng = np.random.default_rng(3)
    x = rng.permutation(np.arange(1.0, 60.0))[None, :].repeat(3, axis=0) / 100  # distinct values, no ties
    x = np.column_stack([x, np.zeros(3)])
    x[0, [0, 1, 2]] = [9, 8, 7]  # top 3 genes all A's
    x[1, [6, 7, 20]] = [9, 8, 7]  # two of B's
    x[2, [0, 6, 40]] = [9, 8, 7]  # one each
    scores, padj = markers.score_and_padj(sp.csr_matrix(x), ["c0", "c1", "c2"], genes, net, "ora")
    n_top = int(np.ceil(0.05 * 59))  # decoupler's top 5 % of the 59 detected genes
    for i in range(3):
        score, p = ora_by_hand(x[i], members, n_measured=60, n_top=n_top)
        names = sorted(members)
        np.testing.assert_allclose(scores.loc[f"c{i}", names], [score[n] for n in names], rtol=1e-9)
        np.testing.assert_allclose(padj.loc[f"c{i}", names], bh(np.array([p[n] for n in names])), rtol=1e-6)
    # three of A's six markers among the top 3 of 60 genes: C(6,3)/C(60,3)
    assert ora_by_hand(x[0], members, 60, n_top)[1]["A"] == pytest.approx(20 / 34220)
    # decoupler's default universe of 20,000 genes would make the same overlap ~10^6 times more significant
    default = ora_by_hand(x[0], members, 20_000, n_top)[1]["A"]
    assert padj.loc["c0", "A"] > 1e5 * default
    with pytest.raises(InputError, match="tiny.h5ad: 2 detected genes are too few for ORA"):
        markers.score_and_padj(np.array([[1.0, 2.0, 0.0]]), ["c"], ["g0", "g1", "g2"], net, "ora", "tiny.h5ad")
    # on 60 genes two of B's markers in a top 3 is not significant after BH over the types: unassigned
    assert markers.annotate(scores, padj)["cell_type"].astype(str).tolist() == ["A", "unassigned", "unassigned"]


def test_annotation_picks_the_marked_type_and_confidence_reads_certainty():
    x = np.random.default_rng(1).random((3, 8)) * 0.1  # a little noise: no perfect correlation
    x[0, :3] += 5.0  # A's markers
    x[1, 3:6] += 5.0  # B's markers
    x[2] = [1, 2, 3, 1, 2, 3, 0, 0]  # both sets alike: no preference
    scores, padj = markers.score_and_padj(x, ["a", "b", "c"], GENES, NET)
    table = markers.annotate(scores, padj)
    assert list(table["cell_type"].astype(str)[:2]) == ["A", "B"]
    assert table["confidence"].iloc[0] > 0.999 and table["margin"].iloc[0] > 3
    assert table["confidence"].iloc[2] < 0.9 and table["margin"].iloc[2] == pytest.approx(0.0, abs=1e-9)


def test_confidence_and_margin_from_adjusted_p_values_not_the_score_scale():
    idx = ["p", "q", "r", "s"]
    scores = pd.DataFrame({"A": [4.0, 3.0, -1.0, 2.0], "B": [1.0, 2.5, -2.0, -3.0], "C": [0.5, 0.1, -3.0, 0.0]}, index=idx)
    padj = pd.DataFrame({"A": [1e-6, 0.01, 0.5, 0.2], "B": [0.01, 0.02, 0.1, 1e-4], "C": [0.3, 0.9, 0.01, 1.0]},
                        index=idx)
    table = markers.annotate(scores, padj)
    assert table["cell_type"].astype(str).tolist() == ["A", "A", "unassigned", "unassigned"]
    # p: 1 - 1e-6; beats B's 0.01 by 4 orders of magnitude. q: a close call, log10(0.02 / 0.01)
    # r: no positive score: confidence 0, margin 0. s: the runner-up B has a negative score: it counts as padj 1
    np.testing.assert_allclose(table["confidence"], [1 - 1e-6, 0.99, 0.0, 0.8])
    np.testing.assert_allclose(table["margin"], [4.0, np.log10(2.0), 0.0, np.log10(1 / 0.2)])
    # the same p-values with scores ten times larger: the same certainty (a softmax of the scores would change)
    scaled = markers.annotate(scores * 10, padj)
    pd.testing.assert_frame_equal(scaled[["confidence", "margin"]], table[["confidence", "margin"]])
    bare = markers.annotate(scores)  # no p-values: no certainty
    assert bare["confidence"].isna().all() and bare["margin"].isna().all()


def test_annotation_leaves_cells_without_a_significant_type_unassigned():
    x = np.random.default_rng(1).random((4, 8)) * 0.1
    x[0, :3] += 5.0  # A's markers
    x[1, 3:6] += 5.0  # B's markers
    x[2] = [1, 2, 3, 1, 2, 3, 0, 0]  # both sets alike: a positive score, but not significant
    x[3, :6] = 0.0
    x[3, 6:] = [4.0, 5.0]  # only genes of no set: negative scores
    scores, padj = markers.score_and_padj(x, ["a", "b", "c", "d"], GENES, NET)
    table = markers.annotate(scores, padj, alpha=0.05)
    assert list(table["cell_type"].astype(str)) == ["A", "B", "unassigned", "unassigned"]
    assert list(table["cell_type"].cat.categories) == ["A", "B", "unassigned"]
    assert table["padj"].iloc[0] < 1e-6 and table["padj"].iloc[2] > 0.05
    assert table["score"].iloc[2] > 0  # the best score is kept, the call is not
    # missing scores (no marker expressed) are unassigned too, never a "nan" category
    missing = markers.annotate(pd.DataFrame({"A": [np.nan, 2.0], "B": [1.0, 1.0]}, index=["p", "q"]))
    assert list(missing["cell_type"].astype(str)) == ["unassigned", "A"]
    assert "nan" not in missing["cell_type"].astype(str).tolist()


def test_summary_counts_called_types_and_the_unassigned_share():
    from tissuelens.analyze.run import summarize

    idx = pd.Index(["a", "b", "c", "d"])
    annotation = pd.DataFrame({"cell_type": pd.Categorical(["A", "A", "B", "unassigned"]), "score": 1.0,
                               "padj": 0.01, "confidence": 0.99, "margin": 1.0}, index=idx)
    domains_table = pd.DataFrame({"expr_leiden": pd.Categorical(["C1", "C1", "C2", "C2"])}, index=idx)
    out = summarize(domains_table, annotation, pd.DataFrame({"majority_share": [1.0]}), {}, pd.DataFrame(), None)
    assert out["annotation"]["n_types_called"] == 2 and out["annotation"]["unassigned_share"] == 0.25
    assert out["annotation"]["mean_confidence"] == pytest.approx(0.99)


def test_softmax_entropy_known_values():
    h = markers.softmax_entropy(np.array([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [np.log(2), 0.0, 0.0]]))
    p = np.array([2, 1, 1]) / 4
    assert h[0] == pytest.approx(1.0) and h[1] == pytest.approx(0.0, abs=1e-12)
    assert h[2] == pytest.approx(-(p * np.log(p)).sum() / np.log(3))


def test_domain_majority_share():
    out = markers.domain_majority(pd.Series(["A", "A", "B", "B", "B"]), pd.Series(["D1", "D1", "D1", "D2", "D2"]))
    assert out.to_dict("list") == {"domain": ["D1", "D2"], "n_cells": [3, 2], "majority_type": ["A", "B"],
                                   "majority_share": [pytest.approx(2 / 3), 1.0]}


def test_marker_files_both_formats_and_their_errors(tmp_path):
    tsv = tmp_path / "panglao.tsv"
    tsv.write_text("species\tofficial gene symbol\tcell type\torgan\nMm Hs\tCD3E\tT cells\tImmune\n"
                   "Hs\tMS4A1\tB cells\tImmune\nMm\tCd19\tB cells\tImmune\n")
    with pytest.raises(InputError, match=r"panglao.tsv: no column 'canonical marker' for analyze.markers.canonical_only"):
        markers.read_markers(tsv, "panglaodb", "Hs")
    net = markers.read_markers(tsv, "panglaodb", "Hs", canonical_only=False, min_sensitivity=None)
    assert sorted(zip(net["source"], net["target"])) == [("B cells", "MS4A1"), ("T cells", "CD3E")]
    with pytest.raises(InputError, match=r"panglao.tsv: no marker for species 'Rn'.*file has: Hs, Mm"):
        markers.read_markers(tsv, "panglaodb", "Rn", canonical_only=False, min_sensitivity=None)
    with pytest.raises(InputError, match="not a marker CSV"):
        markers.read_markers(tsv, "csv", None)
    csv = tmp_path / "m.csv"
    csv.write_text("gene,cell_type\ncd3e,T\nMS4A1,B\n")
    with pytest.raises(InputError, match="not a PanglaoDB TSV"):
        markers.read_markers(csv, "panglaodb", None)
    with pytest.raises(InputError, match="missing.csv: marker file not found"):
        markers.read_markers(tmp_path / "missing.csv", "csv", None)
    net = markers.read_markers(csv, "csv", None)
    matched = markers.match_genes(net, ["CD3E", "MS4A1", "X"], 1, "data.h5ad")
    assert sorted(matched["target"]) == ["CD3E", "MS4A1"]  # case-insensitive, the data's spelling
    with pytest.raises(InputError, match="data.h5ad: no marker gene of the file is in the data"):
        markers.match_genes(net, ["X", "Y"], 1, "data.h5ad")
    with pytest.raises(InputError, match="min_markers=2"):
        markers.match_genes(net, ["CD3E", "MS4A1"], 2, "data.h5ad")


PANGLAO_HEADER = ("species\tofficial gene symbol\tcell type\tnicknames\tubiquitousness index\tproduct description\t"
                  "gene type\tcanonical marker\tgerm layer\torgan\tsensitivity_human\tsensitivity_mouse\t"
                  "specificity_human\tspecificity_mouse\n")


def test_panglaodb_standard_filters_keep_canonical_sensitive_markers_of_the_organ(tmp_path):
    rows = [  # species, gene, cell type, canonical, organ, sensitivity human, mouse
        ("Mm Hs", "CD3E", "T cells", "1", "Immune system", "0.9", "0.8"),  # kept
        ("Mm Hs", "CD2", "T cells", "0", "Immune system", "0.9", "0.8"),  # not canonical
        ("Mm Hs", "CD7", "T cells", "1", "Immune system", "0.4", "0.9"),  # human sensitivity 0.4
        ("Mm Hs", "MS4A1", "B cells", "1", "Immune system", "0.6", "0.0"),  # kept for Hs, not for Mm
        ("Mm", "Cd19", "B cells", "1", "Immune system", "0.0", "0.9"),  # mouse only
        ("Mm Hs", "ALB", "Hepatocytes", "1", "Liver", "0.95", "0.9"),  # another organ
        ("Hs", "CD8A", "T cells", "1", "Immune system", "", ""),  # no sensitivity recorded
    ]
    tsv = tmp_path / "PanglaoDB_markers.tsv"
    tsv.write_text(PANGLAO_HEADER + "".join(f"{s}\t{g}\t{t}\t\t0.01\t\tprotein-coding gene\t{c}\tMesoderm\t{o}\t"
                                            f"{h}\t{m}\t0.01\t0.01\n" for s, g, t, c, o, h, m in rows))
    pairs = lambda net: sorted(zip(net["source"], net["target"]))  # noqa: E731
    assert pairs(markers.read_markers(tsv, "panglaodb", "Hs")) == [
        ("B cells", "MS4A1"), ("Hepatocytes", "ALB"), ("T cells", "CD3E")]
    assert pairs(markers.read_markers(tsv, "panglaodb", "Hs", organ="immune SYSTEM")) == [
        ("B cells", "MS4A1"), ("T cells", "CD3E")]
    assert pairs(markers.read_markers(tsv, "panglaodb", "Mm", organ=["Immune system"])) == [
        ("B cells", "Cd19"), ("T cells", "CD3E"), ("T cells", "CD7")]
    # no species: the larger sensitivity of the two
    assert len(markers.read_markers(tsv, "panglaodb", None)) == 5
    assert len(markers.read_markers(tsv, "panglaodb", "Hs", canonical_only=False, min_sensitivity=None)) == 6
    with pytest.raises(InputError, match=r"PanglaoDB_markers.tsv: no marker for organ 'Brain' .*"
                                         r"organs there: Immune system, Liver\)"):
        markers.read_markers(tsv, "panglaodb", "Hs", organ="Brain")


def test_smoothing_averages_each_row_with_its_neighbours():
    graph = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]]))
    x = np.array([[0.0, 3.0], [3.0, 6.0], [6.0, 0.0]])
    np.testing.assert_allclose(domains.smooth(x, graph), [[1.5, 4.5], [3.0, 3.0], [4.5, 3.0]])
    # the graph it smooths over is the recorded one (tissuelens.spatial_graph), here a 1-nearest-neighbour graph
    import anndata as ad

    from tissuelens.config import step_defaults
    from tissuelens.spatial_graph import build_spatial_graph, spatial_connectivities

    holder = ad.AnnData(sp.csr_matrix((4, 1), dtype=np.float32))
    holder.obsm["spatial"] = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]])
    build_spatial_graph(holder, {**step_defaults("preprocess")["spatial_graph"], "method": "knn", "n_neighs": 1})
    g = spatial_connectivities(holder, "t").toarray()
    assert g[0, 1] == 1 and g[2, 3] == 1 and g[0, 2] == 0


def test_too_few_cells_for_leiden_is_one_clear_error():
    import anndata as ad

    adata = ad.AnnData(np.random.default_rng(0).random((5, 10)).astype(np.float32))
    with pytest.raises(InputError, match=r"x.h5ad: 5 cells .* analyze.domains.n_neighbors=15"):
        domains.compute_domains(adata, {"n_neighbors": 15, "n_pcs": 3, "resolution": 1.0}, False, 0, "x.h5ad")


def test_agreement_table_values_and_missing_cells():
    idx = pd.Index([f"c{i}" for i in range(6)])
    a = pd.Series(list("xxyyzz"), index=idx)
    renamed = pd.Series(list("112233"), index=idx)
    other = pd.Series(["p", "q", "p", "q", None, None], index=idx)
    table = agreement.agreement_table({"a": a, "renamed": renamed, "other": other})
    row = table.set_index(["a", "b"])
    assert row.loc[("a", "renamed"), "ari"] == pytest.approx(1.0) and row.loc[("a", "renamed"), "nmi"] == pytest.approx(1.0)
    assert row.loc[("a", "other"), "n_cells"] == 4  # cells without a label in either partition are left out
    assert row.loc[("a", "other"), "ari"] < 0.01
    m = agreement.matrix(table, "ari")
    assert m.loc["renamed", "a"] == m.loc["a", "renamed"] and m.loc["other", "other"] == 1.0
    f = agreement.factor_argmax(np.array([[0.1, 2.0], [3.0, 1.0]]), ["u", "v"])
    assert list(f) == ["F2", "F1"]


def config_with(entry: dict, analyze: dict | None = None) -> dict:
    cfg = {"datasets": {"d": {"source": "synthetic", "spatial": True, **entry}},
           "factorize": {"variants": ["pnmf", "svgp", "mggp_svgp"]}}
    if analyze is not None:
        cfg["analyze"] = analyze
    return cfg


def test_group_source_resolution():
    assert group_source(config_with({}), "d") == "spatial_domain"  # the default
    assert factorize_variants(config_with({}), "d") == ["pnmf", "svgp", "mggp_svgp"]
    assert group_source(config_with({"spatial": False}), "d") == "expr_leiden"
    assert group_source(config_with({}, {"group_source": "expr_leiden"}), "d") == "expr_leiden"
    none = config_with({}, {"group_source": "none"})
    assert group_source(none, "d") is None and not has_groups(none, "d")
    assert factorize_variants(none, "d") == ["pnmf", "svgp"]
    labelled = config_with({"group_key": "cluster"}, {"group_source": "expr_leiden"})  # top level: labels win
    assert group_source(labelled, "d") is None and has_groups(labelled, "d")
    both = config_with({"group_key": "cluster", "analyze": {"group_source": "expr_leiden"}})
    with pytest.raises(InputError, match=r"datasets.d: analyze.group_source 'expr_leiden' is set together with group_key"):
        group_source(both, "d")


def test_planted_markers_leave_the_other_genes_unchanged():
    base = make_synthetic(n_spots=120, n_genes=30, n_groups=3, seed=4, image_size=64)
    marked = make_synthetic(n_spots=120, n_genes=30, n_groups=3, seed=4, image_size=64, marker_genes_per_group=2)
    assert marked.n_vars == 36 and list(marked.var_names[30:32]) == ["MRK1_1", "MRK1_2"]
    np.testing.assert_array_equal(marked.X[:, :30].toarray(), base.X.toarray())
    np.testing.assert_array_equal(marked.obsm["true_factors"], base.obsm["true_factors"])
    counts = marked.X[:, 30:].toarray()
    inside = (marked.obs["group"] == "domain_1").to_numpy()
    assert counts[inside, 0].mean() > 4 * counts[~inside, 0].mean()
    assert marked.var["gene_ids"].is_unique
