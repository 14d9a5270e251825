"""Stage `curate`: UltraChat (Zephyr-7B-α data) -> ultrachat_200k-style data (Zephyr-7B-β data).

The paper's β model differs from α only in its SFT data: the H4 team truecased UltraChat (about
5% of dialogues had lower-cased sentence starts, "Hello. how are you?") and removed dialogues
whose assistant says "I do not have emotions" / "I don't have opinions" even to factual prompts.
This module does that, on real UltraChat and on a toy corpus in the same schema:

* read raw UltraChat (``{"id", "data": [user, assistant, ...]}``) from a local .jsonl or the hub
  (``stingning/ultrachat``) and turn rows into messages (``{"role", "content"}`` lists);
* :func:`curate`: validate (malformed, too short, empty turn, non-alternating roles), trim a
  trailing unanswered user turn, drop boilerplate dialogues, truecase, drop exact duplicates;
  every dropped dialogue is counted by reason (boilerplate also per phrase) in a report;
* write rows in the HuggingFaceH4/ultrachat_200k schema (``prompt``, ``prompt_id`` =
  sha256 hex of the UTF-8 prompt, ``messages``) and split them into train_sft / test_sft /
  train_gen / test_gen deterministically;
* defect-rate metrics (:func:`has_boilerplate`, :func:`lowercase_sentence_starts`,
  :func:`defect_rates`) to measure the same defects in model answers (the α vs β story).

Run it on a raw UltraChat file (writes ``OUT/beta`` as a DatasetDict and ``OUT/report.json``)::

    python -m zephyr_lib.curate --raw ultrachat.jsonl --out runs/curate_manual [--limit 10000]
    python -m zephyr_lib.curate --raw ultrachat.jsonl --out OUT --alpha   # no cleaning (α data)

Decisions (see also the functions' docstrings):

* A raw dialogue ending with a user turn is trimmed to end with the assistant (counted as
  ``n_trimmed``), not dropped: ultrachat_200k dialogues all end with an assistant turn.
* Filters run in this order and a dialogue is counted under the first reason that drops it:
  malformed, too_short, empty_turn, non_alternating, boilerplate, duplicate. Duplicates are
  compared after truecasing (so casing-only variants collapse); the first one is kept.
* The *_gen splits hold the same rows as the *_sft splits of the same side with the final
  assistant turn removed (``messages`` ends with the user turn to answer), as H4's
  ultrafeedback_binarized ``create_dataset.py`` builds them. ultrachat_200k's own gen splits are
  larger (256,032 / 28,304 vs 207,865 / 23,110 rows) and H4 never published how they were built.
* Train/test is split by prompt (all dialogues sharing a first user turn land on the same side),
  with the prompt ids sorted and then shuffled by ``seed``: the split does not depend on row
  order, and a test prompt never appears in training.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Sequence

from .io import DataError, RowAudit, iter_jsonl_numbered, require, write_json

RAW_HUB_ID = "stingning/ultrachat"
H4_HUB_ID = "HuggingFaceH4/ultrachat_200k"
ROLES = ("system", "user", "assistant")
SPLITS = ("train_sft", "test_sft", "train_gen", "test_gen")
DROP_REASONS = ("malformed", "too_short", "empty_turn", "non_alternating", "boilerplate", "duplicate")
# The switch of :func:`curate` behind each drop reason (the malformed/short/empty/alternation
# checks always run).
FILTER_OF = {"boilerplate": "filter_boilerplate", "duplicate": "dedup"}


class EmptyDataError(DataError):
    """A dataset would be stored empty; the message names the source and what emptied it."""

# Phrases marking "as an AI" boilerplate in ASSISTANT turns. Matched case-insensitively, on word
# boundaries, with straight or curly apostrophes and any run of whitespace. The first four are
# the paper's / dataset card's examples; the rest are the usual ChatGPT-distilled prefaces.
# Known false positive of the bare "As an AI": "as an AI researcher, ..." (configurable list).
DEFAULT_PHRASES: tuple[str, ...] = (
    "I do not have emotions", "I don't have emotions",
    "I do not have opinions", "I don't have opinions",
    "I don't have personal opinions", "I do not have personal opinions",
    "I don't have personal experiences", "I do not have personal experiences",
    "I don't have personal preferences", "I do not have personal preferences",
    "I don't have personal beliefs", "I do not have personal beliefs",
    "I don't have feelings", "I do not have feelings",
    "I don't have the ability to", "I do not have the ability to",
    "As an AI", "as an AI language model", "as an AI assistant", "as a language model",
    "I'm just an AI", "I am just an AI", "I'm an AI", "I am an AI",
    "I'm not capable of", "I am not capable of",
    "I cannot browse the internet", "I don't have access to real-time",
    "my training data", "my knowledge cutoff",
)

# Tokens whose lower case is intentional: never capitalised at a sentence start.
DEFAULT_ALLOW: frozenset[str] = frozenset({
    "iPhone", "iPad", "iPod", "iOS", "iMac", "iCloud", "iTunes", "macOS", "watchOS", "tvOS",
    "eBay", "eBook", "eCommerce", "e.g.", "i.e.", "etc.", "vs.", "vs", "cf.",
    "et al.", "pH", "mRNA", "tRNA", "rRNA", "mAb", "kg", "km", "cm", "mm", "ml", "mg", "kWh",
    "npm", "pip", "git", "numpy", "pandas", "scipy", "matplotlib", "sklearn", "jquery", "conda",
    "bash", "sudo", "ls", "cd", "grep", "http", "https", "www",
})

# Tokens ending with "." that do not end a sentence (lower-cased comparison).
ABBREVIATIONS: frozenset[str] = frozenset({
    "e.g.", "i.e.", "etc.", "vs.", "cf.", "al.", "approx.", "ca.", "no.", "nos.", "fig.", "figs.",
    "mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "mt.", "ft.", "gen.", "gov.", "sen.",
    "rep.", "lt.", "col.", "capt.", "sgt.", "rev.", "hon.", "a.m.", "p.m.", "u.s.", "u.k.", "e.u.",
    "jan.", "feb.", "mar.", "apr.", "jun.", "jul.", "aug.", "sep.", "sept.", "oct.", "nov.", "dec.",
    "inc.", "ltd.", "co.", "corp.", "dept.", "est.", "vol.", "pp.", "ed.", "eds.", "op.", "ibid.",
})

_OPENERS = "\"'([{“‘*_"
_CLOSERS = "\"')]}”’*_"
# Protected spans: fenced code (an unclosed fence runs to the end), inline code, URLs (without
# trailing punctuation, which stays prose), e-mail addresses.
_PROTECTED = re.compile(
    r"```.*?(?:```|\Z)"
    r"|`[^`\n]+`"
    r"|(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]"
    r"|\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b",
    re.S,
)
# Necessary condition for any fix (a fast path: most texts need none).
_MAYBE_FIX = re.compile(r"(?:^|[.?!][\"')\]}”’*_]*\s|\n)\s*[\"'(\[{“‘*_]*[^\W\d_A-Z]|(?<![^\W_])i(?![^\W_])")
# Whitespace that ends a paragraph: a blank line (a line holding only spaces/tabs counts) ...
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
# ... unless the next line is indented like a Markdown code block (4 spaces or a tab).
_INDENTED = re.compile(r"\n(?: {4,}|\t)[^\n]*\Z")
_LONE_I = re.compile(r"i(?:['’](?:m|ve|d|ll))?")
_CODE_NEXT = {"=", "+=", "-=", "*=", "/=", "==", "!=", "<", ">", "<=", ">=", "in", "+", "-", "*", "/", "%"}
_CODE_PREV = {"for", "let", "var", "int", "const", "foreach"}
_LIST_MARKER = re.compile(r"(?:\d{1,3}|[a-zA-Z]|[ivxlcIVXLC]{1,5})[.)]|\(\w{1,5}\)|[-*+•]")


# ----------------------------------------------------------------------------------------------
# Raw UltraChat <-> messages
# ----------------------------------------------------------------------------------------------

def from_raw_ultrachat(row: dict, where: str) -> list[dict]:
    """Raw UltraChat row ``{"id", "data": [user, assistant, ...]}`` -> messages with roles.

    Raises DataError naming ``where`` and the field if ``data`` is missing or not a list of str.
    Counts and empty turns are not checked here (:func:`curate` counts those as drops).
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with 'id' and 'data', got {type(row).__name__}")
    data = require(row, "data", list, where)
    for i, turn in enumerate(data):
        if not isinstance(turn, str):
            raise DataError(f"{where}: field 'data[{i}]' should be str, got {type(turn).__name__}")
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(data)]


def to_raw_ultrachat(id: str, messages: Sequence[dict]) -> dict:
    """Messages -> a raw UltraChat row (system turns are dropped: the raw schema has none)."""
    return {"id": str(id), "data": [m["content"] for m in messages if m["role"] != "system"]}


def _is_hub_id(source: str) -> bool:
    """"owner/name" that is not a local path (nor looks like a file or a folder under one)."""
    return (re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None and not Path(source).exists()
            and not Path(source).parent.is_dir() and Path(source).suffix not in (".jsonl", ".json", ".parquet"))


def load_raw_ultrachat(source: str | os.PathLike, *, revision: str | None = None,
                       limit: int = 0) -> Iterator[dict]:
    """Yield raw UltraChat rows from a local .jsonl (or a hub id such as ``stingning/ultrachat``).

    Local rows must be JSON objects with ``id`` (str) and ``data`` (list); anything else raises
    DataError naming the file, line and field. ``limit`` > 0 stops after that many rows.
    """
    src = str(source)
    if _is_hub_id(src):
        import datasets

        ds = datasets.load_dataset(src, split="train", revision=revision, streaming=True)
        for i, row in enumerate(ds):
            if limit and i >= limit:
                return
            where = f"{src}[{i}]"
            require(row, "id", (str, int), where)
            require(row, "data", list, where)
            yield {"id": str(row["id"]), "data": row["data"]}
        return
    path = Path(src)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a raw UltraChat .jsonl or the hub id {RAW_HUB_ID})")
    n = -1
    for n, (lineno, row) in enumerate(iter_jsonl_numbered(path)):
        if limit and n >= limit:
            return
        require(row, "id", str, f"{path}:{lineno}")
        require(row, "data", list, f"{path}:{lineno}")
        yield row
    if n < 0:
        raise EmptyDataError(f"{path}: the raw UltraChat file has no rows (it is empty or only blank lines)")


# ----------------------------------------------------------------------------------------------
# Boilerplate and truecasing
# ----------------------------------------------------------------------------------------------

def _phrase_regex(phrase: str) -> re.Pattern:
    parts = [re.escape(w).replace("'", "['’]") for w in phrase.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)", re.I)


_REGEX_CACHE: dict[tuple[str, ...], list[tuple[str, re.Pattern]]] = {}


def _compiled(phrases: Sequence[str]) -> list[tuple[str, re.Pattern]]:
    key = tuple(phrases)
    if key not in _REGEX_CACHE:
        _REGEX_CACHE[key] = [(p, _phrase_regex(p)) for p in key]
    return _REGEX_CACHE[key]


def boilerplate_hits(text: str, phrases: Sequence[str] = DEFAULT_PHRASES) -> list[str]:
    """The phrases (from ``phrases``) that occur in ``text``, case-insensitively, on word boundaries."""
    return [p for p, rx in _compiled(phrases) if rx.search(text)]


def has_boilerplate(text: str, phrases: Sequence[str] = DEFAULT_PHRASES) -> bool:
    return any(rx.search(text) for _, rx in _compiled(phrases))


def _segments(text: str) -> list[tuple[bool, str]]:
    """Split text into (protected, piece) segments; protected = code, URL or e-mail."""
    out, pos = [], 0
    for m in _PROTECTED.finditer(text):
        if m.start() > pos:
            out.append((False, text[pos:m.start()]))
        out.append((True, m.group()))
        pos = m.end()
    if pos < len(text):
        out.append((False, text[pos:]))
    return out


def _capitalisable(token: str, allow: Collection[str]) -> bool:
    """Is ``token`` (a chunk at a sentence start) an ordinary word starting in lower case?"""
    core = token.lstrip(_OPENERS)
    if not core or not core[0].isalpha() or not core[0].islower() or re.fullmatch(r"\(?\w{1,5}\)\W*", token):
        return False                                          # "(i)", "a)": enumerators
    bare = re.sub(r"['’]s$", "", core.rstrip(_CLOSERS + ".,;:!?"))
    if core in allow or bare in allow or core.rstrip(_CLOSERS + ",;:!?") in allow:
        return False
    if any(c.isupper() for c in bare[1:]):                   # iPhone, eBay, mRNA, pH
        return False
    if re.search(r"[\d_/\\=()\[\]{}<>@#$%^&|~+]", bare):      # x_1, len(x), a/b, v2
        return False
    return re.search(r"\w\.\w", bare) is None                 # foo.py, numpy.array, e.g


def _ends_sentence(token: str, line_start: bool) -> bool:
    """Does this whitespace-delimited chunk end a sentence (it is followed by whitespace)?"""
    t = token.rstrip(_CLOSERS)
    if not t or t.endswith("...") or t.endswith("…"):
        return False
    if t[-1] in "?!":
        return True
    if t[-1] != ".":
        return False
    core = t.lstrip(_OPENERS).lower()
    if core in ABBREVIATIONS:                                  # e.g. / Mr. / Dr. / etc.
        return False
    if re.fullmatch(r"(?:[a-z]\.)+", core):                   # initials "J.", "U.S."
        return False
    return not (line_start and _LIST_MARKER.fullmatch(token))  # "1. first item"


def _truecase(text: str, allow: Collection[str]) -> tuple[str, int, int]:
    """Return (new text, sentence-start fixes, lone-"i" fixes)."""
    if not _MAYBE_FIX.search(text):
        return text, 0, 0
    n_start = n_i = 0
    pending, line_start, prev = True, True, ""   # the start of the text is a sentence start
    after_block = False   # just after a fenced code block, a URL or an e-mail address
    out: list[str] = []
    for protected, seg in _segments(text):
        if protected:                            # code / URL / e-mail: kept, consumes a start
            out.append(seg)
            pending, line_start, prev = False, False, ""
            after_block = not seg.startswith("`") or seg.startswith("```")  # not inline code
            continue
        pieces = [p for p in re.split(r"(\s+)", seg) if p]
        for k, piece in enumerate(pieces):
            if piece.isspace():
                out.append(piece)
                line_start = line_start or "\n" in piece
                # A new sentence: after a blank line (a paragraph), or on the line after a code
                # block or a URL that ends its line. Not into an indented (code) line.
                if (_BLANK_LINE.search(piece) or (after_block and "\n" in piece)) and not _INDENTED.search(piece):
                    pending = True
                after_block = False
                continue
            after_block = False
            tok, lead = piece, len(piece) - len(piece.lstrip(_OPENERS))
            marker = line_start and _LIST_MARKER.fullmatch(piece) is not None
            if pending and not marker and _capitalisable(piece, allow):
                tok = tok[:lead] + tok[lead].upper() + tok[lead + 1:]
                n_start += 1
            elif not marker and not piece.endswith(")") and _LONE_I.fullmatch(
                    piece[lead:].rstrip(_CLOSERS + ".,;:!?")):
                nxt = pieces[k + 2] if k + 2 < len(pieces) else ""
                if prev.lower() not in _CODE_PREV and nxt not in _CODE_NEXT:
                    tok = tok[:lead] + "I" + tok[lead + 1:]
                    n_i += 1
            pending = k + 1 < len(pieces) and _ends_sentence(piece, line_start)
            out.append(tok)
            prev, line_start = piece, False
    return "".join(out), n_start, n_i


def truecase(text: str, allow: Collection[str] = DEFAULT_ALLOW) -> tuple[str, int]:
    """Capitalise lower-case sentence starts and a lone "i" ("i'm", "i've", "i'd", "i'll").

    A sentence starts at the start of the text and after ``.``, ``?`` or ``!`` (optionally closed
    by quotes/brackets) followed by whitespace. Left alone: fenced and inline code, URLs, e-mails,
    numbers ("3.5 million"), tokens in ``allow`` ("iPhone", "e.g.", "pH", "numpy", ...), tokens
    with internal capitals or that look like identifiers/filenames ("x_1", "foo.py", "len(x)"),
    list markers at a line start ("1. first item" stays as it is: list items are not sentences),
    and the word after an abbreviation ("e.g.", "Mr.", "Dr.", "etc.") or initials ("U.S.").
    A single newline alone does not start a sentence (wrapped text), but a blank line does
    (a new paragraph), and so does the line after a fenced code block or after a URL or e-mail
    address that ends its line ("```…```\nthe function…" -> "The function…"), unless that line is
    indented like code. Returns (new text, number of fixes).
    """
    new, n_start, n_i = _truecase(text, allow)
    return new, n_start + n_i


def lowercase_sentence_starts(text: str, allow: Collection[str] = DEFAULT_ALLOW) -> int:
    """Number of sentence starts in lower case that :func:`truecase` would fix."""
    return _truecase(text, allow)[1]


def defect_rates(texts: Iterable[str], phrases: Sequence[str] = DEFAULT_PHRASES,
                 allow: Collection[str] = DEFAULT_ALLOW) -> dict:
    """Fractions of texts with boilerplate and with >= 1 lower-cased sentence start."""
    n = n_bp = n_lc = 0
    for t in texts:
        n += 1
        n_bp += has_boilerplate(t, phrases)
        n_lc += lowercase_sentence_starts(t, allow) > 0
    return {"boilerplate_rate": n_bp / n if n else 0.0, "lowercase_rate": n_lc / n if n else 0.0, "n": n}


def _snippet(before: str, after: str, width: int = 50) -> tuple[str, str]:
    """A window around the first difference (for a before -> after table)."""
    i = next((k for k, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
    lo = max(0, i - width)
    cut = lambda s: ("…" if lo else "") + s[lo:i + width].replace("\n", " ") + ("…" if i + width < len(s) else "")
    return cut(before), cut(after)


# ----------------------------------------------------------------------------------------------
# Curation
# ----------------------------------------------------------------------------------------------

def _to_messages(item: Any, where: str) -> list[dict]:
    """A message list, a raw UltraChat row or an ultrachat_200k row -> fresh message dicts."""
    if isinstance(item, dict) and "data" in item:
        return from_raw_ultrachat(item, where)
    if isinstance(item, dict) and "messages" in item:
        item = item["messages"]
    if not isinstance(item, (list, tuple)):
        raise DataError(f"{where}: expected a list of messages, a raw UltraChat row or an "
                        f"ultrachat_200k row, got {type(item).__name__}")
    out = []
    for i, m in enumerate(item):
        if not isinstance(m, dict):
            raise DataError(f"{where}: messages[{i}] should be an object, got {type(m).__name__}")
        role = require(m, "role", str, f"{where}: messages[{i}]")
        content = require(m, "content", str, f"{where}: messages[{i}]")
        if role not in ROLES:
            raise DataError(f"{where}: messages[{i}].role should be one of {ROLES}, got {role!r}")
        out.append({"role": role, "content": content})
    return out


def _alternates(messages: Sequence[dict]) -> bool:
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    return all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(body))


def curate(dialogues: Iterable[Any], *, phrases: Sequence[str] | None = None, truecase: bool = True,
           filter_boilerplate: bool = True, dedup: bool = True, truecase_scope: str = "all",
           allow: Collection[str] = DEFAULT_ALLOW, n_examples: int = 10,
           source: str | None = None, allow_empty: bool = False) -> tuple[list[list[dict]], dict]:
    """Validate, filter, truecase and deduplicate dialogues; return (kept, report).

    ``dialogues``: message lists, raw UltraChat rows (``{"id", "data"}``) or ultrachat_200k rows.
    ``phrases``: boilerplate phrases for assistant turns (None or empty = DEFAULT_PHRASES).
    ``truecase_scope``: "all" turns (default) or "assistant" turns only. With every option off
    this is the α corpus: only malformed / too short / empty / non-alternating dialogues go.
    The report counts n_in, n_out, n_trimmed (trailing user turn removed), n_truecased (kept
    dialogues with >= 1 fix), truecase_fixes, dropped[reason], dropped_by_phrase[phrase] (a
    dialogue counts once under each phrase it contains), truecase_examples (first
    ``n_examples`` before/after snippets) and errors (first 20 malformed-row messages).

    Nothing kept is an error (:class:`EmptyDataError` naming ``source`` and the filters that
    dropped the dialogues, with counts), unless ``allow_empty``: an empty corpus must never be
    stored as a complete run.
    """
    if truecase_scope not in ("all", "assistant"):
        raise ValueError(f"truecase_scope must be 'all' or 'assistant', got {truecase_scope!r}")
    phrases = tuple(phrases) if phrases else DEFAULT_PHRASES
    dropped: Counter = Counter({r: 0 for r in DROP_REASONS})
    by_phrase: Counter = Counter({p: 0 for p in phrases})
    kept: list[list[dict]] = []
    seen: set[bytes] = set()                      # digests, so 1.5M dialogues fit in memory
    examples: list[dict] = []
    errors: list[str] = []
    n_in = n_trimmed = n_truecased = n_fixes = 0
    for i, item in enumerate(dialogues):
        n_in += 1
        where = f"id={item['id']}" if isinstance(item, dict) and "id" in item else f"item {i}"
        try:
            msgs = _to_messages(item, where)
        except DataError as e:
            dropped["malformed"] += 1
            if len(errors) < 20:
                errors.append(str(e))
            continue
        if msgs and msgs[-1]["role"] == "user":
            msgs.pop()
            n_trimmed += 1
        if sum(m["role"] != "system" for m in msgs) < 2:
            dropped["too_short"] += 1
            continue
        if any(not m["content"].strip() for m in msgs):
            dropped["empty_turn"] += 1
            continue
        if not _alternates(msgs):
            dropped["non_alternating"] += 1
            continue
        if filter_boilerplate:
            hits = {p for m in msgs if m["role"] == "assistant" for p in boilerplate_hits(m["content"], phrases)}
            if hits:
                dropped["boilerplate"] += 1
                by_phrase.update(hits)
                continue
        fixes, changes = 0, []
        if truecase:
            for m in msgs:
                if truecase_scope == "all" or m["role"] == "assistant":
                    new, n_start, n_i = _truecase(m["content"], allow)
                    if n_start + n_i:
                        changes.append((m["role"], m["content"], new))
                        m["content"], fixes = new, fixes + n_start + n_i
        if dedup:
            key = hashlib.sha256(json.dumps([[m["role"], m["content"]] for m in msgs]).encode()).digest()
            if key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
        if fixes:
            n_truecased += 1
            n_fixes += fixes
            for role, before, after in changes:
                if len(examples) < n_examples:
                    b, a = _snippet(before, after)
                    examples.append({"where": where, "role": role, "before": b, "after": a})
        kept.append(msgs)
    report = {
        "n_in": n_in, "n_out": len(kept), "n_trimmed": n_trimmed, "n_truecased": n_truecased,
        "truecase_fixes": n_fixes, "dropped": dict(dropped), "dropped_by_phrase": dict(by_phrase),
        "truecase_examples": examples, "errors": errors,
        "settings": {"truecase": truecase, "truecase_scope": truecase_scope,
                     "filter_boilerplate": filter_boilerplate, "dedup": dedup, "phrases": list(phrases)},
    }
    assert n_in == len(kept) + sum(dropped.values())
    if not kept and not allow_empty:
        raise EmptyDataError(empty_message(report, source))
    return kept, report


def empty_message(report: dict, source: str | None = None) -> str:
    """Why a curation kept nothing: the source, and each filter that dropped dialogues."""
    where = f"source {source!r}" if source else "the input"
    if not report["n_in"]:
        return f"{where} gave no dialogues at all (0 rows read): nothing to curate"
    reasons = sorted(((n, r) for r, n in report["dropped"].items() if n), reverse=True)
    parts = [f"{r} {n}" + (f" (switch: {FILTER_OF[r]}=false keeps them)" if r in FILTER_OF else "")
             for n, r in reasons]
    errors = f"; first error: {report['errors'][0]}" if report.get("errors") else ""
    return (f"curation emptied {where}: all {report['n_in']} dialogue(s) were dropped, by filter: "
            f"{', '.join(parts)}{errors}")


# ----------------------------------------------------------------------------------------------
# The ultrachat_200k schema
# ----------------------------------------------------------------------------------------------

def prompt_id(prompt: str) -> str:
    """H4's prompt id: sha256 hex of the UTF-8 prompt (checked on ultrafeedback_binarized row 0)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def to_ultrachat_200k_row(messages: Sequence[dict]) -> dict:
    """Messages -> ``{"prompt", "prompt_id", "messages": [{"content", "role"}, ...]}``."""
    prompt = next((m["content"] for m in messages if m["role"] == "user"), None)
    if prompt is None:
        raise DataError("to_ultrachat_200k_row: the dialogue has no user turn")
    return {"prompt": prompt, "prompt_id": prompt_id(prompt),
            "messages": [{"content": m["content"], "role": m["role"]} for m in messages]}


def validate_200k_row(row: Any, where: str, *, kind: str | None = "sft", check_id: bool = True) -> dict:
    """Check a row against the ultrachat_200k schema; raise DataError naming row and field.

    ``kind``: "sft" (messages end with the assistant), "gen" (end with the user turn to answer)
    or None (either). ``check_id``: prompt_id must equal sha256(prompt); otherwise it only has to
    be 64 lower-case hex digits.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    extra = set(row) - {"prompt", "prompt_id", "messages"}
    if extra:
        raise DataError(f"{where}: unexpected field(s) {sorted(extra)} (schema: prompt, prompt_id, messages)")
    prompt = require(row, "prompt", str, where)
    pid = require(row, "prompt_id", str, where)
    msgs = require(row, "messages", list, where)
    if not re.fullmatch(r"[0-9a-f]{64}", pid):
        raise DataError(f"{where}: field 'prompt_id' should be 64 lower-case hex digits, got {pid!r}")
    if check_id and pid != prompt_id(prompt):
        raise DataError(f"{where}: field 'prompt_id' is not sha256(prompt)")
    for i, m in enumerate(msgs):
        f = f"messages[{i}]"
        if not isinstance(m, dict):
            raise DataError(f"{where}: field '{f}' should be an object, got {type(m).__name__}")
        if set(m) != {"content", "role"}:
            raise DataError(f"{where}: field '{f}' should have exactly 'content' and 'role', has {sorted(m)}")
        require(m, "content", str, f"{where}: {f}")
        require(m, "role", str, f"{where}: {f}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: field '{f}.role' should be one of {ROLES}, got {m['role']!r}")
        if not m["content"].strip():
            raise DataError(f"{where}: field '{f}.content' is empty")
    body = msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs
    if not body:
        raise DataError(f"{where}: field 'messages' has no user turn")
    if not _alternates(msgs):
        raise DataError(f"{where}: field 'messages' roles should alternate user/assistant starting with user")
    if body[0]["content"] != prompt:
        raise DataError(f"{where}: field 'prompt' differs from the first user message")
    last = msgs[-1]["role"]
    if kind == "sft" and (last != "assistant" or len(body) < 2):
        raise DataError(f"{where}: field 'messages' should end with an assistant turn (sft split)")
    if kind == "gen" and last != "user":
        raise DataError(f"{where}: field 'messages' should end with the user turn to answer (gen split)")
    return row


def _features():
    import datasets

    return datasets.Features({"prompt": datasets.Value("string"), "prompt_id": datasets.Value("string"),
                              "messages": [{"content": datasets.Value("string"), "role": datasets.Value("string")}]})


def _dataset(rows: list[dict]):
    import datasets

    cols = {k: [r[k] for r in rows] for k in ("prompt", "prompt_id", "messages")}
    return datasets.Dataset.from_dict(cols, features=_features())


def split_dataset(rows: Sequence[dict], *, test_frac: float, seed: int):
    """ultrachat_200k-style rows (sft form) -> DatasetDict(train_sft, test_sft, train_gen, test_gen).

    Split by prompt: the distinct prompt_ids are sorted, shuffled with ``random.Random(seed)``
    and the first max(1, round(test_frac * n_prompts)) go to test (none if test_frac == 0; at
    least one prompt stays in train). Rows keep their input order within a split. The gen splits
    are the sft rows of the same side with the final assistant turn removed. No rows is an error;
    an empty test side (test_frac 0, or a single prompt) is kept, and :func:`save_dataset` writes
    it so that ``load_from_disk`` reads it back.
    """
    import datasets

    if not 0.0 <= test_frac < 1.0:
        raise ValueError(f"test_frac must be in [0, 1), got {test_frac}")
    if not rows:
        raise EmptyDataError("split_dataset: no rows to split (an empty dataset is never stored)")
    for i, r in enumerate(rows):
        validate_200k_row(r, f"rows[{i}]", kind="sft")
    ids = sorted({r["prompt_id"] for r in rows})
    random.Random(seed).shuffle(ids)
    n_test = 0 if test_frac == 0 or len(ids) < 2 else min(len(ids) - 1, max(1, round(test_frac * len(ids))))
    test_ids = set(ids[:n_test])
    sides = {"train": [r for r in rows if r["prompt_id"] not in test_ids],
             "test": [r for r in rows if r["prompt_id"] in test_ids]}
    out = {}
    for side, rs in sides.items():
        out[f"{side}_sft"] = _dataset(list(rs))
        out[f"{side}_gen"] = _dataset([{**r, "messages": r["messages"][:-1]} for r in rs])
    return datasets.DatasetDict({s: out[s] for s in SPLITS})


def save_dataset(ds, path: str | os.PathLike) -> Path:
    """``save_to_disk`` into a temporary sibling folder, then rename it into place.

    Refuses a dataset whose training split (``train_sft``, or a lone Dataset) has no rows. An
    empty split is written as one empty shard: ``save_to_disk``'s default writes none, which
    ``load_from_disk`` cannot read back.
    """
    import datasets

    path = Path(path)
    parts = dict(ds) if isinstance(ds, datasets.DatasetDict) else {None: ds}
    train = parts.get("train_sft", next(iter(parts.values()), None)) if parts else None
    if train is None or len(train) == 0:
        raise EmptyDataError(f"{path}: refusing to store a dataset whose training split is empty "
                             f"(splits: { {k: len(v) for k, v in parts.items()} })")
    shards = {k: 1 for k, v in parts.items() if len(v) == 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(ds, datasets.DatasetDict):
        ds.save_to_disk(str(tmp), num_shards=shards or None)
    else:
        ds.save_to_disk(str(tmp), num_shards=1 if shards else None)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _read_200k_file(path: Path, kind: str | None, audit: RowAudit | None):
    """One file's rows as a Dataset; with ``audit``, malformed rows are dropped and counted there."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        numbered = [(f"{path} row {i}", r) for i, r in enumerate(rows)]
    elif path.suffix in (".jsonl", ".json"):
        numbered = [(f"{path}:{n}", r) for n, r in iter_jsonl_numbered(path)]
    else:
        raise DataError(f"{path}: unsupported file type (expected .parquet or .jsonl)")
    if audit is not None:
        check = lambda r, where: validate_200k_row(r, where, kind=kind)  # noqa: E731
        numbered = [(where, r) for where, r in numbered if audit.keep(check, r, where)]
    return _dataset([r for _, r in numbered])


def _kind(split: str | None) -> str | None:
    return "gen" if split and split.endswith("_gen") else "sft" if split and split.endswith("_sft") else None


def _audited(ds, where: str, audit: RowAudit, **check):
    """``ds`` without the rows :func:`validate_200k_row` refuses (each counted in ``audit``)."""
    good = [i for i, r in enumerate(ds) if audit.keep(lambda row, w: validate_200k_row(row, w, **check), r, f"{where} row {i}")]
    return ds if len(good) == len(ds) else ds.select(good)


def load_ultrachat_200k(source: str | os.PathLike, split: str | None = None, revision: str | None = None,
                        *, validate: bool = True, max_bad_row_fraction: float = 0.0, report: dict | None = None):
    """Load ultrachat_200k-schema data: a Dataset if ``split`` is given or the source is one file,
    else a DatasetDict.

    ``source``: a folder written by ``save_to_disk`` (DatasetDict or Dataset), a folder of
    ``<split>-*.parquet`` / ``<split>.jsonl`` files (the hub layout, ``data/`` or flat), one
    .parquet/.jsonl file, or the hub id ``HuggingFaceH4/ultrachat_200k``. Every row is validated
    (:func:`validate_200k_row`; the split name ``*_sft`` / ``*_gen`` picks the last-turn rule).
    Hub rows are checked without the prompt_id == sha256(prompt) and last-turn rules, which are
    verified for H4's ultrafeedback_binarized but not for ultrachat_200k itself.

    Malformed rows are dropped and counted per split (:class:`~zephyr_lib.io.RowAudit`); a split
    whose share of them exceeds ``max_bad_row_fraction`` (0 = any) is a DataError naming the
    file, the first bad row and its field. ``report``, if given, receives ``{split: counts}``.
    """
    import datasets

    src = str(source)
    path = Path(src)
    audits: dict[str, RowAudit] = {}

    def audit(name: str | None, where: str) -> RowAudit | None:
        if not validate:
            return None
        return audits.setdefault(str(name), RowAudit(where, max_bad_row_fraction))

    def done(ds):
        for name, a in audits.items():
            counts = a.finish()
            if report is not None:
                report[name] = counts
        return ds

    if _is_hub_id(src):
        ds = datasets.load_dataset(src, split=split, revision=revision)
        if validate:
            if split:
                ds = _audited(ds, f"{src}[{split}]", audit(split, f"{src}[{split}]"), kind=None, check_id=False)
            else:
                ds = datasets.DatasetDict({name: _audited(d, f"{src}[{name}]", audit(name, f"{src}[{name}]"),
                                                          kind=None, check_id=False) for name, d in ds.items()})
        return done(ds)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (nor a hub id like {H4_HUB_ID})")
    if path.is_file():
        return done(_read_200k_file(path, _kind(split), audit(split, str(path))))
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict) and split is not None:
            if split not in ds:
                raise DataError(f"{path}: no split {split!r} (has {sorted(ds)})")
            ds = ds[split]
        if validate:
            if isinstance(ds, datasets.Dataset):
                ds = _audited(ds, f"{path} [{split}]", audit(split, f"{path} [{split}]"), kind=_kind(split))
            else:
                ds = datasets.DatasetDict({name: _audited(d, f"{path} [{name}]", audit(name, f"{path} [{name}]"),
                                                          kind=_kind(name)) for name, d in ds.items()})
        return done(ds)
    folder = path / "data" if (path / "data").is_dir() else path
    files: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        m = re.match(r"(train_sft|test_sft|train_gen|test_gen)(?:-.*)?\.(?:parquet|jsonl)$", f.name)
        if m:
            files.setdefault(m.group(1), []).append(f)
    if not files:
        raise DataError(f"{path}: no save_to_disk dataset and no <split>-*.parquet / <split>.jsonl files")
    if split is not None and split not in files:
        raise DataError(f"{path}: no split {split!r} (has {sorted(files)})")
    loaded = {s: datasets.concatenate_datasets([_read_200k_file(f, _kind(s), audit(s, fs[0] if len(fs) == 1 else f"{folder} [{s}]"))
                                                for f in fs])
              for s, fs in files.items() if split is None or s == split}
    return done(loaded[split] if split is not None else datasets.DatasetDict(loaded))


def save_ultrachat_200k(source: str | os.PathLike, out_dir: str | os.PathLike, revision: str | None = None,
                        *, name: str = "beta", max_bad_row_fraction: float = 0.0) -> dict:
    """The paper's dSFT data as published: load ``HuggingFaceH4/ultrachat_200k`` (or a local copy in
    its layout; :func:`load_ultrachat_200k`, every row validated) and save its four splits as the
    curate run's ``<out_dir>/<name>`` DatasetDict, the folder sft reads (``curate/beta``). No
    re-curation: the rows are H4's, less the malformed ones, dropped and counted (over
    ``max_bad_row_fraction`` of a split: a DataError). Returns ``{"source", "revision", "splits":
    {split: rows}, "bad_rows": {split: counts}}``; a missing split is a DataError naming the source."""
    bad_rows: dict = {}
    dsd = load_ultrachat_200k(source, revision=revision, max_bad_row_fraction=max_bad_row_fraction, report=bad_rows)
    if not hasattr(dsd, "keys"):
        raise DataError(f"{source}: one file is one split; ultrachat_200k needs the folder with {', '.join(SPLITS)}")
    missing = [s for s in SPLITS if s not in dsd]
    if missing:
        raise DataError(f"{source}: no split(s) {missing} (has {sorted(dsd)}); ultrachat_200k has {', '.join(SPLITS)}")
    import datasets

    dsd = datasets.DatasetDict({s: dsd[s] for s in SPLITS})
    save_dataset(dsd, Path(out_dir) / name)
    return {"source": str(source), "revision": revision or "", "splits": {s: len(dsd[s]) for s in SPLITS},
            "bad_rows": {s: bad_rows[s] for s in SPLITS if s in bad_rows}}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zephyr_lib.curate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", required=True, help=f"raw UltraChat .jsonl or hub id ({RAW_HUB_ID})")
    ap.add_argument("--out", required=True, help="output folder: <name>/ (DatasetDict) and report.json")
    ap.add_argument("--alpha", action="store_true", help="no truecasing, boilerplate filter or dedup (α data)")
    ap.add_argument("--limit", type=int, default=0, help="read at most this many raw rows (0 = all)")
    ap.add_argument("--truecase-scope", choices=("all", "assistant"), default="all")
    ap.add_argument("--phrases-file", help="one boilerplate phrase per line (default: the built-in list)")
    ap.add_argument("--test-frac", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--revision", default=None, help="hub revision of --raw")
    args = ap.parse_args(argv)
    phrases = None
    if args.phrases_file:
        phrases = [ln.strip() for ln in Path(args.phrases_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
    on = not args.alpha
    try:
        rows = load_raw_ultrachat(args.raw, revision=args.revision, limit=args.limit)
        kept, report = curate(rows, phrases=phrases, truecase=on, filter_boilerplate=on, dedup=on,
                              truecase_scope=args.truecase_scope)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dd = split_dataset([to_ultrachat_200k_row(m) for m in kept], test_frac=args.test_frac, seed=args.seed)
    name = "alpha" if args.alpha else "beta"
    save_dataset(dd, Path(args.out) / name)
    report["splits"] = {s: len(dd[s]) for s in SPLITS}
    write_json(Path(args.out) / "report.json", report)
    print(f"{report['n_in']} in, {report['n_out']} kept, dropped {report['dropped']}, "
          f"{report['n_truecased']} truecased -> {Path(args.out) / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
