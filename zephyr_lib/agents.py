"""Everything that answers prompts, behind one protocol, built by one factory.

An *agent* is a :class:`zephyr_lib.agent.Agent` (re-exported here): a ``name``, a ``path`` (the
weights, or None) and ``respond_many(conversations, *, max_new_tokens, temperature, temperatures,
top_p, desc, return_stopped)``. The kinds :func:`make_agent` returns:

* toy-world programs (``toyworld.ToyAgent``: the teacher stand-in and its variants);
* a trained model of a run (``generate.ModelAgent``, or ``vllm_backend.VLLMAgent`` on a GPU);
* a model behind an endpoint of the profile (:class:`OpenAIAgent`, every call cached).

:func:`make_agent` turns a name into one of these; :func:`judge_for` turns an endpoint name into
the cached judge client (the toy judge stand-in or an OpenAI-compatible API). Both are what the
stages call, so the toy path and the real path are the same code. :class:`WeightsOnly` names a
trained model's weights for a benchmark that loads them itself (lm-eval), without building one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .agent import Agent
from .judges import AllCallsFailedError, Judge, JudgeError, JudgeResult, JudgeStats

__all__ = ["Agent", "OpenAIAgent", "WeightsOnly", "complete_lenient", "judge_for", "make_agent", "stats_delta"]


def stats_delta(judge: Judge, before: dict) -> dict:
    """The judge's counters since ``before`` (= ``judge.stats.as_dict()`` taken earlier)."""
    now = judge.stats.as_dict()
    return {k: now[k] - before[k] for k in JudgeStats.__dataclass_fields__}


def complete_lenient(judge: Judge, requests: list[list[dict]], **kw) -> list[JudgeResult]:
    """``judge.complete_many``; a batch of ONE request that fails is recorded as failed instead of
    raising AllCallsFailedError (a single bad request is not evidence that the endpoint is down).
    Batches of two or more that fail entirely still raise."""
    if not requests:
        return []
    try:
        return judge.complete_many(requests, **kw)
    except AllCallsFailedError as e:
        if len(requests) > 1:
            raise
        return [JudgeResult(None, None, False, f"{type(e).__name__}: {e}", False, 1)]


def judge_for(ctx, endpoint: str) -> Judge:
    """The cached client of one of the profile's endpoints (``toy``: the toy world's GPT-4 stand-in).
    Its on-disk cache (``runs/<profile>/judge_cache/<endpoint>``) is shared by every stage of the
    profile, so reruns make no new calls."""
    from . import judges
    from .toyworld import shared_world
    from .toyworld import judge as _toy  # noqa: F401  (registers the "toy" backend)

    ep = ctx.profile.endpoints[endpoint]
    cache = ctx.root / ctx.profile.name / "judge_cache"
    if ep.kind == "toy":
        return judges.judge_from_config("toy", world=shared_world(ctx.world), cache_dir=cache / "toy")
    return judges.judge_from_config("openai", base_url=ep.url, model=ep.model, api_key_env=ep.api_key_env,
                                    concurrency=ep.concurrency, cache_dir=cache / endpoint)


def make_agent(ctx, name: str, *, batch_size: int = 32, seed: int = 0, refs: dict[str, str] | None = None,
               device: str = "auto", gpu_memory_utilization: float | None = None,
               attn_implementation: str = "auto") -> Agent:
    """The one agent factory: by name, a toy-world program ('teacher', 'teacher_sloppy', ...), an
    endpoint of the profile ('endpoint:gpt35'), or a trained model from a run reference ('sft',
    'dpo@2'). ``refs`` maps aliases (the aif pool's 'policy', 'base') to run references."""
    from .toyworld import shared_world
    from .toyworld.agents import agent_profiles, toy_agent

    name = (refs or {}).get(name, name)
    world = shared_world(ctx.world)
    if name in agent_profiles(world.cfg):
        return toy_agent(world, name, seed=seed)
    if name.startswith("endpoint:"):
        return OpenAIAgent(judge_for(ctx, name.split(":", 1)[1]), name)
    from .vllm_backend import generation_agent  # vLLM when installed and a GPU exists, else transformers
    vllm = {"gpu_memory_utilization": gpu_memory_utilization} if gpu_memory_utilization else {}
    return generation_agent(ctx.resolve(name), name=name, batch_size=batch_size, seed=seed, device=device,
                            attn_implementation=attn_implementation, **vllm)


@dataclass(frozen=True)
class WeightsOnly:
    """A trained model's weights for a benchmark that loads them itself (lm-eval's log-likelihood
    scoring, ``Benchmark.needs_weights``): an :class:`Agent` with a ``path`` that builds no model
    and answers no prompts (``respond_many`` raises TypeError)."""

    name: str
    path: str | Path

    def respond_many(self, conversations, *, max_new_tokens=128, temperature=0.0, temperatures=None, top_p=1.0,
                     desc=None, return_stopped=False):
        raise TypeError(f"{self.name}: WeightsOnly names weights for log-likelihood scoring; it answers no "
                        f"prompts (make_agent builds the model)")


class OpenAIAgent:
    """A chat-completions model (GPT-3.5, GPT-4, a vLLM-served model, ...) with the agents'
    ``respond_many`` interface, every call cached through a :class:`Judge`.

    ``backend_or_judge``: a :class:`Judge` (its cache is used), or a backend (e.g.
    ``judges.OpenAIChatBackend``) plus ``cache_dir``. ``system_prompt`` is prepended to
    conversations that have no system message. ``on_error``: "raise" (default) raises
    :class:`~zephyr_lib.judges.JudgeError` after the whole batch ran when any call failed after
    retries (finished answers are cached, so a rerun makes only the failed calls); "none" returns
    None for a failed conversation (callers drop and count it, as :func:`complete_pool` does).

    ``path`` is None: log-likelihood benchmarks skip API models. ``return_stopped`` and a
    ``top_p`` other than 1 raise NotImplementedError (the judge cache keeps no finish_reason, and
    its keys have no top_p).
    """

    path = None

    def __init__(self, backend_or_judge: Any, name: str | None = None, *, cache_dir=None,
                 system_prompt: str | None = None, on_error: str = "raise", progress: bool = False):
        if on_error not in ("raise", "none"):
            raise ValueError(f"on_error must be 'raise' or 'none', got {on_error!r}")
        if isinstance(backend_or_judge, Judge):
            self.judge = backend_or_judge
        else:
            if cache_dir is None:
                raise ValueError("OpenAIAgent over a bare backend needs cache_dir (every call is cached)")
            self.judge = Judge(backend_or_judge, cache_dir, progress=progress)
        self.name = name or getattr(self.judge.backend, "model", None) or self.judge.backend.name
        self.system_prompt = system_prompt
        self.on_error = on_error

    def __repr__(self) -> str:
        return f"OpenAIAgent(name={self.name!r}, judge={self.judge!r})"

    @property
    def stats(self) -> JudgeStats:
        return self.judge.stats

    def respond_many(self, conversations: Sequence[list[dict]], *, max_new_tokens: int = 1024,
                     temperature: float = 0.0, temperatures: Sequence[float] | None = None,
                     top_p: float = 1.0, desc: str | bool | None = None,
                     return_stopped: bool = False) -> list[str | None]:
        """Answer each conversation (its last turn is the user's); answers in input order.
        ``temperatures`` gives one temperature per conversation (calls are grouped by value)."""
        if top_p != 1.0:
            raise NotImplementedError(f"OpenAIAgent: top_p={top_p}: the judge (and its cache keys) has no top_p")
        if return_stopped:
            raise NotImplementedError(
                "OpenAIAgent cannot report whether the model stopped by itself: the finish_reason "
                "is not kept in the judge cache")
        convs = [list(c) for c in conversations]
        temps = list(temperatures) if temperatures is not None else [temperature] * len(convs)
        if len(temps) != len(convs):
            raise ValueError(f"{len(temps)} temperatures for {len(convs)} conversations")
        if self.system_prompt:
            convs = [c if c and c[0].get("role") == "system" else
                     [{"role": "system", "content": self.system_prompt}] + c for c in convs]
        out: list[str | None] = [None] * len(convs)
        errors: list[tuple[int, str]] = []
        groups: dict[float, list[int]] = {}
        for i, t in enumerate(temps):
            groups.setdefault(float(t), []).append(i)
        for t, idx in groups.items():
            res = complete_lenient(self.judge, [convs[i] for i in idx], temperature=t, max_tokens=max_new_tokens,
                            desc=desc or f"generate ({self.name})")
            for i, r in zip(idx, res):
                if r.ok:
                    out[i] = r.text.strip()
                else:
                    errors.append((i, r.error or "failed"))
        if errors and self.on_error == "raise":
            raise JudgeError(f"{self.name}: {len(errors)} of {len(convs)} call(s) failed after retries "
                             f"(first: conversation {errors[0][0]}: {errors[0][1]}); finished answers are "
                             f"cached, rerun to retry only the failed ones")
        return out
