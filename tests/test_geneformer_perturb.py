"""In-silico perturbation against a transcription of Geneformer's InSilicoPerturber arithmetic.

The `up_*` helpers restate upstream's perturber_utils / isp_perturb_set(_special) steps on plain lists
and one cell at a time (no padding): the sequence edits, the overflow count from the *perturbed*
length, the trim of the original, the removal of perturbed positions, the slices that drop the
overexpressed genes and <cls>/<eos>, the per-position cosines and their mean, the mean-pooled cells and
the goal-state shift. Our batched implementation must give the same numbers on a 2-layer model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.geneformer_fixtures import embed_defaults, gene_ids, small_adata, tiny_checkpoint

from tissuelens.embed.geneformer.extract import Encoder
from tissuelens.embed.geneformer.perturb import Job, perturb_sequence, resolve_emb_mode, score_jobs, trim_original
from tissuelens.embed.geneformer.tokenizer import GeneVocab, tokenize
from tissuelens.embed.geneformer.perturb_stats import bh_fdr, summarise
from tissuelens.errors import InputError
from tissuelens.models import fetch_model
from tissuelens.models.geneformer import load_checkpoint

LAYER = -1  # upstream's emb_layer; hidden_states index = n_layers + emb_layer


# -- upstream, transcribed -----------------------------------------------------------------------


def up_edit(ids, toks, kind, max_len, special):
    """make_group_perturbation_batch: (perturbed ids, perturb_index, n_overflow)."""
    idx = [ids.index(t) for t in toks if t in ids]
    pidx = idx if idx else [-100]
    pert = list(ids)
    if kind == "delete":
        for i in sorted(pidx, reverse=True):
            del pert[i]
        return pert, pidx, None
    if pidx != [-100]:
        for i in sorted(pidx, reverse=True):
            del pert[i]
    for t in toks[::-1]:
        pert.insert(1 if special else 0, t)
    if len(pert) > max_len:
        pert = pert[: max_len - 1] + [pert[-1]] if special else pert[:max_len]
    n_overflow = len(pert) + (len(toks) - len(idx)) - max_len  # calc_n_overflow(max_len, example["length"] after the edit, ...)
    return pert, pidx, n_overflow


def up_truncate(ids, n_overflow, special):
    if special:  # truncate_by_n_overflow_special
        return ids[: len(ids) - n_overflow - 1] + [ids[-1]] if n_overflow > 0 else list(ids)
    return ids[: len(ids) - n_overflow]  # truncate_by_n_overflow


def up_hidden(model, ids, n_layers):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out.hidden_states[n_layers + LAYER]  # (1, len, d)


def up_remove(emb, pidx):
    keep = [i for i in range(emb.size(1)) if i not in pidx]
    return emb[:, keep]


COS2, COS1 = torch.nn.CosineSimilarity(dim=2), torch.nn.CosineSimilarity(dim=1)


def upstream_set(model, n_layers, ids, toks, kind, max_len, emb_mode, special_ids=None, goal=None):
    """isp_perturb_set (V1 cell modes) / isp_perturb_set_special (V2 cls modes) for one cell.

    Returns (cell value, {affected token: gene cosine}); the cell value is the cosine (no goal) or the
    shift toward `goal`."""
    special = special_ids is not None
    pert, pidx, n_overflow = up_edit(ids, toks, kind, max_len, special)
    orig = up_truncate(ids, n_overflow, special) if kind == "overexpress" else list(ids)
    fo, fp = up_hidden(model, orig, n_layers), up_hidden(model, pert, n_layers)
    n = len(toks)
    pidx_o = [None] if pidx == [-100] else pidx
    original_emb = up_remove(fo, pidx_o)
    if not special:
        pert_emb = fp[:, n:] if kind == "overexpress" else fp[:, : len(pert)]
        gene_cos = COS2(pert_emb, original_emb)
        if goal is None:
            value = gene_cos.sum(1) / (len(pert) - (n if kind == "overexpress" else 0))  # mean_nonpadding_embs
        else:
            o_cell, p_cell = fo.mean(1), fp.mean(1)
            value = COS1(p_cell, goal[None]) - COS1(o_cell, goal[None])  # cos_sim_shift
        gene_list = [g for g in orig if g not in toks][: pert_emb.size(1)]
    else:
        original_emb = original_emb[:, 1:-1]
        pert_emb = fp[:, 1 + n : -1] if kind == "overexpress" else fp[:, 1 : len(pert) - 1]
        original_emb = original_emb[:, : pert_emb.size(1)]
        gene_cos = COS2(pert_emb, original_emb)
        o_cls, p_cls = fo[:, 0], fp[:, 0]
        value = COS1(p_cls, o_cls) if goal is None else COS1(p_cls, goal[None]) - COS1(o_cls, goal[None])
        gene_list = [g for g in orig if g not in list(toks) + list(special_ids)][: pert_emb.size(1)]
    return float(value), {g: float(gene_cos[0, j]) for j, g in enumerate(gene_list)}


# -- fixtures -------------------------------------------------------------------------------------


def _sharpen(bert):
    """Strong, peaky attention: random init (std 0.02) leaves context effects near float noise."""
    with torch.no_grad():
        for layer in bert.encoder.layer:
            att = layer.attention
            for w, scale in ((att.self.query.weight, 5), (att.self.key.weight, 5), (att.self.value.weight, 30), (att.output.dense.weight, 3)):
                w.mul_(scale)


def _loaded(ck, tokens):
    model, enc = ck.load_model("cpu"), Encoder(ck, torch.device("cpu"), "fp32", upto=ck.n_layers + LAYER)
    _sharpen(model.bert)
    _sharpen(enc.bert)
    return ck, tokens, model, enc


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    ck = load_checkpoint(tiny_checkpoint(tmp_path_factory.mktemp("gf1"), "V1", n_layers=2, max_input_size=16))
    return _loaded(ck, tokenize(small_adata(n_cells=12), GeneVocab.from_checkpoint(ck)))


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    ck = load_checkpoint(tiny_checkpoint(tmp_path_factory.mktemp("gf2"), "V2", n_layers=2, max_input_size=18))
    return _loaded(ck, tokenize(small_adata(n_cells=12), GeneVocab.from_checkpoint(ck)))


def _ours(enc, tokens, cell, toks, kind, emb_mode, max_len, goal=None, batch_size=5):
    [s] = score_jobs(enc, tokens, [Job(cell, tuple(toks), kind)], layer=enc.ckpt.n_layers + LAYER, emb_mode=emb_mode,
                     max_len=max_len, batch_size=batch_size, goal=goal)
    return s


def _cases(tokens, max_len, special):
    """(cell, tokens, kind): deletions of one gene and a pair, overexpression of a present gene, an absent
    gene and a half-present pair, on full-length cells (so overexpressing an absent gene overflows)."""
    lo = 1 if special else 0
    full = [c for c in range(tokens.n_cells) if tokens.lengths[c] == max_len]
    assert len(full) >= 2
    out = []
    for c in full[:2]:
        seq = tokens.cell(c).tolist()
        genes = seq[lo : len(seq) - lo]
        absent = [t for t in range(5, 40) if t not in seq and t not in (0, 1, 2, 3)][:2]
        out += [(c, [genes[3]], "delete"), (c, [genes[1], genes[-2]], "delete"), (c, [genes[4]], "overexpress"),
                (c, [absent[0]], "overexpress"), (c, [genes[6], absent[1]], "overexpress")]
    return out


# -- scores against upstream --------------------------------------------------------------------


def test_v1_cell_mode_matches_upstream_per_gene_mean(v1):
    ck, tokens, model, enc = v1
    max_len = 16
    for c, toks, kind in _cases(tokens, max_len, special=False):
        want, want_genes = upstream_set(model, ck.n_layers, tokens.cell(c).tolist(), toks, kind, max_len, "cell_and_gene")
        got = _ours(enc, tokens, c, toks, kind, "cell_and_gene", max_len)
        assert got.cos_sim == pytest.approx(want, abs=1e-5), (c, toks, kind)
        assert dict(zip(got.genes.tolist(), got.gene_cos.tolist())) == pytest.approx(want_genes, abs=1e-5)
        # the pooled-cell cosine (what we used to report) is a different number
        seq = tokens.cell(c)
        orig, pert = trim_original(seq, toks, kind, False, max_len), perturb_sequence(seq, toks, kind, False, max_len)
        o, p = up_hidden(model, orig.tolist(), ck.n_layers)[0], up_hidden(model, pert.tolist(), ck.n_layers)[0]
        shared = [t for t in orig.tolist() if t in pert.tolist() and t not in toks]
        pooled = COS1(o[[orig.tolist().index(t) for t in shared]].mean(0, keepdim=True),
                      p[[pert.tolist().index(t) for t in shared]].mean(0, keepdim=True))
        assert abs(float(pooled) - got.cos_sim) > 1e-4


def test_v1_goal_shift_pools_full_sequences_as_upstream(v1):
    ck, tokens, model, enc = v1
    goal = torch.from_numpy(np.random.default_rng(0).normal(size=ck.d_model).astype(np.float32))
    for c, toks, kind in _cases(tokens, 16, special=False):
        want, _ = upstream_set(model, ck.n_layers, tokens.cell(c).tolist(), toks, kind, 16, "cell", goal=goal)
        got = _ours(enc, tokens, c, toks, kind, "cell", 16, goal=goal.numpy())
        assert got.shift == pytest.approx(want, abs=1e-5), (c, toks, kind)


def test_v2_cls_and_gene_matches_upstream(v2):
    ck, tokens, model, enc = v2
    specials = [ck.cls_id, ck.eos_id]
    goal = torch.from_numpy(np.random.default_rng(1).normal(size=ck.d_model).astype(np.float32))
    for c, toks, kind in _cases(tokens, 18, special=True):
        ids = tokens.cell(c).tolist()
        want, want_genes = upstream_set(model, ck.n_layers, ids, toks, kind, 18, "cls_and_gene", specials)
        got = _ours(enc, tokens, c, toks, kind, "cls_and_gene", 18)
        assert got.cos_sim == pytest.approx(want, abs=1e-5)
        assert dict(zip(got.genes.tolist(), got.gene_cos.tolist())) == pytest.approx(want_genes, abs=1e-5), (c, toks, kind)
        want_shift, _ = upstream_set(model, ck.n_layers, ids, toks, kind, 18, "cls", specials, goal=goal)
        assert _ours(enc, tokens, c, toks, kind, "cls", 18, goal=goal.numpy()).shift == pytest.approx(want_shift, abs=1e-5)


def test_overflow_trim_changes_the_overexpression_score(v1):
    ck, tokens, model, enc = v1
    c = next(c for c in range(tokens.n_cells) if tokens.lengths[c] == 16)
    seq = tokens.cell(c)
    absent = next(t for t in range(5, 40) if t not in seq)
    trimmed = trim_original(seq, [absent], "overexpress", False, 16)
    assert trimmed.tolist() == seq[:-1].tolist()  # the gene pushed out of the perturbed cell goes from the original too
    assert trim_original(seq, [int(seq[2])], "overexpress", False, 16).tolist() == seq.tolist()  # nothing added, nothing cut
    got = _ours(enc, tokens, c, [absent], "overexpress", "cell", 16)
    # untrimmed original (the last gene's context differs): the per-gene mean moves
    pert = perturb_sequence(seq, [absent], "overexpress", False, 16).tolist()
    o, p = up_hidden(model, seq.tolist(), ck.n_layers)[0], up_hidden(model, pert, ck.n_layers)[0]
    untrimmed = COS2(p[None, 1:], o[None, :-1]).mean()
    assert abs(float(untrimmed) - got.cos_sim) > 1e-4


def test_batching_and_original_reuse_do_not_change_scores(v2):
    ck, tokens, _, enc = v2
    jobs = [Job(c, tuple(t), k, i) for i, (c, t, k) in enumerate(_cases(tokens, 18, special=True))]
    one = [score_jobs(enc, tokens, [j], layer=ck.n_layers + LAYER, emb_mode="cls_and_gene", max_len=18, batch_size=1)[0] for j in jobs]
    many = score_jobs(enc, tokens, jobs, layer=ck.n_layers + LAYER, emb_mode="cls_and_gene", max_len=18, batch_size=7)
    np.testing.assert_allclose([s.cos_sim for s in many], [s.cos_sim for s in one], atol=1e-5)
    np.testing.assert_allclose(np.concatenate([s.gene_cos for s in many]), np.concatenate([s.gene_cos for s in one]), atol=1e-5)


# -- sequence edits ------------------------------------------------------------------------------


def test_perturb_sequence_edits():
    v2 = np.array([2, 10, 11, 12, 13, 3])
    assert perturb_sequence(v2, [11], "delete", True, 6).tolist() == [2, 10, 12, 13, 3]
    assert perturb_sequence(v2, [11, 13], "delete", True, 6).tolist() == [2, 10, 12, 3]
    assert perturb_sequence(v2, [11, 99], "delete", True, 6) is None  # a set member the cell lacks: not perturbed
    assert perturb_sequence(v2, [12], "overexpress", True, 6).tolist() == [2, 12, 10, 11, 13, 3]
    assert perturb_sequence(v2, [99, 12], "overexpress", True, 6).tolist() == [2, 99, 12, 10, 11, 3]  # set order, <eos> last
    assert trim_original(v2, [99, 12], "overexpress", True, 6).tolist() == [2, 10, 11, 12, 3]
    assert trim_original(v2, [98, 99], "overexpress", True, 7).tolist() == [2, 10, 11, 12, 3]
    v1 = np.array([10, 11, 12])
    assert perturb_sequence(v1, [99], "overexpress", False, 3).tolist() == [99, 10, 11]
    assert trim_original(v1, [99], "overexpress", False, 3).tolist() == [10, 11]
    assert trim_original(v1, [99], "delete", False, 3).tolist() == [10, 11, 12]


def test_inhibit_and_activate_move_by_quartiles():
    genes = np.arange(100, 116)  # 16 genes: quartiles of 4, middles at 2, 6, 10, 14
    def g(gene):
        return perturb_sequence(genes, [gene], kind, False, 16, shift).tolist().index(gene)

    kind, shift = "activate", 1
    assert g(115) == 10 and g(109) == 6 and g(105) == 2 and g(101) == 0  # 4th -> mid 3rd, ..., 1st -> front
    kind, shift = "inhibit", 2
    assert g(100) == 10 and g(105) == 14 and g(110) == 15 and g(115) == 15  # 1st -> mid 3rd, 2nd -> mid 4th, else bottom
    out = perturb_sequence(np.concatenate([[2], genes, [3]]), [101], "inhibit", True, 18, 1)
    assert out[0] == 2 and out[-1] == 3 and out.tolist().index(101) == 1 + 6 and sorted(out.tolist()) == sorted([2, 3, *genes])
    assert perturb_sequence(genes, [99], "activate", False, 16, 1) is None
    with pytest.raises(InputError, match="rank_shift"):
        perturb_sequence(genes, [101], "inhibit", False, 16, None)


def test_emb_mode_rules():
    assert resolve_emb_mode("auto", True) == "cls" and resolve_emb_mode("auto", False) == "cell"
    with pytest.raises(InputError, match="emb_mode: 'cls' needs a V2"):
        resolve_emb_mode("cls", False)
    with pytest.raises(InputError, match="allow_mean_v2"):
        resolve_emb_mode("cell_and_gene", True)
    assert resolve_emb_mode("cell_and_gene", True, allow_mean_v2=True) == "cell_and_gene"


# -- statistics ----------------------------------------------------------------------------------


def up_goal_state_shift_all(result_dict: dict, genes: list, goal: str) -> pd.DataFrame:
    """Transcription of upstream's isp_stats_to_goal_state, genes_perturbed == "all", no alt states:
    the random megalist = every gene's shifts in gene order (down-sampled to 100,000 after random.seed(42)),
    ranksums(megalist, gene) per gene, statsmodels fdr_bh, Sig = FDR < 0.05, sorted Sig, shift, FDR."""
    import random

    import statsmodels.stats.multitest as smt
    from scipy.stats import ranksums

    mega = []
    for token in genes:
        mega += result_dict[goal].get((token, "cell_emb"), [])
    if len(mega) > 100_000:
        random.seed(42)
        mega = random.sample(mega, k=100_000)
    rows = []
    for i, token in enumerate(genes):
        own = result_dict[goal].get((token, "cell_emb"), [])
        rows.append({"Gene": token, "Shift_to_goal_end": np.mean(own), "Goal_end_vs_random_pval": ranksums(mega, own).pvalue})
    df = pd.DataFrame(rows)
    df["Goal_end_FDR"] = list(smt.multipletests(list(df["Goal_end_vs_random_pval"]), alpha=0.05, method="fdr_bh")[1])
    df["Sig"] = [1 if f < 0.05 else 0 for f in df["Goal_end_FDR"]]
    return df.sort_values(by=["Sig", "Shift_to_goal_end", "Goal_end_FDR"], ascending=[False, False, True])


def _shift_rows(effects: dict, n_cells: int, rng, sd=0.05, kind="delete"):
    """Per-cell rows of single-gene perturbations: gene -> mean shift."""
    return pd.DataFrame([{"cell": c, "perturbed": g, "genes": g, "symbols": g, "perturbation": kind,
                          "cos_sim": 0.9, "shift": mu + rng.normal(0, sd), "control_cos_sim": 0.9,
                          "control_shift": rng.normal(0, sd), "size": 1} for g, mu in effects.items() for c in range(n_cells)])


@pytest.mark.parametrize("n_genes, n_cells", [(40, 12), (60, 1800)])  # the second pool is down-sampled to 100,000
def test_goal_state_shift_against_every_gene_is_upstreams_arithmetic(n_genes, n_cells):
    rng = np.random.default_rng(0)
    effects = {f"G{i:03d}": (0.3 if i == 3 else -0.2 if i == 7 else 0.0) for i in range(n_genes)}
    cells = _shift_rows(effects, n_cells, rng)
    ours = summarise(cells, "goal_state_shift", goal=True, background=cells, background_kind="all_genes").set_index("perturbed")
    result = {"goal": {(g, "cell_emb"): t["shift"].tolist() for g, t in cells.groupby("perturbed", sort=True)}}
    up = up_goal_state_shift_all(result, sorted(effects), "goal").set_index("Gene")
    np.testing.assert_allclose(ours.loc[up.index, "pvalue"], up["Goal_end_vs_random_pval"], rtol=1e-10)
    np.testing.assert_allclose(ours.loc[up.index, "fdr"], up["Goal_end_FDR"], rtol=1e-10)
    np.testing.assert_allclose(ours.loc[up.index, "shift_mean"], up["Shift_to_goal_end"], rtol=1e-12)
    assert (ours.loc[up.index, "significant"].astype(int) == up["Sig"]).all()
    ordered = summarise(cells, "goal_state_shift", goal=True, background=cells, background_kind="all_genes")
    assert ordered["perturbed"].tolist()[:2] == list(up.index[:2]) == ["G003", "G007"]  # significant, larger shift first
    assert ours.loc["G003", "n_background"] == min(n_genes * n_cells, 100_000)


def test_planted_effect_is_significant_and_a_non_effect_gene_is_not():
    """Two tested genes, a planted shift toward the goal and none, under both backgrounds: every expressed
    gene perturbed (upstream's) and random gene sets of the same size."""
    rng = np.random.default_rng(1)
    everything = _shift_rows({**{f"B{i}": 0.0 for i in range(30)}, "PLANT": 0.25, "NONE": 0.0}, 20, rng)
    tested = everything[everything["perturbed"].isin(["PLANT", "NONE"])]
    t = summarise(tested, "goal_state_shift", goal=True, background=everything, background_kind="all_genes").set_index("perturbed")
    assert t.loc["PLANT", "significant"] and t.loc["PLANT", "fdr"] < 1e-3
    assert not t.loc["NONE", "significant"] and t.loc["NONE", "pvalue"] > 0.05
    randoms = _shift_rows({f"R{i}": 0.0 for i in range(3)}, 20, rng)
    r = summarise(tested, "goal_state_shift", goal=True, background=randoms).set_index("perturbed")
    assert r.loc["PLANT", "significant"] and not r.loc["NONE", "significant"]
    assert (r["background"] == "random_genes").all() and (r["n_background"] == 60).all()


def test_one_tested_set_no_longer_gives_p_1_by_construction():
    """Pooling only the tested sets, one set was compared with itself (ranksums(x, x): p = 1). Against the
    random gene sets of its size, a planted 2-gene set is significant; sets of another size are not its null."""
    from scipy.stats import ranksums

    rng = np.random.default_rng(2)
    tested = _shift_rows({"A+B": 0.2}, 25, rng).assign(genes="A;B", size=2)
    x = tested["shift"]
    assert ranksums(x, x).pvalue == 1.0  # the old background
    null = pd.concat([_shift_rows({"r1": 0.0, "r2": 0.0}, 25, rng).assign(size=2),
                      _shift_rows({"s1": 0.2}, 25, rng).assign(size=1)])  # single genes: another size, left out
    t = summarise(tested, "goal_state_shift", goal=True, background=null)
    assert t.loc[0, "n_background"] == 50 and t.loc[0, "pvalue"] < 1e-6 and bool(t.loc[0, "significant"])
    with pytest.raises(ValueError, match="needs a background"):
        summarise(tested, "goal_state_shift", goal=True)


def up_mixture_model(dict_list: list, genes: list) -> pd.DataFrame:
    """Transcription of upstream's isp_stats_mixture_model (combos 0, no anchor) and get_impact_component."""
    from sklearn.mixture import GaussianMixture

    def impact(test_value, gm):
        impact_border, nonimpact_border = gm.means_[0][0], gm.means_[1][0]
        if test_value > nonimpact_border:
            return 0
        if test_value < impact_border:
            return 1
        raw = gm.predict([[test_value]])[0]
        return 0 if raw == 1 else 1

    avg = []
    for token in genes:
        data = []
        for d in dict_list:
            data += d.get((token, "cell_emb"), [])
        if len(data) > 0:
            avg.append(np.mean(data))
    gm = GaussianMixture(n_components=2, random_state=0).fit(np.array(avg).reshape(-1, 1))
    rows = []
    for token in genes:
        data = []
        for d in dict_list:
            data += d.get((token, "cell_emb"), [])
        mean = np.mean(data)
        rows.append({"Gene": token, "Test_avg_shift": mean, "Impact_component": impact(mean, gm),
                     "Impact_component_percent": np.mean([impact(v, gm) for v in data]) * 100})
    df = pd.DataFrame(rows).sort_values(by=["Impact_component", "Test_avg_shift"], ascending=[False, True])
    return df, gm


def _cos_rows(effects: dict, rng, n_cells=15):
    return pd.DataFrame([{"cell": c, "perturbed": g, "genes": g, "symbols": g, "perturbation": "delete",
                          "cos_sim": mu + rng.normal(0, 0.02), "shift": np.nan, "control_cos_sim": 0.99, "control_shift": np.nan}
                         for g, mu in effects.items() for c in range(n_cells)])


def test_mixture_model_is_upstreams_arithmetic():
    """Where scikit-learn's component 0 has the lower mean (here: most perturbations have an impact), ours and
    upstream's agree exactly. Upstream takes component 0 as the impact one whatever its mean; with most
    genes unaffected component 0 is the unaffected one, so ours picks the lower-mean component instead."""
    rng = np.random.default_rng(3)
    effects = {**{f"N{i}": 0.99 for i in range(4)}, **{f"I{i}": 0.90 for i in range(10)}, "EDGE": 0.95}
    cells = _cos_rows(effects, rng)
    up, gm = up_mixture_model([{(g, "cell_emb"): t["cos_sim"].tolist() for g, t in cells.groupby("perturbed")}], list(effects))
    assert gm.means_[0][0] < gm.means_[1][0]
    ours = summarise(cells, "mixture_model", goal=False).set_index("perturbed")
    up = up.set_index("Gene")
    assert (ours.loc[up.index, "impact_component"] == up["Impact_component"]).all()
    np.testing.assert_allclose(ours.loc[up.index, "impact_component_percent"], up["Impact_component_percent"])
    assert set(up.index[up["Impact_component"] == 1]) >= {f"I{i}" for i in range(10)} and up.loc["N0", "Impact_component"] == 0
    assert summarise(cells, "mixture_model", goal=False)["perturbed"].tolist()[:10] == list(up.index[:10])
    # most genes unaffected: the planted few are still the impact ones in ours
    few = _cos_rows({**{f"N{i}": 0.99 for i in range(10)}, **{f"I{i}": 0.90 for i in range(4)}}, rng)
    t = summarise(few, "mixture_model", goal=False).set_index("perturbed")
    assert set(t.index[t["impact_component"] == 1]) == {f"I{i}" for i in range(4)}
    assert (t.loc[[f"I{i}" for i in range(4)], "impact_component_percent"] > 90).all()
    with pytest.raises(ValueError, match="at least two perturbations"):
        summarise(cells[cells["perturbed"] == "N0"], "mixture_model", goal=False)


def test_vs_null_and_aggregate_follow_upstream_definitions():
    from scipy.stats import ranksums

    rng = np.random.default_rng(0)
    cells = _shift_rows({"A": 0.3, "B": 0.0, "C": -0.1}, 12, rng)
    null = cells.assign(shift=rng.normal(0, 0.05, len(cells)))
    v = summarise(cells, "vs_null", goal=True, null=null).set_index("perturbed")
    own, nul = cells.loc[cells["perturbed"] == "A", "shift"], null.loc[null["perturbed"] == "A", "shift"]
    assert v.loc["A", "test_vs_null_mean"] == pytest.approx(own.mean() - nul.mean())
    assert v.loc["A", "pvalue"] == pytest.approx(ranksums(own, nul).pvalue)
    agg = summarise(cells, "aggregate_gene_shifts", goal=False)
    assert agg["cos_sim_mean"].is_monotonic_increasing and "control_fdr" in agg


def test_bh_fdr_known_values():
    np.testing.assert_allclose(bh_fdr(np.array([0.01, 0.04, 0.03, np.nan])), [0.03, 0.04, 0.04, np.nan])


# -- the step ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    d = tmp_path_factory.mktemp("step")
    a = small_adata(n_cells=24)
    a.obs["filter_pass"] = np.arange(24) != 0  # cell0 (group g0) is filtered out
    a.write_h5ad(d / "pre.h5ad")
    fetch_model("gf", {"kind": "geneformer", "source": "local", "path": tiny_checkpoint(d, "V2", n_layers=2)}, d / "gf")
    return d


def _run(d, name, **perturb):
    from tissuelens.embed.geneformer.run import run_perturb

    s = embed_defaults(perturb={"max_cells": 6, "batch_size": 4, **perturb})
    out = [d / f"{name}.tsv", d / f"{name}_cells.parquet", d / f"{name}_genes.parquet"]
    run_perturb(str(d / "pre.h5ad"), str(d / "gf"), "gf", s, *map(str, out))
    return [pd.read_csv(out[0], sep="\t"), pd.read_parquet(out[1]), pd.read_parquet(out[2])]


def test_run_perturb_tables(step):
    table, cells, genes = _run(step, "a", genes=["SYM3", [gene_ids(30)[4], "SYM5"]], goal_group="g1", start_group="g0",
                               emb_mode="cls_and_gene")
    assert set(table["perturbed"]) == {"SYM3", "SYM4+SYM5"} and set(table["perturbation"]) == {"delete", "overexpress"}
    assert (table["stats"] == "goal_state_shift").all() and table["untrained"].all() and (table["emb_mode"] == "cls_and_gene").all()
    assert table["fdr"].between(0, 1).all() and (table["control_fdr"] >= table["control_pvalue"] - 1e-12).all()
    assert "cell0" not in set(cells["obs_name"]) and set(cells["obs_name"].str[4:].astype(int) % 2) == {0}  # g0, filter_pass
    joint = cells[(cells["perturbed"] == "SYM4+SYM5") & (cells["perturbation"] == "delete")]
    assert joint["genes"].iloc[0] == f"{gene_ids(30)[4]};{gene_ids(30)[5]}"
    tested = cells[cells["population"] == "perturbed"]
    assert tested["control_gene"].notna().all() and set(cells["population"]) == {"perturbed", "random_genes"}
    assert (tested[tested["perturbed"] == "SYM4+SYM5"]["control_gene"].str.count(";") == 1).all()  # a random pair
    # affected genes: every other gene of the perturbed cells, most affected first within each set and type
    assert set(genes["perturbed"]) == {"SYM3", "SYM4+SYM5"} and not genes["affected_symbol"].isin(["SYM4", "SYM5"])[genes["perturbed"] == "SYM4+SYM5"].any()
    for _, g in genes.groupby(["perturbed", "perturbation"]):
        assert g["cos_sim_mean"].is_monotonic_increasing and (g["n_detections"] >= 1).all()


def test_run_perturb_vs_null_and_combos(step):
    table, cells, genes = _run(step, "b", genes=["SYM8", "SYM6"], null_group="g1", start_group="g0", stats="vs_null",
                               types=["delete"], emb_mode="cell", allow_mean_v2=True, combos=1, anchor_gene="SYM10")
    assert set(table["perturbed"]) == {"SYM10", "SYM10+SYM8", "SYM10+SYM6", "SYM8", "SYM6"} and len(genes) == 0
    assert set(cells["population"]) == {"perturbed", "null"} and table["n_cells_null"].gt(0).all()
    combo = table.set_index("perturbed").loc["SYM10+SYM8"]
    assert combo["combo_minus_sum_shift"] == pytest.approx(combo["combo_shift"] - combo["sum_of_indiv_shifts"], abs=1e-6)


def test_goal_run_derives_the_start_state_and_tests_against_random_sets(step, caplog):
    """No start_group with a goal: the only other group is the start state (logged); goal cells are never
    perturbed; p-values come from random gene sets of each set's size, which are in the cells table."""
    import logging

    with caplog.at_level(logging.INFO, logger="tissuelens.embed.geneformer.run"):
        table, cells, _ = _run(step, "derive", genes=["SYM3", ["SYM4", "SYM5"]], goal_group="g1", types=["overexpress"],
                               emb_mode="cls", max_cells=None, null_draws=2)
    assert "the start state is 'g0'" in caplog.text and (table["start_group"] == "g0").all()
    perturbed = cells[cells["population"] == "perturbed"]
    assert set(perturbed["obs_name"].str[4:].astype(int) % 2) == {0}  # g0 only, every one of them (max_cells: null)
    assert perturbed.groupby("perturbed")["cell"].nunique().max() == 11  # 12 g0 cells, cell0 fails filter_pass
    null = cells[cells["population"] == "random_genes"]
    for label, row in table.set_index("perturbed").iterrows():
        mine = null[null["for_set"] == label]
        assert row["n_background"] == len(null[null["n_genes"] == len(row["genes"].split(";"))]) == len(mine)
        assert set(mine["n_genes"]) == {len(row["genes"].split(";"))} and 0 < row["pvalue"] < 1
        assert mine.groupby("cell").size().max() == 2  # null_draws
    np.testing.assert_allclose(table["fdr"], bh_fdr(table["pvalue"]))


def test_goal_run_against_every_gene(step):
    table, cells, _ = _run(step, "allg", genes=[], auto_genes=1, goal_group="g1", start_group="g0", types=["delete"],
                           emb_mode="cls", background="all_genes")
    gene = table.loc[0, "perturbed"]
    bg = cells[cells["population"] == "all_genes"]
    tested = cells[cells["population"] == "perturbed"]
    assert table.loc[0, "background"] == "all_genes" and table.loc[0, "n_background"] == len(bg)
    # every expressed gene of every perturbed cell, each on its own: the tested gene among them, same shifts
    assert bg.groupby("cell").size().sum() == len(bg) and set(bg["cell"]) == set(tested["cell"])
    again = bg[bg["perturbed"] == gene].set_index("cell")["shift"]
    np.testing.assert_allclose(again.loc[tested["cell"]].to_numpy(), tested["shift"].to_numpy(), rtol=1e-5)


def test_run_mixture_model(step):
    table, cells, _ = _run(step, "mix", genes=["SYM3", "SYM8", ["SYM4", "SYM5"]], types=["overexpress"], stats="mixture_model",
                           emb_mode="cls")
    assert (table["stats"] == "mixture_model").all() and set(table["impact_component"]) <= {0, 1}
    assert table["impact_component_percent"].between(0, 100).all() and (table["n_fitted"] == 3).all()
    full, cells, _ = _run(step, "mixall", genes=["SYM3"], types=["overexpress"], stats="mixture_model", emb_mode="cls",
                          background="all_genes")
    bg = cells[cells["population"] == "all_genes"]
    assert full.loc[0, "n_fitted"] == bg["perturbed"].nunique() > 2  # fitted to every gene perturbed on its own
    with pytest.raises(InputError, match="mixture_model fits two components"):
        _run(step, "mix1", genes=["SYM3"], stats="mixture_model", emb_mode="cls")


def test_goal_run_with_several_other_groups_needs_a_start_group(step, tmp_path):
    from tissuelens.embed.geneformer.run import run_perturb

    small_adata(n_cells=12, groups=3).write_h5ad(tmp_path / "pre3.h5ad")
    s = embed_defaults(perturb={"genes": ["SYM1"], "goal_group": "g2"})
    out = [tmp_path / f for f in ("p.tsv", "c.parquet", "g.parquet")]
    with pytest.raises(InputError, match=r"start_group: a goal-state run perturbs the start state's cells only; name it "
                                         r"\(obs\['group'\] has g0, g1 besides the goal 'g2'\)"):
        run_perturb(str(tmp_path / "pre3.h5ad"), str(step / "gf"), "gf", s, *map(str, out))
    assert not any(p.exists() for p in out)


@pytest.mark.parametrize(
    "perturb, message",
    [
        ({"genes": ["NOPE"]}, "embed.perturb.genes: gene 'NOPE'"),
        ({"genes": [["SYM1", "NOPE"], "SYM2"]}, r"embed.perturb.genes\[0\]: gene 'NOPE'"),
        ({"genes": [[]]}, r"embed.perturb.genes\[0\]: empty gene set"),
        ({"genes": ["SYM1"], "goal_group": "nowhere"}, "embed.perturb.goal_group: group 'nowhere' has no cells"),
        ({"genes": ["SYM1"], "emb_mode": "cell"}, "allow_mean_v2"),
        ({"genes": ["SYM1"], "types": ["inhibit"]}, "embed.perturb.rank_shift"),
        ({"genes": ["SYM1"], "combos": 1}, "embed.perturb.anchor_gene"),
        ({"genes": ["SYM1"], "stats": "vs_null"}, "needs embed.perturb.null_group"),
        ({"genes": ["SYM1"], "goal_group": "g1", "start_group": "g1"}, "start state 'g1' is the goal state"),
    ],
)
def test_run_perturb_bad_input(step, perturb, message):
    with pytest.raises(InputError, match=message):
        _run(step, "bad", **perturb)
    assert not list(step.glob("bad*"))


def test_cls_on_v1_is_refused(tmp_path):
    from tissuelens.embed.geneformer.run import run_perturb

    small_adata(n_cells=8).write_h5ad(tmp_path / "pre.h5ad")
    fetch_model("gf", {"kind": "geneformer", "source": "local", "path": tiny_checkpoint(tmp_path, "V1", n_layers=2)}, tmp_path / "gf")
    s = embed_defaults(perturb={"genes": ["SYM1"], "emb_mode": "cls"})
    with pytest.raises(InputError, match="emb_mode: 'cls' needs a V2 checkpoint"):
        run_perturb(str(tmp_path / "pre.h5ad"), str(tmp_path / "gf"), "gf", s, *(str(tmp_path / f) for f in ("p.tsv", "c.pq", "g.pq")))
    assert not (tmp_path / "p.tsv").exists()


def test_report_perturbation_part(step):
    from tissuelens.report.context import Context
    from tissuelens.report.embed import _perturbation
    from tissuelens.report.html import Figures

    _run(step, "r", genes=["SYM8", ["SYM4", "SYM5"]], goal_group="g1", start_group="g0", emb_mode="cls_and_gene")
    ctx = Context("demo", None, {}, {}, {}, {"seed": 0}, Figures(out_dir=step / "fig"))
    html = _perturbation(ctx, "gf", {"perturbation.tsv": step / "r.tsv", "perturbation_genes.parquet": step / "r_genes.parquet"})
    assert "In-silico perturbation (gf, cls_and_gene, stats goal_state_shift)" in html and "shift toward the goal" in html
    assert "SYM4+SYM5" in html and "Most affected genes" in html and "<img" in html
    assert "in the start state &#x27;g0&#x27; against random gene sets of the same size" in html and "<th>significant</th>" in html
    assert (step / "fig" / "embed" / "perturbation-gf.png").exists()


def test_script_bad_input_is_one_error_line(step):
    import json

    from conftest import run_script

    s = embed_defaults(perturb={"genes": [["SYM1", "NOPE"]]})
    out = [step / f"s{i}" for i in range(3)]
    proc = run_script("perturb_geneformer", "--h5ad", step / "pre.h5ad", "--checkpoint", step / "gf", "--model", "gf",
                      "--settings", json.dumps(s), "--out", out[0], "--cells", out[1], "--genes", out[2])
    assert proc.returncode == 2 and "embed.perturb.genes[0]: gene 'NOPE'" in proc.stderr
    assert len([x for x in proc.stderr.splitlines() if x.startswith("error")]) == 1
    assert not any(p.exists() for p in out)
