"""Tests for zephyr_lib.judges against a real HTTP server on 127.0.0.1 that fails on purpose.

The server mimics POST /v1/chat/completions. Each request's last message reads
"case:<behaviour> #<i>"; the behaviour scripts the first replies for that content (429 with
Retry-After: 0, 500, a reply slower than the client timeout, a non-JSON body, a body without
choices, a message without content, 401 for a wrong key, ...), after which it answers
"echo:<content>" with usage 10 prompt + 5 completion tokens.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import LoopbackServer, serving

from zephyr_lib.judges import (
    AllCallsFailedError,
    Backend,
    Completion,
    FatalBackendError,
    Judge,
    MissingAPIKeyError,
    OpenAIChatBackend,
    TransportError,
    _parse_retry_after,
    cache_key,
    judge_from_config,
    register_backend,
)

KEY = "sk-test-VERYSECRET-0123456789abcdef"
ENV = "ZEPHYR_TEST_JUDGE_KEY"


class ScriptedServer(LoopbackServer):
    def __init__(self):
        super().__init__(Handler)
        self.seen: Counter = Counter()
        self.total = 0
        self.inflight = 0
        self.max_inflight = 0


class Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args):  # keep pytest output clean
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
            pass  # the client gave up (timeout case)

    def _ok(self, text: str):
        reply = {"id": "x", "object": "chat.completion",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
        self._send(200, json.dumps(reply).encode())

    def do_POST(self):
        srv = self.server
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        content = body["messages"][-1]["content"]
        with srv.lock:
            n = srv.seen[content]
            srv.seen[content] += 1
            srv.total += 1
            srv.inflight += 1
            srv.max_inflight = max(srv.max_inflight, srv.inflight)
        try:
            if self.path != "/v1/chat/completions":
                return self._send(404, b'{"error": "no such route"}')
            auth = self.headers.get("Authorization", "")
            if auth != f"Bearer {KEY}":
                # like real servers, echo (part of) the presented key back in the error body
                msg = {"error": {"message": f"Incorrect API key provided: {auth}", "code": "invalid_api_key"}}
                return self._send(401, json.dumps(msg).encode())
            assert body["model"] == "judge-model" and body["max_tokens"] == 64
            case = content.split()[0].removeprefix("case:")
            if case == "r429" and n == 0:
                return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
            if case == "r500x2" and n < 2:
                return self._send(500, b'{"error": "boom"}')
            if case == "timeout" and n == 0:
                time.sleep(1.5)  # longer than the client timeout (0.5 s)
                return self._ok("too late")
            if case == "badjson" and n == 0:
                return self._send(200, b"{this is not json")
            if case == "nochoices" and n == 0:
                return self._send(200, b'{"id": "x", "object": "chat.completion"}')
            if case == "nocontent" and n == 0:
                return self._send(200, b'{"choices": [{"message": {"role": "assistant"}}]}')
            if case == "down":
                return self._send(503, b'{"error": "overloaded"}')
            if case == "bad400":
                return self._send(400, b'{"error": {"message": "context length exceeded"}}')
            if case == "garbage":
                return self._ok("garbage")
            if case == "flakyparse":
                return self._ok("bad" if n == 0 else "SCORE: 7")
            if case == "slow":
                time.sleep(0.1)
            return self._ok(f"echo:{content}")
        finally:
            with srv.lock:
                srv.inflight -= 1


@pytest.fixture
def server():
    with serving(ScriptedServer()) as srv:
        yield srv


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    return ENV


def make_backend(server, **kw) -> OpenAIChatBackend:
    opts = dict(api_key_env=ENV, timeout=0.5, max_retries=3, backoff_base=0.01, backoff_max=0.05,
                concurrency=4, price_per_1k_prompt=0.03, price_per_1k_completion=0.06)
    opts.update(kw)
    return OpenAIChatBackend(f"http://127.0.0.1:{server.server_address[1]}/v1", "judge-model", **opts)


def msgs(content: str) -> list[dict]:
    return [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": content}]


def parse_score(text: str) -> int:
    if not text.startswith("SCORE: "):
        raise ValueError(f"no score in {text!r}")
    return int(text.split(": ")[1])


def test_scripted_failures_all_recovered_in_order_then_free_rerun(server, key_env, tmp_path):
    cases = ["ok", "r429", "r500x2", "timeout", "badjson", "nochoices", "nocontent", "ok",
             "r429", "ok", "badjson", "ok"]
    contents = [f"case:{c} #{i}" for i, c in enumerate(cases)]
    judge = Judge(make_backend(server), tmp_path / "cache", progress=False)
    results = judge.complete_many([msgs(c) for c in contents], temperature=0.0, max_tokens=64)

    assert [r.text for r in results] == [f"echo:{c}" for c in contents]  # nothing lost, in order
    assert all(r.ok and not r.cached and r.error is None and r.attempts == 1 for r in results)
    # the server saw every retry
    extra = {"r429": 1, "r500x2": 2, "timeout": 1, "badjson": 1, "nochoices": 1, "nocontent": 1, "ok": 0}
    for content, case in zip(contents, cases):
        assert server.seen[content] == 1 + extra[case], content
    expected_retries = sum(extra[c] for c in cases)
    assert server.total == len(cases) + expected_retries
    s = judge.stats
    assert (s.calls, s.cache_hits, s.retries, s.transport_failures) == (12, 0, expected_retries, 0)
    assert (s.prompt_tokens, s.completion_tokens) == (120, 60)  # only the successful replies' usage
    assert s.cost_usd == pytest.approx(12 * (10 * 0.03 + 5 * 0.06) / 1000)

    # rerun with a fresh judge over the same cache: zero HTTP calls, identical answers
    before = server.total
    judge2 = Judge(make_backend(server), tmp_path / "cache", progress=False)
    again = judge2.complete_many([msgs(c) for c in contents], temperature=0.0, max_tokens=64)
    assert server.total == before
    assert [r.text for r in again] == [r.text for r in results]
    assert all(r.cached and r.ok for r in again)
    assert (judge2.stats.calls, judge2.stats.cache_hits, judge2.stats.cost_usd) == (0, 12, 0.0)

    # the key never reaches the cache, reprs or stats
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 12
    for f in files:
        text = f.read_text()
        assert KEY not in text and "VERYSECRET" not in text
        entry = json.loads(text)
        assert entry["backend"] == f"judge-model@http://127.0.0.1:{server.server_address[1]}/v1"
    for shown in (repr(judge.backend), repr(judge), str(judge.stats.as_dict()), str(vars(judge.backend))):
        assert KEY not in shown
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temp files


def test_concurrency_is_bounded(server, key_env, tmp_path):
    judge = Judge(make_backend(server, concurrency=3), tmp_path, progress=False)
    results = judge.complete_many([msgs(f"case:slow #{i}") for i in range(9)], max_tokens=64)
    assert all(r.ok for r in results)
    assert 2 <= server.max_inflight <= 3


def test_401_fails_fast_without_retries_and_hides_the_key(server, monkeypatch, tmp_path):
    wrong = "sk-wrong-SECRET-abcdefghijklmnop"
    monkeypatch.setenv(ENV, wrong)
    backend = make_backend(server, concurrency=1)
    judge = Judge(backend, tmp_path, progress=False)
    with pytest.raises(FatalBackendError) as exc:
        judge.complete_many([msgs(f"case:ok #{i}") for i in range(5)], max_tokens=64)
    message = str(exc.value)
    assert "401" in message and backend.endpoint in message and ENV in message
    assert wrong not in message and "SECRET" not in message
    assert server.total == 1  # no retry, no further calls
    assert judge.stats.retries == 0

    with pytest.raises(FatalBackendError) as exc2:
        backend.complete(msgs("case:ok #single"), temperature=0.0, max_tokens=64)
    assert wrong not in str(exc2.value)
    assert server.total == 2
    assert not list(tmp_path.rglob("*.json"))  # failures are never cached


def test_missing_key_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("ZEPHYR_NO_SUCH_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="ZEPHYR_NO_SUCH_KEY"):
        judge_from_config("openai", base_url="http://127.0.0.1:9/v1", model="m",
                          api_key_env="ZEPHYR_NO_SUCH_KEY", cache_dir=tmp_path)


def test_failures_recorded_not_raised_and_not_cached(server, key_env, tmp_path):
    judge = Judge(make_backend(server, max_retries=1), tmp_path, progress=False)
    inputs = [msgs("case:ok #0"), msgs("case:down #1"), msgs("case:bad400 #2"), msgs("case:ok #3")]
    res = judge.complete_many(inputs, max_tokens=64)
    assert [r.ok for r in res] == [True, False, False, True]
    assert res[1].text is None and "HTTP 503" in res[1].error and "2 attempt" in res[1].error
    assert "HTTP 400" in res[2].error
    assert server.seen["case:down #1"] == 2  # one retry
    assert server.seen["case:bad400 #2"] == 1  # 400 is not retried
    assert judge.stats.transport_failures == 2 and judge.stats.retries == 1
    before = server.total
    res2 = judge.complete_many(inputs, max_tokens=64)
    assert [r.cached for r in res2] == [True, False, False, True]
    assert server.total == before + 3  # the failed ones are asked again (2 + 1 requests)


def test_every_call_failing_raises_naming_the_endpoint(server, key_env, tmp_path):
    backend = make_backend(server, max_retries=1)
    judge = Judge(backend, tmp_path, progress=False)
    with pytest.raises(AllCallsFailedError) as exc:
        judge.complete_many([msgs(f"case:down #{i}") for i in range(3)], max_tokens=64)
    assert backend.endpoint in str(exc.value) and KEY not in str(exc.value)
    assert server.total == 6


def test_parse_retries_then_ok_false_and_asked_again_on_reruns_up_to_a_limit(server, key_env, tmp_path):
    judge = Judge(make_backend(server), tmp_path, progress=False)
    inputs = [msgs("case:garbage #0"), msgs("case:flakyparse #1"), msgs("case:ok #2")]

    def parse(text):
        return parse_score(text) if "echo" not in text else len(text)

    res = judge.complete_many(inputs, parse=parse, parse_retries=2, max_tokens=64)
    assert res[0].ok is False and res[0].parsed is None and res[0].text == "garbage"
    assert "unparsable reply after 3 attempt(s)" in res[0].error and res[0].attempts == 3
    assert "a rerun asks again" in res[0].error
    assert res[1].ok and res[1].parsed == 7 and res[1].attempts == 2
    assert res[2].ok and res[2].attempts == 1
    assert server.seen["case:garbage #0"] == 3 and server.seen["case:flakyparse #1"] == 2
    assert (judge.stats.parse_retries, judge.stats.parse_failures, judge.stats.calls) == (3, 1, 6)
    assert (judge.stats.inputs, judge.stats.failed) == (3, 1)
    # the unparsable replies are in the cache, recorded as such, but not as final
    entries = [json.loads(f.read_text()) for f in tmp_path.rglob("*.json")]
    bad = [e for e in entries if e["text"] == "garbage"]
    assert len(bad) == 3 and all(e["final"] is False and "no score" in e["parse_error"] for e in bad)

    # a rerun reads the cached replies for free and asks the unparsable one again (3 more attempts),
    # the successes cost nothing
    for run in (2, 3):
        before = server.total
        again = Judge(make_backend(server), tmp_path, progress=False)
        res2 = again.complete_many(inputs, parse=parse, parse_retries=2, max_tokens=64)
        assert server.total == before + 3 and server.seen["case:garbage #0"] == 3 * run
        assert [(r.ok, r.parsed) for r in res2] == [(r.ok, r.parsed) for r in res]
        assert res2[0].attempts == 3 * run and res2[1].cached and res2[2].cached
    # ... until the limit (3 runs' worth of attempts) is recorded: then it is not asked again
    before = server.total
    last = Judge(make_backend(server), tmp_path, progress=False)
    res4 = last.complete_many(inputs, parse=parse, parse_retries=2, max_tokens=64)
    assert server.total == before and last.stats.calls == 0
    assert not res4[0].ok and "limit of 9 across runs" in res4[0].error
    assert "until the endpoint changes or a run is started with --retry-failed" in res4[0].error
    # --retry-failed lifts the limit for one run: parse_retries + 1 more attempts, the rest stays free
    before = server.total
    retry = Judge(make_backend(server), tmp_path, progress=False, retry_failed=True)
    res5 = retry.complete_many(inputs, parse=parse, parse_retries=2, max_tokens=64)
    assert server.total == before + 3 and server.seen["case:garbage #0"] == 12 and res5[0].attempts == 12
    plain = Judge(make_backend(server), tmp_path, progress=False)
    assert not plain.complete_many(inputs, parse=parse, parse_retries=2, max_tokens=64)[0].ok
    assert server.total == before + 3  # without the flag the limit holds again
    # so does a changed endpoint (here: other request fields), without any flag
    changed = Judge(make_backend(server, extra_body={"top_p": 0.5}), tmp_path, progress=False)
    res6 = changed.complete_many(inputs, parse=parse, parse_retries=2, max_tokens=64)
    assert server.total == before + 6 and res6[0].attempts == 15 and res6[1].ok and res6[2].cached


def test_identical_requests_in_one_batch_are_sent_once(server, key_env, tmp_path):
    judge = Judge(make_backend(server), tmp_path, progress=False)
    inputs = [msgs("case:ok #0"), msgs("case:ok #1"), msgs("case:ok #0"), msgs("case:ok #0"), msgs("case:ok #1")]
    res = judge.complete_many(inputs, max_tokens=64)
    assert [r.text for r in res] == [f"echo:{m[-1]['content']}" for m in inputs]
    assert server.total == 2 and server.seen["case:ok #0"] == 1
    assert (judge.stats.calls, judge.stats.deduplicated, judge.stats.inputs) == (2, 3, 5)
    res[0].text = "changed"  # each input has its own result object
    assert res[2].text == "echo:case:ok #0"


class HealingServer(LoopbackServer):
    """A judge that, while `faulty`, answers some requests with HTTP 500 and others with an
    unparsable reply; once healed it answers "SCORE: <length>" to everything."""

    def __init__(self):
        super().__init__(HealingHandler)
        self.faulty = True
        self.seen: Counter = Counter()


class HealingHandler(Handler):
    server: HealingServer

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        content = body["messages"][-1]["content"]
        with self.server.lock:
            self.server.seen[content] += 1
        i = int(content.split("#")[1])
        if self.server.faulty and i % 5 == 1:
            return self._send(500, b'{"error": "boom"}')
        if self.server.faulty and i % 5 == 2:
            return self._ok("I would rate it highly.")
        return self._ok(f"SCORE: {len(content)}")


def test_a_faulty_judge_fails_the_stage_and_a_rerun_after_it_heals_recovers_every_prompt(key_env, tmp_path):
    from zephyr_lib.judges import JudgeFailuresError, require_success

    prompts = [msgs(f"prompt #{i}") for i in range(20)]
    with serving(HealingServer()) as srv:
        judge = Judge(make_backend(srv, max_retries=1), tmp_path, progress=False)
        res = judge.complete_many(prompts, parse=parse_score, parse_retries=1, max_tokens=64)
        assert sum(not r.ok for r in res) == 8  # 4 transport failures, 4 unparsable
        with pytest.raises(JudgeFailuresError) as e:
            require_success(judge.stats, budget=0.0, where="aif")
        msg = str(e.value)
        assert "aif: 8 of 20" in msg and "4 transport" in msg and "4 unparsable" in msg
        assert require_success(res, budget=0.5, where="aif")["failed"] == 8  # a stated budget allows them
        assert e.value.failed == 8 and e.value.total == 20

        srv.faulty = False
        srv.seen.clear()
        healed = Judge(make_backend(srv, max_retries=1), tmp_path, progress=False)
        res2 = healed.complete_many(prompts, parse=parse_score, parse_retries=1, max_tokens=64)
        assert all(r.ok for r in res2) and [r.parsed for r in res2] == [len(f"prompt #{i}") for i in range(20)]
        asked = {c for c, k in srv.seen.items() if k}
        assert asked == {f"prompt #{i}" for i in range(20) if i % 5 in (1, 2)}  # only the missing ones
        assert healed.stats.calls == 8 and healed.stats.cache_hits >= 12
        assert require_success(healed.stats, where="aif")["failed"] == 0


def test_require_success_validates_its_budget():
    from zephyr_lib.judges import JudgeStats, require_success

    assert require_success(JudgeStats(), where="x")["total"] == 0
    with pytest.raises(ValueError, match="budget"):
        require_success(JudgeStats(), budget=1.5)


def test_sync_single_call_retries(server, key_env):
    backend = make_backend(server)
    comp = backend.complete(msgs("case:r500x2 #s"), temperature=0.0, max_tokens=64)
    assert comp.text == "echo:case:r500x2 #s" and comp.attempts == 3
    assert (comp.prompt_tokens, comp.completion_tokens) == (10, 5)
    assert backend.cost_usd(1000, 1000) == pytest.approx(0.09)
    backend.close()


def test_retry_after_parsing():
    assert _parse_retry_after("0") == 0.0
    assert _parse_retry_after("2.5") == 2.5
    assert _parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert _parse_retry_after("soon") is None and _parse_retry_after(None) is None


class CountingBackend:
    """A synchronous backend, like the offline stand-in judge."""

    def __init__(self, name="toy-judge-v1", fail_on=()):
        self.name = name
        self.calls = []
        self.fail_on = set(fail_on)

    def complete(self, messages, *, temperature, max_tokens):
        content = messages[-1]["content"]
        self.calls.append(content)
        if content in self.fail_on:
            raise TransportError("simulated outage")
        return Completion(text=f"SCORE: {len(content)}", prompt_tokens=3, completion_tokens=2)


def test_sync_backend_through_factory_and_registry(tmp_path):
    backend = CountingBackend(fail_on={"bb"})
    assert isinstance(backend, Backend)
    judge = judge_from_config(backend, cache_dir=tmp_path, progress=False)
    res = judge.complete_many([msgs("a"), msgs("bb"), msgs("ccc")], parse=parse_score)
    assert [(r.ok, r.parsed) for r in res] == [(True, 1), (False, None), (True, 3)]
    assert "simulated outage" in res[1].error
    assert judge.stats.transport_failures == 1 and judge.stats.prompt_tokens == 6
    judge.complete_many([msgs("a"), msgs("ccc")], parse=parse_score)
    assert backend.calls == ["a", "bb", "ccc"]  # second run fully cached

    register_backend("counting-test", lambda **kw: CountingBackend(name=kw.get("model", "x")))
    j2 = judge_from_config("counting-test", model="toy-2", cache_dir=tmp_path / "c2", progress=False)
    assert j2.backend.name == "toy-2"
    with pytest.raises(ValueError, match="unknown judge kind"):
        judge_from_config("nope", cache_dir=tmp_path)


def test_cache_key_covers_every_input():
    m = msgs("x")
    base = cache_key("j", m, 0.0, 10, 0)
    assert base == cache_key("j", [dict(d) for d in m], 0, 10, 0)  # canonical: 0 == 0.0
    others = {cache_key("k", m, 0.0, 10, 0), cache_key("j", msgs("y"), 0.0, 10, 0),
              cache_key("j", m, 0.7, 10, 0), cache_key("j", m, 0.0, 11, 0), cache_key("j", m, 0.0, 10, 1)}
    assert base not in others and len(others) == 5


# --------------------------------------------------------------------------------------------
# Every answered reply is cached as it arrives: a revoked key, a SIGKILL or a Ctrl-C mid-batch
# loses at most the requests in flight, and a rerun asks only for the rest.
# --------------------------------------------------------------------------------------------

class CutOffServer(LoopbackServer):
    """Answers the first `answer` requests "SCORE: <n>"; after that, per `mode`, every request gets
    401 (a revoked key) or hangs until `release` is set (a slow batch, killed from outside).
    With `answer=None` it answers everything."""

    def __init__(self, answer: int | None, mode: str = "revoke"):
        super().__init__(CutOffHandler)
        self.answer, self.mode = answer, mode
        self.answered: list[str] = []
        self.requests = 0
        self.release = threading.Event()


class CutOffHandler(Handler):
    server: CutOffServer

    def do_POST(self):  # noqa: N802
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        content = body["messages"][-1]["content"]
        with srv.lock:
            srv.requests += 1
            cut = srv.answer is not None and len(srv.answered) >= srv.answer
            if not cut:
                srv.answered.append(content)
        if not cut:
            return self._ok(f"SCORE: {len(content)}")
        if srv.mode == "revoke":
            return self._send(401, b'{"error": {"message": "key revoked"}}')
        srv.release.wait(60)  # bounded: the test releases it at the end
        return self._send(503, b'{"error": "gone"}')


def cached_texts(cache) -> set[str]:
    return {json.loads(f.read_text())["request"]["messages"][-1]["content"] for f in cache.rglob("*.json")}


def test_a_key_revoked_mid_batch_keeps_every_answered_reply(key_env, tmp_path):
    prompts = [msgs(f"prompt #{i}") for i in range(40)]
    with serving(CutOffServer(answer=13, mode="revoke")) as srv:
        judge = Judge(make_backend(srv, concurrency=4), tmp_path, progress=False)
        with pytest.raises(FatalBackendError, match="401"):
            judge.complete_many(prompts, parse=parse_score, max_tokens=64)
        assert len(srv.answered) == 13
        assert cached_texts(tmp_path) == set(srv.answered)  # all 13 paid replies kept, even those in flight
        assert srv.requests <= 13 + 4  # after the 401 nothing new was sent (at most the ones in flight)

        srv.answer, srv.requests = None, 0  # the key works again
        again = Judge(make_backend(srv, concurrency=4), tmp_path, progress=False)
        res = again.complete_many(prompts, parse=parse_score, max_tokens=64)
        assert all(r.ok for r in res) and srv.requests == 40 - 13  # only the rest is asked
        assert again.stats.cache_hits == 13


def test_a_sync_backend_interrupted_mid_batch_keeps_every_answered_reply(tmp_path):
    class Interrupted(CountingBackend):
        def __init__(self, after, exc):
            super().__init__()
            self.after, self.exc = after, exc

        def complete(self, messages, *, temperature, max_tokens):
            if len(self.calls) >= self.after:
                raise self.exc
            return super().complete(messages, temperature=temperature, max_tokens=max_tokens)

    prompts = [msgs("x" * (i + 1)) for i in range(12)]
    for exc, folder in ((KeyboardInterrupt(), "ctrl-c"), (FatalBackendError("HTTP 401 revoked"), "revoked")):
        backend = Interrupted(5, exc)
        with pytest.raises(type(exc)):
            Judge(backend, tmp_path / folder, progress=False).complete_many(prompts, parse=parse_score)
        assert cached_texts(tmp_path / folder) == set(backend.calls) and len(backend.calls) == 5
        rerun = CountingBackend()
        res = Judge(rerun, tmp_path / folder, progress=False).complete_many(prompts, parse=parse_score)
        assert all(r.ok for r in res) and len(rerun.calls) == 12 - 5


_CHILD = """
import signal
import sys
# a terminal's Ctrl-C raises KeyboardInterrupt; a job started in the background by a non-interactive
# shell (as CI may start this suite) inherits SIGINT ignored, which would make the SIGINT case a no-op
signal.signal(signal.SIGINT, signal.default_int_handler)
from zephyr_lib.judges import Judge, OpenAIChatBackend
url, cache, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
backend = OpenAIChatBackend(url, "judge-model", api_key_env=%r, timeout=120, max_retries=0, concurrency=4)
msgs = [[{"role": "user", "content": f"prompt #{i}"}] for i in range(n)]
Judge(backend, cache, progress=False).complete_many(msgs, max_tokens=64)
""" % ENV


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_a_kill_or_ctrl_c_mid_batch_keeps_every_answered_reply(sig, key_env, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO

    cache, n, answer = tmp_path / "cache", 30, 9
    with serving(CutOffServer(answer=answer, mode="hang")) as srv:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        child = subprocess.Popen([sys.executable, "-c", _CHILD, srv.url, str(cache), str(n)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for _ in range(600):  # until 9 replies are answered and 4 more requests hang in flight
                if srv.requests >= answer + 4 or child.poll() is not None:
                    break
                time.sleep(0.05)
            assert child.poll() is None and srv.requests == answer + 4
            for _ in range(200):  # the replies that came back are on disk (bounded wait)
                if len(list(cache.rglob("*.json"))) >= answer:
                    break
                time.sleep(0.05)
            child.send_signal(getattr(signal, sig))
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            srv.release.set()
        assert child.returncode != 0
        assert cached_texts(cache) == set(srv.answered) and len(srv.answered) == answer
        assert not list(cache.rglob("*.tmp"))  # atomic per entry

        srv.answer, srv.requests = None, 0
        judge = Judge(make_backend(srv, max_retries=0, timeout=30), cache, progress=False)
        res = judge.complete_many([[{"role": "user", "content": f"prompt #{i}"}] for i in range(n)], max_tokens=64)
        assert all(r.ok for r in res) and srv.requests == n - answer  # the rerun asks only for the rest
