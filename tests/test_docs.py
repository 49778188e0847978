"""The README stays one screen and every reference page is one link from it; stage pages share one outline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = (REPO / "README.md").read_text()
# a reader looks for the same thing in the same place on every stage page
STAGE_HEADINGS = ["Rules", "Settings", "Outputs", "Method", "Differences from upstream", "Errors"]
NOT_STAGES = {"running", "benchmarks", "benchmarks_domains"}


def test_readme_fits_one_screen_and_holds_no_benchmark_table():
    assert len(README.splitlines()) <= 150
    assert "tokens/s" not in README and "| spots |" not in README


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_docs_page_is_linked_from_the_readme(page):
    if page == "benchmarks_domains.md":  # linked from docs/benchmarks.md
        assert f"({page})" in (DOCS / "benchmarks.md").read_text()
    else:
        assert f"(docs/{page})" in README


@pytest.mark.parametrize("page", sorted(p.stem for p in DOCS.glob("*.md") if p.stem not in NOT_STAGES))
def test_stage_pages_have_the_fixed_headings(page):
    headings = re.findall(r"^## (.+)$", (DOCS / f"{page}.md").read_text(), flags=re.M)
    assert headings == STAGE_HEADINGS


def test_readme_names_both_test_tiers():
    assert "make test " in README and "make test-all" in README and ".ci/run" in README
