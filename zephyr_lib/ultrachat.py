"""UltraChat's self-prompting loop against a real teacher (the curate stage's ``source: api``).

The toy world writes its corpus with a programmatic teacher; this module runs the paper's loop
against any chat-completions endpoint (GPT-3.5-turbo as in UltraChat, or an open model served by
vLLM): a user simulator opens a dialogue about a topic (or the seed already is the opening
question), the teacher answers, the user simulator writes a follow-up from the teacher's last
answer, and so on for ``max_turns`` exchanges. Calls are batched per turn across all dialogues.

Every call goes through :class:`zephyr_lib.judges.Judge`, whose on-disk cache makes a rerun replay
finished calls and make only the missing ones. A dialogue whose call failed after all retries is
dropped whole and counted, never half-written.

Usage::

    teacher = agents.judge_for(ctx, "gpt35")            # an endpoint of the profile
    dialogues, stats = ultrachat.ultrachat_dialogues(teacher, ["volcanoes", "How do tides work?"], max_turns=3)
    raw = ultrachat.raw_ultrachat_rows(dialogues)
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Sequence

from . import curate as cur
from .agents import complete_lenient as _complete, stats_delta
from .judges import Judge

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
    before_t, before_u = teacher.stats.as_dict(), user_model.stats.as_dict()
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
             "teacher": stats_delta(teacher, before_t)}
    if user_model is not teacher:
        stats["user_model"] = stats_delta(user_model, before_u)
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
