"""Paper-scale data generation against real chat models, through the cached :class:`Judge` wrapper.

The toy world writes its corpora with programmatic stand-ins; this module runs the same two
data-building loops of the paper against *real* chat-completions endpoints (GPT-3.5 / GPT-4, or
an open model served by vLLM's OpenAI-compatible server):

* :func:`ultrachat_dialogues` -- UltraChat's self-prompting loop (dSFT data): a user simulator
  opens a dialogue about a topic (or the seed is already the opening question), the assistant
  model answers, the user simulator writes a follow-up from the assistant's last answer, and so
  on for ``max_turns`` exchanges. Calls are batched per turn across all dialogues.
* :func:`complete_pool` -- UltraFeedback's sampling of ``per_prompt`` pool members per prompt
  and their answers (pool members are agents: toy agents, ``generate.ModelAgent``,
  ``vllm_backend.VLLMAgent`` or :class:`OpenAIAgent`).
* :func:`rate_ultrafeedback` -- the AIF judgments (four aspect ratings over all completions,
  plus a critique and ``Overall Score`` per completion) assembled into openbmb/UltraFeedback's
  raw schema, ready for ``feedback.binarize``.
* :class:`OpenAIAgent` -- a chat-completions model behind the agents' ``respond_many``
  interface, so an API model (e.g. GPT-3.5 as the MT-Bench / AlpacaEval teacher row, or a pool
  member) plugs into the same code as trained models.

Resumability: every model call goes through :class:`zephyr_lib.judges.Judge`, whose on-disk
cache stores each successful reply under a hash of (endpoint/model, messages, temperature,
max_tokens, attempt). A rerun over the same inputs replays finished calls from disk and makes
only the missing ones; after a crash nothing finished is lost. Sampled replies (temperature > 0)
are cached too, so a rerun reproduces the first run exactly. Note that the endpoint URL is part
of the cache key: serve the model at the same ``base_url`` to resume.

Failures are never half-written: a dialogue whose call failed after all retries is dropped as a
whole and counted; an UltraFeedback row with any failed judgment is dropped and counted, never
scored from partial ratings. If *every* call of a batch of two or more requests fails, the
endpoint is down: :class:`~zephyr_lib.judges.AllCallsFailedError` propagates (finished calls
are cached; rerun when the endpoint is back).

Usage::

    from zephyr_lib.judges import judge_from_config
    from zephyr_lib import distill, curate
    teacher = judge_from_config("openai", model="gpt-3.5-turbo-0613", cache_dir="runs/paper/teacher_cache")
    dialogues, stats = distill.ultrachat_dialogues(teacher, ["volcanoes", "How do tides work?"], max_turns=3)
    raw = distill.raw_ultrachat_rows(dialogues, [f"uc{i}" for i in stats["kept"]])

    pool = {"gpt-3.5-turbo": distill.OpenAIAgent(teacher, "gpt-3.5-turbo"), "sft": ModelAgent(...), ...}
    rows, _ = distill.complete_pool(pool, prompts, per_prompt=4, seed=42)
    gpt4 = judge_from_config("openai", model="gpt-4-0613", cache_dir="runs/paper/judge_cache")
    raw_rows, stats = distill.rate_ultrafeedback(gpt4, rows)
    pairs, counts = feedback.binarize(raw_rows)
"""
from __future__ import annotations

import logging
import random
import re
from typing import Any, Mapping, Sequence

from . import curate as cur
from . import feedback as fb
from .judges import AllCallsFailedError, Judge, JudgeError, JudgeResult, JudgeStats

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Prompts of the user simulator
# --------------------------------------------------------------------------------------------

USER_SIM_SYSTEM = (
    "You are a curious user talking with an AI assistant. Continue the conversation with one "
    "follow-up question based on the assistant's last answer. Write only the user's next "
    "message, in the user's voice, with no preface, label or quotation marks.")

OPENER_TEMPLATE = (
    "Write the opening message a curious user would send to an AI assistant about the topic "
    "below: one specific question or request. Write only the message.\n\nTopic: {topic}")

FOLLOWUP_TEMPLATE = (
    "Here is the conversation so far.\n\n{transcript}\n\nWrite the user's next message: one "
    "follow-up question based on the assistant's last answer. Write only the message.")

_LABEL_RE = re.compile(r"\A\s*(?:\*\*)?\s*(?:user|human|question)\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.I)


def _transcript(messages: Sequence[dict]) -> str:
    names = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages if m["role"] in names)


def clean_user_turn(text: str) -> str:
    """A user-simulator reply -> the user's message: strips a leading "User:" label and wrapping
    quotes. Raises ValueError for an empty message (the Judge then re-asks)."""
    out = _LABEL_RE.sub("", text.strip(), count=1).strip()
    if len(out) >= 2 and out[0] == out[-1] and out[0] in "\"'“”":
        out = out[1:-1].strip()
    elif len(out) >= 2 and out[0] == "“" and out[-1] == "”":
        out = out[1:-1].strip()
    if not out:
        raise ValueError("empty user turn")
    return out


def clean_answer(text: str) -> str:
    """An assistant reply, stripped. Raises ValueError for an empty answer (the Judge re-asks)."""
    out = text.strip()
    if not out:
        raise ValueError("empty assistant answer")
    return out


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

_STAT_FIELDS = tuple(JudgeStats.__dataclass_fields__)


def _snapshot(judge: Judge) -> dict:
    return judge.stats.as_dict()


def _delta(judge: Judge, before: dict) -> dict:
    now = judge.stats.as_dict()
    return {k: now[k] - before[k] for k in _STAT_FIELDS}


def _complete(judge: Judge, requests: list[list[dict]], **kw) -> list[JudgeResult]:
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


def _seed_kind(seed: Any, default: str) -> tuple[str, str]:
    if isinstance(seed, Mapping):
        keys = [k for k in ("topic", "question") if k in seed]
        if len(keys) != 1 or not isinstance(seed[keys[0]], str) or not seed[keys[0]].strip():
            raise ValueError(f"a dict seed needs exactly one non-empty 'topic' or 'question', got {dict(seed)!r}")
        return keys[0], seed[keys[0]].strip()
    if not isinstance(seed, str) or not seed.strip():
        raise ValueError(f"a seed must be a non-empty string or a {{'topic'|'question': str}} dict, got {seed!r}")
    text = seed.strip()
    if default == "auto":
        return ("question" if text.endswith("?") else "topic"), text
    return default, text


# --------------------------------------------------------------------------------------------
# 1. UltraChat: self-prompting dialogues
# --------------------------------------------------------------------------------------------


def ultrachat_dialogues(teacher: Judge, seeds: Sequence[Any], *, max_turns: int = 3,
                        user_model: Judge | None = None, temperature: float = 0.7, max_tokens: int = 1024,
                        user_temperature: float | None = None, user_max_tokens: int = 256,
                        system_prompt: str | None = None, seed_kind: str = "auto",
                        parse_retries: int = 1, desc: str | None = "UltraChat"
                        ) -> tuple[list[list[dict]], dict]:
    """UltraChat's self-prompting loop over real chat models.

    ``seeds``: topics or opening questions. A string ending in "?" is an opening question and
    anything else a topic (``seed_kind="auto"``; ``"topic"`` / ``"question"`` force one kind), or
    a dict ``{"topic": ...}`` / ``{"question": ...}``. For a topic, the user simulator first
    writes the opening question about it.

    Each dialogue gets ``max_turns`` exchanges (user, assistant): the assistant model
    (``teacher``) answers the dialogue so far (preceded by ``system_prompt`` if given; UltraChat
    used none); the user simulator (``user_model``, default the teacher's endpoint) gets
    :data:`USER_SIM_SYSTEM` and a transcript of the dialogue and writes the next user turn. All
    dialogues advance together, one ``complete_many`` batch per step. Empty replies are re-asked
    ``parse_retries`` times.

    Returns ``(dialogues, stats)``: dialogues are message lists with strictly alternating roles,
    user first, ``2 * max_turns`` messages (plus the system message if ``system_prompt``), in
    seed order; a dialogue with a failed call is dropped whole. ``stats``: n_seeds, n_topics,
    n_dialogues, n_dropped, kept (seed index of each output dialogue), dropped (seed index, seed,
    step, turn, error), and the judges' counters for this call (``teacher``, ``user_model``).
    Convert with :func:`raw_ultrachat_rows` (raw UltraChat rows) or
    ``curate.to_ultrachat_200k_row``.
    """
    if max_turns < 1:
        raise ValueError("max_turns must be >= 1")
    if seed_kind not in ("auto", "topic", "question"):
        raise ValueError(f"seed_kind must be 'auto', 'topic' or 'question', got {seed_kind!r}")
    user_model = user_model or teacher
    user_temperature = temperature if user_temperature is None else user_temperature
    parsed_seeds = [_seed_kind(s, seed_kind) for s in seeds]
    before_t, before_u = _snapshot(teacher), _snapshot(user_model)
    dialogues: dict[int, list[dict]] = {i: [] for i in range(len(parsed_seeds))}
    dropped: list[dict] = []

    def drop(i: int, step: str, turn: int, error: str | None) -> None:
        dialogues.pop(i, None)
        dropped.append({"seed_index": i, "seed": seeds[i] if isinstance(seeds[i], str) else dict(seeds[i]),
                        "step": step, "turn": turn, "error": error})

    def user_kw(what: str) -> dict:
        return dict(parse=clean_user_turn, parse_retries=parse_retries, temperature=user_temperature,
                    max_tokens=user_max_tokens, desc=f"{desc}: {what}" if desc else None)

    # turn 1, user: the seed question, or an opening question written about the topic
    topics = [i for i, (kind, _) in enumerate(parsed_seeds) if kind == "topic"]
    for i, (kind, text) in enumerate(parsed_seeds):
        if kind == "question":
            dialogues[i].append({"role": "user", "content": text})
    reqs = [[{"role": "system", "content": USER_SIM_SYSTEM},
             {"role": "user", "content": OPENER_TEMPLATE.format(topic=parsed_seeds[i][1])}] for i in topics]
    for i, r in zip(topics, _complete(user_model, reqs, **user_kw("opening questions"))):
        if r.ok:
            dialogues[i].append({"role": "user", "content": r.parsed})
        else:
            drop(i, "opening_question", 1, r.error)

    prefix = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for turn in range(1, max_turns + 1):
        if turn > 1:  # user: a follow-up from the dialogue so far
            alive = sorted(dialogues)
            reqs = [[{"role": "system", "content": USER_SIM_SYSTEM},
                     {"role": "user", "content": FOLLOWUP_TEMPLATE.format(transcript=_transcript(dialogues[i]))}]
                    for i in alive]
            for i, r in zip(alive, _complete(user_model, reqs, **user_kw(f"user turn {turn}"))):
                if r.ok:
                    dialogues[i].append({"role": "user", "content": r.parsed})
                else:
                    drop(i, "user", turn, r.error)
        alive = sorted(dialogues)  # assistant: answers the dialogue so far
        reqs = [prefix + [dict(m) for m in dialogues[i]] for i in alive]
        res = _complete(teacher, reqs, parse=clean_answer, parse_retries=parse_retries, temperature=temperature,
                        max_tokens=max_tokens, desc=f"{desc}: assistant turn {turn}" if desc else None)
        for i, r in zip(alive, res):
            if r.ok:
                dialogues[i].append({"role": "assistant", "content": r.parsed})
            else:
                drop(i, "assistant", turn, r.error)

    kept = sorted(dialogues)
    out = [prefix + dialogues[i] for i in kept]
    for d in out:  # invariant: whole dialogues only
        body = d[1:] if system_prompt else d
        assert len(body) == 2 * max_turns and all(
            m["role"] == ("user" if k % 2 == 0 else "assistant") for k, m in enumerate(body)), "half-written dialogue"
    dropped.sort(key=lambda x: x["seed_index"])
    stats = {"n_seeds": len(parsed_seeds), "n_topics": len(topics), "n_dialogues": len(out),
             "n_dropped": len(dropped), "kept": kept, "dropped": dropped, "max_turns": max_turns,
             "teacher": _delta(teacher, before_t)}
    if user_model is not teacher:
        stats["user_model"] = _delta(user_model, before_u)
    if dropped:
        log.warning("ultrachat_dialogues: dropped %d of %d dialogues after failed calls", len(dropped), len(parsed_seeds))
    return out, stats


def raw_ultrachat_rows(dialogues: Sequence[Sequence[dict]], ids: Sequence[str] | None = None) -> list[dict]:
    """Dialogues -> raw UltraChat rows ``{"id", "data": [user, assistant, ...]}`` (ids default to
    "0", "1", ...; pass e.g. ``stats["kept"]``-based ids to keep the seed index)."""
    ids = [str(i) for i in range(len(dialogues))] if ids is None else list(ids)
    if len(ids) != len(dialogues):
        raise ValueError(f"{len(ids)} ids for {len(dialogues)} dialogues")
    return [cur.to_raw_ultrachat(i, d) for i, d in zip(ids, dialogues)]


# --------------------------------------------------------------------------------------------
# 2. UltraFeedback: pool sampling and AI-feedback ratings
# --------------------------------------------------------------------------------------------


def complete_pool(agents: Mapping[str, Any], prompts: Sequence[Any], per_prompt: int = 4, seed: int = 42, *,
                  max_new_tokens: int = 1024, temperature: float = 0.7,
                  system_prompts: Sequence[tuple[str, str]] | None = None) -> tuple[list[dict], dict]:
    """UltraFeedback's completion step: ``per_prompt`` distinct pool members per prompt, each answering.

    ``agents``: name -> agent with ``respond_many(conversations, max_new_tokens=, temperature=,
    desc=)``. ``prompts``: instruction strings, or dicts with ``instruction`` and optionally
    ``source`` / ``correct_answers`` / ``incorrect_answers`` (kept for :func:`rate_ultrafeedback`).
    One ``random.Random(seed)`` draws, per prompt in order, ``rng.sample(names, per_prompt)`` (names
    in the dict's order, as the aif stage draws its pool) and, if ``system_prompts`` (a list of
    ``(principle, system prompt)``) is given, one principle per completion, sent as a system
    message and recorded (UltraFeedback's principle prompting). Each agent answers all of its
    prompts in one ``respond_many`` batch.

    A prompt for which an agent returned None (e.g. :class:`OpenAIAgent` with on_error="none")
    is dropped and counted. Returns ``(rows, stats)``: rows are ``{"instruction", "models",
    "completions": [{"model", "response", "principle", "custom_system_prompt"}], ...extra}``.
    """
    names = list(agents)
    if not 1 <= per_prompt <= len(names):
        raise ValueError(f"per_prompt={per_prompt} needs between 1 and {len(names)} pool members")
    items = []
    for k, p in enumerate(prompts):
        item = {"instruction": p} if isinstance(p, str) else dict(p)
        if not isinstance(item.get("instruction"), str) or not item["instruction"].strip():
            raise ValueError(f"prompt {k}: expected a non-empty instruction string")
        items.append(item)
    rng = random.Random(seed)
    members = [rng.sample(names, per_prompt) for _ in items]
    principles: list[list[tuple[str, str]]] = []
    for ms in members:
        principles.append([rng.choice(list(system_prompts)) if system_prompts else ("helpfulness", "") for _ in ms])
    answers: dict[tuple[int, str], str | None] = {}
    for name in names:
        mine = [(k, j) for k, ms in enumerate(members) for j, m in enumerate(ms) if m == name]
        if not mine:
            continue
        convs = []
        for k, j in mine:
            sys_prompt = principles[k][j][1]
            convs.append(([{"role": "system", "content": sys_prompt}] if sys_prompt else [])
                         + [{"role": "user", "content": items[k]["instruction"]}])
        texts = agents[name].respond_many(convs, max_new_tokens=max_new_tokens, temperature=temperature,
                                          desc=f"pool: {name}")
        if len(texts) != len(convs):
            raise RuntimeError(f"pool member {name!r} returned {len(texts)} answers for {len(convs)} prompts")
        answers.update({(k, name): t for (k, _), t in zip(mine, texts)})
    rows, dropped = [], []
    for k, item in enumerate(items):
        texts = [answers[(k, m)] for m in members[k]]
        failed = [m for m, t in zip(members[k], texts) if not isinstance(t, str)]
        if failed:
            dropped.append({"prompt_index": k, "failed_models": failed})
            continue
        comps = [{"model": m, "response": t, "principle": pr[0], "custom_system_prompt": pr[1]}
                 for m, t, pr in zip(members[k], texts, principles[k])]
        rows.append({**item, "models": list(members[k]), "completions": comps})
    per_model = {n: sum(n in ms for ms in members) for n in names}
    stats = {"n_prompts": len(items), "n_rows": len(rows), "n_dropped": len(dropped), "dropped": dropped,
             "per_model": per_model, "per_prompt": per_prompt, "seed": seed}
    return rows, stats


def _check_rows(rows: Sequence[dict]) -> None:
    for k, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise ValueError(f"row {k}: expected a dict with an 'instruction' string")
        comps = row.get("completions")
        if not isinstance(comps, list) or not comps:
            raise ValueError(f"row {k}: expected a non-empty 'completions' list")
        for j, c in enumerate(comps):
            if not isinstance(c, dict) or not isinstance(c.get("model"), str) or not isinstance(c.get("response"), str):
                raise ValueError(f"row {k}: completions[{j}] needs 'model' and 'response' strings")


def rate_ultrafeedback(judge: Judge, rows: Sequence[dict], *, temperature: float = 0.0, max_tokens: int = 1024,
                       parse_retries: int = 2, world_knowledge: bool = True,
                       desc: str | None = "UltraFeedback") -> tuple[list[dict], dict]:
    """Rate every completion UltraFeedback's way and assemble raw openbmb/UltraFeedback rows.

    ``rows``: ``{"instruction", "completions": [{"model", "response"}, ...]}`` (e.g. from
    :func:`complete_pool`; optional ``source``, ``correct_answers``, ``incorrect_answers`` on the
    row and ``principle`` / ``custom_system_prompt`` on completions are carried over). Per row:
    one request per aspect with all completions (``feedback.build_aspect_messages``; truthfulness
    and helpfulness get ``feedback.world_knowledge_for(row)`` unless ``world_knowledge=False``)
    and one critique / overall-score request per completion (``feedback.build_overall_messages``,
    with the completion's custom system prompt as the ``Note:``, as UltraFeedback did). Replies
    are parsed with ``feedback.parse_aspect_reply`` / ``parse_overall_reply``; unparsable ones
    are re-asked ``parse_retries`` times.

    Returns ``(raw_rows, stats)``. A row with ANY failed judgment (transport or parse) is dropped
    and counted in ``stats["dropped"]`` -- never scored from partial ratings. stats: n_rows,
    n_out, n_dropped, dropped (row index, failed requests, first error), n_requests, judge
    counters for this call.
    """
    _check_rows(rows)
    before = _snapshot(judge)
    aspect_reqs: dict[int, list[tuple[int, str, list[dict]]]] = {}  # n completions -> [(row, aspect, msgs)]
    overall_reqs: list[tuple[int, int, list[dict]]] = []
    for k, row in enumerate(rows):
        responses = [c["response"] for c in row["completions"]]
        wk = fb.world_knowledge_for(row) if world_knowledge else ""
        for aspect in fb.ASPECTS:
            aspect_reqs.setdefault(len(responses), []).append(
                (k, aspect, fb.build_aspect_messages(aspect, row["instruction"], responses, world_knowledge=wk)))
        for j, c in enumerate(row["completions"]):
            note = c.get("custom_system_prompt") or None
            overall_reqs.append((k, j, fb.build_overall_messages(row["instruction"], c["response"], note=note)))

    aspect_res: dict[tuple[int, str], JudgeResult] = {}
    for n, group in sorted(aspect_reqs.items(), key=lambda kv: -len(kv[1])):  # the big group first
        res = _complete(judge, [m for _, _, m in group], parse=lambda s, n=n: fb.parse_aspect_reply(s, n),
                        parse_retries=parse_retries, temperature=temperature, max_tokens=max_tokens,
                        desc=f"{desc}: aspects" if desc else None)
        aspect_res.update({(k, a): r for (k, a, _), r in zip(group, res)})
    res = _complete(judge, [m for _, _, m in overall_reqs], parse=fb.parse_overall_reply,
                    parse_retries=parse_retries, temperature=temperature, max_tokens=max_tokens,
                    desc=f"{desc}: overall" if desc else None)
    overall_res = {(k, j): r for (k, j, _), r in zip(overall_reqs, res)}

    out, dropped = [], []
    for k, row in enumerate(rows):
        comps_in = row["completions"]
        asp = {a: aspect_res[(k, a)] for a in fb.ASPECTS}
        ovr = [overall_res[(k, j)] for j in range(len(comps_in))]
        failed = [a for a, r in asp.items() if not r.ok] + [f"overall[{j}]" for j, r in enumerate(ovr) if not r.ok]
        if failed:
            first = next(r.error for r in list(asp.values()) + ovr if not r.ok)
            dropped.append({"row": k, "instruction": row["instruction"][:200], "failed": failed, "error": first})
            continue
        comps = []
        for j, c in enumerate(comps_in):
            blocks = {a: asp[a].parsed[j] for a in fb.ASPECTS}
            critique, score = ovr[j].parsed
            comps.append(fb.raw_completion(
                c["model"], c["response"],
                ratings={a: b["rating"] for a, b in blocks.items()},
                rationales={a: b["rationale"] for a, b in blocks.items()},
                types={a: b["type"] for a, b in blocks.items() if "type" in b},
                type_rationales={a: b.get("type_rationale", "") for a, b in blocks.items() if "type" in b},
                overall_score=score, critique=critique, principle=c.get("principle") or "helpfulness",
                custom_system_prompt=c.get("custom_system_prompt") or ""))
        raw = fb.raw_row(row["instruction"], comps, source=row.get("source", "evol_instruct"),
                         models=[c["model"] for c in comps_in],
                         correct_answers=row.get("correct_answers"), incorrect_answers=row.get("incorrect_answers"))
        out.append(fb.validate_raw_row(raw, f"row {k}"))
    stats = {"n_rows": len(rows), "n_out": len(out), "n_dropped": len(dropped), "dropped": dropped,
             "n_requests": sum(len(g) for g in aspect_reqs.values()) + len(overall_reqs),
             "judge": _delta(judge, before)}
    if dropped:
        log.warning("rate_ultrafeedback: dropped %d of %d rows with failed judgments", len(dropped), len(rows))
    return out, stats


# --------------------------------------------------------------------------------------------
# 3. An API model as an agent
# --------------------------------------------------------------------------------------------


class OpenAIAgent:
    """A chat-completions model (GPT-3.5, GPT-4, a vLLM-served model, ...) with the agents'
    ``respond_many`` interface, every call cached through a :class:`Judge`.

    ``backend_or_judge``: a :class:`Judge` (its cache is used), or a backend (e.g.
    ``judges.OpenAIChatBackend``) plus ``cache_dir``. ``system_prompt`` is prepended to
    conversations that have no system message. ``on_error``: "raise" (default) raises
    :class:`~zephyr_lib.judges.JudgeError` after the whole batch ran when any call failed after
    retries (finished answers are cached, so a rerun makes only the failed calls); "none" returns
    None for a failed conversation (callers drop and count it, as :func:`complete_pool` does).

    There is no ``path`` attribute: log-likelihood benchmarks skip API models.
    """

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
                     desc: str | None = None, return_stopped: bool = False, **_: Any) -> list[str | None]:
        """Answer each conversation (its last turn is the user's); answers in input order.
        ``temperatures`` gives one temperature per conversation (calls are grouped by value)."""
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
            res = _complete(self.judge, [convs[i] for i in idx], temperature=t, max_tokens=max_new_tokens,
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


__all__ = ["USER_SIM_SYSTEM", "OPENER_TEMPLATE", "FOLLOWUP_TEMPLATE", "clean_user_turn", "clean_answer",
           "ultrachat_dialogues", "raw_ultrachat_rows", "complete_pool", "rate_ultrafeedback", "OpenAIAgent"]
