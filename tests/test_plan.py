"""tissuelens.plan: what runs for a dataset, from plain config dicts (no Snakemake)."""

from __future__ import annotations

import pytest
from helpers.configs import with_changes

from tissuelens.errors import InputError
from tissuelens.plan import LOKI_TASK_FILES, LOKI_TASKS, dataset_plan, embed_models, factorize_variants, loki_tasks

BASE = {
    "datasets": {
        "a": {"source": "synthetic", "spatial": True, "group_key": "group"},
        "b": {"source": "synthetic", "spatial": True, "group_key": "group"},
        "cells": {"source": "synthetic", "spatial": False},
    },
    "models": {"gf": {"kind": "geneformer"}, "lk": {"kind": "loki"}, "tx": {"kind": "tahoe"}},
    "factorize": {"variants": ["pnmf", "svgp", "mggp_svgp", "lcgp"]},
    "embed": {"models": ["lk", "gf", "tx"]},
}


def config(**changes) -> dict:
    """BASE with dotted-path changes, e.g. config(**{"embed.loki": {...}, "datasets.a.sae": {...}})."""
    return with_changes(BASE, **changes)


def test_the_defaults_plan_every_stage():
    plan = dataset_plan(config(), "a")
    assert plan.variants == ["pnmf", "svgp", "mggp_svgp", "lcgp"]
    assert plan.models == ["lk", "gf", "tx"]  # config order
    assert (plan.of_kind("geneformer"), plan.of_kind("loki"), plan.of_kind("tahoe")) == (["gf"], ["lk"], ["tx"])
    assert plan.sae_models == ["lk", "gf", "tx"]  # sae.models null: every embedded model
    assert plan.factor_link == "pnmf"  # the first variant
    assert plan.loki_tasks == ["retrieve", "predex"]  # auto on spatial data; annotate, decompose need files
    assert plan.references == {"retrieve": [], "predex": [], "decompose": []}
    assert plan.group_source is None and plan.perturb is False


def test_non_spatial_unlabelled_data_trains_pnmf_only_and_gets_domain_groups():
    plan = dataset_plan(config(), "cells")
    assert plan.variants == ["pnmf"]
    assert plan.group_source == "expr_leiden"  # no spatial domains without coordinates
    assert plan.factor_link is None  # no factors to link on non-spatial data
    assert plan.loki_tasks == []  # retrieve / predex auto: spatial only


def test_without_groups_the_mggp_variants_drop_out():
    cfg = config(**{"analyze.group_source": "none"})
    del cfg["datasets"]["a"]["group_key"]
    assert factorize_variants(cfg, "a") == ["pnmf", "svgp", "lcgp"]
    assert dataset_plan(cfg, "a").group_source is None


def test_stages_turned_off():
    cfg = config(**{"datasets.a.factorize": {"enabled": False}, "datasets.a.sae": {"enabled": False},
                    "datasets.b.embed": {"models": []}})
    a = dataset_plan(cfg, "a")
    assert a.variants == [] and a.sae_models == [] and a.factor_link is None
    b = dataset_plan(cfg, "b")
    assert b.models == [] and b.kinds == {} and b.sae_models == [] and b.loki_tasks == []


def test_sae_models_and_factor_link_choices():
    cfg = config(**{"sae": {"models": ["gf", "not_embedded"], "link_factors": "svgp"}})
    plan = dataset_plan(cfg, "a")
    assert plan.sae_models == ["gf"] and plan.factor_link == "svgp"
    assert dataset_plan(config(**{"sae.link_factors": False}), "a").factor_link is None


def test_loki_tasks_and_references():
    cfg = config(**{"embed.loki": {"annotate": {"markers": "m.csv"}, "retrieve": {"reference": "b"},
                                   "predex": {"enabled": True, "reference": ["b"]}, "decompose": {"reference": "b"}}})
    plan = dataset_plan(cfg, "a")
    assert plan.loki_tasks == list(LOKI_TASKS) == list(LOKI_TASK_FILES)
    assert plan.references == {"retrieve": ["b"], "predex": ["b"], "decompose": ["b"]}
    no_image = config(**{"embed.loki": {"image": False}})
    assert loki_tasks(no_image, "a") == []
    forced = config(**{"embed.loki": {"image": False, "retrieve": {"enabled": True}, "predex": {"enabled": False}}})
    assert loki_tasks(forced, "a") == ["retrieve"]
    assert dataset_plan(config(**{"embed.models": ["gf"]}), "a").loki_tasks == []  # no Loki model, no task


def test_perturbation_is_planned_when_genes_are_asked_for():
    assert dataset_plan(config(**{"embed.perturb": {"auto_genes": 2}}), "a").perturb is True
    assert dataset_plan(config(**{"embed.perturb": {"genes": [["G1"]]}}), "a").perturb is True


@pytest.mark.parametrize("changes, message", [
    ({"embed.models": ["gf", "ghost"]}, r"datasets.a: embed.models names ghost, not defined under models: \(defined: gf, lk, tx\)"),
    ({"sae.link_factors": "mggp_lcgp"}, r"datasets.a: sae.link_factors 'mggp_lcgp' is not a factorize variant run for it"),
    ({"embed.loki": {"retrieve": {"reference": "nope"}}},
     r"datasets.a: embed.loki.retrieve.reference names 'nope', which is not a dataset of this config \(datasets: a, b, cells\)"),
    ({"embed.loki": {"predex": {"reference": "a"}}},
     r"datasets.a: embed.loki.predex.reference names 'a', which is not another dataset of this config"),
    ({"embed.loki": {"decompose": {"reference": "nope"}}}, r"datasets.a: embed.loki.decompose.reference names 'nope'"),
    ({"datasets.a.analyze": {"group_source": "expr_leiden"}}, r"datasets.a: analyze.group_source 'expr_leiden' is set together with group_key"),
])
def test_bad_configs_name_the_key(changes, message):
    with pytest.raises(InputError, match=message):
        dataset_plan(config(**changes), "a")


def test_bad_references_of_tasks_that_do_not_run_are_not_checked():
    off = config(**{"embed.models": ["gf"], "embed.loki": {"retrieve": {"reference": "nope"}}})
    assert dataset_plan(off, "a").references["retrieve"] == []
    no_sae = config(**{"sae": {"enabled": False, "link_factors": "mggp_lcgp"}})
    assert dataset_plan(no_sae, "a").factor_link is None


def test_embed_models_of_one_kind():
    assert embed_models(config(), "a", kind="loki") == ["lk"]
    assert embed_models(config(), "a", kind="nope") == []
