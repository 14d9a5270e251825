"""Set-up invariants: the two pin files agree, notebooks are committed clean, the book is strict."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_yml_is_the_twin_of_requirements_txt():
    req = pins((REPO / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pins(pip_section) == req
    assert "python=3.11" in env["dependencies"]
    assert req["torch"] == "2.13.0" and req["jupyter-book"].startswith("1.")


def test_notebooks_are_committed_without_outputs_and_with_a_parameters_cell():
    nbs = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert nbs
    for nb_path in nbs:
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), nb_path.name
        params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, nb_path.name
        src = "".join(params[0]["source"])
        for name in ("profile", "run", "overrides", "force"):
            assert re.search(rf"^{name} = ", src, re.M), (nb_path.name, name)


def test_book_is_rendered_not_executed_and_built_strictly():
    cfg = yaml.safe_load((REPO / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["sphinx"]["config"]["intersphinx_mapping"] == {}
    assert "-W -n --keep-going" in (REPO / "Makefile").read_text()
    toc = (REPO / "_toc.yml").read_text()
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        assert f"book/stages/{nb.stem}" in toc, nb.name


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make test" in (REPO / "README.md").read_text()
