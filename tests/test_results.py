"""The results stage's claims and like-for-like table come from the benchmarks' records: a
benchmark that declares a ``Comparison`` is checked with its label, unit, scale and headline
metric; one that does not is left out."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from zephyr_lib.evals.benchmarks import BENCHMARKS, Benchmark, Comparison
from zephyr_lib.io import read_json
from zephyr_lib.stages.results import ResultsConfig, build


class Tiny(Benchmark):
    """A benchmark with a comparison: per-item scores 0/1, a headline rate in percent."""

    name, title = "tiny", "Tiny"
    columns = {"rate": ("tiny", 1.0)}
    comparison = Comparison(metric="rate", label="Tiny", metric_label="Tiny %", unit=" pct", scale=100.0)

    @staticmethod
    def per_item(folder):
        return json.loads((Path(folder) / "items.json").read_text())


class Unpaired(Tiny):
    """The same data, no comparison declared: no verdict, no like-for-like row."""

    name, title, comparison = "unpaired", "Unpaired", None


def _eval_run(tmp_path: Path, scores: dict[str, list[int]]) -> SimpleNamespace:
    models = {}
    for model, items in scores.items():
        for bench in ("tiny", "unpaired"):
            folder = tmp_path / model / bench
            folder.mkdir(parents=True)
            (folder / "items.json").write_text(json.dumps({str(i): s for i, s in enumerate(items)}))
        rate = 100 * sum(items) / len(items)
        models[model] = {"tiny": {"rate": rate}, "unpaired": {"rate": rate}}
    return SimpleNamespace(dir=tmp_path, metrics=lambda: {"models": models})


def test_claims_and_like_for_like_loop_over_the_benchmarks_that_declare_a_comparison(tmp_path, monkeypatch):
    monkeypatch.setitem(BENCHMARKS, "tiny", Tiny)
    monkeypatch.setitem(BENCHMARKS, "unpaired", Unpaired)
    ev = _eval_run(tmp_path / "eval", {"a": [1] * 18 + [0] * 2, "b": [1] * 4 + [0] * 16})
    cfg = ResultsConfig(table1=[], claims=["a beats b: a > b"], ablation=[], epochs=[], dpo="", alpha_beta=[],
                        regressions="", academic=[], like_for_like=["a=b"], n_bootstrap=200)
    ctx = SimpleNamespace(cfg=cfg, upstream=lambda name: ev, profile=SimpleNamespace(runs={}))
    (tmp_path / "out").mkdir()
    m = build(ctx, tmp_path / "out")
    assert m == read_json(tmp_path / "out" / "metrics.json")
    # a − b = 0.9 − 0.2 per item, ×100: +70 pct; MT-Bench and AlpacaEval have no data here: no verdict
    (claim, row) = m["verdicts"]
    assert claim.startswith("a beats b (Tiny): reproduced, +70.00 pct [95% CI ") and claim.endswith("n = 20")
    (entry,) = m["like_for_like"]
    assert entry["benchmark"] == "Tiny %" and entry["paper_2023_judge"] is None and entry["judge_drift"] is None
    assert (entry["run_today"], entry["anchor_today"]) == (90.0, 20.0)
    assert entry["diff"] == pytest.approx(70.0) and entry["verdict"] == row
    assert row.startswith("a vs the paper's b, same judge (Tiny %): reproduced, +70.00 pct")
    assert "archived_outputs_today" not in entry  # Tiny declares no re-judged archive
    assert not any("Unpaired" in v for v in m["verdicts"])


def test_the_paper_score_of_a_benchmark_it_does_not_report_is_none():
    from zephyr_lib import results as R

    assert R.paper_score("Zephyr-7B-β (dDPO)", "mt_bench") == 7.34
    assert R.paper_score("Zephyr-7B-β (dDPO)", "alpaca_eval") == 90.60
    assert R.paper_score("Zephyr-7B-β (dDPO)", "tiny") is None
    assert R.paper_score("text-davinci-003", "mt_bench") is None
    assert R.paper_score("no such model", "mt_bench") is None
