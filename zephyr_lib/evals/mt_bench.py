"""MT-Bench as FastChat's llm_judge runs it, without calling any judge.

Mirrors ``fastchat/llm_judge`` (common.py, gen_model_answer.py, gen_judgment.py, show_result.py):

- data: ``question.jsonl`` (question_id, category, turns, optional reference), ``judge_prompts.jsonl``
  (name, type, system_prompt, prompt_template, output_format), model answers and GPT-4 reference
  answers in the ``model_answer`` schema (question_id, answer_id, model_id,
  choices=[{"index": 0, "turns": [...]}], tstamp);
- generation settings: per-category temperature (``temperature_config``), 1024 new tokens;
- judging: the exact messages ``run_judge_single`` / ``run_judge_pair`` send to GPT-4 (system prompt
  from the prompt record, user prompt = ``prompt_template.format(...)``), the reference-guided
  prompts for math/reasoning/coding, and turn 2 judged with the multi-turn twins;
- parsing: ``[[rating]]`` with the ``[rating]`` fallback (``re.search`` + ``ast.literal_eval``,
  -1 when nothing matches) and ``[[A]]``/``[[B]]``/``[[C]]`` verdicts;
- aggregation: ``show_result.py`` (drop score == -1, mean over all kept turn judgments, turn-1 and
  turn-2 means), per-category means (Figure 1 radar) and a bootstrap CI over questions.

Each message builder has an inverse extractor (``extract_single``, ``extract_pair``) that recovers
the question(s), answer(s) and reference(s) from the messages alone, for an offline stand-in judge.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from zephyr_lib.io import DataError, atomic_write_bytes, iter_jsonl_numbered, require, write_jsonl

# --------------------------------------------------------------------------------------------
# Constants (values as in fastchat/llm_judge/common.py and gen_model_answer.py)
# --------------------------------------------------------------------------------------------

#: Sampling temperature per category (FastChat ``temperature_config``).
TEMPERATURE: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
#: Temperature FastChat uses for a category missing from ``TEMPERATURE``.
DEFAULT_TEMPERATURE = 0.7
#: Categories judged with the reference-guided (math) prompts.
NEED_REF_CATS = frozenset({"math", "reasoning", "coding"})
#: ``--max-new-token`` default of gen_model_answer.py.
MAX_NEW_TOKENS = 1024
#: Category order of the paper's Figure 1 / FastChat's radar plot.
CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
#: Judge model and its decoding settings in run_judge_single / run_judge_pair.
JUDGE_MODEL = "gpt-4"
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 2048

SINGLE_PROMPTS = {(False, 1): "single-v1", (True, 1): "single-math-v1",
                  (False, 2): "single-v1-multi-turn", (True, 2): "single-math-v1-multi-turn"}
PAIR_PROMPTS = {(False, 1): "pair-v2", (True, 1): "pair-math-v1",
                (False, 2): "pair-v2-multi-turn", (True, 2): "pair-math-v1-multi-turn"}

# Score patterns, verbatim from FastChat common.py.
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


# --------------------------------------------------------------------------------------------
# Loading and writing data
# --------------------------------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(row: dict, field: str, where: str) -> int:
    value = require(row, field, int, where)
    if isinstance(value, bool):
        raise DataError(f"{where}: field '{field}' should be int, got bool")
    return value


def _require_str_list(row: dict, field: str, where: str, length: int | None = None) -> list[str]:
    value = require(row, field, list, where)
    if length is not None and len(value) != length:
        raise DataError(f"{where}: field '{field}' should hold {length} strings, got {len(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(f"{where}: field '{field}[{i}]' should be str, got {type(item).__name__}")
    return value


def load_questions(path: str | Path) -> list[dict]:
    """Load FastChat's ``question.jsonl``; every row is checked (question_id int, category str,
    turns = 2 strings, optional reference = list of strings, ids unique)."""
    path = Path(path)
    questions, seen = [], {}
    for lineno, row in iter_jsonl_numbered(path):
        where = f"{path}:{lineno}"
        qid = _require_int(row, "question_id", where)
        require(row, "category", str, where)
        _require_str_list(row, "turns", where, length=2)
        if "reference" in row:
            _require_str_list(row, "reference", where)
        if qid in seen:
            raise DataError(f"{where}: duplicate question_id {qid} (first at line {seen[qid]})")
        seen[qid] = lineno
        questions.append(row)
    if not questions:
        raise DataError(f"{path}: no questions")
    return questions


def load_judge_prompts(path: str | Path) -> dict[str, dict]:
    """Load ``judge_prompts.jsonl`` as {name: record} (FastChat ``load_judge_prompts``)."""
    path = Path(path)
    prompts: dict[str, dict] = {}
    for lineno, row in iter_jsonl_numbered(path):
        where = f"{path}:{lineno}"
        name = require(row, "name", str, where)
        for field in ("type", "system_prompt", "prompt_template", "output_format"):
            require(row, field, str, where)
        if name in prompts:
            raise DataError(f"{where}: duplicate judge prompt name '{name}'")
        prompts[name] = row
    return prompts


def _check_answer_row(row: dict, where: str) -> None:
    _require_int(row, "question_id", where)
    require(row, "model_id", str, where)
    choices = require(row, "choices", list, where)
    if not choices:
        raise DataError(f"{where}: field 'choices' is empty")
    if not isinstance(choices[0], dict):
        raise DataError(f"{where}: field 'choices[0]' should be an object")
    _require_str_list(choices[0], "turns", f"{where}: choices[0]")


def load_answers(path: str | Path) -> dict[int, dict]:
    """Load a ``model_answer`` jsonl file as {question_id: record}; ids must be unique."""
    path = Path(path)
    answers: dict[int, dict] = {}
    for lineno, row in iter_jsonl_numbered(path):
        where = f"{path}:{lineno}"
        _check_answer_row(row, where)
        qid = row["question_id"]
        if qid in answers:
            raise DataError(f"{where}: duplicate answer for question_id {qid}")
        answers[qid] = row
    return answers


def load_reference_answers(path: str | Path) -> dict[int, dict]:
    """Load reference answers (e.g. ``reference_answer/gpt-4.jsonl``); same schema as answers,
    and every reference must hold both turns."""
    refs = load_answers(path)
    for qid, row in refs.items():
        if len(row["choices"][0]["turns"]) < 2:
            raise DataError(f"{path}: reference for question_id {qid} has fewer than 2 turns")
    return refs


def generation_config(category: str, max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """Decoding settings FastChat's gen_model_answer uses for a category (greedy when T < 1e-4)."""
    temperature = TEMPERATURE.get(category, DEFAULT_TEMPERATURE)
    return {"temperature": temperature, "do_sample": temperature >= 1e-4, "max_new_tokens": max_new_tokens}


def answer_record(question_id: int, model_id: str, turns: Sequence[str],
                  answer_id: str | None = None, tstamp: float | None = None) -> dict:
    """One row of FastChat's model_answer schema. Without ``answer_id`` a stable 22-character id
    is derived from the content (FastChat draws a random shortuuid)."""
    if not _is_int(question_id):
        raise ValueError(f"question_id should be int, got {question_id!r}")
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id should be a non-empty str, got {model_id!r}")
    turns = list(turns)
    if not turns or not all(isinstance(t, str) for t in turns):
        raise ValueError(f"question {question_id}: turns should be a non-empty list of str")
    if answer_id is None:
        digest = hashlib.sha256(json.dumps([question_id, model_id, turns]).encode("utf-8")).hexdigest()
        answer_id = digest[:22]
    return {
        "question_id": question_id,
        "answer_id": answer_id,
        "model_id": model_id,
        "choices": [{"index": 0, "turns": turns}],
        "tstamp": time.time() if tstamp is None else float(tstamp),
    }


def write_answers(path: str | Path, records: Iterable[dict]) -> Path:
    """Write answer records as jsonl sorted by question_id (atomic)."""
    records = list(records)
    for i, row in enumerate(records):
        _check_answer_row(row, f"answer record {i}")
    ids = [r["question_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("write_answers: duplicate question_id in records")
    return write_jsonl(path, sorted(records, key=lambda r: r["question_id"]))


# --------------------------------------------------------------------------------------------
# Judge messages (run_judge_single / run_judge_pair)
# --------------------------------------------------------------------------------------------

def _turns_of(answer: Mapping | Sequence[str], what: str) -> list[str]:
    """Turns of a model_answer record, or the list of turn strings itself."""
    if isinstance(answer, Mapping):
        try:
            turns = answer["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{what}: expected a model_answer record with choices[0].turns") from None
    else:
        turns = answer
    if (isinstance(turns, (str, bytes)) or not isinstance(turns, Sequence)
            or not all(isinstance(t, str) for t in turns)):
        raise ValueError(f"{what}: turns should be a list of str")
    return list(turns)


def _prompt_record(judge_prompts: Mapping[str, dict], name: str, kind: str) -> dict:
    if name not in judge_prompts:
        raise KeyError(f"judge prompt '{name}' not found (have: {sorted(judge_prompts)})")
    record = judge_prompts[name]
    if record.get("type") != kind:
        raise ValueError(f"judge prompt '{name}' has type {record.get('type')!r}, expected {kind!r}")
    return record


def _ref_kwargs(question: Mapping, ref_answers: Any) -> tuple[bool, dict]:
    """Whether the question is reference-guided and the ref_answer_1/2 format arguments."""
    qid = question.get("question_id")
    ref_based = question["category"] in NEED_REF_CATS
    if not ref_based:
        return False, {}
    if ref_answers is None:
        raise ValueError(f"question {qid} ({question['category']}) needs a reference answer")
    ref = ref_answers
    if isinstance(ref_answers, Mapping) and "choices" not in ref_answers:  # {question_id: record}
        if qid not in ref_answers:
            raise ValueError(f"no reference answer for question {qid}")
        ref = ref_answers[qid]
    turns = _turns_of(ref, f"reference answer of question {qid}")
    if len(turns) < 2:
        raise ValueError(f"reference answer of question {qid} needs 2 turns, got {len(turns)}")
    return True, {"ref_answer_1": turns[0], "ref_answer_2": turns[1]}


def _check_turn(turn: int) -> None:
    if turn not in (1, 2):
        raise ValueError(f"turn should be 1 or 2, got {turn!r}")


def single_prompt_name(category: str, turn: int) -> str:
    """Name of the single-answer judge prompt FastChat uses for this category and turn."""
    _check_turn(turn)
    return SINGLE_PROMPTS[(category in NEED_REF_CATS, turn)]


def pair_prompt_name(category: str, turn: int) -> str:
    """Name of the pairwise judge prompt FastChat uses for this category and turn."""
    _check_turn(turn)
    return PAIR_PROMPTS[(category in NEED_REF_CATS, turn)]


def _messages(system_prompt: str, user_prompt: str) -> list[dict]:
    # FastChat: conv = get_conversation_template("gpt-4"); conv.set_system_message(system_prompt);
    # one user message; conv.to_openai_api_messages() -> [system, user].
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_prompt}]


def build_single_judge_messages(question: Mapping, answers: Mapping | Sequence[str],
                                judge_prompts: Mapping[str, dict], turn: int,
                                ref_answers: Any = None) -> list[dict]:
    """The [system, user] messages FastChat's run_judge_single sends to GPT-4 for one turn.

    ``answers``: the model's answer record (or its list of turn strings). ``ref_answers``: the
    reference record, its turns, or {question_id: record}; needed for math/reasoning/coding.
    """
    _check_turn(turn)
    q_turns = _turns_of(question.get("turns"), f"question {question.get('question_id')}")
    if len(q_turns) < turn:
        raise ValueError(f"question {question.get('question_id')}: needs {turn} turn(s)")
    a_turns = _turns_of(answers, f"answer to question {question.get('question_id')}")
    if len(a_turns) < turn:
        raise ValueError(f"answer to question {question.get('question_id')} has {len(a_turns)} turn(s), "
                         f"turn {turn} requested")
    ref_based, kwargs = _ref_kwargs(question, ref_answers)
    record = _prompt_record(judge_prompts, SINGLE_PROMPTS[(ref_based, turn)], "single")
    if turn == 2:
        user_prompt = record["prompt_template"].format(
            question_1=q_turns[0], question_2=q_turns[1],
            answer_1=a_turns[0], answer_2=a_turns[1], **kwargs)
    else:
        user_prompt = record["prompt_template"].format(question=q_turns[0], answer=a_turns[0], **kwargs)
    return _messages(record["system_prompt"], user_prompt)


def build_pair_judge_messages(question: Mapping, answer_a: Mapping | Sequence[str],
                              answer_b: Mapping | Sequence[str], judge_prompts: Mapping[str, dict],
                              turn: int, ref_answers: Any = None) -> list[dict]:
    """The [system, user] messages of FastChat's run_judge_pair (GPT-4 judge) for one game:
    assistant A = ``answer_a``, assistant B = ``answer_b``. Play both orders (see pair_outcome)."""
    _check_turn(turn)
    q_turns = _turns_of(question.get("turns"), f"question {question.get('question_id')}")
    if len(q_turns) < turn:
        raise ValueError(f"question {question.get('question_id')}: needs {turn} turn(s)")
    a_turns = _turns_of(answer_a, "answer A")
    b_turns = _turns_of(answer_b, "answer B")
    if len(a_turns) < turn or len(b_turns) < turn:
        raise ValueError(f"question {question.get('question_id')}: both answers need {turn} turn(s)")
    ref_based, kwargs = _ref_kwargs(question, ref_answers)
    record = _prompt_record(judge_prompts, PAIR_PROMPTS[(ref_based, turn)], "pairwise")
    if turn == 2:
        user_prompt = record["prompt_template"].format(
            question_1=q_turns[0], question_2=q_turns[1],
            answer_a_1=a_turns[0], answer_b_1=b_turns[0],
            answer_a_2=a_turns[1], answer_b_2=b_turns[1], **kwargs)
    else:
        user_prompt = record["prompt_template"].format(
            question=q_turns[0], answer_a=a_turns[0], answer_b=b_turns[0], **kwargs)
    return _messages(record["system_prompt"], user_prompt)


def single_judge_requests(questions: Sequence[Mapping], answers: Mapping[int, Mapping],
                          judge_prompts: Mapping[str, dict], ref_answers: Mapping[int, Mapping] | None = None,
                          turns: Sequence[int] = (1, 2)) -> list[dict]:
    """All single-answer judge requests for one model: one dict per (question, turn) with
    question_id, category, turn, prompt_name and messages (gen_judgment.py's matches)."""
    requests = []
    for q in questions:
        qid = q["question_id"]
        if qid not in answers:
            raise ValueError(f"missing model answer to question {qid}")
        for turn in turns:
            messages = build_single_judge_messages(q, answers[qid], judge_prompts, turn, ref_answers)
            requests.append({"question_id": qid, "category": q["category"], "turn": turn,
                             "prompt_name": single_prompt_name(q["category"], turn),
                             "messages": messages})
    return requests


# --------------------------------------------------------------------------------------------
# Inverse extractors (for an offline stand-in judge that only sees the messages)
# --------------------------------------------------------------------------------------------

# Structural layout of FastChat's templates (the instruction prose is ignored). Each is a suffix
# of the corresponding template in judge_prompts.jsonl (checked by the tests).
def _conv(label: str, answer_1: str, answer_2: str) -> str:
    """Layout of one assistant's two-turn conversation block."""
    return (f"<|The Start of Assistant {label}'s Conversation with User|>\n\n### User:\n{{question_1}}\n\n"
            f"### Assistant {label}:\n{{{answer_1}}}\n\n### User:\n{{question_2}}\n\n"
            f"### Assistant {label}:\n{{{answer_2}}}\n\n"
            f"<|The End of Assistant {label}'s Conversation with User|>")


_REF_CONV = ("<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n"
             "{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n"
             "<|The End of Reference Answer|>\n\n\n")
_REF_BLOCK = "[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n"
_SINGLE_ANSWER = "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
_PAIR_ANSWERS = ("[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
                 "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]")
#: prompt name -> layout; reference-guided layouts are tried first.
LAYOUTS: dict[str, str] = {
    "single-math-v1": "[Question]\n{question}\n\n" + _REF_BLOCK + _SINGLE_ANSWER,
    "single-v1": "[Question]\n{question}\n\n" + _SINGLE_ANSWER,
    "single-math-v1-multi-turn": _REF_CONV + _conv("A", "answer_1", "answer_2"),
    "single-v1-multi-turn": _conv("A", "answer_1", "answer_2"),
    "pair-math-v1": "[User Question]\n{question}\n\n" + _REF_BLOCK + _PAIR_ANSWERS,
    "pair-v2": "[User Question]\n{question}\n\n" + _PAIR_ANSWERS,
    "pair-math-v1-multi-turn": (_REF_CONV + _conv("A", "answer_a_1", "answer_a_2") + "\n\n\n"
                                + _conv("B", "answer_b_1", "answer_b_2")),
    "pair-v2-multi-turn": _conv("A", "answer_a_1", "answer_a_2") + "\n\n\n" + _conv("B", "answer_b_1", "answer_b_2"),
}
# single-v1 / single-math-v1 put the grading instructions before "[Question]" in the user prompt.
_PREFIX_ALLOWED = {"single-v1", "single-math-v1"}
_FIELD = re.compile(r"\{(\w+)\}")


def _layout_regex(layout: str) -> re.Pattern:
    parts, seen, pos = [], set(), 0
    for m in _FIELD.finditer(layout):
        parts.append(re.escape(layout[pos:m.start()]))
        name = m.group(1)
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
        seen.add(name)
        pos = m.end()
    parts.append(re.escape(layout[pos:]))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


_LAYOUT_RE = {name: _layout_regex(layout) for name, layout in LAYOUTS.items()}


def _user_content(messages: Sequence[Mapping]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    if len(users) != 1 or not isinstance(users[0].get("content"), str):
        raise ValueError("expected exactly one user message with text content")
    return users[0]["content"]


def _match_layout(messages: Sequence[Mapping], kind: str) -> tuple[str, dict]:
    text = _user_content(messages)
    for name, pattern in _LAYOUT_RE.items():
        if not name.startswith(kind):
            continue
        m = pattern.search(text)
        if m and (m.start() == 0 or name in _PREFIX_ALLOWED):
            return name, m.groupdict()
    raise ValueError(f"messages do not follow any FastChat {kind} judge prompt layout")


def extract_single(messages: Sequence[Mapping]) -> dict:
    """Inverse of build_single_judge_messages: {kind: "single", prompt_name, turn, reference_based,
    questions, answers, references} recovered from the messages."""
    name, g = _match_layout(messages, "single")
    turn = 2 if name.endswith("multi-turn") else 1
    if turn == 1:
        questions, answers = [g["question"]], [g["answer"]]
    else:
        questions, answers = [g["question_1"], g["question_2"]], [g["answer_1"], g["answer_2"]]
    refs = [g[k] for k in ("ref_answer_1", "ref_answer_2") if k in g]
    return {"kind": "single", "prompt_name": name, "turn": turn, "reference_based": bool(refs),
            "questions": questions, "answers": answers, "references": refs}


def extract_pair(messages: Sequence[Mapping]) -> dict:
    """Inverse of build_pair_judge_messages: {kind: "pair", prompt_name, turn, reference_based,
    questions, answers_a, answers_b, references}."""
    name, g = _match_layout(messages, "pair")
    turn = 2 if name.endswith("multi-turn") else 1
    if turn == 1:
        questions, answers_a, answers_b = [g["question"]], [g["answer_a"]], [g["answer_b"]]
    else:
        questions = [g["question_1"], g["question_2"]]
        answers_a, answers_b = [g["answer_a_1"], g["answer_a_2"]], [g["answer_b_1"], g["answer_b_2"]]
    refs = [g[k] for k in ("ref_answer_1", "ref_answer_2") if k in g]
    return {"kind": "pair", "prompt_name": name, "turn": turn, "reference_based": bool(refs),
            "questions": questions, "answers_a": answers_a, "answers_b": answers_b, "references": refs}


# --------------------------------------------------------------------------------------------
# Parsing judge replies
# --------------------------------------------------------------------------------------------

def parse_single_rating(text: str) -> float:
    """FastChat's rule: first ``[[x]]`` (re.search), else first ``[x]``, value via
    ast.literal_eval; -1 when neither matches.

    One reply costs at most one score, never the whole model's judgments: where FastChat's
    ``ast.literal_eval`` would raise, an ASCII number the regex matched ("07", FastChat crashes on
    the leading zero) is read as a float (7.0), and anything else (non-ASCII digits such as "٧",
    which ``\\d`` matches) is -1, a parse failure that :func:`scores` counts in ``n_failed``."""
    if not isinstance(text, str):
        return -1.0
    match = re.search(ONE_SCORE_PATTERN, text)
    if not match:
        match = re.search(ONE_SCORE_PATTERN_BACKUP, text)
    if not match:
        return -1.0
    raw = match.groups()[0]
    try:
        value = float(ast.literal_eval(raw))
    except Exception:  # noqa: BLE001 - SyntaxError ("07", "٧"), OverflowError, ValueError (huge ints)
        if not re.fullmatch(r"[0-9]+\.?[0-9]*", raw):
            return -1.0
        value = float(raw)
    return value if math.isfinite(value) else -1.0


def usable_rating(text: str) -> float:
    """:func:`parse_single_rating` as a judge parser: a reply without a rating (-1) raises
    ValueError, so the judge records it as a failure and asks again instead of caching it as final."""
    score = parse_single_rating(text)
    if score == -1:
        raise ValueError("no [[rating]] in the judgment")
    return score


def usable_verdict(text: str) -> str:
    """:func:`parse_pair_verdict` as a judge parser: no [[A]]/[[B]]/[[C]] raises ValueError."""
    verdict = parse_pair_verdict(text)
    if verdict == "error":
        raise ValueError("no [[A]], [[B]] or [[C]] verdict in the judgment")
    return verdict


def parse_pair_verdict(text: str) -> str:
    """FastChat's ``[[A]]`` output format: "A" if "[[A]]" occurs anywhere, elif "[[B]]" -> "B",
    elif "[[C]]" -> "tie", else "error" (substring tests in that order, not first occurrence)."""
    if "[[A]]" in text:
        return "A"
    if "[[B]]" in text:
        return "B"
    if "[[C]]" in text:
        return "tie"
    return "error"


def pair_outcome(verdict_ab: str, verdict_ba: str) -> str:
    """Combine the two games of play_a_match_pair as show_result.py does.

    ``verdict_ab``: game 1 verdict with A = model_1; ``verdict_ba``: game 2 with A = model_2.
    Returns "model_1", "model_2", "tie" (a tie or the two games disagree) or "error" (either game
    unparsed: show_result drops the row)."""
    for v in (verdict_ab, verdict_ba):
        if v not in ("A", "B", "tie", "error"):
            raise ValueError(f"unknown verdict {v!r}")
    g1 = {"A": "model_1", "B": "model_2"}.get(verdict_ab, verdict_ab)
    g2 = {"A": "model_2", "B": "model_1"}.get(verdict_ba, verdict_ba)
    if g1 == "error" or g2 == "error":
        return "error"
    if g1 == "tie" or g1 != g2:
        return "tie"
    return g1


def pairwise_summary(outcomes: Iterable[str]) -> dict:
    """Win/loss/tie counts of model_1 and show_result's win_rate, loss_rate and
    win_rate_adjusted (tie = half a win); "error" outcomes are dropped and counted."""
    outcomes = list(outcomes)
    win = outcomes.count("model_1")
    loss = outcomes.count("model_2")
    tie = outcomes.count("tie")
    n_error = outcomes.count("error")
    if win + loss + tie + n_error != len(outcomes):
        raise ValueError("outcomes must be 'model_1', 'model_2', 'tie' or 'error'")
    n = win + loss + tie
    if n == 0:
        raise ValueError("no valid pairwise outcomes")
    return {"win": win, "loss": loss, "tie": tie, "n": n, "n_error": n_error,
            "win_rate": win / n, "loss_rate": loss / n, "win_rate_adjusted": (win + 0.5 * tie) / n}


# --------------------------------------------------------------------------------------------
# Judgment records and aggregation
# --------------------------------------------------------------------------------------------

def judgment_record(question_id: int, model: str, judge_model: str, prompt_name: str,
                    user_prompt: str, judgment: str, score: float, turn: int,
                    tstamp: float | None = None) -> dict:
    """One row of FastChat's single-judgment file (``model_judgment/gpt-4_single.jsonl``)."""
    _check_turn(turn)
    if not _is_int(question_id):
        raise ValueError(f"question_id should be int, got {question_id!r}")
    return {
        "question_id": question_id,
        "model": model,
        "judge": [judge_model, prompt_name],
        "user_prompt": user_prompt,
        "judgment": judgment,
        "score": score,
        "turn": turn,
        "tstamp": time.time() if tstamp is None else float(tstamp),
    }


def judgments_from_replies(requests: Sequence[Mapping], replies: Sequence[str], model: str,
                           judge_model: str = JUDGE_MODEL, tstamp: float | None = None) -> list[dict]:
    """Judgment records from single_judge_requests and the judge's reply texts (same order)."""
    if len(requests) != len(replies):
        raise ValueError(f"{len(requests)} requests but {len(replies)} replies")
    records = []
    for i, (req, reply) in enumerate(zip(requests, replies)):
        if not isinstance(reply, str):
            raise TypeError(f"reply {i} should be str, got {type(reply).__name__}")
        records.append(judgment_record(req["question_id"], model, judge_model, req["prompt_name"],
                                       _user_content(req["messages"]), reply,
                                       parse_single_rating(reply), req["turn"], tstamp))
    return records


def _check_judgment(row: dict, where: str) -> None:
    _require_int(row, "question_id", where)
    require(row, "model", str, where)
    judge = require(row, "judge", (list, tuple), where)
    if len(judge) != 2 or not all(isinstance(x, str) for x in judge):
        raise DataError(f"{where}: field 'judge' should be [judge_model, prompt_name]")
    score = require(row, "score", (int, float), where)
    if isinstance(score, bool) or not math.isfinite(score):
        raise DataError(f"{where}: field 'score' should be a finite number, got {score!r}")
    turn = _require_int(row, "turn", where)
    if turn not in (1, 2):
        raise DataError(f"{where}: field 'turn' should be 1 or 2, got {turn}")


def write_judgments(path: str | Path, records: Iterable[dict]) -> Path:
    """Write single-judgment records as jsonl sorted by (model, question_id, turn) (atomic)."""
    records = list(records)
    for i, row in enumerate(records):
        _check_judgment(row, f"judgment record {i}")
    return write_jsonl(path, sorted(records, key=lambda r: (r["model"], r["question_id"], r["turn"])))


def load_judgments(path: str | Path) -> list[dict]:
    """Load a single-judgment jsonl file, checking every row."""
    path = Path(path)
    rows = []
    for lineno, row in iter_jsonl_numbered(path):
        _check_judgment(row, f"{path}:{lineno}")
        rows.append(row)
    return rows


def bootstrap_ci(values_by_question: Mapping[Any, Sequence[float] | float], n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of the pooled mean, resampling questions with replacement
    (each question brings all its values, e.g. both turns)."""
    keys = sorted(values_by_question, key=repr)
    groups = [np.atleast_1d(np.asarray(values_by_question[k], dtype=float)) for k in keys]
    groups = [g for g in groups if g.size]
    if not groups:
        raise ValueError("bootstrap_ci: no values")
    sums = np.array([g.sum() for g in groups])
    counts = np.array([g.size for g in groups], dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def scores(judgments: Iterable[Mapping], questions: Sequence[Mapping] | Mapping[int, Mapping],
           model: str | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """MT-Bench scores of one model as show_result.py computes them, plus categories and a CI.

    Judgments with score == -1 are dropped (``n_failed``). ``overall`` = mean of all kept turn
    judgments (both turns), ``turn1``/``turn2`` = per-turn means, ``categories`` = per-category
    means over both turns, ``ci95`` = bootstrap over questions.
    """
    if isinstance(questions, Mapping):
        category_of = {int(k): q["category"] for k, q in questions.items()}
    else:
        category_of = {q["question_id"]: q["category"] for q in questions}
    rows = list(judgments)
    for i, row in enumerate(rows):
        _check_judgment(dict(row), f"judgment {i}")
    models = sorted({r["model"] for r in rows})
    if model is None:
        if len(models) != 1:
            raise ValueError(f"judgments hold models {models}: pass model=")
        model = models[0]
    rows = [r for r in rows if r["model"] == model]
    if not rows:
        raise ValueError(f"no judgments for model {model!r}")
    seen: set = set()
    for r in rows:
        key = (r["question_id"], r["turn"])
        if key in seen:
            raise DataError(f"duplicate judgment for model {model!r}, question {key[0]}, turn {key[1]}")
        seen.add(key)
        if r["question_id"] not in category_of:
            raise DataError(f"judgment for unknown question_id {r['question_id']}")
    kept = [r for r in rows if r["score"] != -1]
    n_failed = len(rows) - len(kept)
    if not kept:
        raise ValueError(f"all {n_failed} judgments of {model!r} failed to parse")

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    by_cat: dict[str, list[float]] = {}
    by_question: dict[int, list[float]] = {}
    for r in kept:
        by_cat.setdefault(category_of[r["question_id"]], []).append(float(r["score"]))
        by_question.setdefault(r["question_id"], []).append(float(r["score"]))
    ordered = [c for c in CATEGORIES if c in by_cat] + sorted(c for c in by_cat if c not in CATEGORIES)
    low, high = bootstrap_ci(by_question, n_boot=n_boot, seed=seed)
    return {
        "model": model,
        "overall": mean([float(r["score"]) for r in kept]),
        "turn1": mean([float(r["score"]) for r in kept if r["turn"] == 1]),
        "turn2": mean([float(r["score"]) for r in kept if r["turn"] == 2]),
        "categories": {c: mean(by_cat[c]) for c in ordered},
        "n": len(kept),
        "n_turn1": sum(r["turn"] == 1 for r in kept),
        "n_turn2": sum(r["turn"] == 2 for r in kept),
        "n_failed": n_failed,
        "n_questions": len(by_question),
        "ci95": [low, high],
    }


# --------------------------------------------------------------------------------------------
# Figure 1: per-category radar plot
# --------------------------------------------------------------------------------------------

def _category_label(category: str) -> str:
    return "STEM" if category == "stem" else category.capitalize()


def radar_plot(category_scores: Mapping[str, Mapping[str, float]], path: str | Path,
               title: str | None = None, categories: Sequence[str] | None = None,
               max_score: float = 10.0):
    """Radar chart of per-category MT-Bench scores, one polygon per model (paper Figure 1 style).
    Saves a PNG atomically to ``path`` and returns the matplotlib Figure (caller closes it)."""
    import matplotlib.pyplot as plt

    if not category_scores:
        raise ValueError("radar_plot: no models")
    present = set().union(*(set(s) for s in category_scores.values()))
    if categories is None:
        categories = [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
    categories = list(categories)
    if len(categories) < 3:
        raise ValueError(f"radar_plot needs at least 3 categories, got {categories}")
    for model, cat_scores in category_scores.items():
        missing = [c for c in categories if c not in cat_scores or cat_scores[c] is None]
        if missing:
            raise ValueError(f"radar_plot: model {model!r} has no score for {missing}")
    angles = np.linspace(0, 2 * np.pi, len(categories), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"projection": "polar"})
    ax.set_theta_offset(np.pi / 2)
    ax.set_theta_direction(-1)
    for model, cat_scores in category_scores.items():
        values = [float(cat_scores[c]) for c in categories]
        ax.plot(angles + angles[:1], values + values[:1], linewidth=1.5, label=model)
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.1)
    ax.set_xticks(angles)
    ax.set_xticklabels([_category_label(c) for c in categories])
    ax.set_ylim(0, max_score)
    ax.set_rgrids(np.linspace(max_score / 5, max_score, 5), angle=0, fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.05), fontsize=8)  # beside the plot, never over it
    if title:
        ax.set_title(title, pad=20)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return fig
