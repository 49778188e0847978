"""Loki's tasks on hand-made embeddings: annotation (markers, bulk), retrieval, PredEx, Tangram decomposition (tissuelens.embed.loki)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tissuelens.embed.loki import tasks as lt
from tissuelens.errors import InputError


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_planted_marker_sentences_annotate_their_spots():
    """Spots whose image embedding lies near a type's sentence embedding get that type; confident spots
    have low entropy."""
    rng = np.random.default_rng(0)
    types = _unit(rng.normal(size=(3, 16)))
    truth = rng.integers(0, 3, size=60)
    spots = _unit(types[truth] + 0.05 * rng.normal(size=(60, 16)))
    best, best_sim, entropy, sim = lt.annotate(spots, types, logit_scale=100.0)
    assert (best == truth).all()
    np.testing.assert_allclose(best_sim, sim.max(axis=1))
    np.testing.assert_allclose(sim, spots @ types.T, atol=1e-12)  # Loki: image_embeddings @ text_embeddings.T
    assert entropy.max() < 0.5
    _, _, flat, _ = lt.annotate(spots, types, logit_scale=0.0)
    np.testing.assert_allclose(flat, 1.0)  # uniform softmax


def test_marker_sentences_keep_file_order_and_top_n():
    net = pd.DataFrame({"source": ["B", "A", "A", "A", "B"], "target": ["CD19", "CD3D", "CD3E", "CD3D", "MS4A1"]})
    assert lt.marker_sentences(net, 2) == {"A": "CD3D CD3E", "B": "CD19 MS4A1"}
    assert lt.marker_sentences(net, 1) == {"A": "CD3D", "B": "CD19"}


def test_planted_match_is_retrieved_at_rank_1():
    rng = np.random.default_rng(1)
    text = _unit(rng.normal(size=(40, 8)))
    image = _unit(text + 0.05 * rng.normal(size=(40, 8)))  # each image beside its own transcriptome
    idx, sims = lt.top_matches(lt.similarity(image, text), 3)
    assert (idx[:, 0] == np.arange(40)).all()
    assert np.all(np.diff(sims, axis=1) <= 0)
    labels = np.repeat(["a", "b"], 20)
    m = lt.retrieval_metrics(idx, np.arange(40), labels, labels)
    assert m["self_at_1"] == 1.0 and m["self_at_k"] == 1.0 and m["label_at_1"] == 1.0
    assert m["label_chance"] == 0.5


def test_top_k_ties_and_transcription_of_retrieve_st_by_image():
    sim = np.array([[0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    idx, vals = lt.top_matches(sim, 3)
    assert idx.tolist() == [[1, 0, 2], [0, 1, 2]]  # ties by reference index
    torch = pytest.importorskip("torch")
    values, indices = torch.topk(torch.tensor(sim[0]), 3)  # Loki's retrieve_st_by_image
    assert set(indices.tolist()) == set(idx[0].tolist()) and np.allclose(values.numpy(), vals[0])


def test_k_larger_than_the_spots_fails():
    with pytest.raises(InputError, match="k=5 but there are 3 spots"):
        lt.check_k(5, 3, "d.h5ad: embed.loki.retrieve.k")


def loki_predict_st_gene_expr(image_text_similarity, train_data):
    """Transcription of Loki's predex.predict_st_gene_expr."""
    weighted_sum = image_text_similarity @ train_data
    weights = image_text_similarity.sum(axis=1, keepdims=True)
    return weighted_sum / weights


def test_predex_defaults_are_lokis_arithmetic():
    rng = np.random.default_rng(2)
    sim = rng.uniform(0.1, 1.0, size=(5, 12))
    expr = rng.poisson(3.0, size=(12, 4)).astype(float)
    np.testing.assert_allclose(lt.predict_expression(sim, expr), loki_predict_st_gene_expr(sim, expr))


def test_predex_top_k_and_temperature():
    sim = np.array([[0.9, 0.8, 0.1]])
    expr = np.array([[1.0], [3.0], [100.0]])
    assert lt.predict_expression(sim, expr, top_k=2)[0, 0] == pytest.approx((0.9 * 1 + 0.8 * 3) / 1.7)
    w = np.exp(np.array([0.9, 0.8]) / 0.1)
    assert lt.predict_expression(sim, expr, top_k=2, temperature=0.1)[0, 0] == pytest.approx((w[0] * 1 + w[1] * 3) / w.sum())
    assert lt.predex_weights(sim, temperature=1e-4)[0].tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_predex_recovers_a_planted_linear_image_to_gene_map():
    """Expression = image embedding @ W; text embeddings = image embeddings (a perfectly aligned model):
    held-out spots' expression is predicted from their nearest reference spots with high Pearson r."""
    rng = np.random.default_rng(3)
    n, d, g = 600, 4, 10
    z = _unit(rng.normal(size=(n, d)))
    w = rng.normal(size=(d, g))
    expr = z @ w + 0.05 * rng.normal(size=(n, g))
    test = lt.holdout_split(n, 0.2, seed=0)
    assert test.sum() == 120 and (lt.holdout_split(n, 0.2, seed=0) == test).all()
    sim = lt.similarity(z[test], z[~test])
    pred = lt.predict_expression(sim, expr[~test], top_k=10, temperature=0.05)
    r = lt.pearson_per_gene(pred, expr[test])
    assert np.nanmin(r) > 0.9
    loki_default = lt.pearson_per_gene(lt.predict_expression(sim, expr[~test]), expr[test])
    assert np.nanmean(loki_default) < np.nanmean(r)  # raw weights over every spot smooth towards the mean


def test_pearson_per_gene_constant_is_nan():
    pred = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    r = lt.pearson_per_gene(pred, np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 5.0]]))
    assert r[0] == pytest.approx(1.0) and np.isnan(r[1])


def test_tangram_proportions_sum_to_one_and_follow_planted_types():
    """Tangram (clusters mode, Loki's arguments) on hand-made embeddings: 'cells' of two types with distinct
    embeddings; spots that are copies of one type's cells get that type as dominant; proportions sum to 1."""
    pytest.importorskip("tangram")
    import anndata as ad

    from tissuelens.embed.loki.run import run_decompose

    rng = np.random.default_rng(4)
    centres = rng.normal(size=(2, 12)) * 2
    cell_type = np.repeat(["a", "b"], 30)
    cells = centres[(cell_type == "b").astype(int)] + 0.1 * rng.normal(size=(60, 12))
    ref = ad.AnnData(obs=pd.DataFrame({"group": cell_type}, index=[f"c{i}" for i in range(60)]))
    ref.obsm["X_loki_text"] = cells.astype(np.float32)
    spot_type = np.repeat([0, 1], 20)
    st = ad.AnnData(obs=pd.DataFrame(index=[f"s{i}" for i in range(40)]))
    st.obsm["X_loki_image"] = (centres[spot_type] + 0.1 * rng.normal(size=(40, 12))).astype(np.float32)
    st.obsm["spatial"] = rng.uniform(size=(40, 2))
    settings = {"label_key": "group", "spot_embedding": "auto", "num_epochs": 300, "device": "cpu"}
    table, summary = run_decompose(st, ref, settings, 0, "st.h5ad", "ref")
    props = table[["a", "b"]].to_numpy()
    np.testing.assert_allclose(props.sum(axis=1), 1.0)
    assert (table["dominant"].to_numpy() == np.array(["a", "b"])[spot_type]).all()
    assert summary["spot_embedding"] == "image" and summary["cell_types"] == ["a", "b"]
    del ref.obs["group"]
    with pytest.raises(InputError, match="reference dataset 'ref' has no labels"):
        run_decompose(st, ref, settings, 0, "st.h5ad", "ref")


def test_proportions_normalise_rows():
    from tissuelens.embed.loki.decompose import proportions

    np.testing.assert_allclose(proportions(np.array([[1.0, 3.0], [0.0, 0.0]])), [[0.25, 0.75], [0.0, 0.0]])


# -- decompose: abundance weights, seeding, Loki's NMS mode ----------------------------------------


def _reference(counts: dict, centres, rng):
    import anndata as ad

    labels = np.concatenate([[t] * n for t, n in counts.items()])
    idx = np.concatenate([[j] * n for j, n in enumerate(counts.values())])
    ref = ad.AnnData(obs=pd.DataFrame({"group": labels}, index=[f"c{i}" for i in range(len(labels))]))
    ref.obsm["X_loki_text"] = (centres[idx] + 0.1 * rng.normal(size=(len(labels), centres.shape[1]))).astype(np.float32)
    return ref


def _spots(x):
    import anndata as ad

    st = ad.AnnData(obs=pd.DataFrame(index=[f"s{i}" for i in range(len(x))]))
    st.obsm["X_loki_image"] = np.asarray(x, dtype=np.float32)
    st.obsm["spatial"] = np.column_stack([np.arange(len(x)), np.zeros(len(x))]).astype(float)
    return st


DECOMPOSE = {"label_key": "group", "spot_embedding": "auto", "num_epochs": 300, "device": "cpu"}


def test_unbalanced_reference_mapped_uniformly_gives_its_fractions():
    """Clusters mode: each type's mapping row sums to 1 over the spots. A 90/10 reference whose two types are
    both spread uniformly over the spots is 90/10 in every spot (Loki's tutorials weight by the reference's
    type counts); dividing the projection by its row sum alone says 50/50. The map goes through Tangram's own
    project_cell_annotations."""
    pytest.importorskip("tangram")
    import anndata as ad
    import tangram as tg

    from tissuelens.embed.loki.decompose import abundance_weights, proportions

    n_spots = 25
    ad_map = ad.AnnData(np.full((2, n_spots), 1.0 / n_spots, dtype=np.float32),
                        obs=pd.DataFrame({"cell_type": ["a", "b"]}, index=["0", "1"]),
                        var=pd.DataFrame(index=[f"s{i}" for i in range(n_spots)]))
    st = _spots(np.zeros((n_spots, 2)))
    tg.project_cell_annotations(ad_map, st, annotation="cell_type")
    pred = st.obsm["tangram_ct_pred"][["a", "b"]].to_numpy()
    labels = np.array(["a"] * 90 + ["b"] * 10)
    w = abundance_weights(["a", "b"], labels, {"weights": "reference"}, "st.h5ad")
    assert w.tolist() == [90.0, 10.0]
    np.testing.assert_allclose(proportions(pred, w), np.tile([0.9, 0.1], (n_spots, 1)), atol=0.01)
    np.testing.assert_allclose(proportions(pred, None), 0.5)  # weights: none, the previous behaviour
    given = abundance_weights(["a", "b"], labels, {"weights": "fractions", "fractions": {"a": 3, "b": 1}}, "st.h5ad")
    np.testing.assert_allclose(proportions(pred, given), np.tile([0.75, 0.25], (n_spots, 1)))


def test_decompose_end_to_end_weights_by_the_reference_and_saves_the_mapping():
    """Tangram on a 90/10 reference and spots that are all the same 90/10 mixture: the weighted mean
    proportions are near 0.9/0.1 (the map is near uniform, not exactly); the raw projection is saved."""
    pytest.importorskip("tangram")
    from tissuelens.embed.loki.run import run_decompose

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(2, 12)) * 2
    ref = _reference({"a": 90, "b": 10}, centres, rng)
    st = _spots(np.tile(0.9 * centres[0] + 0.1 * centres[1], (30, 1)))
    table, summary = run_decompose(st, ref, DECOMPOSE, 0, "st.h5ad", "ref")
    assert summary["reference_counts"] == {"a": 90, "b": 10} and summary["weights"] == "reference"
    assert summary["mean_proportions"]["a"] == pytest.approx(0.9, abs=0.03)
    raw = table[["mapping:a", "mapping:b"]].to_numpy()
    np.testing.assert_allclose(raw.sum(axis=0), 1.0, atol=1e-5)  # each type's row sums to 1 over the spots
    w = raw * [90, 10]
    np.testing.assert_allclose(table[["a", "b"]].to_numpy(), w / w.sum(axis=1, keepdims=True), rtol=1e-12)


def test_decompose_is_reproducible_at_seed_0_whatever_numpys_global_state():
    """tangram-sc seeds itself only `if random_state:`; the step seeds it for every seed, 0 included, and
    leaves numpy's global state as it found it."""
    pytest.importorskip("tangram")
    from tissuelens.embed.loki.run import run_decompose

    rng = np.random.default_rng(6)
    centres = rng.normal(size=(3, 10)) * 2
    ref = _reference({"a": 20, "b": 12, "c": 8}, centres, rng)
    st = _spots(centres[rng.integers(0, 3, size=30)] + 0.2 * rng.normal(size=(30, 10)))
    settings = {**DECOMPOSE, "num_epochs": 50}
    np.random.seed(1)
    first, s1 = run_decompose(st, ref, settings, 0, "st.h5ad", "ref")
    after = np.random.random()
    np.random.seed(1)
    np.random.random()
    np.random.seed(12345)
    second, s2 = run_decompose(st, ref, settings, 0, "st.h5ad", "ref")
    pd.testing.assert_frame_equal(first, second)
    assert s1["mean_proportions"] == s2["mean_proportions"]
    np.random.seed(1)
    assert np.random.random() == after  # numpy's global state restored
    other, _ = run_decompose(st, ref, settings, 3, "st.h5ad", "ref")
    assert not np.allclose(other[["a", "b", "c"]].to_numpy(), first[["a", "b", "c"]].to_numpy())


def loki_nms(ct_pred: pd.DataFrame, major_types, min_percentile=5, max_percentile=95) -> pd.DataFrame:
    """Transcription of Loki's normalize_percentile + cell_type_decompose(NMS_mode=True) on tangram_ct_pred."""
    df = ct_pred.copy()
    for col in major_types:
        lo, hi = np.percentile(df[col], min_percentile), np.percentile(df[col], max_percentile)
        df[col] = np.clip(df[col], lo, hi)
        df[col] = (df[col] - lo) / (hi - lo)
    sub = df[major_types].copy()
    return sub.where(sub.eq(sub.max(axis=1), axis=0), other=0)


def test_nms_mode_is_lokis_arithmetic():
    from tissuelens.embed.loki.decompose import decomposition_table

    rng = np.random.default_rng(7)
    raw = rng.dirichlet(np.ones(40), size=3).T  # 40 spots x 3 types, each type's column sums to 1
    types = ["a", "b", "c"]
    st = _spots(np.zeros((40, 2)))
    settings = {"nms_mode": True, "major_types": ["a", "c"], "min_percentile": 10, "max_percentile": 90}
    table = decomposition_table(raw, types, np.array([5.0, 3.0, 2.0]), settings, st)
    want = loki_nms(pd.DataFrame(raw, columns=types), ["a", "c"], 10, 90)
    np.testing.assert_allclose(table[["nms:a", "nms:c"]].to_numpy(), want.to_numpy(), atol=1e-12)
    assert "nms:b" not in table and table[["percentile:a", "percentile:c"]].to_numpy().max() == pytest.approx(1.0)
    np.testing.assert_allclose(table[["mapping:a", "mapping:b", "mapping:c"]].to_numpy(), raw)
    plain = decomposition_table(raw, types, None, {}, st)
    assert not any(c.startswith(("nms:", "percentile:", "cells:")) for c in plain.columns)


def test_cells_per_spot_from_a_cell_count_column():
    from tissuelens.embed.loki.decompose import decomposition_table

    st = _spots(np.zeros((3, 2)))
    st.obs["cell_num"] = [10, 0, 4]
    raw = np.array([[0.5, 0.1], [0.3, 0.3], [0.2, 0.6]])
    table = decomposition_table(raw, ["a", "b"], np.array([1.0, 1.0]), {"cell_count_key": "cell_num"}, st)
    np.testing.assert_allclose(table[["cells:a", "cells:b"]].to_numpy(), [[10 * 5 / 6, 10 / 6], [0, 0], [1.0, 3.0]])
    assert table["n_cells"].tolist() == [10, 0, 4]
    st.obs["cell_num"] = [1, -1, 2]
    with pytest.raises(InputError, match="obs\\['cell_num'\\] has negative or missing counts"):
        decomposition_table(raw, ["a", "b"], None, {"cell_count_key": "cell_num"}, st)
    with pytest.raises(InputError, match="obs has no column 'nope'"):
        decomposition_table(raw, ["a", "b"], None, {"cell_count_key": "nope"}, st)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"weights": "fractions"}, "fractions needs embed.loki.decompose.fractions"),
        ({"weights": "fractions", "fractions": {"a": 1}}, "fractions: no fraction for b"),
        ({"weights": "fractions", "fractions": {"a": 1, "b": 1, "z": 1}}, "fractions: no reference cells of type z"),
        ({"weights": "fractions", "fractions": {"a": 0, "b": 0}}, "not all 0"),
    ],
)
def test_bad_fractions_name_the_setting(settings, message):
    from tissuelens.embed.loki.decompose import abundance_weights

    with pytest.raises(InputError, match=message):
        abundance_weights(["a", "b"], np.array(["a", "b"]), settings, "st.h5ad")


# -- PredEx across slides and by spatial blocks -------------------------------------------------------


def test_block_split_holds_out_whole_blocks_per_section():
    rng = np.random.default_rng(8)
    xy = rng.uniform(0, 100, size=(400, 2))
    test = lt.block_split(xy, 0.25, 4, seed=0)
    cell = np.minimum((xy - xy.min(0)) / (xy.max(0) - xy.min(0)) * 4, 3).astype(int)
    ids = cell[:, 0] * 4 + cell[:, 1]
    for b in np.unique(ids):  # a block is all test or all train
        assert len(set(test[ids == b])) == 1
    assert 0.2 <= test.mean() <= 0.35 and (lt.block_split(xy, 0.25, 4, seed=0) == test).all()
    assert not (lt.block_split(xy, 0.25, 4, seed=1) == test).all()
    # two sections in the same coordinate frame: blocks never join them
    sections = np.repeat(["s1", "s2"], 200)
    t2 = lt.block_split(xy, 0.25, 2, seed=0, sections=sections)
    for s in ("s1", "s2"):
        m = sections == s
        c = np.minimum((xy[m] - xy[m].min(0)) / (xy[m].max(0) - xy[m].min(0)) * 2, 1).astype(int)
        for b in np.unique(c[:, 0] * 2 + c[:, 1]):
            assert len(set(t2[m][(c[:, 0] * 2 + c[:, 1]) == b])) == 1
    assert 0 < lt.block_split(xy, 0.99, 2, seed=0).sum() < 400  # never every block


def _section(rng, n, w, freq=0.08):
    """A synthetic section of one tissue: a latent state set by position (two smooth waves); image and text
    embeddings are noisy views of the state, expression a linear map of it."""
    import anndata as ad

    xy = rng.uniform(0, 100, size=(n, 2))
    z = np.column_stack([np.sin(freq * xy[:, 0]), np.cos(freq * xy[:, 1]), np.sin(freq * (xy[:, 0] + xy[:, 1]))])
    emb = ad.AnnData(obs=pd.DataFrame(index=[f"spot{i}" for i in range(n)]))
    emb.obsm["spatial"] = xy
    emb.obsm["X_loki_image"] = np.column_stack([z, 0.05 * rng.normal(size=(n, 5))]) + 0.05 * rng.normal(size=(n, 8))
    emb.obsm["X_loki_text"] = np.column_stack([z, 0.05 * rng.normal(size=(n, 5))]) + 0.05 * rng.normal(size=(n, 8))
    expr = z @ w + 0.1 * rng.normal(size=(n, w.shape[1]))
    pre = ad.AnnData(expr.astype(np.float32), obs=emb.obs.copy(), var=pd.DataFrame(index=[f"G{j}" for j in range(w.shape[1])]))
    pre.var["highly_variable"] = True
    return emb, pre


PREDEX = {"test_fraction": 0.25, "genes": "highly_variable", "top_k": 10, "temperature": 0.05, "report_genes": 2}


def test_predex_trained_on_one_section_scores_the_other_beside_the_within_slide_score():
    from tissuelens.embed.loki.run import run_predex

    rng = np.random.default_rng(9)
    w = rng.normal(size=(3, 6))
    train_emb, train_pre = _section(rng, 500, w)
    emb, pre = _section(rng, 400, w)
    genes, spots, s = run_predex(emb, pre, PREDEX, 0, "b.h5ad", [("section_a", train_emb, train_pre)])
    assert s["evaluation"] == "cross_slide" and s["reference"] == ["section_a"]
    assert s["n_train"] == 500 and s["n_test"] == 400 and s["within_slide"]["split"] == "blocks"
    assert s["pearson_mean"] > 0.9 and s["within_slide"]["pearson_mean"] > 0.5
    assert 0.15 <= s["within_slide"]["n_test"] / 400 <= 0.4
    assert {"pearson", "pearson_within_slide"} <= set(genes) and genes["pearson"].is_monotonic_decreasing
    assert len(spots) == 400 * 2  # every spot of the predicted slide, best genes
    from tissuelens.report.embed import _predex_sentence

    said = _predex_sentence(s)
    assert "from the 500 spots of reference slide(s) section_a" in said and "Within this slide (blocks split" in said
    # the same numbers by hand: Loki's weighted mean over the reference slide's spots
    sim = lt.similarity(emb.obsm["X_loki_image"], train_emb.obsm["X_loki_text"])
    pred = lt.predict_expression(sim, np.asarray(train_pre.X, dtype=np.float64), 10, 0.05)
    r = lt.pearson_per_gene(pred, np.asarray(pre.X, dtype=np.float64))
    np.testing.assert_allclose(genes.set_index("gene").loc[[f"G{j}" for j in range(6)], "pearson"], r, rtol=1e-10)
    # genes only some slides have are dropped; none shared is an error
    other = train_pre[:, :4].copy()
    g2, _, s2 = run_predex(emb, pre, PREDEX, 0, "b.h5ad", [("section_a", train_emb, other)])
    assert sorted(g2["gene"]) == ["G0", "G1", "G2", "G3"] and s2["n_genes"] == 4
    renamed = train_pre.copy()
    renamed.var_names = [f"X{j}" for j in range(6)]
    with pytest.raises(InputError, match="no gene of this dataset's PredEx genes is in the reference datasets"):
        run_predex(emb, pre, PREDEX, 0, "b.h5ad", [("section_a", train_emb, renamed)])


def test_random_split_is_optimistic_where_blocks_are_not():
    """Embeddings that only say where a spot is (neighbours look alike) and expression that is a spatial
    pattern: random held-out spots are predicted from their neighbours, whole blocks are not."""
    import anndata as ad

    from tissuelens.embed.loki.run import run_predex

    rng = np.random.default_rng(10)
    n = 900
    xy = rng.uniform(0, 100, size=(n, 2))
    emb = ad.AnnData(obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]))
    emb.obsm["spatial"] = xy
    where = np.column_stack([np.cos(xy / 100 * np.pi), np.sin(xy / 100 * np.pi)])
    emb.obsm["X_loki_image"] = emb.obsm["X_loki_text"] = where
    expr = np.column_stack([np.sin(xy[:, 0] / 7) + np.cos(xy[:, 1] / 9), np.sin((xy[:, 0] + xy[:, 1]) / 8)])
    pre = ad.AnnData(expr.astype(np.float32), obs=emb.obs.copy(), var=pd.DataFrame(index=["A", "B"]))
    settings = {**PREDEX, "genes": "all", "top_k": 5}
    _, _, rand = run_predex(emb, pre, {**settings, "split": "random"}, 0, "d.h5ad")
    _, _, blocks = run_predex(emb, pre, {**settings, "split": "blocks", "blocks": 3}, 0, "d.h5ad")
    assert rand["evaluation"] == "within_slide_random" and blocks["evaluation"] == "within_slide_blocks"
    assert rand["pearson_mean"] > 0.9 and blocks["pearson_mean"] < rand["pearson_mean"] - 0.3
    del emb.obsm["spatial"]
    with pytest.raises(InputError, match="split: blocks needs spot coordinates"):
        run_predex(emb, pre, settings, 0, "d.h5ad")


def loki_annotate_with_bulk(img_features, bulk_features):
    """Transcription of Loki's annotate_with_bulk (tensor=False): img_features (dim, spots), bulk (dim,)."""
    similarity = np.dot(img_features.T, bulk_features)
    m = np.max(similarity)
    similarity = np.exp(similarity - m) / np.sum(np.exp(similarity - m))
    return (similarity - np.min(similarity)) / (np.max(similarity) - np.min(similarity))


def test_bulk_scores_are_lokis_annotate_with_bulk():
    from tissuelens.embed.loki.tasks import bulk_scores

    rng = np.random.default_rng(11)
    img, bulk = _unit(rng.normal(size=(30, 8))), _unit(rng.normal(size=(2, 8)))
    got = bulk_scores(img, bulk)
    for j in range(2):
        np.testing.assert_allclose(got[:, j], loki_annotate_with_bulk(img.T, bulk[j]), rtol=1e-10)
    assert got.min() == 0.0 and got.max() == 1.0


def test_report_shows_bulk_only_annotation(tmp_path):
    from tissuelens.io import write_json
    from tissuelens.report.context import Context
    from tissuelens.report.embed import loki_tasks
    from tissuelens.report.html import Figures

    rng = np.random.default_rng(12)
    t = pd.DataFrame({"obs_name": [f"s{i}" for i in range(20)], "x": rng.uniform(size=20), "y": rng.uniform(size=20),
                      "bulk:tumour": rng.uniform(size=20)})
    t.to_parquet(tmp_path / "annotation.parquet")
    write_json({"cell_types": [], "bulk": {"tumour": {"sentence": "A B"}}}, tmp_path / "annotation.json")
    ctx = Context("demo", None, {}, {}, {}, {"seed": 0}, Figures(out_dir=tmp_path / "fig"))
    html = loki_tasks(ctx, "loki", {"annotation.parquet": tmp_path / "annotation.parquet", "annotation.json": tmp_path / "annotation.json"})
    assert "Bulk RNA-seq samples" in html and (tmp_path / "fig" / "embed" / "loki-bulk-loki.png").exists()
    assert not (tmp_path / "fig" / "embed" / "loki-annotation-loki.png").exists()
