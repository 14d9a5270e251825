"""Tests for the teacher and AI-feedback loops against real endpoints (zephyr_lib.ultrachat, zephyr_lib.pool,
zephyr_lib.agents.OpenAIAgent) and zephyr_lib.vllm_backend, against a real HTTP server on 127.0.0.1 that fails on purpose.

The server mimics POST /v1/chat/completions and answers deterministically from the request:
the user simulator's opening question and follow-ups, the assistant's answers, and replies in
UltraFeedback's rating formats (built with feedback.format_aspect_reply / format_overall_reply
from what feedback.extract_aspect_request / extract_overall_request recover). Markers in a seed
or instruction script failures for every request that carries them: ~r429~ (one 429 with
Retry-After: 0 per distinct request), ~r500~ (two 500s), ~badjson~ (one non-JSON body),
~timeout~ (the first such request answers after the client timeout), ~doomed~ (the assistant's
turn-2 call always fails), ~doomedjudge~ (overall-score calls always fail), ~garbled~ (the
first reply to an aspect request is unparsable), ~down~ (always 503). ``server.budget`` makes
the server refuse everything (503) after that many answers: a crash of the endpoint mid-run.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
import time
import types
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from conftest import LoopbackServer, serving

from zephyr_lib import curate
from zephyr_lib import pool as P
from zephyr_lib import ultrachat
from zephyr_lib.agents import OpenAIAgent
from zephyr_lib import feedback as fb
from zephyr_lib import vllm_backend
from zephyr_lib.judges import AllCallsFailedError, Judge, JudgeError, OpenAIChatBackend

KEY = "sk-distill-TOPSECRET-0123456789abcdef"
ENV = "ZEPHYR_TEST_DISTILL_KEY"
OPENER_HEAD = ultrachat.OPENER_TEMPLATE.split("{topic}")[0]


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def aspect_items(aspect: str, completions: list[str]) -> list[dict]:
    return [{"rating": _h(aspect + c) % 5 + 1, "rationale": f"Rationale {i} for {aspect}.",
             "type": ["1"], "type_rationale": "Type rationale."} for i, c in enumerate(completions, 1)]


def overall_score(completion: str) -> int:
    return _h(completion) % 10 + 1


def reply_for(messages: list[dict]) -> tuple[str, str]:
    """(kind, reply text) for a request, deterministic."""
    try:
        aspect, _, comps = fb.extract_aspect_request(messages)
        return "aspect", fb.format_aspect_reply(aspect_items(aspect, comps), aspect)
    except ValueError:
        pass
    try:
        _, comp = fb.extract_overall_request(messages)
        return "overall", fb.format_overall_reply(f"Critique of a {len(comp)}-character answer.", overall_score(comp))
    except ValueError:
        pass
    user = [m["content"] for m in messages if m["role"] == "user"][-1]
    if messages[0]["role"] == "system" and messages[0]["content"] == ultrachat.USER_SIM_SYSTEM:
        if user.startswith(OPENER_HEAD):
            return "opener", f"User: What is most surprising about {user[len(OPENER_HEAD):]}?"
        n = user.count("Assistant: ")
        last = user.rsplit("Assistant: ", 1)[1].split("\n\nWrite the user's next message")[0]
        return "followup", f'"Follow-up {n}: why is that so? (re: {last[:40]})"'
    k = sum(m["role"] == "assistant" for m in messages) + 1
    return "assistant", f"Answer {k}: here is what I know about '{user[:60]}'."


class ChatServer(LoopbackServer):
    def __init__(self):
        super().__init__(Handler)
        self.total = 0                      # HTTP requests of any outcome
        self.seen: Counter = Counter()      # request digest -> requests
        self.answered: list[str] = []       # digests answered with a valid reply, in order
        self.kinds: Counter = Counter()     # (model, kind) of valid replies
        self.temperatures: list[float] = []
        self.budget: int | None = None      # answer at most this many, then 503 for everything
        self.timeout_fired = False


class Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _ok(self, text: str):
        reply = {"id": "x", "object": "chat.completion",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}}
        self._send(200, json.dumps(reply).encode())

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        msgs = body["messages"]
        digest = hashlib.sha256(json.dumps([msgs, body["model"], body["temperature"], body["max_tokens"]],
                                           sort_keys=True).encode()).hexdigest()
        blob = json.dumps(msgs)
        with srv.lock:
            n = srv.seen[digest]
            srv.seen[digest] += 1
            srv.total += 1
        if self.headers.get("Authorization", "") != f"Bearer {KEY}":
            return self._send(401, b'{"error": "bad key"}')
        kind, text = reply_for(msgs)
        if "~down~" in blob:
            return self._send(503, b'{"error": "overloaded"}')
        if "~r429~" in blob and n == 0:
            return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
        if "~r500~" in blob and n < 2:
            return self._send(500, b'{"error": "boom"}')
        if "~badjson~" in blob and n == 0:
            return self._send(200, b"{this is not json")
        if "~timeout~" in blob:
            with srv.lock:
                fire, srv.timeout_fired = not srv.timeout_fired, True
            if fire:
                time.sleep(1.0)  # the client gave up after 0.5 s
                return self._ok("too late")
        if "~doomed~" in blob and kind == "assistant" and text.startswith("Answer 2"):
            return self._send(500, b'{"error": "this request always fails"}')
        if "~doomedjudge~" in blob and kind == "overall":
            return self._send(500, b'{"error": "this request always fails"}')
        if "~garbled~" in blob and kind == "aspect" and n == 0:
            return self._ok("They all look fine to me.")
        with srv.lock:
            if srv.budget is not None and len(srv.answered) >= srv.budget:
                down = True
            else:
                down = False
                srv.answered.append(digest)
                srv.kinds[(body["model"], kind)] += 1
                srv.temperatures.append(body["temperature"])
        if down:
            return self._send(503, b'{"error": "server is gone"}')
        return self._ok(text)


@pytest.fixture
def server():
    with serving(ChatServer()) as srv:
        yield srv


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    return ENV


def judge(server, model: str, cache, **kw) -> Judge:
    opts = dict(api_key_env=ENV, timeout=0.5, max_retries=3, backoff_base=0.01, backoff_max=0.05, concurrency=4)
    opts.update(kw)
    return Judge(OpenAIChatBackend(server.url, model, **opts), cache, progress=False)


def roles_ok(d: list[dict], turns: int) -> bool:
    return len(d) == 2 * turns and all(m["role"] == ("user" if k % 2 == 0 else "assistant") and
                                       isinstance(m["content"], str) and m["content"].strip()
                                       for k, m in enumerate(d))


def no_key_in(path) -> int:
    files = list(path.rglob("*.json"))
    for f in files:
        text = f.read_text()
        assert KEY not in text and "TOPSECRET" not in text, f
    return len(files)


# --------------------------------------------------------------------------------------------
# UltraChat
# --------------------------------------------------------------------------------------------

SEEDS = ["~r429~ volcanoes", "~r500~ How do tides work?", "~badjson~ the history of jazz",
         "~timeout~ Why is the sky blue?", "gardening", {"topic": "prime numbers"},
         {"question": "Explain photosynthesis."}]


def test_ultrachat_recovers_from_transient_failures_and_rerun_is_free(server, key_env, tmp_path):
    cache = tmp_path / "cache"
    teacher, user = judge(server, "teacher-model", cache), judge(server, "user-model", cache)
    dialogues, stats = ultrachat.ultrachat_dialogues(teacher, SEEDS, max_turns=3, user_model=user, desc=None)

    assert len(dialogues) == 7 and stats["n_dropped"] == 0 and stats["kept"] == list(range(7))
    assert stats["n_topics"] == 4
    assert all(roles_ok(d, 3) for d in dialogues)
    # topics were opened by the user simulator (its "User:" label stripped); questions are used as-is
    assert dialogues[0][0]["content"] == "What is most surprising about ~r429~ volcanoes?"
    assert dialogues[5][0]["content"] == "What is most surprising about prime numbers?"
    assert dialogues[1][0]["content"] == "~r500~ How do tides work?"
    assert dialogues[6][0]["content"] == "Explain photosynthesis."
    for d in dialogues:  # follow-ups come from the dialogue so far (quotes stripped)
        assert [m["content"][:8] for m in d[1:]] == ["Answer 1", "Follow-u", "Answer 2", "Follow-u", "Answer 3"]
        assert d[2]["content"].startswith("Follow-up 1: why") and d[4]["content"].startswith("Follow-up 2: why")
        assert d[4]["content"].endswith(f"(re: {d[3]['content'][:40]})")
    # who was asked what: the user simulator writes user turns, the teacher answers
    assert server.kinds == Counter({("user-model", "opener"): 4, ("user-model", "followup"): 14,
                                    ("teacher-model", "assistant"): 21})
    assert set(server.temperatures) == {0.7}
    # every scripted failure was retried and recovered: 429 x6 requests, 500 x2 x5, bad JSON x6, one timeout
    expected_retries = 6 + 10 + 6 + 1
    assert server.total == 39 + expected_retries
    assert stats["teacher"]["calls"] == 21 and stats["user_model"]["calls"] == 18
    assert stats["teacher"]["retries"] + stats["user_model"]["retries"] == expected_retries
    assert stats["teacher"]["transport_failures"] == stats["user_model"]["transport_failures"] == 0
    assert stats["teacher"]["prompt_tokens"] == 21 * 20

    # raw UltraChat rows: {"id", "data": [alternating strings]} that curate reads back
    raw = ultrachat.raw_ultrachat_rows(dialogues, [f"uc{i}" for i in stats["kept"]])
    assert [r["id"] for r in raw] == [f"uc{i}" for i in range(7)]
    assert all(len(r["data"]) == 6 and all(isinstance(x, str) for x in r["data"]) for r in raw)
    assert [curate.from_raw_ultrachat(r, r["id"]) for r in raw] == dialogues
    kept, report = curate.curate(raw, truecase=False, filter_boilerplate=False)
    assert report["n_out"] == 7 and kept == dialogues
    for d in dialogues:
        curate.validate_200k_row(curate.to_ultrachat_200k_row(d), "row")

    # the API key never reaches the cache; one file per finished call
    assert no_key_in(cache) == 39

    # rerun with fresh judges over the same cache: zero HTTP calls, identical output
    before = server.total
    teacher2, user2 = judge(server, "teacher-model", cache), judge(server, "user-model", cache)
    again, stats2 = ultrachat.ultrachat_dialogues(teacher2, SEEDS, max_turns=3, user_model=user2, desc=None)
    assert server.total == before
    assert again == dialogues and stats2["kept"] == stats["kept"]
    assert (stats2["teacher"]["calls"], stats2["teacher"]["cache_hits"]) == (0, 21)
    assert (stats2["user_model"]["calls"], stats2["user_model"]["cache_hits"]) == (0, 18)


def test_ultrachat_drops_and_counts_a_dialogue_whose_call_always_fails(server, key_env, tmp_path):
    seeds = ["~doomed~ Why do cats purr?", "What is rain?", "deserts", "How do bees fly?"]
    teacher = judge(server, "teacher-model", tmp_path, max_retries=2)
    dialogues, stats = ultrachat.ultrachat_dialogues(teacher, seeds, max_turns=3, desc=None)

    assert stats["n_dialogues"] == 3 and stats["n_dropped"] == 1 and stats["kept"] == [1, 2, 3]
    (drop,) = stats["dropped"]
    assert (drop["seed_index"], drop["seed"], drop["step"], drop["turn"]) == (0, seeds[0], "assistant", 2)
    assert "HTTP 500" in drop["error"] and "3 attempt" in drop["error"]
    assert all(roles_ok(d, 3) for d in dialogues)  # the doomed one is not half-written into the output
    assert not any("~doomed~" in m["content"] for d in dialogues for m in d)
    assert stats["teacher"]["transport_failures"] == 1
    assert max(server.seen.values()) == 3  # the doomed call: 1 + 2 retries, nothing else repeated
    assert "user_model" not in stats  # the teacher's endpoint also simulated the user

    # a rerun replays everything finished from the cache and asks only the failing call again
    before = server.total
    again, stats2 = ultrachat.ultrachat_dialogues(judge(server, "teacher-model", tmp_path, max_retries=2),
                                                seeds, max_turns=3, desc=None)
    assert server.total == before + 3
    assert again == dialogues and stats2["n_dropped"] == 1 and stats2["teacher"]["calls"] == 1


def test_crash_midway_loses_no_finished_call(server, key_env, tmp_path):
    seeds = ["oceans", "How do magnets work?", "medieval castles", "Why do leaves change colour?",
             "jazz", "What is a black hole?"]
    reference, _ = ultrachat.ultrachat_dialogues(judge(server, "teacher-model", tmp_path / "ref"), seeds,
                                               max_turns=3, desc=None)
    n_full = len(server.answered)
    assert n_full == 3 + 6 * 3 + 6 * 2  # 3 openers, 18 answers, 12 follow-ups

    k = 14  # the endpoint dies after 14 more answers: 3 openers + 6 answers + 5 of the 6 turn-2 follow-ups
    server.budget = n_full + k
    first = server.answered[:]
    j1 = judge(server, "teacher-model", tmp_path / "run", max_retries=1)
    try:
        partial, st = ultrachat.ultrachat_dialogues(j1, seeds, max_turns=3, desc=None)
    except AllCallsFailedError:  # a whole batch failed: the endpoint is down
        partial = None
    else:
        assert len(partial) < 6 and st["n_dropped"] > 0
    run1 = server.answered[len(first):]
    assert len(run1) == k and j1.stats.calls - j1.stats.transport_failures == k
    assert no_key_in(tmp_path / "run") == k  # every finished call is on disk

    server.budget = None  # the endpoint is back
    before = len(server.answered)
    j2 = judge(server, "teacher-model", tmp_path / "run")
    out, stats = ultrachat.ultrachat_dialogues(j2, seeds, max_turns=3, desc=None)
    run2 = server.answered[before:]
    assert out == reference and stats["n_dropped"] == 0
    assert len(run2) == n_full - k and j2.stats.calls == n_full - k and j2.stats.cache_hits == k
    assert not set(run1) & set(run2)  # no finished call was made twice
    assert set(run1) | set(run2) == set(first)  # together exactly the calls of an uninterrupted run


# --------------------------------------------------------------------------------------------
# UltraFeedback: pool + ratings
# --------------------------------------------------------------------------------------------


class ScriptAgent:
    def __init__(self, name: str):
        self.name, self.batches = name, []

    def respond_many(self, conversations, *, max_new_tokens=128, temperature=0.0, desc=None, **_):
        self.batches.append(conversations)
        return [f"{self.name} answers ({len(c)} msgs): {c[-1]['content'][::-1]}" for c in conversations]


PROMPTS = ["Name three rivers.", "~garbled~ Write a haiku about rain.", "~doomedjudge~ Explain DNS.",
           {"instruction": "Is the earth flat?", "source": "truthful_qa",
            "correct_answers": ["No, it is round"], "incorrect_answers": ["Yes"]},
           "Sum 2 and 3.", "Translate 'cat' to French."]


def test_pool_and_ultrafeedback_ratings(server, key_env, tmp_path):
    api = OpenAIAgent(judge(server, "gpt-3.5-turbo", tmp_path / "pool"), "gpt-3.5-turbo")
    pool = {"gpt-3.5-turbo": api, **{n: ScriptAgent(n) for n in ("llama-2-7b-chat", "falcon-40b-instruct",
                                                                 "wizardlm-13b", "alpaca-7b")}}
    rows, pst = P.complete_pool(pool, PROMPTS, per_prompt=4, seed=42, max_new_tokens=64)
    assert pst["n_rows"] == 6 and pst["n_dropped"] == 0
    rng = random.Random(42)
    assert [r["models"] for r in rows] == [rng.sample(list(pool), 4) for _ in PROMPTS]  # the aif stage's draw
    assert all(len(set(r["models"])) == 4 and [c["model"] for c in r["completions"]] == r["models"] for r in rows)
    assert all(len(a.batches) == 1 for a in pool.values() if isinstance(a, ScriptAgent))  # one batch per member
    for r in rows:
        for c in r["completions"]:
            assert c["response"].startswith("Answer 1:" if c["model"] == "gpt-3.5-turbo" else c["model"])
    assert rows[3]["source"] == "truthful_qa"
    assert P.complete_pool(pool, PROMPTS, per_prompt=4, seed=42, max_new_tokens=64)[0] == rows

    j = judge(server, "gpt-4", tmp_path / "judge")
    raw, st = P.rate_ultrafeedback(j, rows, desc=None)
    assert st["n_rows"] == 6 and st["n_out"] == 5 and st["n_dropped"] == 1
    (drop,) = st["dropped"]
    assert drop["row"] == 2 and drop["failed"] == [f"overall[{i}]" for i in range(4)]
    assert "HTTP 500" in drop["error"]
    assert st["n_requests"] == 6 * (4 + 4)
    assert st["judge"]["parse_retries"] == 4 and st["judge"]["parse_failures"] == 0  # ~garbled~ re-asked
    assert server.kinds[("gpt-4", "aspect")] == 24 and server.kinds[("gpt-4", "overall")] == 20

    kept_rows = [r for k, r in enumerate(rows) if k != 2]
    for out, src in zip(raw, kept_rows):
        fb.validate_raw_row(out, "out")
        assert out["instruction"] == src["instruction"] and out["models"] == src["models"]
        for c, s in zip(out["completions"], src["completions"]):
            assert c["response"] == s["response"] and c["overall_score"] == overall_score(s["response"])
            responses = [x["response"] for x in src["completions"]]
            j_idx = responses.index(s["response"])
            for aspect in fb.ASPECTS:  # each completion got its own block's rating
                assert c["annotations"][aspect]["Rating"] == str(aspect_items(aspect, responses)[j_idx]["rating"])
            assert c["critique"].startswith("Critique of a")
    assert raw[2]["source"] == "truthful_qa" and raw[2]["correct_answers"] == ["No, it is round"]

    pairs, counts = fb.binarize(raw)
    assert counts["n_out"] == 5 and all(p["score_chosen"] >= p["score_rejected"] for p in pairs)
    assert no_key_in(tmp_path) > 0

    # rerun: only the always-failing judgments are asked again (4 requests x 4 attempts)
    before = server.total
    raw2, st2 = P.rate_ultrafeedback(judge(server, "gpt-4", tmp_path / "judge"), rows, desc=None)
    assert server.total == before + 4 * 4
    assert raw2 == raw and st2["judge"]["calls"] == 4 and st2["judge"]["cache_hits"] == 24 + 4 + 20  # incl. the cached garbled replies


def test_openai_agent_temperatures_errors_and_pool_drops(server, key_env, tmp_path):
    agent = OpenAIAgent(judge(server, "gpt-3.5-turbo", tmp_path), "gpt-3.5-turbo")
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    out = agent.respond_many(convs, max_new_tokens=32, temperatures=[0.0, 0.7, 0.0])
    assert out == [f"Answer 1: here is what I know about 'q{i}'." for i in range(3)]
    assert sorted(server.temperatures) == [0.0, 0.0, 0.7]
    assert agent.respond_many(convs, max_new_tokens=32, temperatures=[0.0, 0.7, 0.0]) == out
    assert server.total == 3 and agent.stats.cache_hits == 3
    with pytest.raises(NotImplementedError, match="finish_reason"):
        agent.respond_many(convs, return_stopped=True)

    bad = convs[:1] + [[{"role": "user", "content": "~down~ q"}]]
    with pytest.raises(JudgeError, match="1 of 2 call"):
        OpenAIAgent(judge(server, "gpt-3.5-turbo", tmp_path, max_retries=1), "g").respond_many(bad)
    lenient = OpenAIAgent(judge(server, "gpt-3.5-turbo", tmp_path, max_retries=1), "g", on_error="none")
    assert lenient.respond_many(bad) == [out[0], None]

    rows, st = P.complete_pool({"api": lenient, "toy": ScriptAgent("toy")}, ["q0", "~down~ q"],
                                     per_prompt=2, seed=0)
    assert [r["instruction"] for r in rows] == ["q0"] and st["n_dropped"] == 1
    assert st["dropped"] == [{"prompt_index": 1, "failed_models": ["api"]}]
    assert no_key_in(tmp_path) > 0


def test_seed_kinds_and_cleaning():
    assert ultrachat.clean_user_turn('  **User:** "How so?" ') == "How so?"
    assert ultrachat.clean_user_turn("“Why?”") == "Why?"
    with pytest.raises(ValueError):
        ultrachat.clean_user_turn("User:  ")
    with pytest.raises(ValueError):
        ultrachat.clean_answer("   ")
    with pytest.raises(ValueError, match="topic"):
        ultrachat.ultrachat_dialogues(None, [{"topic": "a", "question": "b?"}])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# vLLM backend: fallback and clear errors (vllm is not installed here)
# --------------------------------------------------------------------------------------------


def test_generation_agent_falls_back_without_vllm(tiny_base):
    from zephyr_lib.generate import ModelAgent

    assert vllm_backend.available() is False
    agent = vllm_backend.generation_agent(tiny_base, "tiny", tensor_parallel_size=2)
    assert isinstance(agent, ModelAgent) and agent.name == "tiny"
    out = agent.respond_many([[{"role": "user", "content": "hello"}]], max_new_tokens=3, desc=False)
    assert len(out) == 1 and isinstance(out[0], str)
    assert isinstance(vllm_backend.generation_agent(tiny_base, backend="transformers"), ModelAgent)
    with pytest.raises(vllm_backend.VLLMUnavailableError, match="vllm package, which is not installed") as e:
        vllm_backend.generation_agent(tiny_base, "tiny", backend="vllm")
    assert "pip install vllm" in str(e.value) and "backend='transformers'" in str(e.value)
    with pytest.raises(ValueError, match="unknown generation backend"):
        vllm_backend.generation_agent(tiny_base, backend="tgi")
    with pytest.raises(TypeError, match="vllm"):
        vllm_backend.generation_agent(tiny_base, backend="transformers", gpu_memory_utilization=0.5)


def test_vllm_agent_glue_with_a_fake_vllm_module(tiny_base, monkeypatch):
    """Not vLLM itself: a stand-in module checks our prompt building, grouping and ordering."""
    calls = []

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, **kw):
            self.kw = kw

        def generate(self, prompts, params, use_tqdm=True):
            calls.append((prompts, params.kw))
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(
                text=f"  out{len(p['prompt_token_ids'])}-t{params.kw['temperature']} ",
                finish_reason="stop" if params.kw["temperature"] == 0 else "length")]) for p in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    monkeypatch.setattr(vllm_backend, "_vllm_installed", lambda: True)
    monkeypatch.setattr(vllm_backend, "_cuda", lambda: True)
    assert vllm_backend.available()
    agent = vllm_backend.generation_agent(tiny_base, "tiny", seed=3)
    assert isinstance(agent, vllm_backend.VLLMAgent)
    assert agent.llm.kw["seed"] == 3 and agent.llm.kw["model"] == str(tiny_base)

    convs = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b c d"}],
             [{"role": "user", "content": "e"}]]
    texts, stopped = agent.respond_many(convs, max_new_tokens=7, temperatures=[0.0, 0.7, 0.0], return_stopped=True)
    tok = agent.tokenizer
    ids = [tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
           ["input_ids"] for c in convs]
    assert len(calls) == 2  # grouped by temperature
    assert [p["prompt_token_ids"] for p in calls[0][0]] == [ids[0], ids[2]]
    assert calls[0][1]["temperature"] == 0.0 and calls[0][1]["max_tokens"] == 7
    assert calls[0][1]["stop_token_ids"] == [tok.eos_token_id]
    assert texts == [f"out{len(ids[0])}-t0.0", f"out{len(ids[1])}-t0.7", f"out{len(ids[2])}-t0.0"]
    assert stopped == [True, False, True]


def test_aif_stage_annotates_ultrafeedback_from_a_profile_with_a_real_judge(server, key_env, tmp_path):
    """The profile path of UltraFeedback from scratch: raw UltraFeedback prompts, a pool of API
    models (endpoints), a real judge endpoint, the one AIF implementation; a rerun costs no call."""
    from zephyr_lib.plan import load_profile
    from zephyr_lib.stages import STAGES
    from zephyr_lib.store import context

    raw = Path(__file__).parent / "fixtures" / "feedback" / "ultrafeedback_raw.jsonl"
    eps = "".join(f"  {n}: {{kind: openai, model: {n}, base_url: '{server.url}', api_key_env: {ENV}}}\n"
                  for n in ("gpt-4", "llama-2-7b-chat", "falcon-40b-instruct", "wizardlm-13b"))
    prof_file = tmp_path / "uf.yaml"
    prof_file.write_text(f"endpoints:\n{eps}runs:\n  aif:\n    source: {raw}\n    annotate: true\n"
                         "    pool: [endpoint:gpt-4, endpoint:llama-2-7b-chat, endpoint:falcon-40b-instruct, endpoint:wizardlm-13b]\n"
                         "    judge: gpt-4\n    max_new_tokens: 64\n    test_fraction: 0.5\n    policy: ''\n    base: ''\n    drop_identical: false\n")
    prof = load_profile(str(prof_file))
    assert prof.runs["aif"].upstream == ()  # endpoints are not runs

    def build(root):
        ctx = context(prof, "aif", root)
        with ctx.build() as out:
            STAGES["aif"].build(ctx, out)
        return ctx.metrics()

    first = build(tmp_path / "store")
    assert first["n_prompts"] == 4 and first["n_judge_failed_prompts"] == 0
    assert first["binarize"]["n_in"] == 4 and sum(first["splits"].values()) > 0
    # 4 aspect requests per prompt, and one critique per distinct answer: this server's four "models"
    # answer a prompt alike, and identical requests of a batch are sent once
    assert first["judge_stats"]["calls"] == 4 * 4 + 4
    assert set(first["pool"]) == {"endpoint:gpt-4", "endpoint:llama-2-7b-chat", "endpoint:falcon-40b-instruct",
                                  "endpoint:wizardlm-13b"}
    calls = server.total
    (tmp_path / "store" / prof.name / "aif").rename(tmp_path / "old")  # a rerun from the same caches
    again = build(tmp_path / "store")
    assert server.total == calls and again["judge_stats"]["calls"] == 0 and again["binarize"] == first["binarize"]
