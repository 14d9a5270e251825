"""One judge interface for AI feedback: an offline stand-in or any OpenAI-compatible endpoint.

The AIF stage (and the MT-Bench / AlpacaEval style evaluations) ask a *judge* model to rate
texts. This module separates three concerns:

* ``Backend`` -- anything with a ``name`` and a ``complete(messages, *, temperature,
  max_tokens) -> Completion`` method. The offline stand-in judge implements it synchronously;
  :class:`OpenAIChatBackend` talks to a real ``{base_url}/chat/completions`` endpoint with
  retries, backoff, bounded concurrency and token/cost accounting.
* :class:`Judge` -- wraps a backend with an on-disk cache (one JSON file per request, written
  atomically as each reply arrives, so a kill, a revoked key or Ctrl-C mid-batch loses at most the
  requests in flight) and a batch API, :meth:`Judge.complete_many`, that sends large batches in
  bounded chunks (``chunk_size``) with a progress bar, keeps results in input order,
  re-asks when a reply cannot be parsed, records every failure instead of silently scoring it,
  sends identical requests of a batch once, and counts what happened in ``judge.stats``.
  Rerunning the same inputs makes no backend call for what succeeded, and asks again for what
  failed; :func:`require_success` turns failures beyond a stage's budget into an error.
* :func:`judge_from_config` -- builds a :class:`Judge` from config values (``kind="openai"``
  for any OpenAI-compatible server, a kind registered with :func:`register_backend`, or a
  ready backend object).

Usage::

    from zephyr_lib.judges import judge_from_config
    judge = judge_from_config("openai", base_url="https://api.openai.com/v1", model="gpt-4-0613",
                              api_key_env="OPENAI_API_KEY", cache_dir="runs/x/aif/judge_cache")
    results = judge.complete_many(list_of_message_lists, parse=my_parser, parse_retries=2,
                                  temperature=0.0, max_tokens=1024, desc="rate")
    ok = [r.parsed for r in results if r.ok]
    print(judge.stats.as_dict())

Secrets: the API key is read only from the environment variable whose *name* is configured.
It is sent in the Authorization header and nowhere else: never printed, logged, put in an
exception message (error bodies are redacted), a repr, or a cache file.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from .io import write_json

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Backend protocol and errors
# --------------------------------------------------------------------------------------------


@dataclass
class Completion:
    """One chat completion. ``attempts`` is how many HTTP requests it took (1 = no retry)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1


@runtime_checkable
class Backend(Protocol):
    """A judge model. ``name`` identifies the model (and endpoint); it is part of the cache key."""

    name: str

    def complete(self, messages: list[dict], *, temperature: float, max_tokens: int) -> Completion:
        ...


class JudgeError(RuntimeError):
    """Base class of judge failures."""


class MissingAPIKeyError(JudgeError):
    """The environment variable that should hold the API key is unset or empty."""


class TransportError(JudgeError):
    """A call failed for good (after retries, or with a non-retryable reply for this request)."""

    def __init__(self, message: str, *, attempts: int = 1, status: int | None = None):
        super().__init__(message)
        self.attempts = attempts
        self.status = status


class FatalBackendError(TransportError):
    """The endpoint itself refuses us (401/403/404): every further call would fail the same way."""


class _Stopped(JudgeError):
    """Internal: a request of a batch not sent because the endpoint refused an earlier one."""


class AllCallsFailedError(JudgeError):
    """Every call of a batch failed: the endpoint is down or misconfigured."""


# --------------------------------------------------------------------------------------------
# OpenAI-compatible chat-completions backend
# --------------------------------------------------------------------------------------------


class _Retry:
    """Internal: a retryable outcome with its reason and an optional server-requested delay."""

    __slots__ = ("reason", "retry_after", "status")

    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None):
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


FATAL_STATUSES = frozenset({401, 403, 404})
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


class OpenAIChatBackend:
    """Any OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint.

    * Retries (exponential backoff with jitter, up to ``max_retries`` extra requests) on 429
      (honouring ``Retry-After``), 408/409/425, 5xx, timeouts, connection errors, and malformed
      replies (non-JSON body, missing ``choices``/``message``/``content``).
    * 401/403/404 raise :class:`FatalBackendError` at once (no retry); other 4xx (e.g. 400 for
      an over-long prompt) raise :class:`TransportError` for that request only, without retry.
    * ``complete`` is a synchronous single call; ``complete_batch`` runs many calls on an
      ``httpx.AsyncClient`` with at most ``concurrency`` requests in flight.
    * Token counts come from the reply's ``usage``; :meth:`cost_usd` prices them with the
      optional per-1k-token prices.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        concurrency: int = 8,
        price_per_1k_prompt: float | None = None,
        price_per_1k_completion: float | None = None,
        extra_body: dict | None = None,
    ):
        if not base_url or not model:
            raise ValueError("OpenAIChatBackend needs both base_url and model")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.endpoint = f"{self.base_url}/chat/completions"
        self.name = f"{model}@{self.base_url}"
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.concurrency = int(concurrency)
        self.price_per_1k_prompt = price_per_1k_prompt
        self.price_per_1k_completion = price_per_1k_completion
        self.extra_body = dict(extra_body or {})
        self._jitter = random.Random()
        self._client = None
        self._api_key()  # fail early, naming the variable, if the key is missing

    def __repr__(self) -> str:
        return (f"OpenAIChatBackend(name={self.name!r}, api_key_env={self.api_key_env!r}, "
                f"timeout={self.timeout}, max_retries={self.max_retries}, concurrency={self.concurrency})")

    # -- secrets ------------------------------------------------------------------------------

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env, "")
        if not key.strip():
            raise MissingAPIKeyError(
                f"judge endpoint {self.endpoint} needs an API key: set the environment variable "
                f"{self.api_key_env} (the key is read only from there)")
        return key.strip()

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self._api_key()}", "Content-Type": "application/json"}

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        if key:
            text = text.replace(key, "***")
            if len(key) > 8:  # servers often echo a prefix of the key: hide any 8+ char prefix
                for cut in range(len(key) - 1, 7, -1):
                    if key[:cut] in text:
                        text = text.replace(key[:cut], "***")
        return text

    # -- request / reply ----------------------------------------------------------------------

    def _body(self, messages: list[dict], temperature: float, max_tokens: int) -> dict:
        body = {"model": self.model, "messages": messages, "temperature": float(temperature),
                "max_tokens": int(max_tokens)}
        body.update(self.extra_body)
        return body

    def _interpret(self, resp) -> Completion | _Retry:
        status = resp.status_code
        if status == 200:
            try:
                data = resp.json()
            except ValueError:
                return _Retry("malformed reply: body is not JSON", status=status)
            try:
                choice = data["choices"][0]
                content = choice["message"]["content"]
            except (KeyError, IndexError, TypeError):
                return _Retry("malformed reply: missing choices[0].message.content", status=status)
            if not isinstance(content, str):
                return _Retry("malformed reply: message content is not a string", status=status)
            usage = data.get("usage") if isinstance(data, dict) else None
            usage = usage if isinstance(usage, dict) else {}
            return Completion(text=content, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0))
        excerpt = self._redact(resp.text[:300]) if resp.content else ""
        if status in FATAL_STATUSES:
            raise FatalBackendError(
                f"HTTP {status} from {self.endpoint} (model {self.model}); check the endpoint, the "
                f"model name and the key in ${self.api_key_env}. Server said: {excerpt}",
                status=status)
        if status in RETRYABLE_STATUSES or status >= 500:
            return _Retry(f"HTTP {status}", _parse_retry_after(resp.headers.get("retry-after")), status)
        raise TransportError(f"HTTP {status} from {self.endpoint}: request rejected: {excerpt}",
                             status=status)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        delay = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return delay * (0.5 + 0.5 * self._jitter.random())

    def _give_up(self, outcome: _Retry, attempts: int) -> TransportError:
        return TransportError(
            f"{self.endpoint}: gave up after {attempts} attempt(s); last error: {outcome.reason}",
            attempts=attempts, status=outcome.status)

    # -- synchronous single call --------------------------------------------------------------

    def complete(self, messages: list[dict], *, temperature: float, max_tokens: int) -> Completion:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=httpx.Timeout(self.timeout))
        body = self._body(messages, temperature, max_tokens)
        attempts = 0
        while True:
            attempts += 1
            try:
                resp = self._client.post(self.endpoint, json=body, headers=self._headers())
            except httpx.TimeoutException:
                outcome: Completion | _Retry = _Retry(f"timeout after {self.timeout}s")
            except httpx.TransportError as e:
                outcome = _Retry(f"connection error ({type(e).__name__})")
            else:
                outcome = self._interpret(resp)
            if isinstance(outcome, Completion):
                outcome.attempts = attempts
                return outcome
            if attempts > self.max_retries:
                raise self._give_up(outcome, attempts)
            delay = self._delay(attempts, outcome.retry_after)
            log.info("judge %s: %s; retry %d/%d in %.2fs", self.endpoint, outcome.reason, attempts,
                     self.max_retries, delay)
            time.sleep(delay)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- asynchronous batch -------------------------------------------------------------------

    async def _acomplete(self, client, sem: asyncio.Semaphore, messages, temperature, max_tokens,
                         stop: list | None = None) -> Completion:
        import httpx

        body = self._body(messages, temperature, max_tokens)
        attempts = 0
        while True:
            attempts += 1
            async with sem:
                if stop:  # the endpoint refused us (401/403/404): send nothing more
                    raise _Stopped("not sent: the endpoint refused an earlier request of the batch")
                try:
                    resp = await client.post(self.endpoint, json=body, headers=self._headers())
                except httpx.TimeoutException:
                    outcome: Completion | _Retry = _Retry(f"timeout after {self.timeout}s")
                except httpx.TransportError as e:
                    outcome = _Retry(f"connection error ({type(e).__name__})")
                else:
                    outcome = self._interpret(resp)
            if isinstance(outcome, Completion):
                outcome.attempts = attempts
                return outcome
            if attempts > self.max_retries:
                raise self._give_up(outcome, attempts)
            delay = self._delay(attempts, outcome.retry_after)
            log.info("judge %s: %s; retry %d/%d in %.2fs", self.endpoint, outcome.reason, attempts,
                     self.max_retries, delay)
            await asyncio.sleep(delay)  # outside the semaphore: a waiting retry holds no slot

    async def _abatch(self, batch, temperature, max_tokens, on_done):
        import httpx

        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), limits=limits) as client:

            fatal: list[FatalBackendError] = []

            async def one(i, messages):
                try:
                    res: Completion | Exception = await self._acomplete(client, sem, messages, temperature,
                                                                        max_tokens, stop=fatal)
                except FatalBackendError as e:
                    fatal.append(e)  # no new request starts; those already sent are awaited (and paid for)
                    return e
                except _Stopped as e:
                    return e
                except (TransportError, ValueError, TypeError) as e:
                    res = e
                if on_done is not None:
                    on_done(i, res)
                return res

            results = await asyncio.gather(*(one(i, m) for i, m in enumerate(batch)))
            if fatal:
                raise fatal[0]
            return results

    def complete_batch(self, batch: Sequence[list[dict]], *, temperature: float, max_tokens: int,
                       on_done: Callable[[int, Completion | Exception], None] | None = None) -> list:
        """Run many calls concurrently. Returns, in input order, a Completion or the exception of
        each call; ``on_done(i, result)`` is called as each finishes. FatalBackendError is raised."""
        return _run_coroutine(self._abatch(list(batch), temperature, max_tokens, on_done))

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        cost = 0.0
        if self.price_per_1k_prompt:
            cost += prompt_tokens / 1000.0 * self.price_per_1k_prompt
        if self.price_per_1k_completion:
            cost += completion_tokens / 1000.0 * self.price_per_1k_completion
        return cost


def _run_coroutine(coro):
    """asyncio.run, also from code already inside a running loop (e.g. a notebook): then the
    coroutine runs on its own loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
        return ex.submit(asyncio.run, coro).result()


# --------------------------------------------------------------------------------------------
# Judge: cache + batch + parse policy + counters
# --------------------------------------------------------------------------------------------


@dataclass
class JudgeResult:
    """Outcome for one input. ``ok`` is False whenever no usable parsed answer exists; then
    ``error`` says why (transport failure or parse failure) -- such rows must not be scored."""

    text: str | None
    parsed: Any
    ok: bool
    error: str | None
    cached: bool
    attempts: int


@dataclass
class JudgeStats:
    """Counters over the judge's lifetime.

    inputs: inputs given to complete_many; failed: inputs finally recorded ok=False (what
    :func:`require_success` checks); deduplicated: inputs identical to another input of the same
    batch, answered by that one's call; calls: backend calls made (cache misses); cache_hits:
    replies read from the cache; retries: extra HTTP requests made by transport retries;
    parse_retries: re-asks because a reply did not parse (in this run, or asked again on a rerun
    because the cached reply did not parse); parse_failures: inputs finally recorded ok=False for
    an unparsable reply; transport_failures: calls that failed after all retries; tokens and cost
    count fresh calls only.
    """

    inputs: int = 0
    failed: int = 0
    deduplicated: int = 0
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    parse_retries: int = 0
    parse_failures: int = 0
    transport_failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class JudgeFailuresError(JudgeError):
    """More judge requests failed than a stage's failure budget allows. The run must not be
    stored as complete; the judge cache keeps every success, so a rerun asks only for the rest."""

    def __init__(self, message: str, *, failed: int, total: int, budget: float, where: str):
        super().__init__(message)
        self.failed, self.total, self.budget, self.where = failed, total, budget, where


def require_success(stats_or_results: "JudgeStats | dict | Sequence[JudgeResult]", budget: float = 0.0,
                    where: str = "judge") -> dict:
    """Raise :class:`JudgeFailuresError` if the share of failed judge requests exceeds ``budget``.

    Call it after judging and before writing the run's outputs, e.g.
    ``judges.require_success(judge.stats, cfg.judge_failure_budget, where="aif")``.
    ``stats_or_results``: a :class:`JudgeStats` (or its ``as_dict()``), or the list of
    :class:`JudgeResult` a batch returned. ``budget`` is a fraction in [0, 1): the default 0 makes
    any failure an error (the run stays incomplete and resumable: the judge cache keeps the
    successes, unparsable replies are asked again). Returns the counts (total, failed, transport,
    unparsable, rate, budget) for the stage's metrics.
    """
    if not 0.0 <= float(budget) < 1.0:
        raise ValueError(f"{where}: the judge failure budget must be in [0, 1), got {budget!r}")
    if isinstance(stats_or_results, JudgeStats):
        stats_or_results = stats_or_results.as_dict()
    if isinstance(stats_or_results, dict):
        total, failed = int(stats_or_results.get("inputs", 0)), int(stats_or_results.get("failed", 0))
        unparsable = int(stats_or_results.get("parse_failures", 0))
        transport = max(0, failed - unparsable)
    else:
        results = list(stats_or_results)
        total = len(results)
        bad = [r for r in results if not r.ok]
        failed = len(bad)
        transport = sum(r.text is None for r in bad)
        unparsable = failed - transport
    rate = failed / total if total else 0.0
    counts = {"total": total, "failed": failed, "transport": transport, "unparsable": unparsable,
              "rate": rate, "budget": float(budget)}
    if failed and rate > budget:
        raise JudgeFailuresError(
            f"{where}: {failed} of {total} judge request(s) failed ({transport} transport failure(s), "
            f"{unparsable} unparsable repl(ies)) = {rate:.1%}, over the failure budget of {budget:.1%}. "
            "The run is not stored as complete; the judge cache keeps the successes, so a rerun "
            "asks only for the failed requests (unparsable ones a limited number of times).",
            failed=failed, total=total, budget=float(budget), where=where)
    return counts


def require_inputs(losses: "dict[str, tuple[int, int]]", budget: float = 0.0, where: str = "judge",
                   what: "dict[str, str] | None" = None) -> dict:
    """The failure budget per *input* (a prompt, a question, a game): raise
    :class:`JudgeFailuresError` if any part lost a larger share of its inputs than ``budget``.

    ``losses``: {part (e.g. a benchmark): (inputs lost, inputs in all)}. An input is lost when any
    judgment it needs failed: a transport failure or an unusable reply (unparsable: an MT-Bench
    rating of -1, an AlpacaEval ranking that does not parse, a pairwise game in ``error``). A few
    failed requests can cost many inputs (one failed aspect drops a whole prompt), so the budget
    counts inputs, never requests. ``what`` names each part's inputs for the message ("questions").
    Returns {"budget", "lost", "inputs", "parts": {part: {"inputs", "lost", "rate"}}} for metrics.
    """
    if not 0.0 <= float(budget) < 1.0:
        raise ValueError(f"{where}: the judge failure budget must be in [0, 1), got {budget!r}")
    parts = {name: {"inputs": int(total), "lost": int(lost), "rate": (lost / total) if total else 0.0}
             for name, (lost, total) in losses.items()}
    over = [(name, p) for name, p in parts.items() if p["lost"] and p["rate"] > budget]
    out = {"budget": float(budget), "lost": sum(p["lost"] for p in parts.values()),
           "inputs": sum(p["inputs"] for p in parts.values()), "parts": parts}
    if over:
        shown = "; ".join(f"{name} lost {p['lost']} of {p['inputs']} {(what or {}).get(name, 'inputs')} "
                          f"({p['rate']:.1%})" for name, p in over)
        raise JudgeFailuresError(
            f"{where}: {shown}, over the failure budget of {float(budget):.1%} of inputs. An input is lost "
            "when a judgment it needs failed or could not be used (unparsable). The run is not stored as "
            "complete; the judge cache keeps every usable reply, so a rerun asks only for the lost ones.",
            failed=out["lost"], total=out["inputs"], budget=float(budget), where=where)
    return out


RETRY_FAILED_ENV = "ZEPHYR_RETRY_FAILED"

# How many runs ask again for a request whose replies do not parse: each run makes up to
# parse_retries + 1 attempts, and the attempts are recorded in the cache across runs.
RUNS_ASKING_AGAIN = 3


def cache_key(backend_name: str, messages: list[dict], temperature: float, max_tokens: int, attempt: int) -> str:
    """sha256 of the canonical JSON of everything that determines a judge reply."""
    payload = {"backend": backend_name, "messages": messages, "temperature": float(temperature),
               "max_tokens": int(max_tokens), "attempt": int(attempt)}
    canon = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class Judge:
    """A backend plus an on-disk cache (``cache_dir/ab/abcdef….json``, one file per request).

    Failed calls are never cached, so they are retried on the next run. A reply that parses is
    cached as final: a rerun over the same inputs makes zero backend calls for it. A reply that
    does not parse is cached with its parse error but not as final: a rerun re-parses it and
    otherwise asks again, up to a limit of attempts recorded in the cache.
    """

    #: requests handed to the backend at once (each reply is cached as it arrives either way)
    CHUNK_SIZE = 256

    def __init__(self, backend: Backend, cache_dir: str | os.PathLike, *, progress: bool = True,
                 chunk_size: int | None = None, retry_failed: bool | None = None):
        self.chunk_size = int(chunk_size or self.CHUNK_SIZE)
        # --retry-failed (the runner sets ZEPHYR_RETRY_FAILED for the stage): unparsable replies
        # recorded by earlier runs do not count towards the limit of attempts in this run
        self.retry_failed = (os.environ.get(RETRY_FAILED_ENV, "") not in ("", "0") if retry_failed is None
                             else bool(retry_failed))
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
        if not isinstance(getattr(backend, "name", None), str) or not backend.name:
            raise TypeError("a judge backend needs a non-empty string attribute 'name'")
        if not callable(getattr(backend, "complete", None)):
            raise TypeError("a judge backend needs a complete(messages, *, temperature, max_tokens) method")
        self.backend = backend
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.stats = JudgeStats()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Judge(backend={self.backend.name!r}, cache_dir={str(self.cache_dir)!r})"

    @property
    def endpoint(self) -> str:
        return getattr(self.backend, "endpoint", self.backend.name)

    @property
    def fingerprint(self) -> str:
        """What identifies the endpoint's behaviour beyond the cache key's backend name (for the
        OpenAI backend also its extra request fields and key variable): unparsable replies
        recorded under another fingerprint do not count towards the limit of attempts."""
        extra = {"extra_body": getattr(self.backend, "extra_body", None),
                 "api_key_env": getattr(self.backend, "api_key_env", None)}
        blob = json.dumps([self.backend.name, extra], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- cache --------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("judge cache: ignoring unreadable entry %s (%s)", path, e)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("text"), str):
            log.warning("judge cache: ignoring malformed entry %s", path)
            return None
        return entry

    def _cache_put(self, key: str, messages, temperature, max_tokens, attempt, comp: Completion,
                   parse_error: str | None = None, max_attempts: int | None = None) -> None:
        """Cache one reply. An unparsable one is recorded with its parse error but is not final:
        the next run reads it, fails to parse it again, and asks with the next attempt index
        (until ``max_attempts`` attempts are recorded)."""
        entry = {
            "key": key,
            "backend": self.backend.name,
            "request": {"messages": messages, "temperature": float(temperature),
                        "max_tokens": int(max_tokens), "attempt": int(attempt)},
            "text": comp.text,
            "usage": {"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if parse_error is not None:
            entry["parse_error"] = parse_error
            entry["final"] = False
            entry["attempts_allowed"] = max_attempts
            entry["fingerprint"] = self.fingerprint  # a changed endpoint resets the limit of attempts
        write_json(self._path(key), entry)

    # -- accounting ---------------------------------------------------------------------------

    def _account(self, res: Completion | Exception) -> None:
        with self._lock:
            self.stats.calls += 1
            if isinstance(res, Completion):
                self.stats.retries += max(0, res.attempts - 1)
                self.stats.prompt_tokens += res.prompt_tokens
                self.stats.completion_tokens += res.completion_tokens
                cost = getattr(self.backend, "cost_usd", None)
                if callable(cost):
                    self.stats.cost_usd += float(cost(res.prompt_tokens, res.completion_tokens))
            else:
                self.stats.transport_failures += 1
                self.stats.retries += max(0, getattr(res, "attempts", 1) - 1)

    # -- calls --------------------------------------------------------------------------------

    def complete(self, messages: list[dict], *, parse=None, parse_retries: int = 0,
                 temperature: float = 0.0, max_tokens: int = 1024) -> JudgeResult:
        """One input; same policy as :meth:`complete_many`."""
        return self.complete_many([messages], parse=parse, parse_retries=parse_retries,
                                  temperature=temperature, max_tokens=max_tokens, desc=None)[0]

    def complete_many(self, list_of_messages: Sequence[list[dict]], *, parse: Callable[[str], Any] | None = None,
                      parse_retries: int = 0, temperature: float = 0.0, max_tokens: int = 1024,
                      desc: str | None = "judge", max_attempts: int | None = None) -> list[JudgeResult]:
        """Answer every message list; results come back in input order.

        Identical inputs within the batch are sent once (counted in ``stats.deduplicated``) and
        share the result. If ``parse`` is given, it turns a reply text into the parsed value;
        raising ValueError or returning None marks the reply unparsable, and the same request is
        asked again (attempt index 1, 2, … in the cache key, so re-asks are new calls but reruns
        are free) up to ``parse_retries`` times in this run, after which the input is recorded
        ok=False with the error. An unparsable reply is cached with its parse error but never as
        final: a later run re-parses it (a fixed parser recovers it for free) and otherwise asks
        again with the next attempt index, until ``max_attempts`` attempts are recorded across
        runs (default: parse_retries + 1 per run, for ``RUNS_ASKING_AGAIN`` runs).
        Transport failures are recorded ok=False and counted, never cached, not raised -- unless
        no input of the batch got an answer at all, which raises :class:`AllCallsFailedError`.
        Check the outcome with :func:`require_success`.
        """
        from tqdm.auto import tqdm

        if parse_retries < 0:
            raise ValueError("parse_retries must be >= 0")
        per_run = parse_retries + 1
        max_attempts = RUNS_ASKING_AGAIN * per_run if max_attempts is None else int(max_attempts)
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        inputs = [list(m) for m in list_of_messages]
        for idx, m in enumerate(inputs):
            if not m or not all(isinstance(x, dict) and "role" in x and "content" in x for x in m):
                raise ValueError(f"input {idx}: expected a non-empty list of {{'role', 'content'}} messages")
        n = len(inputs)
        # identical requests (same cache key) are asked once; `rep` is the input that asks
        members: dict[str, list[int]] = {}
        for i, m in enumerate(inputs):
            members.setdefault(cache_key(self.backend.name, m, temperature, max_tokens, 0), []).append(i)
        uniq = list(members)
        rep = {u: members[u][0] for u in uniq}
        with self._lock:
            self.stats.inputs += n
            self.stats.deduplicated += n - len(uniq)

        def key(u: str, attempt: int) -> str:
            return u if attempt == 0 else cache_key(self.backend.name, inputs[rep[u]], temperature, max_tokens, attempt)

        def parsed_of(text: str):
            """(parsed, None) or (None, error message)."""
            if parse is None:
                return None, None
            try:
                value = parse(text)
                if value is None:
                    raise ValueError("parser returned None")
            except ValueError as e:
                return None, str(e)
            return value, None

        outcome: dict[str, JudgeResult] = {}
        attempt = {u: 0 for u in uniq}      # the attempt index to look at next
        spared = {u: 0 for u in uniq}       # cached attempts that do not count towards the limit
        fresh = {u: 0 for u in uniq}        # calls made for it in this run
        last_error: dict[str, str] = {}
        last_text: dict[str, str] = {}
        fresh_calls = fresh_failures = 0
        answered: set[str] = set()
        batch_capable = callable(getattr(self.backend, "complete_batch", None))
        bar = tqdm(total=n, desc=desc or "judge", disable=not (self.progress and desc), leave=False)

        def finish(u: str, res: JudgeResult) -> None:
            outcome[u] = res
            bar.update(len(members[u]))

        def give_up(u: str, why: str) -> None:
            with self._lock:
                self.stats.parse_failures += 1
            finish(u, JudgeResult(last_text.get(u), None, False,
                                  f"unparsable reply after {attempt[u]} attempt(s){why}: {last_error.get(u)}",
                                  fresh[u] == 0, attempt[u]))

        pending = list(uniq)
        try:
            while pending:
                to_call: list[str] = []
                for u in pending:
                    while attempt[u] < max_attempts + spared[u]:  # replies earlier attempts (or runs) left in the cache
                        entry = self._cache_get(key(u, attempt[u]))
                        if entry is None:
                            break
                        with self._lock:
                            self.stats.cache_hits += 1
                        answered.add(u)
                        value, err = parsed_of(entry["text"])
                        if err is None:
                            finish(u, JudgeResult(entry["text"], value, True, None, fresh[u] == 0, attempt[u] + 1))
                            break
                        last_error[u], last_text[u] = err, entry["text"]
                        if self.retry_failed or entry.get("fingerprint", self.fingerprint) != self.fingerprint:
                            spared[u] += 1  # asked of another endpoint, or --retry-failed: not counted
                        attempt[u] += 1
                    if u in outcome:
                        continue
                    if attempt[u] >= max_attempts + spared[u]:
                        give_up(u, f" (the limit of {max_attempts} across runs is reached: the request is not asked "
                                   "again until the endpoint changes or a run is started with --retry-failed)")
                    elif fresh[u] >= per_run:
                        give_up(u, f" (a rerun asks again, up to {max_attempts} attempts in all)")
                    else:
                        if attempt[u] > 0:
                            with self._lock:
                                self.stats.parse_retries += 1
                        to_call.append(u)
                if not to_call:
                    break
                next_pending: list[str] = []

                def handle(u: str, res, next_pending=next_pending) -> None:
                    """One reply, as it arrives: counted, parsed and (if it is a reply) cached at once,
                    so a kill, a revoked key or Ctrl-C later in the batch cannot lose it."""
                    nonlocal fresh_failures
                    self._account(res)
                    fresh[u] += 1
                    if not isinstance(res, Completion):
                        fresh_failures += 1
                        finish(u, JudgeResult(None, None, False, f"{type(res).__name__}: {res}", False, attempt[u] + 1))
                        return
                    answered.add(u)
                    value, err = parsed_of(res.text)
                    self._cache_put(key(u, attempt[u]), inputs[rep[u]], temperature, max_tokens, attempt[u], res,
                                    parse_error=err, max_attempts=max_attempts)
                    if err is None:
                        finish(u, JudgeResult(res.text, value, True, None, False, attempt[u] + 1))
                        return
                    last_error[u], last_text[u] = err, res.text
                    attempt[u] += 1
                    next_pending.append(u)

                for start in range(0, len(to_call), self.chunk_size):  # bounded chunks: bounded memory
                    chunk = to_call[start:start + self.chunk_size]
                    if batch_capable:
                        self.backend.complete_batch([inputs[rep[u]] for u in chunk], temperature=temperature,
                                                    max_tokens=max_tokens,
                                                    on_done=lambda j, res, chunk=chunk: handle(chunk[j], res))
                    else:
                        for u in chunk:
                            try:
                                res = self.backend.complete(inputs[rep[u]], temperature=temperature,
                                                            max_tokens=max_tokens)
                                if not isinstance(res, Completion) or not isinstance(res.text, str):
                                    raise TransportError(f"backend {self.backend.name} returned "
                                                         f"{type(res).__name__}, not a Completion")
                            except FatalBackendError:
                                raise
                            except Exception as e:  # recorded per input, never silently scored
                                res = e
                            handle(u, res)
                    fresh_calls += len(chunk)
                pending = next_pending
        finally:
            bar.close()
        if fresh_calls and fresh_failures == fresh_calls and not answered:
            first = next(r.error for r in outcome.values() if r.error)
            raise AllCallsFailedError(
                f"all {fresh_calls} call(s) to judge {self.endpoint} failed; first error: {first}")
        results: list[JudgeResult | None] = [None] * n
        for u, idxs in members.items():
            for i in idxs:
                results[i] = dataclasses.replace(outcome[u])
        failed = sum(not r.ok for r in results)  # type: ignore[union-attr]
        with self._lock:
            self.stats.failed += failed
        if self.stats.transport_failures or self.stats.parse_failures:
            log.info("judge %s: %s", self.backend.name, self.stats.as_dict())
        assert all(r is not None for r in results), "judge: an input was left without a result"
        return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[..., Backend]] = {}
OPENAI_KINDS = ("openai", "openai-compatible", "openai_compatible")


def register_backend(kind: str, factory: Callable[..., Backend]) -> None:
    """Register a backend factory (e.g. the offline stand-in judge) under ``kind``.
    ``factory(**options)`` receives judge_from_config's keyword options (model, base_url, …)."""
    if kind in OPENAI_KINDS:
        raise ValueError(f"kind {kind!r} is reserved for the OpenAI-compatible backend")
    _FACTORIES[kind] = factory


def judge_from_config(
    kind: "str | Backend",
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    cache_dir: str | os.PathLike,
    backend: Backend | None = None,
    timeout: float = 60.0,
    max_retries: int = 6,
    backoff_base: float = 1.0,
    backoff_max: float = 60.0,
    concurrency: int = 8,
    price_per_1k_prompt: float | None = None,
    price_per_1k_completion: float | None = None,
    progress: bool = True,
    **options: Any,
) -> Judge:
    """Build a :class:`Judge`.

    ``kind``: "openai" (any OpenAI-compatible endpoint; ``base_url`` defaults to
    https://api.openai.com/v1, ``model`` is required), a kind registered with
    :func:`register_backend`, or a ready backend object (also accepted as ``backend=``).
    """
    if not isinstance(kind, str):
        backend, kind = kind, "object"
    if backend is not None:
        return Judge(backend, cache_dir, progress=progress)
    if kind in OPENAI_KINDS:
        if not model:
            raise ValueError("judge kind 'openai' needs a model name (e.g. gpt-4-0613)")
        b = OpenAIChatBackend(base_url or "https://api.openai.com/v1", model, api_key_env=api_key_env,
                              timeout=timeout, max_retries=max_retries, backoff_base=backoff_base,
                              backoff_max=backoff_max, concurrency=concurrency,
                              price_per_1k_prompt=price_per_1k_prompt,
                              price_per_1k_completion=price_per_1k_completion,
                              extra_body=options.pop("extra_body", None))
        if options:
            raise TypeError(f"unknown option(s) for the openai judge: {sorted(options)}")
        return Judge(b, cache_dir, progress=progress)
    if kind in _FACTORIES:
        kw = dict(options)
        if model is not None:
            kw["model"] = model
        if base_url is not None:
            kw["base_url"] = base_url
        return Judge(_FACTORIES[kind](**kw), cache_dir, progress=progress)
    known = sorted(set(OPENAI_KINDS[:1]) | set(_FACTORIES))
    raise ValueError(f"unknown judge kind {kind!r}; known kinds: {known} (or pass a backend object)")
