"""The stage runner end to end on the smoke profile: papermill, cache, failures, parameters."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def zephyr(tmp_path, *args, timeout=600):
    env = {**os.environ, "ZEPHYR_RUNS_DIR": str(tmp_path / "runs"), "ZEPHYR_BOOK_STAGES": str(tmp_path / "book")}
    return subprocess.run([sys.executable, "-m", "zephyr_lib", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_run_executes_caches_and_hides_parameters(tmp_path):
    p = zephyr(tmp_path, "run", "--profile", "smoke", "--stages", "curate")
    assert p.returncode == 0, p.stderr + p.stdout
    assert "curate (curate @" in p.stdout and "done in" in p.stdout
    nb = nbformat.read(tmp_path / "book" / "01_curate.ipynb", as_version=4)
    assert nb.metadata["zephyr"]["run"] == "curate"
    tagged = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert tagged and "remove-input" in tagged[0].metadata["tags"]
    assert not any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    again = zephyr(tmp_path, "run", "--profile", "smoke", "--stages", "curate")
    assert again.returncode == 0 and "cached" in again.stdout


def test_same_config_and_seed_give_byte_identical_datasets(tmp_path):
    for sub in ("a", "b"):
        assert zephyr(tmp_path / sub, "run", "--profile", "smoke", "--stages", "curate").returncode == 0
    runs = [next((tmp_path / s / "runs" / "smoke" / "curate").glob("[0-9a-f]*")) for s in ("a", "b")]
    assert runs[0].name == runs[1].name
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*") if p.is_file()
                   and p.suffix in (".arrow", ".jsonl") or p.name == "dataset_dict.json")
    assert any(str(f).endswith(".arrow") for f in files)
    for f in files:
        assert (runs[0] / f).read_bytes() == (runs[1] / f).read_bytes(), f


def test_a_failing_stage_names_run_cell_and_log_and_never_reaches_the_book(tmp_path):
    p = zephyr(tmp_path, "run", "--profile", "smoke", "--stages", "curate",
               "--set", "curate.source=/nonexistent/raw_ultrachat.jsonl")
    assert p.returncode == 1
    assert "run 'curate'" in p.stderr and "code cell" in p.stderr and "curate.log" in p.stderr
    assert not (tmp_path / "book" / "01_curate.ipynb").exists()
    assert not list((tmp_path / "runs" / "smoke" / "curate").glob("[0-9a-f]*"))


def test_bad_overrides_fail_before_any_work(tmp_path):
    p = zephyr(tmp_path, "run", "--profile", "smoke", "--set", "curate.no_such_key=1")
    assert p.returncode == 2 and "no_such_key" in p.stderr
    assert not (tmp_path / "runs").exists()


def test_notebook_parameters_are_validated_like_set(tmp_path, monkeypatch):
    """A notebook takes profile/run/overrides/force; its overrides go through the config loader, so
    an unknown key or a bad value fails in the first cell that does work, naming it."""
    monkeypatch.setenv("ZEPHYR_RUNS_DIR", str(tmp_path / "runs"))
    nb = REPO / "notebooks" / "01_curate.ipynb"
    for params, needle in (({"profile": "smoke", "overrides": {"bogus": 1}}, "bogus"),
                           ({"profile": "smoke", "overrides": {"test_fraction": 2}}, "test_fraction must be in"),
                           ({"profile": "smoke", "overrides": {"openai_api_key": "x"}}, "looks like a secret")):
        with pytest.raises(papermill.PapermillExecutionError) as e:
            papermill.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters=params, cwd=str(REPO),
                                       kernel_name="python3", progress_bar=False)
        assert needle in str(e.value)
    papermill.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), cwd=str(REPO), kernel_name="python3",
                               parameters={"profile": "smoke", "overrides": {"n_dialogues": 60}}, progress_bar=False)
    manifests = list((tmp_path / "runs" / "smoke" / "curate").glob("*/manifest.json"))
    assert [json.loads(m.read_text())["config"]["n_dialogues"] for m in manifests] == [60]


def test_overrides_of_upstream_runs_reach_downstream_notebooks(tmp_path):
    """`--set curate.x=…` changes curate's hash; the sft notebook must resolve that same curate run."""
    from zephyr_lib.config import load_profile
    from zephyr_lib.store import open_run

    want = load_profile("smoke", ["curate.n_dialogues=60", "sft.learning_rate=0.002"])
    ctx = open_run("sft", "smoke", "sft", {"learning_rate": 0.002, "curate.n_dialogues": 60})
    assert ctx.hash == want.run_hash("sft") != load_profile("smoke").run_hash("sft")
    assert ctx.profile.runs["curate"].config.n_dialogues == 60
