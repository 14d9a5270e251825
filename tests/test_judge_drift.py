"""Judge drift, measured (issue 23): the paper profile's eval path judges this run's models and the
paper's published models (tiny stand-ins here) with the same judge (a loopback OpenAI-compatible
server), and re-judges Zephyr-7B-beta's archived AlpacaEval outputs (the real 805 rows of
../shared/reference-data/alpaca_eval/) against the baseline GPT-4-0613 judged, so the drift from
90.60 is a number; the results stage puts three columns per benchmark side by side.

The loopback judge is deterministic and simple on purpose: for AlpacaEval it ranks the longer
output first; for MT-Bench it rates 1 + (answer length mod 10). Its numbers mean nothing; what is
tested is that every model goes through the same judge and that the arithmetic and caching hold.
"""
from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler

import pytest
import yaml
from conftest import LoopbackServer, REPO, serving

from zephyr_lib.evals import alpaca_eval as ae

KEY = "sk-test-DRIFT-0123456789abcdef"
ENV = "ZEPHYR_TEST_DRIFT_KEY"


class LoopbackJudge(LoopbackServer):
    def __init__(self):
        super().__init__(Handler)
        self.calls = 0
        self.fail_every = 0  # > 0: every n-th distinct request fails with HTTP 500 (a flaky judge)
        self.models: set[str] = set()


def judge_reply(messages: list[dict]) -> str:
    try:
        req = ae.extract_annotator_messages(messages)
    except ValueError:
        answer = re.search(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]",
                           messages[-1]["content"], re.S)
        n = len(answer.group(1)) if answer else 0
        return f"The answer is fine. Rating: [[{1 + n % 10}]]"
    first = len(req["output_1"]) >= len(req["output_2"])
    return str([{"model": "model_1", "rank": 1 if first else 2}, {"model": "model_2", "rank": 2 if first else 1}])


class Handler(BaseHTTPRequestHandler):
    server: LoopbackJudge

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with self.server.lock:
            self.server.calls += 1
            n = self.server.calls
            self.server.models.add(body["model"])
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            status, obj = 401, {"error": {"code": "invalid_api_key"}}
        elif self.server.fail_every and n % self.server.fail_every == 0:
            status, obj = 500, {"error": {"message": "overloaded"}}
        else:
            status, obj = 200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                                     "content": judge_reply(body["messages"])}}],
                                "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def judge_server(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    with serving(LoopbackJudge()) as srv:
        yield srv


def expected_win_rate(baseline: list[dict], outputs: dict[str, str]) -> float:
    """The loopback judge's verdicts computed independently: longer output wins, identical = draw."""
    prefs = []
    for r in baseline:
        ref, out = r["output"], outputs[r["instruction"]]
        prefs.append(1.5 if ref == out else 2.0 if len(out) > len(ref) else 1.0)
    return 100 * sum(p - 1 for p in prefs) / len(prefs)


def test_rejudging_the_archived_805_outputs_is_cached_and_resumable(reference_data, judge_server, tmp_path):
    from types import SimpleNamespace

    from zephyr_lib.judges import judge_from_config
    from zephyr_lib.stages.eval import rejudge_archived

    base_path = reference_data / "alpaca_eval" / "text_davinci_003_baseline_as_judged.json"
    baseline, info = ae.load_baseline(base_path)
    assert info["kind"] == "as_judged" and len(baseline) == 805
    archived = ae.load_model_outputs(reference_data / "alpaca_eval" / "zephyr-7b-beta_outputs.json", baseline)
    inputs = {"alpaca": baseline, "alpaca_archived": archived}
    cfg = SimpleNamespace(alpaca_rejudge=str(reference_data / "alpaca_eval" / "zephyr-7b-beta_outputs.json"))

    def judge():
        return judge_from_config("openai", base_url=judge_server.url, model="judge-today", api_key_env=ENV,
                                 cache_dir=tmp_path / "cache", max_retries=0, progress=False)

    judge_server.fail_every = 7  # a flaky judge: about one call in seven fails
    first = judge()
    m1 = rejudge_archived(inputs, first, tmp_path / "out1", cfg)
    n_calls = judge_server.calls
    out_of = {a["instruction"]: a["output"] for a in archived}
    identical = sum(r["output"] == out_of[r["instruction"]] for r in baseline)  # no call: a draw
    assert 90 < m1["n_judge_failed"] < 140 and n_calls == 805 - identical
    judge_server.fail_every = 0
    second = judge()
    m2 = rejudge_archived(inputs, second, tmp_path / "out2", cfg)
    assert judge_server.calls - n_calls == m1["n_judge_failed"]  # resumed: only the failed ones asked again
    assert second.stats.cache_hits == n_calls - m1["n_judge_failed"]
    assert m2["n_judge_failed"] == 0 and m2["n"] + m2["n_unparsed"] == 805
    want = expected_win_rate(baseline, {a["instruction"]: a["output"] for a in archived})
    assert m2["win_rate"] == pytest.approx(want)
    assert m2["paper_win_rate"] == 90.60 and m2["drift"] == pytest.approx(want - 90.60)
    saved = json.loads((tmp_path / "out2" / "metrics.json").read_text())
    assert saved["drift"] == pytest.approx(m2["drift"]) and saved["generator"] == "zephyr-7b-beta"
    assert len(ae.load_annotations(tmp_path / "out2" / "annotations.json")) == 805


def test_paper_eval_path_judges_the_run_and_the_published_models_with_one_judge(
        reference_data, judge_server, tiny_base, tmp_path, monkeypatch):
    """The paper profile's eval and results stages on CPU: tiny models for this run's sft/dpo and
    for the anchors, the real MT-Bench files, 40 AlpacaEval rows, a loopback judge."""
    from zephyr_lib import agents, store
    from zephyr_lib.plan import load_profile
    from zephyr_lib.stages import STAGES
    from zephyr_lib.vllm_backend import generation_agent

    n = 40
    baseline = json.loads((reference_data / "alpaca_eval" / "text_davinci_003_baseline_as_judged.json").read_text())[:n]
    keep = {r["instruction"] for r in baseline}
    zephyr = [r for r in json.loads((reference_data / "alpaca_eval" / "zephyr-7b-beta_outputs.json").read_text())
              if r["instruction"] in keep]
    (tmp_path / "alpaca.json").write_text(json.dumps(baseline))
    (tmp_path / "zephyr.json").write_text(json.dumps(zephyr))
    raw = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    raw["endpoints"]["judge"].update(base_url=judge_server.url, api_key_env=ENV)
    mt = reference_data / "mt_bench"
    raw["stages"]["eval"].update(
        mt_bench_questions=str(mt / "question.jsonl"), mt_bench_references=str(mt / "reference_answer" / "gpt-4.jsonl"),
        judge_prompts=str(mt / "judge_prompts.jsonl"), alpaca_eval_set=str(tmp_path / "alpaca.json"),
        alpaca_rejudge=str(tmp_path / "zephyr.json"), benchmarks=["mt_bench", "alpaca_eval"], device="cpu",
        max_new_tokens=6, alpaca_max_new_tokens=6, batch_size=16, n_bootstrap=200,
        anchors=[f"zephyr-7b-beta={tiny_base}", f"mistral-7b-sft-beta={tiny_base}"])
    raw["stages"]["results"].update(epochs=[], alpha_beta=[], regressions="", academic=[], claims=[], ablation=[],
                                    n_bootstrap=200, dpo="")
    path = tmp_path / "paper_tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    prof = load_profile(str(path))
    assert prof.runs["eval"].config.models == ["sft", "dpo"]  # the paper profile's own models

    made = []

    def tiny_agent(ctx, name, **kw):  # this run's sft and dpo: tiny stand-ins (no 7B training here)
        made.append(name)
        return generation_agent(tiny_base, name=name, batch_size=16, device="cpu")

    monkeypatch.setattr(agents, "make_agent", tiny_agent)
    root = tmp_path / "runs"
    ctx = store.context(prof, "eval", root)
    with ctx.build() as out:
        STAGES["eval"].build(ctx, out)
    em = ctx.metrics()
    assert made == ["sft", "dpo"]
    assert set(em["models"]) == {"sft", "dpo", "zephyr-7b-beta", "mistral-7b-sft-beta"}
    assert em["models"]["zephyr-7b-beta"]["anchor"] == {"source": str(tiny_base), "revision": ""}
    for m in em["models"].values():
        assert m["mt_bench"]["overall"] is not None and m["alpaca_eval"]["n"] == n
    assert judge_server.models == {"gpt-6.1-sol"}  # one judge for every model
    drift = em["alpaca_rejudge"]
    assert drift["n"] + drift["n_unparsed"] == n and drift["paper_win_rate"] == 90.60
    assert drift["win_rate"] == pytest.approx(expected_win_rate(baseline, {r["instruction"]: r["output"] for r in zephyr}))

    rctx = store.context(prof, "results", root)
    with rctx.build() as out:
        STAGES["results"].build(rctx, out)
    rows = rctx.metrics()["like_for_like"]
    assert {(r["benchmark"], r["run"], r["anchor"]) for r in rows} == {
        ("MT-Bench", "dpo", "zephyr-7b-beta"), ("AlpacaEval %", "dpo", "zephyr-7b-beta"),
        ("MT-Bench", "sft", "mistral-7b-sft-beta"), ("AlpacaEval %", "sft", "mistral-7b-sft-beta")}
    for r in rows:
        key = "overall" if r["benchmark"] == "MT-Bench" else "win_rate"
        assert r["anchor_today"] == em["models"][r["anchor"]][("mt_bench" if key == "overall" else "alpaca_eval")][key]
        assert r["run_today"] == em["models"][r["run"]][("mt_bench" if key == "overall" else "alpaca_eval")][key]
        assert r["verdict"].startswith(f"{r['run']} vs the paper's {r['anchor']}, same judge")
    (z,) = [r for r in rows if r["anchor"] == "zephyr-7b-beta" and r["benchmark"] == "MT-Bench"]
    assert z["paper_2023_judge"] == 7.34 and z["judge_drift"] == pytest.approx(z["anchor_today"] - 7.34)
    (za,) = [r for r in rows if r["anchor"] == "zephyr-7b-beta" and r["benchmark"] == "AlpacaEval %"]
    assert za["paper_2023_judge"] == 90.60 and za["archived_outputs_today"] == pytest.approx(drift["win_rate"])
    # sft and its anchor are the same tiny model here, under the same judge and decoding: no difference
    (s,) = [r for r in rows if r["run"] == "sft" and r["benchmark"] == "MT-Bench"]
    assert s["paper_2023_judge"] == 6.64
