"""One notion of a usable judgment: an MT-Bench reply without a rating, an AlpacaEval ranking that
does not parse and a pairwise game without a verdict are failures. They are not cached as final,
they are asked again on the next run, and the eval's failure budget counts the inputs (questions,
instructions, games) they cost."""
from __future__ import annotations

import pytest

from zephyr_lib.evals import alpaca_eval as ae
from zephyr_lib.evals import mt_bench as mt
from zephyr_lib.evals.benchmarks import AlpacaEval, MTBench
from zephyr_lib.evals.toy_prompts import toy_judge_prompts
from zephyr_lib.judges import Completion, Judge, JudgeFailuresError, require_inputs
from zephyr_lib.stages.eval import EvalConfig, check_losses


class Answers:
    """A model that answers every prompt with the same words."""

    name = "m"

    def respond_many(self, convs, **kw):
        return [f"An answer to {c[-1]['content'][:20]}." for c in convs]


class FlakyJudge:
    """Answers every request; while `faulty`, every 4th distinct request gets a reply no parser can use."""

    name = "flaky-judge"

    def __init__(self):
        self.faulty, self.calls, self.order = True, [], {}

    def complete(self, messages, *, temperature, max_tokens):
        text = messages[-1]["content"]
        self.calls.append(text)
        k = self.order.setdefault(text, len(self.order))
        if self.faulty and k % 4 == 0:
            return Completion("I think both answers are fine.")
        try:
            info = ae.extract_annotator_messages(messages)
            return Completion(str([{"model": "model_1", "rank": 1 + len(info["output_1"]) % 2},
                                   {"model": "model_2", "rank": 2 - len(info["output_1"]) % 2}]))
        except ValueError:
            return Completion(f"Fine.\n\nRating: [[{len(text) % 10 + 1}]]")


def test_an_eval_with_a_quarter_unusable_judgments_is_not_complete_and_heals_asking_only_those(tmp_path):
    cfg = EvalConfig(models=["m"], benchmarks=["mt_bench", "alpaca_eval"], n_bootstrap=100)
    qs = [{"question_id": 100 + i, "category": "writing", "turns": [f"Write about {i}.", f"Shorter, {i}."]}
          for i in range(8)]
    alpaca = [{"instruction": f"Name thing {i}.", "output": f"Thing {i}.", "generator": "ref", "dataset": "toy"}
              for i in range(8)]
    inputs = {"mt_questions": qs, "judge_prompts": toy_judge_prompts(), "mt_references": None, "alpaca": alpaca}
    benches = {"mt_bench": MTBench(cfg, inputs), "alpaca_eval": AlpacaEval(cfg, inputs)}
    backend = FlakyJudge()

    def evaluate():
        judge = Judge(backend, tmp_path / "cache", progress=False)
        res = {b.name: b.run(Answers(), "m", judge, tmp_path / "out" / b.name) for b in benches.values()}
        return {"m": res}

    results = evaluate()
    asked = len(backend.calls)
    assert asked == 16 + 8
    unusable = {t for t, k in backend.order.items() if k % 4 == 0}
    assert len(unusable) == 6  # a quarter of the 24 requests
    mtm, aem = results["m"]["mt_bench"], results["m"]["alpaca_eval"]
    assert mtm["n_unusable"] == sum(t in unusable for t in backend.calls[:16]) and mtm["n_transport_failures"] == 0
    assert mtm["inputs_lost"] > 0 and mtm["inputs_total"] == 8
    assert aem["n_unparsed"] == aem["inputs_lost"] > 0 and aem["inputs_total"] == 8
    with pytest.raises(JudgeFailuresError) as e:  # the default budget (0): the run is not stored complete
        check_losses(benches, results, cfg.judge_failure_budget, where="eval run 'eval'")
    msg = str(e.value)
    assert f"mt_bench lost {mtm['inputs_lost']} of 8 questions" in msg
    assert f"alpaca_eval lost {aem['inputs_lost']} of 8 instructions" in msg

    backend.faulty, backend.calls = False, []
    healed = evaluate()
    assert sorted(backend.calls) == sorted(unusable)  # only the unusable ones are asked again
    losses = check_losses(benches, healed, 0.0, where="eval run 'eval'")
    assert losses["lost"] == 0 and losses["parts"]["mt_bench"] == {"inputs": 8, "lost": 0, "rate": 0.0}
    assert healed["m"]["mt_bench"]["n_failed"] == 0 and healed["m"]["alpaca_eval"]["n"] == 8


def test_the_budget_counts_inputs_not_requests():
    # 18 of 60 prompts lost (30%) is over a 20% budget even if they took only 4.4% of the requests
    with pytest.raises(JudgeFailuresError, match=r"aif: prompts lost 18 of 60 prompts \(30.0%\)"):
        require_inputs({"prompts": (18, 60)}, 0.2, where="aif", what={"prompts": "prompts"})
    ok = require_inputs({"prompts": (6, 60)}, 0.2, where="aif")
    assert (ok["lost"], ok["inputs"], ok["parts"]["prompts"]["rate"]) == (6, 60, 0.1)
    with pytest.raises(ValueError, match="budget"):
        require_inputs({}, 1.0)


def test_usable_parsers_refuse_what_fastchat_scores_as_missing():
    assert mt.usable_rating("Rating: [[7]]") == 7.0
    with pytest.raises(ValueError, match="rating"):
        mt.usable_rating("no rating here")
    assert mt.usable_verdict("[[B]]") == "B"
    with pytest.raises(ValueError, match="verdict"):
        mt.usable_verdict("both fine")


def test_retry_failed_reaches_every_stage_and_only_when_asked(monkeypatch, tmp_path):
    import os

    from zephyr_lib import runner
    from zephyr_lib.judges import RETRY_FAILED_ENV

    seen = []
    monkeypatch.setattr(runner, "RUNS_DIR", tmp_path)
    monkeypatch.setattr(runner, "execute_run", lambda *a, **k: seen.append(os.environ.get(RETRY_FAILED_ENV)) or "cached")
    monkeypatch.delenv(RETRY_FAILED_ENV, raising=False)
    assert runner.run_pipeline("smoke", ["curate"], echo=lambda *a, **k: None, retry_failed=True) == 0
    assert runner.run_pipeline("smoke", ["curate"], echo=lambda *a, **k: None) == 0
    assert seen == ["1", None]
    assert Judge(FlakyJudge(), tmp_path / "c", progress=False, retry_failed=None).retry_failed is False
    monkeypatch.setenv(RETRY_FAILED_ENV, "1")
    assert Judge(FlakyJudge(), tmp_path / "c", progress=False).retry_failed is True


def test_temporary_folders_of_killed_runs_are_cleaned_on_the_next_start(monkeypatch, tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    from zephyr_lib import runner

    monkeypatch.setattr(runner.tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leaked, live, other, legacy = (tmp_path / n for n in ("zephyr-sft-abc", "zephyr-sft-def", "zephyr-x-1", "zephyr-dpo-old"))
    for d, pid in ((leaked, dead.pid), (live, os.getpid()), (other, dead.pid)):
        d.mkdir()
        (d / runner.TEMP_OWNER).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    legacy.mkdir()
    os.utime(legacy, (0, 0))  # an older version's leak: no owner recorded, untouched for long
    said = []
    removed = runner.clean_leaked_temp(["sft", "dpo"], echo=said.append)
    assert sorted(removed) == sorted([leaked, legacy]) and live.is_dir() and other.is_dir()
    assert said[0].startswith("cleaned up") and "earlier, killed run" in said[0]
