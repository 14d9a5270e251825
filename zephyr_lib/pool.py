"""UltraFeedback's two AI-feedback loops: answers from a pool, then the judge's ratings.

* :func:`complete_pool` -- ``per_prompt`` pool members drawn per prompt, each answering (pool
  members are agents: toy-world programs, trained models, API models; see :mod:`zephyr_lib.agents`).
* :func:`rate_ultrafeedback` -- the AIF judgments (four aspect ratings over all completions, plus
  a critique and ``Overall Score`` per completion), assembled into openbmb/UltraFeedback's raw
  schema, ready for ``feedback.binarize``.

The aif stage runs both, with the toy judge or a real one (the same code path); judge calls are
cached, so a rerun asks only for what is missing.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Mapping, Sequence

from . import feedback as fb
from .agent import Agent
from .agents import complete_lenient as _complete, stats_delta
from .judges import Judge, JudgeResult

log = logging.getLogger(__name__)


def complete_pool(agents: Mapping[str, Agent], prompts: Sequence[Any], per_prompt: int = 4, seed: int = 42, *,
                  max_new_tokens: int = 1024, temperature: float = 0.7,
                  system_prompts: Sequence[tuple[str, str]] | None = None,
                  principles: Mapping[str, Sequence[str]] | None = None) -> tuple[list[dict], dict]:
    """UltraFeedback's completion step: ``per_prompt`` distinct pool members per prompt, each answering.

    ``agents``: name -> :class:`~zephyr_lib.agent.Agent` (what :func:`~zephyr_lib.agents.make_agent`
    returns). ``prompts``: instruction strings, or dicts with ``instruction`` and optionally
    ``source`` / ``correct_answers`` / ``incorrect_answers`` (kept for :func:`rate_ultrafeedback`).
    One ``random.Random(seed)`` draws, per prompt in order, ``rng.sample(names, per_prompt)`` (names
    in the dict's order, as the aif stage draws its pool) and, if ``system_prompts`` (a list of
    ``(principle, system prompt)``) is given, one principle per completion, sent as a system
    message and recorded (UltraFeedback's principle prompting); with ``principles`` (UltraFeedback's
    own, ``feedback.load_original_principles``) the principle is drawn per prompt source as its
    main.py draws it (``feedback.draw_principle``). Each agent answers all of its prompts in one
    ``respond_many`` batch.

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
    principles_of: list[list[tuple[str, str]]] = []
    for item, ms in zip(items, members):
        principles_of.append([fb.draw_principle(item.get("source", "evol_instruct"), principles, rng) if principles
                              else rng.choice(list(system_prompts)) if system_prompts else ("helpfulness", "")
                              for _ in ms])
    answers: dict[tuple[int, str], str | None] = {}
    for name in names:
        mine = [(k, j) for k, ms in enumerate(members) for j, m in enumerate(ms) if m == name]
        if not mine:
            continue
        convs = []
        for k, j in mine:
            sys_prompt = principles_of[k][j][1]
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
                 for m, t, pr in zip(members[k], texts, principles_of[k])]
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
                       templates: Mapping[str, str] | None = None,
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
    are re-asked ``parse_retries`` times. Each group goes to the judge in bounded chunks
    (``Judge.chunk_size``) with a progress bar, and every reply is cached as it arrives: a kill
    or a revoked key mid-job loses at most the requests in flight. With ``templates`` (UltraFeedback's originals,
    ``feedback.load_original_templates``) the requests use them and their call settings
    (``feedback.ORIGINAL_CALL_SETTINGS``: 500 tokens for ratings, 1024 for critiques); without, the
    paraphrase that the toy judge reads.

    Returns ``(raw_rows, stats)``. A row with ANY failed judgment (transport or parse) is dropped
    and counted in ``stats["dropped"]`` -- never scored from partial ratings. stats: n_rows,
    n_out, n_dropped, dropped (row index, failed requests, first error), n_requests, judge
    counters for this call.
    """
    _check_rows(rows)
    before = judge.stats.as_dict()
    aspect_reqs: dict[int, list[tuple[int, str, list[dict]]]] = {}  # n completions -> [(row, aspect, msgs)]
    overall_reqs: list[tuple[int, int, list[dict]]] = []
    for k, row in enumerate(rows):
        responses = [c["response"] for c in row["completions"]]
        wk = fb.world_knowledge_for(row) if world_knowledge else ""
        for aspect in fb.ASPECTS:
            aspect_reqs.setdefault(len(responses), []).append(
                (k, aspect, fb.aspect_messages(aspect, row["instruction"], responses, wk, templates=templates)))
        for j, c in enumerate(row["completions"]):
            note = c.get("custom_system_prompt") or None
            overall_reqs.append((k, j, fb.build_overall_messages(row["instruction"], c["response"], note=note)
                                 if templates is None else fb.build_original_critique_messages(
                                     templates, row["instruction"], c["response"], c.get("custom_system_prompt") or "",
                                     c.get("principle") or "")))
    rating_tokens = fb.ORIGINAL_CALL_SETTINGS["rating"]["max_tokens"] if templates else max_tokens
    critique_tokens = fb.ORIGINAL_CALL_SETTINGS["critique"]["max_tokens"] if templates else max_tokens

    aspect_res: dict[tuple[int, str], JudgeResult] = {}
    for n, group in sorted(aspect_reqs.items(), key=lambda kv: -len(kv[1])):  # the big group first
        res = _complete(judge, [m for _, _, m in group], parse=lambda s, n=n: fb.parse_aspect_reply(s, n),
                        parse_retries=parse_retries, temperature=temperature, max_tokens=rating_tokens,
                        desc=f"{desc}: aspects" if desc else None)
        aspect_res.update({(k, a): r for (k, a, _), r in zip(group, res)})
    res = _complete(judge, [m for _, _, m in overall_reqs], parse=fb.parse_overall_reply,
                    parse_retries=parse_retries, temperature=temperature, max_tokens=critique_tokens,
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
             "judge": stats_delta(judge, before)}
    if dropped:
        log.warning("rate_ultrafeedback: dropped %d of %d rows with failed judgments", len(dropped), len(rows))
    return out, stats
