"""The whole smoke pipeline end to end, then the strict book build, as `make book PROFILE=smoke` does.

This is the CI-sized twin of the toy run: every stage notebook executes through the runner, every
benchmark writes its official formats, a rerun is served from the store and the judge cache, and
the book builds with -W -n --keep-going.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zephyr_lib.evals import alpaca_eval as ae
from zephyr_lib.evals import mt_bench as mt

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, site / name)
    shutil.copytree(REPO / "_static", site / "_static")
    shutil.copytree(REPO / "book", site / "book", ignore=shutil.ignore_patterns("stages", "generated"))
    env = {**os.environ, "ZEPHYR_RUNS_DIR": str(site / "runs"), "ZEPHYR_BOOK_STAGES": str(site / "book" / "stages")}
    p = subprocess.run([sys.executable, "-m", "zephyr_lib", "run", "--profile", "smoke"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return site, env, p.stdout


def run_dir(site, stage):
    return next(d for d in (site / "runs" / "smoke" / stage).iterdir() if not d.name.startswith("."))


def test_every_stage_ran_and_wrote_its_formats(site):
    site, _, out = site
    assert "results (results @" in out
    ev = run_dir(site, "eval")
    m = json.loads((ev / "metrics.json").read_text())["models"]
    assert {"base", "sft", "dpo", "dpo_base", "sft2", "teacher", "reference"} <= set(m)
    for name in ("base", "sft", "dpo"):
        assert {"mt_bench", "alpaca_eval", "leaderboard"} <= set(m[name])
        answers = mt.load_answers(ev / name / "mt_bench" / "model_answer.jsonl")  # FastChat's schema
        assert len(answers) == 80 and all("zephyr" in a["model_id"] for a in answers.values())
        assert len(mt.load_judgments(ev / name / "mt_bench" / "judgments.jsonl")) == 160
        ae.load_model_outputs(ev / name / "alpaca_eval" / "model_outputs.json")  # validates AlpacaEval's fields
        for bench in ("mt_bench", "alpaca_eval", "leaderboard"):
            assert (ev / name / bench / "metrics.json").is_file()
    assert "leaderboard" not in m["teacher"]  # programs have no log-likelihoods
    pw = m["teacher"]["mt_bench_pairwise"]  # FastChat's pairwise mode against the base model
    assert pw["baseline"] == "base" and pw["n"] + pw["n_error"] == 160 and pw["win"] > pw["loss"]
    assert m["teacher"]["mt_bench"]["overall"] > m["base"]["mt_bench"]["overall"] + 3
    res = json.loads((run_dir(site, "results") / "metrics.json").read_text())
    assert res["verdicts"] and all(("reproduced" in v) or ("inconclusive" in v) for v in res["verdicts"])
    assert (run_dir(site, "dpo") / "epoch-1").is_dir()
    aif = json.loads((run_dir(site, "aif") / "metrics.json").read_text())
    assert aif["pool"]["teacher_strong"]["overall"] > aif["pool"]["teacher_sloppy"]["overall"]


def test_training_and_feedback_prompts_are_disjoint_from_the_benchmarks_in_the_store(site):
    """The book's "disjoint" claim, checked on the built store: no dSFT dialogue and no AI-feedback
    prompt asks a benchmark question, by exact text, normalized text or spec (paraphrases), and
    the AI-feedback prompts are unique."""
    from zephyr_lib.io import read_jsonl
    from zephyr_lib.toyworld.world import normalize

    site, _, _ = site
    bench = read_jsonl(run_dir(site, "eval") / "toy_specs.jsonl")
    assert {b["benchmark"] for b in bench} == {"mt_bench", "alpaca_eval"} and len(bench) >= 80
    bench_text = {b["instruction"] for b in bench}
    bench_norm, bench_spec = {normalize(x) for x in bench_text}, {b["spec"] for b in bench}
    curate, aif = run_dir(site, "curate"), run_dir(site, "aif")
    dsft = [r["data"][0] for r in read_jsonl(curate / "raw_ultrachat.jsonl")]
    uf = read_jsonl(aif / "toy_specs.jsonl")
    uf_rows = [r["instruction"] for r in read_jsonl(aif / "raw_ultrafeedback.jsonl")]
    assert set(uf_rows) <= {r["instruction"] for r in uf} and len(uf_rows) > 0
    for name, texts in (("dSFT", dsft), ("AI feedback", uf_rows)):
        assert not set(texts) & bench_text, name
        assert not {normalize(x) for x in texts} & bench_norm, name
    for name, rows in (("dSFT", read_jsonl(curate / "toy_specs.jsonl")), ("AI feedback", uf)):
        assert rows and not {r["spec"] for r in rows} & bench_spec, name
    assert len({normalize(r["instruction"]) for r in uf}) == len(uf)


def test_rerun_is_cached_and_a_forced_eval_makes_no_judge_calls(site):
    site, env, _ = site
    p = subprocess.run([sys.executable, "-m", "zephyr_lib", "run", "--profile", "smoke"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and p.stdout.count(": cached") == 11, p.stdout
    p = subprocess.run([sys.executable, "-m", "zephyr_lib", "run", "--profile", "smoke", "--stages", "eval", "--force"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-2000:]
    stats = json.loads((run_dir(site, "eval") / "metrics.json").read_text())["judge_stats"]
    assert stats["calls"] == 0 and stats["cache_hits"] > 0


def test_the_benchs_unchanged_rerun_measures_a_complete_store(site):
    """`bench`'s rerun measurement on the complete smoke store: every run served from it, no
    training step, no judge call (and the numbers come from the runner's own output)."""
    site, env, _ = site
    code = "import json; from zephyr_lib import bench; print(json.dumps(bench.bench_rerun('smoke')))"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["measured"] is True, r
    assert r["runs_cached"] == 11 and r["runs_executed"] == [] and r["training_steps"] == 0 and r["judge_calls"] == 0
    assert 0 < r["wall_s"] < 600


def test_the_plans_compute_floor_counts_every_training_token(site):
    """`bench`'s compute floor on the complete smoke store: every base/sft/dpo run, its training
    tokens as TRL trains them (checked here for dSFT from the data itself), FLOPs / rate = time."""
    site, env, _ = site
    code = "import json; from zephyr_lib import bench; print(json.dumps(bench.plan_floor('smoke', 1e11)))"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    f = json.loads(p.stdout.strip().splitlines()[-1])
    assert f["measured"] is True
    runs = {r["run"]: r for r in f["runs"]}
    assert {"base", "sft", "dpo", "dpo_base", "sft2"} <= set(runs) and "eval" not in runs
    assert f["flops"] == pytest.approx(sum(r["flops"] for r in f["runs"]))
    # each run at the matmul rate its manifest recorded beside it, not at the rate passed in (measured later)
    assert f["rates_not_recorded"] == [] and all(r["rate_recorded"] and r["rate"] != 1e11 for r in f["runs"])
    assert f["floor_s"] == pytest.approx(sum(r["flops"] / r["rate"] for r in f["runs"]))
    man = json.loads((run_dir(site, "sft") / "manifest.json").read_text())
    assert runs["sft"]["rate"] == pytest.approx(bench_rate(man))
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from zephyr_lib.plan import load_profile

    cfg = load_profile("smoke").runs["sft"].config
    tok = AutoTokenizer.from_pretrained(run_dir(site, "base") / "model")
    train = load_from_disk(str(run_dir(site, "curate") / "beta"))["train_sft"]
    lengths = [min(cfg.max_length, len(tok.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"]))
               for m in train["messages"]]
    assert runs["sft"]["train_tokens"] == sum(lengths) * cfg.num_train_epochs
    assert runs["dpo"]["train_tokens"] > 0 and runs["dpo"]["flops"] > 0


def bench_rate(manifest: dict) -> float:
    from zephyr_lib.bench import run_rate

    return run_rate(manifest, "fp32")[0]


@pytest.fixture(scope="module")
def built_book(site):
    """`zephyr book` + the strict Jupyter Book build of the smoke site: (site, the build's exit code and output)."""
    site, env, _ = site
    p = subprocess.run([sys.executable, "-m", "zephyr_lib", "book", "--profile", "smoke"], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    jb = Path(sys.executable).parent / "jupyter-book"
    p = subprocess.run([str(jb), "build", str(site), "-W", "-n", "--keep-going"], capture_output=True, text=True,
                       timeout=600)
    return site, p.returncode, p.stdout


def test_the_book_builds_strictly(built_book):
    site, code, out = built_book
    assert code == 0, out[-4000:]
    html = (site / "_build" / "html" / "book" / "stages" / "06_results.html").read_text()
    assert "Verdicts" in html and "Table 3" in html
    assert "smoke" in (site / "_build" / "html" / "book" / "reproducibility.html").read_text()
    # the Performance page measures this build without `make bench`: stage times and the compute floor
    perf = (site / "book" / "generated" / "performance.md").read_text()
    own = perf.split("### Side by side")[0]
    assert "### Stage times" in own and "| dpo_base | dpo |" in own and "TFLOP" in own, own
    assert "at the matmul rate each run had" in own and "run(s) were stored before rates" not in own, own
    # every training run recorded the machine's matmul rate at its start and end, in GFLOP/s
    for man in (site / "runs" / "smoke").glob("*/*/manifest.json"):
        m = json.loads(man.read_text())
        rates = m["machine"].get("matmul_gflops")
        if m["stage"] in ("base", "sft", "dpo"):
            assert rates and all(rates[k]["fp32"] > 0 for k in ("start", "end")), man
        else:
            assert rates is None, man
    assert "No benchmark has run" in perf


def test_every_page_reads_right_in_a_browser_with_no_network(built_book):
    """Each page of the built smoke book opened from disk in headless Chromium: math rendered (no
    raw \\[ or \\( in the text), no request to any host, every image loaded, no table wider than
    the page's content column (tools/book_in_browser.py)."""
    site, code, out = built_book
    assert code == 0, out[-4000:]
    browser = load_tool("book_in_browser")
    if not browser.chromium():
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run installs it)")
    html = site / "_build" / "html"
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    pages = browser.book_pages(html)
    assert {"book/intro.html", "book/stages/04_dpo.html", "book/stages/06_results.html"} <= {
        str(p.relative_to(html)) for p in pages}
    report = browser.check_book(html, pages)
    assert not {page: problems for page, problems in report.items() if problems}


def load_tool(name: str):
    """A script of tools/ as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
