"""Every number a prose page cites from the results page is glued by it in every profile."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]


def test_every_glue_key_a_page_cites_from_the_results_page_is_always_glued():
    cited = {k for md in (REPO / "book").glob("*.md")
             for k in re.findall(r"06_results\.ipynb::([a-z_0-9]+)", md.read_text())}
    nb = nbformat.read(REPO / "notebooks" / "06_results.ipynb", 4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    m = re.search(r"^CITED = (\[.*?\])", source, re.M)
    assert m, "06_results must list the keys other pages cite (CITED) and glue each in every profile"
    assert cited and cited == set(eval(m.group(1))), sorted(cited ^ set(eval(m.group(1))))  # noqa: S307
