"""Spatial domains (tissuelens.analyze.niches, method `niche`): hop means with known answers, the domains of
synthetic blocks tissues found with their number, sections clustered as when alone, the record of how their
number was chosen (domains.json), and bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import yaml
from sklearn.metrics import adjusted_rand_score

from tissuelens.analyze import niches
from tissuelens.analyze.domains import choice_text, compute_domains, expression_pca, spatial_domains
from tissuelens.config import REPO_CONFIG_DIR, step_defaults, validate_config
from tissuelens.errors import InputError
from tissuelens.spatial_graph import spatial_connectivities

DEFAULTS = step_defaults("analyze")["domains"]


def prepared(n_sections: int, seed: int = 0, n_spots: int = 1600):
    from tissuelens.datasets.synthetic import blocks_sections
    from tissuelens.preprocess import preprocess

    raw = blocks_sections(n_spots=n_spots, n_sections=n_sections, seed=seed)
    settings = {**step_defaults("preprocess"), "min_counts": 1, "min_genes": 1, "min_cells": 0}
    key = "section" if n_sections > 1 else None
    adata, _ = preprocess(raw, {"source": "synthetic", "spatial": True, "section_key": key}, settings, "blocks")
    return adata


def domains_of(adata, **settings):
    return choice_of(adata, **settings)[0]


def choice_of(adata, **settings):
    """(labels, the domains.json record)."""
    pcs = expression_pca(adata, DEFAULTS["n_pcs"], 0)
    return spatial_domains(pcs, spatial_connectivities(adata, "blocks"), {**DEFAULTS, **settings}, 0, "blocks")


@pytest.fixture(scope="module")
def two_sections():
    """Two 40 x 40 blocks sections on the same coordinates, and their domains at the defaults."""
    adata = prepared(2)
    labels, record = choice_of(adata)
    return adata, np.asarray(labels), record


def test_hop_means_are_the_means_over_each_ring_of_a_path():
    path = sp.diags([1, 1], [-1, 1], shape=(5, 5))  # 0-1-2-3-4
    x = np.arange(5.0)[:, None] ** 2  # 0 1 4 9 16
    one, two = niches.hop_means(x, path, 2)
    np.testing.assert_allclose(one.ravel(), [1, 2, 5, 10, 9])
    np.testing.assert_allclose(two.ravel(), [4, 9, 8, 1, 4])  # cells 0 and 4: only one cell two steps away


def test_blocks_in_two_sections_are_found_with_their_number(two_sections):
    adata, labels, _ = two_sections
    truth = adata.obs["domain"].to_numpy()
    assert adjusted_rand_score(truth, labels) >= 0.99
    assert len(set(labels)) == len(set(truth))


def test_refining_by_each_spots_own_expression_places_the_borders():
    # seed 0's section has one-spot strips of background between blocks and the tissue's edge: every neighbourhood
    # mean calls them block, the spots' own expression does not
    adata = prepared(1, seed=0)
    truth = adata.obs["domain"].to_numpy()
    refined, rough = (np.asarray(domains_of(adata, refine=refine)) for refine in (True, False))
    assert len(set(refined)) == len(set(rough)) == len(set(truth))
    assert adjusted_rand_score(truth, refined) >= 0.99
    assert adjusted_rand_score(truth, rough) < 0.95
    assert 0 < (rough != refined).mean() < 0.05  # a border's width of spots moves, nothing else


def test_refining_moves_border_cells_and_never_empties_a_domain():
    rng = np.random.default_rng(0)
    # two clusters on a line, the rough labels wrong for the 5 cells nearest the border: refining moves them back
    x = np.r_[rng.normal(0, 0.5, 100), rng.normal(4, 0.5, 100)][:, None]
    truth = np.repeat([0, 1], 100)
    rough = truth.copy()
    rough[np.argsort(x[:100, 0])[-5:]] = 1
    np.testing.assert_array_equal(niches.refine(x, rough, 0), truth)
    # a "domain" of one cell inside the other: EM empties it, so the labels stay as given
    one = np.zeros(200, dtype=int)
    one[50] = 1
    np.testing.assert_array_equal(niches.refine(x[:100].repeat(2, axis=0), one, 0), one)


def test_sections_with_overlapping_coordinates_get_their_domains_alone(two_sections):
    joint, labels, _ = two_sections
    section = joint.obs["section"].astype(str).to_numpy()
    pcs = expression_pca(joint, 20, 0)
    means = niches.hop_means(pcs, spatial_connectivities(joint, "joint"), 3)
    for name in ("S1", "S2"):
        rows = np.flatnonzero(section == name)
        alone = joint[rows].copy()
        alone.obsp["spatial_connectivities"] = spatial_connectivities(joint, "joint")[rows][:, rows]
        own = niches.hop_means(pcs[rows], alone.obsp["spatial_connectivities"], 3)
        for a, b in zip(means, own):
            np.testing.assert_allclose(a[rows], b)  # no mean reaches into the other section
        # at the joint run's number of domains (choosing K is the test above) a section alone finds its blocks as
        # the joint run does (1.000 both today; the two mixtures are fitted to different cells)
        own_labels = np.asarray(domains_of(alone, n_domains=len(set(labels))))
        truth = alone.obs["domain"].to_numpy()
        assert adjusted_rand_score(truth, own_labels) >= 0.99
        assert adjusted_rand_score(labels[rows], own_labels) >= 0.99


def test_the_record_says_the_number_was_chosen_by_stability(two_sections):
    _, labels, record = two_sections
    assert record["spatial"] is True and record["method"] == "niche" and record["chosen_by"] == "stability"
    assert record["n_domains"] == len(set(labels))
    assert list(record["stability"]) == [str(k) for k in range(2, DEFAULTS["max_domains"] + 1)]
    best = max(record["stability"].values())
    assert record["stability"][str(record["n_domains"])] == best and 0 < best <= 1
    assert choice_text(record).startswith(f"{record['n_domains']} spatial domains, chosen as the most stable K of 2-10 "
                                          f"(mean pairwise ARI of seeded fits per K: 2: {record['stability']['2']:.3f}, ")


def test_a_set_number_of_domains_is_kept_and_reruns_are_identical():
    adata = prepared(1, n_spots=400)
    first, record = choice_of(adata, n_domains=3)
    assert len(first.categories) == 3
    assert record == {"spatial": True, "method": "niche", "n_domains": 3, "chosen_by": "config", "stability": None}
    assert choice_text(record) == "3 spatial domains, set by analyze.domains.n_domains."
    assert (np.asarray(domains_of(adata, n_domains=3)) == np.asarray(first)).all()


def test_the_record_of_aggregate_leiden_and_of_non_spatial_data():
    adata = prepared(1, n_spots=400)
    labels, record = choice_of(adata, method="aggregate_leiden")
    assert record == {"spatial": True, "method": "aggregate_leiden", "n_domains": len(set(np.asarray(labels))),
                      "chosen_by": None, "stability": None}
    assert "found by Leiden at analyze.domains.spatial_resolution" in choice_text(record)
    _, flat = compute_domains(adata, {**DEFAULTS, "n_pcs": 10}, False, 0, "flat")
    assert flat == {"spatial": False, "method": None, "n_domains": None, "chosen_by": None, "stability": None}
    assert choice_text(flat) == "Not a spatial dataset: no spatial domains."


def test_bad_domain_settings_fail_with_one_line():
    config = yaml.safe_load((REPO_CONFIG_DIR / "config.yaml").read_text())
    config["analyze"]["domains"] = {"n_domains": "many"}
    with pytest.raises(InputError, match=r"analyze\.domains\.n_domains: 'many'"):
        validate_config(config, source="config.yaml")
    config["analyze"]["domains"] = {"method": "kmeans"}
    with pytest.raises(InputError, match=r"analyze\.domains\.method: 'kmeans' is not one of"):
        validate_config(config, source="config.yaml")
    x = np.random.default_rng(0).normal(size=(6, 4))
    with pytest.raises(InputError, match=r"t.h5ad: analyze.domains.n_domains=9 needs 2 <= n_domains < 6 cells"):
        niches.niche_domains(x, sp.identity(6), {**DEFAULTS, "n_domains": 9}, 0, "t.h5ad")
