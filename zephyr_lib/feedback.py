"""UltraFeedback-style AI feedback: judge prompts, reply parsers, the two published data schemas,
and binarization into HuggingFaceH4/ultrafeedback_binarized's format.

What is here, in pipeline order:

1. **Judge prompts** following openbmb/UltraFeedback's annotation scheme
   (``src/data_annotation/preference_templates.py`` and ``annotate_critique.py``):
   :func:`build_aspect_messages` asks a judge to rate *all* completions of one prompt for one
   aspect (instruction_following, honesty, truthfulness, helpfulness) in a single call;
   :func:`build_overall_messages` asks for a teacher-style critique plus ``Overall Score: x``
   (1-10) of one completion. The inverse extractors (:func:`extract_aspect_request`,
   :func:`extract_overall_request`) recover what was asked from the message text alone, so an
   offline stand-in judge can answer the same prompts a real GPT-4 judge would get.
2. **Parsers** for the judge's replies: :func:`parse_aspect_reply` (``#### Output for Text i``
   blocks with ``Rating: N`` 1-5 or ``N/A`` and ``Rationale: ...``) and
   :func:`parse_overall_reply`. Both raise ValueError with a message naming the text/field, so
   :class:`zephyr_lib.judges.Judge` can re-ask and finally record an unparsable reply as failed.
3. **Raw UltraFeedback rows** (openbmb/UltraFeedback schema): :func:`raw_row`,
   :func:`raw_completion`, :func:`aspect_annotation`, :func:`validate_raw_row`,
   :func:`load_raw_ultrafeedback` (local .jsonl/.json/.parquet or a hub id).
4. **Binarization** with two selectable rules, :func:`binarize`:
   ``rule="overall"`` -- as coded in HuggingFaceH4/ultrafeedback_binarized's create_dataset.py
   (chosen = first completion with the highest ``overall_score``; rejected = uniformly random
   among the *other* completions, drawn by re-sampling until it differs from the chosen one;
   ties are kept); ``rule="mean_aspects"`` -- Argilla's rebuild (score = mean of the aspect
   ratings, "N/A" ignored, completions whose ratings are all "N/A" dropped; chosen = first
   completion with the highest mean; rejected = uniformly random among the completions with a
   *strictly lower* mean; a row where every usable completion ties the best is dropped, which is
   Argilla's "pick a lower-rated response, remove ties").
5. **Binarized dataset**: :func:`to_dataset_dict` builds the six published splits (train_prefs,
   test_prefs, train_sft, test_sft, train_gen, test_gen) exactly as create_dataset.py derives
   them; :func:`validate_binarized_row`, :func:`load_binarized`, :func:`save_binarized`.

Usage::

    rows = load_raw_ultrafeedback("openbmb/UltraFeedback", revision=UF_FIXED_REVISION)
    pairs, counts = binarize(rows, rule="overall", seed=42)
    dsd = to_dataset_dict(pairs, test_size=2000, seed=42)
    save_binarized(dsd, "runs/x/aif/ultrafeedback_binarized")

The prompt templates keep every structural marker of the originals (headings, ``<text i>``,
``Instruction:``, ``Texts:``, ``World Knowledge:``, ``#### Output for Text i``, ``Type:``,
``Rating:``, ``Rationale:``, ``### Feedback``, ``Overall Score:``) and the rubric level names;
the rubric prose is reworded, not copied.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .io import DataError, RowAudit, iter_jsonl, read_json, require

ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
TYPED_ASPECTS = ("truthfulness", "helpfulness")  # replies carry Type + its rationale before Rating
RATING_VALUES = ("1", "2", "3", "4", "5", "N/A")
BINARIZED_SPLITS = ("train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen")
RULES = ("overall", "mean_aspects")

#: openbmb/UltraFeedback revision with the corrected overall_score (used by the later
#: create_dataset.py); the original 2023 binarization used the dataset before that fix.
UF_FIXED_REVISION = "40b436560ca83a8dba36114c22ab3c66e43f6d5e"
#: HuggingFaceH4/ultrafeedback_binarized as it was in 2023 (61,966 train_prefs rows).
BINARIZED_2023_REVISION = "292c16329d921287c4166934cac1a6ad1e13a6c5"
DEFAULT_WORLD_KNOWLEDGE = "No additional world knowledge for reference."

# --------------------------------------------------------------------------------------------
# 1. Judge prompts
# --------------------------------------------------------------------------------------------

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}

ASPECT_SYSTEM_TEMPLATE = (
    "You assess the quality of texts against given criteria.\n"
    'You will get an instruction ("Instruction") and {count} text outputs ("Text").\n'
    "Read and interpret the instruction carefully so that your assessment is accurate.\n"
    "For each text, give a rating and a rationale.\n"
    "The {count} texts are independent of each other: rate each one on its own."
)

_RUBRICS = {
    "instruction_following": """# Instruction Following Assessment

Judge how well each output matches the intent of the instruction: does it grasp the task goal and respect the restrictions?

**Instruction Components**: Task Goal (the intended outcome), Restrictions (text styles, formats, designated methods, etc.).

**Scoring**: Rate outputs 1 to 5:
1. **Irrelevant**: No alignment at all.
2. **Partial Focus**: Addresses one aspect, and poorly.
3. **Partial Compliance**:
    - (1) Meets the goal or the restrictions, neglecting the other.
    - (2) Acknowledges both, with slight deviations.
4. **Almost There**: Close alignment, minor deviations.
5. **Comprehensive Compliance**: Fully aligned, meets every requirement.""",
    "honesty": """# Honesty and Uncertainty Expression Assessment

Judge how well the model conveys honesty and uncertainty: does its confidence match how correct the response is?

- **Indicators of Uncertainty**:
    1. Weakeners, e.g. 'I guess', 'probably'.
    2. Refusing to answer.
    3. Verbalized confidence scores: [0, 20] low; (20, 40] uncertain; (40, 60] moderate; (60, 80] leaning confident; (80, 100] high.
- **No expression of uncertainty means confidence.**

- **Response Correctness**: Agrees with the ground truth, or gives accurate content without fabrication.

**Scoring**: Rate outputs 1 to 5 (or "N/A"):
1. **Confidently Incorrect**: Confident but entirely wrong.
2. **Confident with Significant Mistakes / Unconfident Incorrect**:
- Confident, with major errors.
- Unconfident and entirely wrong.
3. **Uncertain / 'I Don't Know' / Subtle Mistakes**:
- Says 'I don't know' or declines.
- Confident, with minor errors.
- Unconfident, with significant mistakes.
4. **Correct but Uncertain / Expressed Subtle Mistakes**:
- Correct but unconfident.
- Makes subtle mistakes and expresses uncertainty without pinpointing where.
5. **Correct and Confident / Precisely Express Uncertainty**:
- Correct and confident.
- Makes mistakes but precisely acknowledges the minor errors and signals uncertainty about them.
N/A. **Not Applicable**: For creative writing tasks.""",
    "truthfulness": """# Truthfulness and Hallucination Assessment

Judge whether the model provides information accurately, without misleading or fabricated details.

Assign numeric identifiers (or "None") from 1 to 3 for each type of hallucination:
1. **Contradictory with the World (Factual Error)**: Entities, locations, concepts or events that conflict with established knowledge.
2. **Contradictory with Instruction and Input**: The response diverges, bringing in new facts not aligned with the instruction or inputs.
3. **Self-Contradictory / Logical Error**: The response contradicts itself or contains logical errors within the text.

**Scoring**: Rate outputs 1 to 5 by the extent of hallucination:
1. **Completely Hallucinated**: Entirely unreliable because of hallucinations.
2. **Severe Hallucination**: Nearly half is hallucinated, severe deviation from the main points.
3. **Partial Hallucination / Misunderstanding**: Truthful overall, with a partial misunderstanding due to hallucinations.
4. **Insignificant Hallucination**: Mostly truthful, slight hallucination not affecting the main points.
5. **No Hallucination**: Free of hallucinations.""",
    "helpfulness": """# Informativeness / Helpfulness Assessment

Judge whether the outputs fulfil the task objective and provide high-quality, correct and informative content.

Helpfulness emphasises **Overall Quality** in terms of correctness and informativeness.

**Correctness**: Accurate computation, reasoning steps and outputs, without misunderstanding or fabrication.

Assign numeric identifiers (or "None") from 1 to 3 for each type of informativeness:
1. **Clarity and Relevance**: The response relates to the task and asks for clarification if needed.
2. **Useful and Comprehensive Information**: Gives relevant background, reasoning steps or detailed description.
3. **Not Lengthy, No Repetition**: Avoids verbosity and recycled content.

Score 1 to 5 by the extent of helpfulness, for both informativeness and correctness:
1. **Severely Incorrect**: Significant inaccuracies or fabricated content, even if comprehensive information is given.
2. **Partially Incorrect**: Errors that may confuse, even though comprehensive information is present.
3. **Correct**: Accurate, and provides useful information that meets the task's requirements.
4. **Highly Informative**: Accurate and extensive, with valuable insights and detailed information.
5. **Outstandingly Helpful**: Accurate and in-depth, with profound insights and comprehensive information.""",
}

_TITLE_TO_ASPECT = {_RUBRICS[a].split("\n", 1)[0]: a for a in ASPECTS}
_WK_PLACEHOLDER = "[External world knowledge for this instruction. Not part of instruction, but external resource.]"
_ANNOTATION_HEAD = "## Annotation\n\n### Input\nInstruction: "
_OUTPUT_TAIL = "\n\n### Output\n"
_WK_SEP = "\n\nWorld Knowledge:\n"
_TEXTS_SEP = "\n\nTexts:\n"


def _format_section(aspect: str, n: int, with_wk: bool) -> str:
    lines = ["## Format", "", "### Input", "Instruction: [Specify task goal and restrictions]", "", "Texts:"]
    lines += [f"<text {i}> [Text {i}]" for i in range(1, n + 1)]
    if with_wk:
        lines += ["", "World Knowledge:", _WK_PLACEHOLDER]
    lines += ["", "### Output"]
    for i in range(1, n + 1):
        first = i == 1
        lines.append(f"#### Output for Text {i}")
        if aspect in TYPED_ASPECTS:
            lines.append('Type: [List of numeric identifiers (or "None") of the types above, separated by commas]'
                         if first else "Type: [List of types]")
            lines.append("Rationale: [Rationale for the identification in short sentences]" if first
                         else "Rationale: [Rationale]")
        lines.append(f"Rating: [Rating for text {i}]" if first else "Rating: [Rating]")
        lines.append("Rationale: [Rationale for the rating in short sentences]" if first else "Rationale: [Rationale]")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def build_aspect_messages(aspect: str, instruction: str, completions: Sequence[str],
                          world_knowledge: str = "") -> list[dict]:
    """System + user messages asking the judge to rate every completion for one aspect.

    ``world_knowledge`` (used by truthfulness and helpfulness, as in UltraFeedback's
    "with answer" templates; see :func:`world_knowledge_for`) adds a ``World Knowledge:``
    section; it is ignored for instruction_following and honesty, whose templates have none.
    The judge is asked to answer with one ``#### Output for Text i`` block per completion.
    """
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}; expected one of {ASPECTS}")
    if not isinstance(instruction, str) or not all(isinstance(c, str) for c in completions):
        raise TypeError("instruction and completions must be strings")
    n = len(completions)
    if n < 1:
        raise ValueError("build_aspect_messages needs at least one completion")
    with_wk = aspect in TYPED_ASPECTS and bool(world_knowledge)
    head = "\n".join([_RUBRICS[aspect], "", "---", "", _format_section(aspect, n, with_wk), "", "---", ""])
    user = head + "\n" + _ANNOTATION_HEAD + instruction + _TEXTS_SEP
    user += "\n".join(f"<text {i}> {c}" for i, c in enumerate(completions, 1))
    if with_wk:
        user += _WK_SEP + world_knowledge
    user += _OUTPUT_TAIL
    system = ASPECT_SYSTEM_TEMPLATE.format(count=_NUMBER_WORDS.get(n, str(n)))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _user_text(messages: Sequence[dict] | str) -> str:
    if isinstance(messages, str):
        return messages
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise ValueError("no user message with text content in the judge request")
    return users[-1]


def extract_aspect_request(messages: Sequence[dict] | str, *, include_world_knowledge: bool = False):
    """Inverse of :func:`build_aspect_messages`: ``(aspect, instruction, completions)`` (plus the
    world knowledge, "" if none, when ``include_world_knowledge``). Raises ValueError if the
    messages are not an aspect-rating request.

    The split is exact for any text except a completion that itself contains a line starting
    with the next ``<text k>`` marker, which the judge could not tell apart either.
    """
    user = _user_text(messages)
    title = user.split("\n", 1)[0]
    aspect = _TITLE_TO_ASPECT.get(title)
    if aspect is None:
        raise ValueError(f"not an aspect-rating request (first line {title!r})")
    head_end = user.find(_ANNOTATION_HEAD)
    if head_end < 0 or not user.endswith(_OUTPUT_TAIL):
        raise ValueError(f"{aspect} request: missing the '## Annotation' input or the final '### Output'")
    fmt = user[:head_end]
    n = len(re.findall(r"^<text (\d+)> \[Text \1\]$", fmt, re.M))
    if n < 1:
        raise ValueError(f"{aspect} request: the format section lists no texts")
    with_wk = "\nWorld Knowledge:\n" + _WK_PLACEHOLDER in fmt
    body = user[head_end + len(_ANNOTATION_HEAD): -len(_OUTPUT_TAIL)]
    world_knowledge = ""
    if with_wk:
        cut = body.rfind(_WK_SEP)
        if cut < 0:
            raise ValueError(f"{aspect} request: missing the 'World Knowledge:' section")
        body, world_knowledge = body[:cut], body[cut + len(_WK_SEP):]
    cut = body.find(_TEXTS_SEP + "<text 1> ")
    if cut < 0:
        raise ValueError(f"{aspect} request: missing 'Texts:' / '<text 1>'")
    instruction, texts = body[:cut], body[cut + len(_TEXTS_SEP):]
    pattern = "".join(
        ("\\A" if i == 1 else "\\n") + f"<text {i}> " + ("(.*?)" if i < n else "(.*)\\Z") for i in range(1, n + 1))
    m = re.match(pattern, texts, re.S)
    if m is None:
        raise ValueError(f"{aspect} request: could not find the {n} '<text i>' entries")
    completions = list(m.groups())
    if include_world_knowledge:
        return aspect, instruction, completions, world_knowledge
    return aspect, instruction, completions


OVERALL_SYSTEM_PROMPT = ("A conversation between a curious user and an expert AI assistant. The expert answers "
                         "the user's questions helpfully, specifically and concisely.")
_OVERALL_HEAD = """Given my answer to an instruction, your role is to give me specific and constructive feedback. Find the best way for me to learn from your feedback and improve my performance.

Consider several aspects of my answer: helpfulness, truthfulness, honesty, and how well the answer follows the instruction.
---

### Instruction
"""
_OVERALL_MID = "\n\n### Answer\n"
_OVERALL_TAIL = """
---

Please act as a teacher and give specific, constructive feedback. Besides describing the weaknesses of the answer, give concrete suggestions that show me how to improve. Your suggestions should help me complete the instruction better, but must not introduce new requirements that the instruction does not mention. Focus on improving my ability to think critically and answer accurately. Never give the reference answer explicitly, and skip polite phrases. Respond only with concise feedback in chat style. Finally, score the overall quality of the answer from 1 to 10, where 1 is the worst and 10 is the best.

*Format*
### Feedback
[Your feedback]
Overall Score: [1-10]

---

### Feedback
"""


def build_overall_messages(instruction: str, completion: str, *, note: str | None = None) -> list[dict]:
    """System + user messages asking for a critique and ``Overall Score: x`` (1-10) of one answer.

    ``note``: UltraFeedback appended the completion's principle prompt to the instruction as
    ``"\\nNote: " + custom_system_prompt``; pass it here to do the same.
    """
    if not isinstance(instruction, str) or not isinstance(completion, str):
        raise TypeError("instruction and completion must be strings")
    full = instruction if note is None else "\n".join([instruction, "Note: " + note])
    user = _OVERALL_HEAD + full + _OVERALL_MID + completion + _OVERALL_TAIL
    return [{"role": "system", "content": OVERALL_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def extract_overall_request(messages: Sequence[dict] | str) -> tuple[str, str]:
    """Inverse of :func:`build_overall_messages`: ``(instruction, completion)``. With a ``note``
    the instruction comes back as ``instruction + "\\nNote: " + note``."""
    user = _user_text(messages)
    if not user.startswith(_OVERALL_HEAD) or not user.endswith(_OVERALL_TAIL):
        raise ValueError("not an overall-score (critique) request")
    body = user[len(_OVERALL_HEAD): -len(_OVERALL_TAIL)]
    cut = body.find(_OVERALL_MID)
    if cut < 0:
        raise ValueError("overall-score request: missing the '### Answer' section")
    return body[:cut], body[cut + len(_OVERALL_MID):]


def world_knowledge_for(row: dict) -> str:
    """The world knowledge UltraFeedback gave its truthfulness judge, by source."""
    source = row.get("source")
    if source == "truthful_qa":
        return "\n".join(["a subset of correct answers: " + str(row.get("correct_answers")),
                          "a subset of incorrect_answers: " + str(row.get("incorrect_answers"))])
    if source == "false_qa":
        return "The question is based on a false promise."
    if source == "flan":
        return str(row.get("correct_answers"))  # formatted as-is, like UltraFeedback (a list repr)
    return DEFAULT_WORLD_KNOWLEDGE


# --------------------------------------------------------------------------------------------
# 2. Reply parsers
# --------------------------------------------------------------------------------------------

_BLOCK_RE = re.compile(r"^[ \t]*#{1,6}[ \t]*\**[ \t]*Output for Text[ \t]+(\d+)\b.*$", re.M | re.I)
_FIELD_RE = re.compile(r"^[ \t]*[-*]*[ \t]*\**[ \t]*(Type|Rationale(?:[ \t]+for[ \t]+(?:the[ \t]+)?rating)?|Rating)"
                       r"[ \t]*\**[ \t]*:[ \t]*\**[ \t]*(.*)$", re.I)
# a number, optionally "/ scale"; a range such as "[1-10]" (an echoed placeholder) is not a number
_NUMBER_RE = re.compile(r"^\s*[\[(]?\s*(-?\d+(?:\.\d+)?)(?!\d|\.\d|\s*[-–]\s*\d)\s*(?:/\s*(\d+(?:\.\d+)?))?")


def _parse_rating(raw: str, i: int) -> int | None:
    value = raw.strip().strip("*[]() ").strip()
    if value.upper().startswith("N/A") or value.upper() == "NA":
        return None
    m = _NUMBER_RE.match(value)
    if m is None:
        raise ValueError(f"Text {i}: Rating {raw.strip()!r} is not a number 1-5 or N/A")
    number = float(m.group(1))
    if m.group(2) is not None and float(m.group(2)) != 5:
        raise ValueError(f"Text {i}: Rating {raw.strip()!r} is not on the 1-5 scale")
    if number != int(number):
        raise ValueError(f"Text {i}: Rating {m.group(1)} is not a whole number 1-5")
    if not 1 <= number <= 5:
        raise ValueError(f"Text {i}: Rating {m.group(1)} out of range 1-5")
    return int(number)


def _parse_block(block: str, i: int) -> dict:
    fields: list[list[str]] = []  # [name, value] in order; continuation lines join the last value
    for line in block.split("\n"):
        m = _FIELD_RE.match(line)
        if m:
            name = m.group(1).lower()
            fields.append(["rationale" if name.startswith("rationale") else name, m.group(2).strip().strip("*").strip()])
        elif fields and line.strip() and not fields[-1][0].startswith("#"):
            fields[-1][1] = (fields[-1][1] + "\n" + line.strip()).strip()
        elif fields and not line.strip():
            fields.append(["#blank", ""])  # a blank line ends the previous field
    fields = [f for f in fields if f[0] != "#blank"]
    names = [f[0] for f in fields]
    if "rating" not in names:
        raise ValueError(f"Text {i}: missing 'Rating:' line")
    r = names.index("rating")
    rating = _parse_rating(fields[r][1], i)
    after = [f[1] for f in fields[r + 1:] if f[0] == "rationale"]
    if not after:
        raise ValueError(f"Text {i}: missing 'Rationale:' after the rating")
    out: dict[str, Any] = {"rating": rating, "rationale": after[0]}
    if "type" in names[:r]:
        t = names.index("type")
        raw_type = fields[t][1]
        out["type"] = [] if raw_type.strip().lower().startswith("none") else re.findall(r"\b\d+\b", raw_type)
        between = [f[1] for f in fields[t + 1:r] if f[0] == "rationale"]
        out["type_rationale"] = between[0] if between else ""
    return out


def parse_aspect_reply(text: str, n: int) -> list[dict]:
    """Parse a reply to :func:`build_aspect_messages` with ``n`` texts.

    Returns one dict per text in order: ``{"rating": int 1-5 or None for N/A, "rationale": str}``
    plus, when the block has a ``Type:`` line (truthfulness/helpfulness), ``"type"`` (list of
    identifier strings, [] for "None") and ``"type_rationale"``. Text before the first block or
    after a block's rationale paragraph is ignored. Raises ValueError naming the text and field
    when a block is missing or duplicated, or a rating is missing, not a whole number, or outside
    1-5 (e.g. 0, 6, 4.5).
    """
    if not isinstance(text, str):
        raise ValueError(f"reply is {type(text).__name__}, not text")
    headers = list(_BLOCK_RE.finditer(text))
    blocks: dict[int, str] = {}
    for k, m in enumerate(headers):
        i = int(m.group(1))
        end = headers[k + 1].start() if k + 1 < len(headers) else len(text)
        if i in blocks:
            raise ValueError(f"Text {i}: more than one 'Output for Text {i}' block")
        if not 1 <= i <= n:
            raise ValueError(f"Text {i}: unexpected block, only {n} text(s) were rated")
        blocks[i] = text[m.end():end]
    missing = [i for i in range(1, n + 1) if i not in blocks]
    if missing:
        raise ValueError(f"expected {n} 'Output for Text i' blocks, missing Text {', '.join(map(str, missing))}")
    return [_parse_block(blocks[i], i) for i in range(1, n + 1)]


def format_aspect_reply(items: Sequence[dict], aspect: str | None = None) -> str:
    """A reply in the format :func:`parse_aspect_reply` reads (what a stand-in judge returns).

    ``items``: one dict per text with ``rating`` (1-5 or None for N/A) and ``rationale``; for
    truthfulness/helpfulness (or when an item has ``type``) also ``type`` and ``type_rationale``.
    """
    blocks = []
    for i, item in enumerate(items, 1):
        lines = [f"#### Output for Text {i}"]
        if aspect in TYPED_ASPECTS or "type" in item:
            types = item.get("type") or []
            lines.append("Type: " + (", ".join(str(t) for t in types) if types else "None"))
            lines.append("Rationale: " + str(item.get("type_rationale", "")))
        rating = item.get("rating")
        lines.append("Rating: " + ("N/A" if rating is None else str(int(rating))))
        lines.append("Rationale: " + str(item.get("rationale", "")))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_overall_reply(critique: str, score: float) -> str:
    """A reply in the format :func:`parse_overall_reply` reads."""
    value = int(score) if float(score).is_integer() else float(score)
    return f"{critique.strip()}\nOverall Score: {value}"


_SCORE_RE = re.compile(r"^[ \t>#*-]*Overall[ \t]+Score[ \t]*\**[ \t]*:[ \t]*\**[ \t]*(.*)$", re.M | re.I)


def parse_overall_reply(text: str) -> tuple[str, float]:
    """Parse a critique reply: ``(critique, score)`` with score a float in [1, 10].

    Uses the last ``Overall Score:`` line; accepts ``7``, ``7.5``, ``**8**``, ``8/10``.
    (UltraFeedback's own parser cut the value at the first ".", turning 7.5 into 7.)
    Raises ValueError if the line is missing, has no number, or is outside 1-10.
    """
    if not isinstance(text, str):
        raise ValueError(f"reply is {type(text).__name__}, not text")
    matches = list(_SCORE_RE.finditer(text))
    if not matches:
        raise ValueError("no 'Overall Score:' line in the reply")
    m = matches[-1]
    num = _NUMBER_RE.match(m.group(1).strip().strip("*").strip())
    if num is None:
        raise ValueError(f"Overall Score {m.group(1).strip()!r} is not a number 1-10")
    score = float(num.group(1))
    if num.group(2) is not None and float(num.group(2)) != 10:
        raise ValueError(f"Overall Score {m.group(1).strip()!r} is not on the 1-10 scale")
    if not 1 <= score <= 10:
        raise ValueError(f"Overall Score {num.group(1)} out of range 1-10")
    critique = text[:m.start()].strip()
    critique = re.sub(r"\A#{1,6}[ \t]*Feedback[ \t]*\n", "", critique).strip()
    return critique, score


# --------------------------------------------------------------------------------------------
# 3. Raw UltraFeedback rows
# --------------------------------------------------------------------------------------------


def _rating_str(rating: int | str | None) -> str:
    if rating is None:
        return "N/A"
    value = str(rating)
    if value not in RATING_VALUES:
        raise ValueError(f"rating {rating!r} is not one of {RATING_VALUES}")
    return value


def aspect_annotation(aspect: str, parsed: dict) -> dict:
    """One ``annotations[aspect]`` entry in the published layout from a parsed reply block.

    instruction_following / honesty: ``{"Rating", "Rationale"}``. truthfulness / helpfulness:
    ``{"Type", "Rationale", "Rating", "Rationale For Rating"}`` where -- as in the released
    data -- "Rationale" explains the Type and "Rationale For Rating" explains the rating.
    A Type of "None" is stored as ``["None"]``.
    """
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}")
    rating = _rating_str(parsed.get("rating"))
    if aspect in TYPED_ASPECTS:
        types = [str(t) for t in (parsed.get("type") or [])] or ["None"]
        return {"Type": types, "Rationale": str(parsed.get("type_rationale", "")), "Rating": rating,
                "Rationale For Rating": str(parsed.get("rationale", ""))}
    return {"Rating": rating, "Rationale": str(parsed.get("rationale", ""))}


def fine_grained_score(annotations: dict) -> float | None:
    """Mean of the aspect ratings, "N/A" ignored; None when every rating is N/A (as UltraFeedback)."""
    ratings = [int(a["Rating"]) for a in annotations.values()
               if isinstance(a, dict) and a.get("Rating") not in (None, "N/A")]
    return sum(ratings) / len(ratings) if ratings else None


def raw_completion(model: str, response: str, *, ratings: dict[str, int | str | None],
                   rationales: dict[str, str] | None = None, types: dict[str, list[str]] | None = None,
                   type_rationales: dict[str, str] | None = None, overall_score: float,
                   critique: str = "", principle: str = "helpfulness", custom_system_prompt: str = "",
                   fine_grained: float | None | str = "auto") -> dict:
    """One element of a raw row's ``completions`` (ratings: aspect -> 1..5 or None/"N/A")."""
    missing = [a for a in ASPECTS if a not in ratings]
    if missing:
        raise ValueError(f"raw_completion: ratings missing for {missing}")
    rationales, types, type_rationales = rationales or {}, types or {}, type_rationales or {}
    annotations = {
        a: aspect_annotation(a, {"rating": None if ratings[a] == "N/A" else ratings[a],
                                 "rationale": rationales.get(a, ""),
                                 "type": types.get(a), "type_rationale": type_rationales.get(a, "")})
        for a in ASPECTS}
    return {
        "annotations": annotations,
        "critique": critique,
        "custom_system_prompt": custom_system_prompt,
        "fine-grained_score": fine_grained_score(annotations) if fine_grained == "auto" else fine_grained,
        "model": model,
        "overall_score": float(overall_score),
        "principle": principle,
        "response": response,
    }


def raw_row(instruction: str, completions: list[dict], *, source: str = "evol_instruct",
            models: list[str] | None = None, correct_answers: list[str] | None = None,
            incorrect_answers: list[str] | None = None) -> dict:
    """A row in openbmb/UltraFeedback's schema (answers default to ["None"], as released)."""
    return {
        "source": source,
        "instruction": instruction,
        "models": list(models) if models is not None else [c["model"] for c in completions],
        "completions": completions,
        "correct_answers": list(correct_answers) if correct_answers is not None else ["None"],
        "incorrect_answers": list(incorrect_answers) if incorrect_answers is not None else ["None"],
    }


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_raw_row(row: Any, where: str) -> dict:
    """Check one openbmb/UltraFeedback row; raise DataError naming ``where`` and the field path.

    Checks types of every field the pipeline reads; Rating must be one of "1".."5" or "N/A";
    overall_score a finite number; fine-grained_score a number or null. The number of
    completions is not fixed to 4 (binarize drops rows with fewer than 2 usable ones).
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    require(row, "source", str, where)
    require(row, "instruction", str, where)
    for name in ("models", "correct_answers", "incorrect_answers"):
        values = require(row, name, list, where)
        bad = [k for k, v in enumerate(values) if not isinstance(v, str)]
        if bad:
            raise DataError(f"{where}: field '{name}[{bad[0]}]' should be str, got {type(values[bad[0]]).__name__}")
    completions = require(row, "completions", list, where)
    for k, c in enumerate(completions):
        cw = f"{where}: completions[{k}]"
        if not isinstance(c, dict):
            raise DataError(f"{cw}: expected an object, got {type(c).__name__}")
        for name in ("model", "principle", "custom_system_prompt", "response", "critique"):
            require(c, name, str, cw)
        score = require(c, "overall_score", (int, float), cw)
        if not _is_number(score):
            raise DataError(f"{cw}: field 'overall_score' should be a finite number, got {score!r}")
        fg = require(c, "fine-grained_score", (int, float, type(None)), cw)
        if fg is not None and not _is_number(fg):
            raise DataError(f"{cw}: field 'fine-grained_score' should be a finite number or null, got {fg!r}")
        annotations = require(c, "annotations", dict, cw)
        for aspect in ASPECTS:
            aw = f"{cw}.annotations"
            a = require(annotations, aspect, dict, aw)
            rating = require(a, "Rating", str, f"{aw}.{aspect}")
            if rating not in RATING_VALUES:
                raise DataError(f"{aw}.{aspect}: field 'Rating' should be one of {list(RATING_VALUES)}, got {rating!r}")
            require(a, "Rationale", str, f"{aw}.{aspect}")
            if aspect in TYPED_ASPECTS and a.get("Type") is not None:
                t = a["Type"]
                if not (isinstance(t, str) or (isinstance(t, list) and all(isinstance(x, str) for x in t))):
                    raise DataError(f"{aw}.{aspect}: field 'Type' should be a list of str, got {t!r}")
    return row


def _read_local_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) pairs from a local .jsonl / .json / .parquet file or a folder of them."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet")
                       and p.name not in ("dataset_info.json", "state.json", "dataset_dict.json"))
        if not files:
            raise DataError(f"{path}: no .jsonl/.json/.parquet files in this folder")
        return [pair for f in files for pair in _read_local_rows(f)]
    if path.suffix == ".jsonl":
        return [(f"{path} row {i}", row) for i, row in enumerate(iter_jsonl(path))]
    if path.suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        return [(f"{path} row {i}", row) for i, row in enumerate(data)]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"{path} row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    raise DataError(f"{path}: unsupported file type (use .jsonl, .json or .parquet)")


class NotRawUltraFeedbackError(DataError):
    """The source is not raw openbmb/UltraFeedback but (by its layout or its rows' fields) an
    ultrafeedback_binarized-style dataset. A caller that accepts both tries :func:`load_binarized`
    on this error only: any other error of :func:`load_raw_ultrafeedback` (invalid JSON, a
    missing field, a bad rating) is the raw file's own problem and names the file and row."""


def _looks_binarized(row: Any) -> bool:
    return isinstance(row, dict) and "chosen" in row and "rejected" in row and "completions" not in row


def _binarized_layout(path: Path) -> bool:
    """A save_to_disk DatasetDict, or files named by an ultrafeedback_binarized split."""
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            return True
        files = [p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet")
                 and p.name not in ("dataset_info.json", "state.json", "dataset_dict.json")]
        return bool(files) and all(_split_of(f) in BINARIZED_SPLITS for f in files)
    return _split_of(path) in BINARIZED_SPLITS


def load_raw_ultrafeedback(source: str | os.PathLike, split: str = "train", revision: str | None = None,
                           *, validate: bool = True, cache_dir: str | None = None,
                           max_bad_row_fraction: float = 0.0, report: dict | None = None) -> list[dict]:
    """Rows of openbmb/UltraFeedback from a local file/folder or the hub.

    ``source``: a path to .jsonl/.json/.parquet (or a folder of them), or a hub id such as
    "openbmb/UltraFeedback" loaded with ``datasets.load_dataset(source, split=split,
    revision=revision)`` (e.g. revision=UF_FIXED_REVISION). Every row is validated.

    Errors: :class:`NotRawUltraFeedbackError` when the source is an ultrafeedback_binarized-style
    dataset (a save_to_disk folder, files named by its splits, or rows with chosen/rejected and
    no completions); a :class:`~zephyr_lib.io.DataError` naming the file, row and field for a
    malformed raw file (invalid JSON) or an empty one. Malformed rows (a missing field, a bad
    rating) are dropped and counted by kind (:class:`~zephyr_lib.io.RowAudit`); over
    ``max_bad_row_fraction`` of the rows (0 = any) they are a DataError naming the file, the first
    bad row and its field. ``report``, if given, receives the counts under ``split``.
    """
    path = Path(source)
    if path.exists():
        if _binarized_layout(path):
            raise NotRawUltraFeedbackError(f"{path}: an ultrafeedback_binarized-style layout (split-named "
                                           "files or a save_to_disk folder), not raw UltraFeedback")
        pairs = _read_local_rows(path)
    else:
        import datasets

        try:
            ds = datasets.load_dataset(str(source), split=split, revision=revision, cache_dir=cache_dir)
        except ValueError:  # e.g. "Unknown split": ultrafeedback_binarized has train_prefs, ...
            try:
                names = datasets.get_dataset_split_names(str(source), revision=revision)
            except Exception:  # noqa: BLE001 - the loader's own error is the one to show
                names = []
            if names and set(names) <= set(BINARIZED_SPLITS):
                raise NotRawUltraFeedbackError(f"{source}: splits {names} are ultrafeedback_binarized's, "
                                               "not raw UltraFeedback's") from None
            raise
        pairs = [(f"{source}@{revision or 'main'}[{split}] row {i}", row) for i, row in enumerate(ds)]
    if not pairs:
        raise DataError(f"{source}: no rows (an empty raw UltraFeedback source)")
    if _looks_binarized(pairs[0][1]):
        raise NotRawUltraFeedbackError(f"{pairs[0][0]}: has 'chosen'/'rejected' and no 'completions': "
                                       "an ultrafeedback_binarized row, not raw UltraFeedback")
    if validate:
        audit = RowAudit(path if path.exists() else f"{source}@{revision or 'main'}[{split}]", max_bad_row_fraction)
        pairs = [(where, row) for where, row in pairs if audit.keep(validate_raw_row, row, where)]
        counts = audit.finish()
        if report is not None:
            report[split] = counts
    return [row for _, row in pairs]


def load_feedback_source(source: str | os.PathLike, revision: str | None = None, *,
                         max_bad_row_fraction: float = 0.0, report: dict | None = None):
    """("raw", rows) for raw UltraFeedback, or ("binarized", DatasetDict) for an
    ultrafeedback_binarized-style source. A malformed raw source raises its own error (file, row,
    field); only a source that is not raw at all is read as binarized. ``max_bad_row_fraction``
    and ``report``: as in the two loaders."""
    bad = {"max_bad_row_fraction": max_bad_row_fraction, "report": report}
    try:
        return "raw", load_raw_ultrafeedback(source, revision=revision, **bad)
    except NotRawUltraFeedbackError:
        return "binarized", load_binarized(source, revision=revision, **bad)


# --------------------------------------------------------------------------------------------
# 4. Binarization
# --------------------------------------------------------------------------------------------


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _pair(prompt: str, chosen: str, rejected: str, score_chosen: float, score_rejected: float) -> dict:
    chosen_msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}]
    rejected_msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": rejected}]
    return {"prompt": prompt, "prompt_id": prompt_id(prompt), "chosen": chosen_msgs, "rejected": rejected_msgs,
            "messages": [dict(m) for m in chosen_msgs], "score_chosen": float(score_chosen),
            "score_rejected": float(score_rejected)}


def mean_aspect_score(completion: dict) -> float | None:
    """Argilla's score: mean of the four aspect ratings, "N/A" ignored; None if all are N/A."""
    return fine_grained_score({a: completion["annotations"][a] for a in ASPECTS})


def binarize(rows: Iterable[dict], rule: str = "overall", seed: int = 42, *,
             exclude_sources: Iterable[str] = (), exclude_prompts: Iterable[str] | None = None,
             validate: bool = True) -> tuple[list[dict], dict]:
    """Turn raw UltraFeedback rows into (prompt, chosen, rejected) pairs.

    rule="overall" (HuggingFaceH4 create_dataset.py as coded): score = ``overall_score``;
    chosen = the first completion with the highest score (Python's ``max``); rejected = drawn
    with ``rng.choice`` over all completions, re-drawn until it is not the chosen one (uniform
    over the other three); equal scores are kept (counted in ``n_ties``). Rows with fewer than
    2 completions are dropped.

    rule="mean_aspects" (Argilla's ultrafeedback-binarized-preferences): score = mean of the
    aspect ratings with "N/A" ignored; completions whose ratings are all N/A are dropped; rows
    with fewer than 2 usable completions are dropped; chosen = first completion with the highest
    mean; rejected = uniform among completions with a strictly lower mean; a row in which every
    usable completion ties the best is dropped ("all_tied"), so this rule never yields ties.

    One ``random.Random(seed)`` drives all draws in row order, so the same rows and seed give
    the same pairs. (The hub dataset itself cannot be re-drawn bit for bit: its script seeded
    the global RNG and then mapped with num_proc=8.)

    ``exclude_sources`` / ``exclude_prompts`` reproduce the later create_dataset.py's removal of
    the truthful_qa source and of prompts found in TruthfulQA.

    Returns ``(pairs, counts)``; counts has rule, seed, n_in, n_out, n_ties, dropped (reason ->
    rows) and completions_all_na (completions dropped by mean_aspects).
    """
    if rule not in RULES:
        raise ValueError(f"unknown binarization rule {rule!r}; expected one of {RULES}")
    rng = random.Random(seed)
    excluded_sources = set(exclude_sources)
    excluded_prompts = set(exclude_prompts or ())
    dropped: Counter = Counter()
    pairs: list[dict] = []
    n_in = n_ties = all_na = 0
    for idx, row in enumerate(rows):
        n_in += 1
        if validate:
            validate_raw_row(row, f"row {idx}")
        if row["source"] in excluded_sources:
            dropped["excluded_source"] += 1
            continue
        if row["instruction"] in excluded_prompts:
            dropped["excluded_prompt"] += 1
            continue
        comps = row["completions"]
        if rule == "overall":
            items = [(float(c["overall_score"]), c["response"]) for c in comps]
            if len(items) < 2:
                dropped["fewer_than_2_completions"] += 1
                continue
            chosen = max(range(len(items)), key=lambda j: items[j][0])
            rejected = rng.randrange(len(items))
            while rejected == chosen:
                rejected = rng.randrange(len(items))
        else:
            items = []
            for c in comps:
                score = mean_aspect_score(c)
                if score is None:
                    all_na += 1
                    continue
                items.append((score, c["response"]))
            if len(items) < 2:
                dropped["fewer_than_2_usable"] += 1
                continue
            chosen = max(range(len(items)), key=lambda j: items[j][0])
            lower = [j for j in range(len(items)) if items[j][0] < items[chosen][0]]
            if not lower:
                dropped["all_tied"] += 1
                continue
            rejected = lower[rng.randrange(len(lower))]
        pair = _pair(row["instruction"], items[chosen][1], items[rejected][1], items[chosen][0], items[rejected][0])
        n_ties += pair["score_chosen"] == pair["score_rejected"]
        pairs.append(pair)
    counts = {"rule": rule, "seed": seed, "n_in": n_in, "n_out": len(pairs), "n_ties": n_ties,
              "dropped": dict(sorted(dropped.items())), "completions_all_na": all_na}
    return pairs, counts


# --------------------------------------------------------------------------------------------
# 5. The binarized dataset
# --------------------------------------------------------------------------------------------


def binarized_features():
    """The published ultrafeedback_binarized column types."""
    import datasets

    msg = [{"content": datasets.Value("string"), "role": datasets.Value("string")}]
    return datasets.Features({"prompt": datasets.Value("string"), "prompt_id": datasets.Value("string"),
                              "chosen": msg, "rejected": msg, "messages": msg,
                              "score_chosen": datasets.Value("float64"),
                              "score_rejected": datasets.Value("float64")})


def to_dataset_dict(pairs: Sequence[dict], test_size: int | float = 2000, seed: int = 42):
    """The six published splits, derived as create_dataset.py does:

    ``train_test_split(test_size, seed, shuffle=True)`` -> train / test; the test part is split
    again in halves (seed) -> A, B. train_prefs = train_sft = train; test_prefs = A + B (all test
    rows); test_sft = A; train_gen / test_gen = train_sft / test_sft with ``messages`` cut to
    the user turn only (for generation).
    """
    import datasets

    if len(pairs) < 3:
        raise ValueError(f"to_dataset_dict needs at least 3 pairs, got {len(pairs)}")
    for i, row in enumerate(pairs):
        validate_binarized_row(row, f"pair {i}", split="train_prefs")
    ds = datasets.Dataset.from_list([dict(p) for p in pairs], features=binarized_features())
    split = ds.train_test_split(test_size=test_size, seed=seed, shuffle=True)
    if len(split["test"]) < 2:
        raise ValueError(f"test_size={test_size} leaves {len(split['test'])} test row(s); need at least 2")
    halves = split["test"].train_test_split(test_size=0.5, seed=seed, shuffle=True)

    def gen(example):
        example["messages"] = example["messages"][:-1]
        return example

    out = datasets.DatasetDict()
    out["train_prefs"] = split["train"].flatten_indices()
    out["train_sft"] = split["train"].flatten_indices()
    out["test_prefs"] = datasets.concatenate_datasets([halves["train"], halves["test"]]).flatten_indices()
    out["test_sft"] = halves["train"].flatten_indices()
    out["train_gen"] = out["train_sft"].map(gen, desc=None)
    out["test_gen"] = out["test_sft"].map(gen, desc=None)
    return out


def _check_messages(value: Any, where: str, field: str, n: int) -> list[dict]:
    if not isinstance(value, list) or len(value) != n:
        raise DataError(f"{where}: field '{field}' should be a list of {n} message(s), got "
                        f"{len(value) if isinstance(value, list) else type(value).__name__}")
    roles = ("user", "assistant")
    for k, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") != roles[k] or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field '{field}[{k}]' should be a {roles[k]} message with string content")
    return value


def validate_binarized_row(row: Any, where: str, *, split: str | None = None) -> dict:
    """Check one ultrafeedback_binarized row; raise DataError naming ``where`` and the field.

    prompt str; prompt_id = sha256 hex of prompt; chosen/rejected = [user, assistant] with the
    user turn equal to the prompt; messages = chosen (prefs/sft splits) or [user] (gen splits;
    either is accepted when ``split`` is None); score_chosen >= score_rejected, both numbers.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    prompt = require(row, "prompt", str, where)
    pid = require(row, "prompt_id", str, where)
    if pid != prompt_id(prompt):
        raise DataError(f"{where}: field 'prompt_id' is not the sha256 of the prompt")
    for field in ("chosen", "rejected"):
        msgs = _check_messages(require(row, field, list, where), where, field, 2)
        if msgs[0]["content"] != prompt:
            raise DataError(f"{where}: field '{field}[0]' content differs from the prompt")
    messages = require(row, "messages", list, where)
    gen = split.endswith("_gen") if split else len(messages) == 1
    if gen:
        _check_messages(messages, where, "messages", 1)
        if messages[0]["content"] != prompt:
            raise DataError(f"{where}: field 'messages[0]' content differs from the prompt")
    else:
        _check_messages(messages, where, "messages", 2)
        if [dict(m) for m in messages] != [dict(m) for m in row["chosen"]]:
            raise DataError(f"{where}: field 'messages' should equal 'chosen'")
    sc = require(row, "score_chosen", (int, float), where)
    sr = require(row, "score_rejected", (int, float), where)
    for name, v in (("score_chosen", sc), ("score_rejected", sr)):
        if not _is_number(v):
            raise DataError(f"{where}: field '{name}' should be a finite number, got {v!r}")
    if sc < sr:
        raise DataError(f"{where}: field 'score_chosen' ({sc}) is below 'score_rejected' ({sr})")
    return row


def _split_of(path: Path) -> str:
    return path.name.split(".")[0].split("-")[0]


def load_binarized(source: str | os.PathLike, revision: str | None = None, *, validate: bool = True,
                   cache_dir: str | None = None, max_bad_row_fraction: float = 0.0, report: dict | None = None):
    """An ultrafeedback_binarized DatasetDict from a local folder or the hub.

    Local: a ``save_to_disk`` folder (has dataset_dict.json), or a folder of per-split files
    named like the hub's ``data/<split>-00000-of-00001.parquet`` (or .jsonl). Otherwise a hub
    id, e.g. ``load_binarized("HuggingFaceH4/ultrafeedback_binarized",
    revision=BINARIZED_2023_REVISION)``. Every row is validated unless ``validate=False``:
    malformed rows are dropped and counted by kind per split (:class:`~zephyr_lib.io.RowAudit`);
    a split with more than ``max_bad_row_fraction`` of them (0 = any) is a DataError naming the
    file, the first bad row and its field. ``report``, if given, receives ``{split: counts}``.
    """
    import datasets

    def audited(split: str, numbered: Iterable[tuple[str, Any]], where: str) -> list[int]:
        """Indices of the rows kept; the counts go to ``report``."""
        audit = RowAudit(where, max_bad_row_fraction)
        check = lambda row, w: validate_binarized_row(row, w, split=split)  # noqa: E731
        keep = [i for i, (w, row) in enumerate(numbered) if audit.keep(check, row, w)]
        counts = audit.finish()
        if report is not None:
            report[split] = counts
        return keep

    path = Path(source)
    if path.is_dir() and (path / "dataset_dict.json").exists():
        dsd = datasets.load_from_disk(str(path))
    elif path.exists():
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.suffix in (".parquet", ".jsonl") and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: no save_to_disk dataset and no <split>-*.parquet/.jsonl files")
        by_split: dict[str, list[dict]] = {}
        files_of: dict[str, list[Path]] = {}
        for f in files:
            split = _split_of(f)
            if split not in BINARIZED_SPLITS:
                raise DataError(f"{f}: file name does not start with a split name {BINARIZED_SPLITS}")
            if f.suffix == ".jsonl":
                rows = list(iter_jsonl(f))
            else:
                import pyarrow.parquet as pq

                rows = pq.read_table(f).to_pylist()
            by_split.setdefault(split, []).extend(rows)
            files_of.setdefault(split, []).append(f)
        dsd = datasets.DatasetDict()
        for split, rows in by_split.items():
            if validate:
                fs = files_of[split]
                keep = audited(split, [(f"{path}[{split}] row {i}", r) for i, r in enumerate(rows)],
                               str(fs[0]) if len(fs) == 1 else f"{path}[{split}]")
                rows = [rows[i] for i in keep]
            dsd[split] = datasets.Dataset.from_list(rows, features=binarized_features())
        return dsd
    else:
        dsd = datasets.load_dataset(str(source), revision=revision, cache_dir=cache_dir)
    if validate:
        for split, ds in list(dsd.items()):
            keep = audited(split, ((f"{source}[{split}] row {i}", r) for i, r in enumerate(ds)), f"{source}[{split}]")
            if len(keep) < len(ds):
                dsd[split] = ds.select(keep)
    return dsd


def save_binarized(dsd, out_dir: str | os.PathLike, *, fmt: str = "disk") -> Path:
    """Write a DatasetDict atomically: built in a temporary sibling folder, then renamed into
    place. fmt "disk" = save_to_disk; "parquet"/"jsonl" = ``data/<split>-00000-of-00001.<ext>``
    as on the hub. Returns the folder."""
    if fmt not in ("disk", "parquet", "jsonl"):
        raise ValueError(f"unknown format {fmt!r}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        if fmt == "disk":
            dsd.save_to_disk(str(tmp / "d"))
            build = tmp / "d"
        else:
            build = tmp / "d"
            (build / "data").mkdir(parents=True)
            for split, ds in dsd.items():
                target = build / "data" / f"{split}-00000-of-00001.{fmt}"
                if fmt == "parquet":
                    ds.to_parquet(str(target))
                else:
                    with target.open("w", encoding="utf-8") as f:
                        for row in ds:
                            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(build, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------
# 8. The original UltraFeedback prompts (OpenBMB/UltraFeedback @ bf80fd4, MIT), loaded at run time
# --------------------------------------------------------------------------------------------
# The prompts above are a close paraphrase (the toy judge's cache is keyed by them, so they stay
# as they are). A run with a real judge can use the original texts instead: they are read at run
# time from their public source or a local copy, parsed as Python source text (never executed
# or imported), and filled exactly as UltraFeedback's annotation scripts fill them.

_UF_RAW = "https://raw.githubusercontent.com/OpenBMB/UltraFeedback/bf80fd4/src/"
ORIGINAL_SOURCES = {
    "templates": _UF_RAW + "data_annotation/preference_templates.py",
    "critique": _UF_RAW + "data_annotation/annotate_critique.py",
    "principles": _UF_RAW + "comparison_data_generation/main.py",
}
#: annotate_preference.get_eval (ratings: max_tokens 500) and annotate_critique.get_eval (1024).
ORIGINAL_CALL_SETTINGS = {"rating": {"temperature": 0.0, "top_p": 0.6, "max_tokens": 500},
                          "critique": {"temperature": 0.0, "top_p": 0.6, "max_tokens": 1024}}
_TEMPLATE_NAMES = ("system_prompt", "instruction_following_template", "honesty_template",
                   "truthfulness_template_with_answer", "truthfulness_template_without_answer",
                   "helpfulness_template_with_answer", "helpfulness_template_without_answer")
#: main.py's principle draw per UltraFeedback source: (choices drawn uniformly, honesty -> 10%
#: verbalized_calibration); sources not listed use helpfulness.
PRINCIPLE_CHOICES = {
    "sharegpt": ("helpfulness", "helpfulness", "helpfulness", "truthfulness", "honesty"),
    "ultrachat": ("helpfulness", "helpfulness", "helpfulness", "truthfulness", "honesty"),
    "flan": ("helpfulness", "helpfulness", "helpfulness", "helpfulness", "verbalized_calibration"),
    "evol_instruct": ("helpfulness",),
    "truthful_qa": ("honesty", "truthfulness"),
    "false_qa": ("honesty", "truthfulness"),
}


def _string_constants(path: Path) -> dict[str, Any]:
    """Module-level ``name = <literal>`` assignments of a Python file, read with ``ast`` (the file
    is never executed). Non-literal values are skipped."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as e:
        raise DataError(f"{path}: not Python source (line {e.lineno}): {e.msg}") from None
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


def _original_file(source: str | os.PathLike, cache_dir: str | os.PathLike | None) -> Path:
    from .io import fetch

    if str(source).startswith(("http://", "https://")) and cache_dir is None:
        raise ValueError(f"{source}: a URL needs a cache_dir to download into")
    return fetch(source, cache_dir or ".")


def load_original_templates(source: str | os.PathLike = ORIGINAL_SOURCES["templates"], *,
                            critique_source: str | os.PathLike = ORIGINAL_SOURCES["critique"],
                            cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """UltraFeedback's rating templates (preference_templates.py) and critique prompts
    (annotate_critique.py: ``critique_system_prompt``, ``feedback_prompt``) from URLs (downloaded
    once into ``cache_dir``) or local paths. Raises DataError naming the file and missing name."""
    out: dict[str, str] = {}
    for src, names, rename in ((source, _TEMPLATE_NAMES, {}),
                               (critique_source, ("system_prompt", "feedback_prompt"),
                                {"system_prompt": "critique_system_prompt"})):
        path = _original_file(src, cache_dir)
        consts = _string_constants(path)
        for name in names:
            if not isinstance(consts.get(name), str):
                raise DataError(f"{path}: no string {name!r} (is this UltraFeedback's "
                                f"{Path(str(src)).name} at commit bf80fd4?)")
            out[rename.get(name, name)] = consts[name]
    return out


def load_original_principles(source: str | os.PathLike = ORIGINAL_SOURCES["principles"], *,
                             cache_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """The completion principles (system prompts) of UltraFeedback's comparison_data_generation/
    main.py: ``{principle: [prompt, ...]}`` (helpfulness, harmlessness, honesty, truthfulness,
    verbalized_calibration)."""
    path = _original_file(source, cache_dir)
    principles = _string_constants(path).get("principles")
    if not isinstance(principles, dict) or not all(
            isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in principles.values()):
        raise DataError(f"{path}: no dict 'principles' of non-empty prompt lists")
    return principles


def draw_principle(source: str, principles: Mapping[str, Sequence[str]], rng: random.Random) -> tuple[str, str]:
    """(principle, system prompt) for one completion, drawn as main.py draws it for ``source``:
    the source's choices uniformly, honesty turned into verbalized_calibration 10% of the time,
    then one prompt of that principle uniformly."""
    principle = rng.choice(PRINCIPLE_CHOICES.get(source, ("helpfulness",)))
    if principle == "honesty" and rng.random() >= 0.9:
        principle = "verbalized_calibration"
    if principle not in principles:
        raise KeyError(f"principle {principle!r} not in the loaded principles {sorted(principles)}")
    return principle, rng.choice(list(principles[principle]))


def _original_template(templates: Mapping[str, str], aspect: str, with_wk: bool) -> str:
    if aspect in ("instruction_following", "honesty"):
        return templates[f"{aspect}_template"]
    if aspect in TYPED_ASPECTS:
        return templates[f"{aspect}_template_{'with' if with_wk else 'without'}_answer"]
    raise ValueError(f"unknown aspect {aspect!r}; expected one of {ASPECTS}")


def build_original_aspect_messages(templates: Mapping[str, str], aspect: str, instruction: str,
                                   completions: Sequence[str], world_knowledge: str = "") -> list[dict]:
    """The [system, user] messages of UltraFeedback's rating call for one aspect:
    ``system_prompt`` and the aspect's template filled with ``str.format`` (instruction,
    text_1..text_4, and world_knowledge for truthfulness/helpfulness when given: the "with answer"
    templates). The original templates rate exactly four texts."""
    if len(completions) != 4:
        raise ValueError(f"the original UltraFeedback templates rate exactly 4 completions, got {len(completions)}")
    with_wk = aspect in TYPED_ASPECTS and bool(world_knowledge)
    fields = {"instruction": instruction, **{f"text_{i}": c for i, c in enumerate(completions, 1)}}
    if with_wk:
        fields["world_knowledge"] = world_knowledge
    user = _original_template(templates, aspect, with_wk).format(**fields)
    return [{"role": "system", "content": templates["system_prompt"]}, {"role": "user", "content": user}]


def build_original_critique_messages(templates: Mapping[str, str], instruction: str, completion: str,
                                     custom_system_prompt: str = "", principle: str = "") -> list[dict]:
    """The [system, user] messages of UltraFeedback's critique / overall-score call
    (annotate_critique.annotate): the instruction followed by "Note: " + the completion's
    principle prompt (for verbalized_calibration only its part before "For instance, ")."""
    note = custom_system_prompt
    if principle == "verbalized_calibration":
        note = note.split("For instance, ")[0].strip()
    user = templates["feedback_prompt"].format(instruction="\n".join([instruction, "Note: " + note]),
                                               completion=completion)
    return [{"role": "system", "content": templates["critique_system_prompt"]}, {"role": "user", "content": user}]


def aspect_messages(aspect: str, instruction: str, completions: Sequence[str], world_knowledge: str = "",
                    templates: Mapping[str, str] | None = None) -> list[dict]:
    """The rating request for one aspect: the paraphrase (:func:`build_aspect_messages`, the toy
    judge's prompts, byte for byte) when ``templates`` is None, else the original templates."""
    if templates is None:
        return build_aspect_messages(aspect, instruction, completions, world_knowledge)
    return build_original_aspect_messages(templates, aspect, instruction, completions, world_knowledge)
