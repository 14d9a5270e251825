"""AlpacaEval 1 with the ``alpaca_eval_gpt4`` annotator, without calling any judge.

Mirrors tatsu-lab/alpaca_eval (the 0.3-era code the Zephyr paper used):

- data: the 805-instruction eval set and ``model_outputs.json`` rows
  ``{"instruction", "output", "generator", "dataset"}``; the reference generator is
  ``text_davinci_003`` and ``annotations.json`` rows hold output_1 (reference), output_2 (model),
  generator_1/2, annotator and preference;
- order swap (``RandomSwitchTwoColumnsProcessor`` of the pairwise annotator): for each
  instruction, ``random.Random("is_switched_outputs" + instruction + str(seed)).choices(
  [False, True], k=1)[0]`` with seed 0; when True the judge sees the model output first;
- prompt: ``evaluators_configs/alpaca_eval_gpt4/alpaca_eval.txt`` filled by
  ``utils.make_prompts`` (each ``{placeholder}`` replaced once, in order of appearance, by
  ``str.replace``, not ``str.format``) and cut into chat messages by ``_prompt_to_chatml`` of the
  OpenAI decoder (GPT-4, temperature 0, max_tokens 100);
- parsing: ``completion_parsers.ranking_parser`` (``ast.literal_eval`` of the whole reply, rank of
  ``model_1``; anything else is unparsed, i.e. dropped);
- preference: 1 = reference (output_1) wins, 2 = model wins, 0 = identical outputs (no judge call)
  and 1.5 = draw; the swap is undone with ``3 - x``;
- metric: ``metrics.pairwise_to_winrate``: 0 -> 1.5, win rate = mean(preference - 1) * 100,
  standard error = sample SEM (ddof 1) * 100.
"""
from __future__ import annotations

import ast
import math
import random
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from zephyr_lib.io import DataError, read_json, require, write_json

ANNOTATOR = "alpaca_eval_gpt4"
REFERENCE_GENERATOR = "text_davinci_003"
#: Decoding settings of evaluators_configs/alpaca_eval_gpt4/configs.yaml (batch_size 1) in the
#: version of the repository consulted; the GPT-4 snapshot name may differ between releases.
ANNOTATOR_CONFIG = {"model_name": "gpt-4-0613", "temperature": 0, "max_tokens": 100,
                    "fn_completion_parser": "ranking_parser", "batch_size": 1}
#: Seed of the pairwise annotator (PairwiseAnnotator(seed=0) is what ``alpaca_eval evaluate`` uses).
SWITCH_SEED = 0
_SWITCH_COLUMN = "is_switched_outputs"
MODEL_OUTPUT_FIELDS = ("instruction", "output", "generator", "dataset")

#: alpaca_eval_gpt4's prompt template (alpaca_eval.txt), in ChatML as the repository stores it.
ALPACA_EVAL_GPT4_TEMPLATE = '''<|im_start|>system
You are a helpful assistant, that ranks models by the quality of their answers.
<|im_end|>
<|im_start|>user
I want you to create a leaderboard of different of large-language models. To do so, I will give you the instructions (prompts) given to the models, and the responses of two models. Please rank the models based on which responses would be preferred by humans. All inputs and outputs should be python dictionaries.

Here is the prompt:
{
    "instruction": """{instruction}""",
}

Here are the outputs of the models:
[
    {
        "model": "model_1",
        "answer": """{output_1}"""
    },
    {
        "model": "model_2",
        "answer": """{output_2}"""
    }
]

Now please rank the models by the quality of their answers, so that the model with rank 1 has the best output. Then return a list of the model names and ranks, i.e., produce the following output:
[
    {'model': <model-name>, 'rank': <model-rank>},
    {'model': <model-name>, 'rank': <model-rank>}
]

Your response must be a valid Python dictionary and should contain nothing else because we will directly execute it in Python. Please provide the ranking that the majority of humans would give.
<|im_end|>'''

# utils.make_prompts: placeholders are "{...}" without whitespace inside.
_PLACEHOLDER = re.compile(r"{([^ \s]+?)}")


# --------------------------------------------------------------------------------------------
# Eval set and model outputs
# --------------------------------------------------------------------------------------------

def _check_rows(rows: Any, where: str, fields: Sequence[str] = MODEL_OUTPUT_FIELDS) -> list[dict]:
    if not isinstance(rows, list):
        raise DataError(f"{where}: expected a JSON list of objects, got {type(rows).__name__}")
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        row_where = f"{where}: row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{row_where}: expected an object, got {type(row).__name__}")
        for field in fields:
            require(row, field, str, row_where)
        instruction = row["instruction"]
        if not instruction.strip():
            raise DataError(f"{row_where}: field 'instruction' is empty")
        if instruction in seen:
            raise DataError(f"{row_where}: duplicate instruction (first at row {seen[instruction]})")
        seen[instruction] = i
    return rows


def load_instructions(path: str | Path) -> list[dict]:
    """Load the AlpacaEval eval set (e.g. the text_davinci_003 reference outputs): a JSON list of
    {"instruction", "output", "generator", "dataset"} with unique instructions."""
    path = Path(path)
    rows = _check_rows(read_json(path), str(path))
    if not rows:
        raise DataError(f"{path}: empty eval set")
    return rows


def model_outputs(instructions: Sequence[Mapping], outputs: Sequence[str], generator: str) -> list[dict]:
    """Rows of AlpacaEval's model_outputs.json: eval-set instruction and dataset, the model's
    output and its generator name, in eval-set order."""
    if len(instructions) != len(outputs):
        raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs")
    if not isinstance(generator, str) or not generator:
        raise ValueError("generator should be a non-empty str")
    rows = []
    for i, (inst, out) in enumerate(zip(instructions, outputs)):
        if not isinstance(out, str):
            raise ValueError(f"output {i} should be str, got {type(out).__name__}")
        rows.append({"instruction": inst["instruction"], "output": out,
                     "generator": generator, "dataset": inst["dataset"]})
    return rows


def validate_model_outputs(rows: Any, instructions: Sequence[Mapping] | None = None,
                           where: str = "model_outputs") -> list[dict]:
    """Check model_outputs rows (fields, types, unique instructions, one generator); with
    ``instructions`` also check they cover exactly the eval set. Returns the rows."""
    rows = _check_rows(rows, where)
    generators = {r["generator"] for r in rows}
    if len(generators) > 1:
        raise DataError(f"{where}: several generators {sorted(generators)}")
    if instructions is not None:
        expected = {r["instruction"] for r in instructions}
        got = {r["instruction"] for r in rows}
        if got != expected:
            raise DataError(f"{where}: instructions differ from the eval set "
                            f"({len(expected - got)} missing, {len(got - expected)} unknown)")
    return rows


def write_model_outputs(path: str | Path, rows: Sequence[Mapping],
                        instructions: Sequence[Mapping] | None = None) -> Path:
    """Validate and write model_outputs.json (atomic)."""
    rows = validate_model_outputs([dict(r) for r in rows], instructions, where=str(path))
    return write_json(path, rows)


def load_model_outputs(path: str | Path, instructions: Sequence[Mapping] | None = None) -> list[dict]:
    """Load and validate a model_outputs.json file."""
    path = Path(path)
    return validate_model_outputs(read_json(path), instructions, where=str(path))


# --------------------------------------------------------------------------------------------
# Order swap, prompt, parser
# --------------------------------------------------------------------------------------------

def is_switched(instruction: str, seed: int = SWITCH_SEED) -> bool:
    """Whether alpaca_eval shows the two outputs swapped for this instruction
    (``utils.random_seeded_choice`` seeded by "is_switched_outputs" + instruction + str(seed)).

    The rule depends on the instruction only, so every model sees the same swaps. It is
    ``random.Random(str).choices(..., k=1)[0]`` as in the 0.2.4+ / 0.3 code; earlier releases
    seeded numpy with Python's salted ``hash()`` (not reproducible across processes) or used
    ``random.Random(str).choice`` (a different draw from the same seed).
    """
    choice = random.Random(_SWITCH_COLUMN + instruction + str(seed)).choices([False, True], k=1)[0]
    return bool(choice)


def fill_template(template: str, instruction: str, output_1: str, output_2: str) -> str:
    """utils.make_prompts for batch_size 1: replace the first occurrence of each placeholder,
    in order of first appearance, with ``str.replace`` (so braces in texts are harmless)."""
    values = {"instruction": instruction, "output_1": output_1, "output_2": output_2}
    prompt = template
    for name in dict.fromkeys(_PLACEHOLDER.findall(template)):
        if name not in values:
            raise KeyError(f"template placeholder {{{name}}} has no value")
        prompt = prompt.replace("{" + name + "}", str(values[name]), 1)
    return prompt


def prompt_to_chatml(prompt: str, start_token: str = "<|im_start|>", end_token: str = "<|im_end|>") -> list[dict]:
    """alpaca_eval's ``_prompt_to_chatml``: split on the ChatML tokens; the first line is the role,
    the rest (up to the end token) stripped is the content."""
    prompt = prompt.strip()
    messages = []
    for part in prompt.split(start_token)[1:]:
        role, _, rest = part.partition("\n")
        messages.append({"role": role.strip(), "content": rest.split(end_token, 1)[0].strip()})
    return messages


def build_annotator_messages(instruction: str, output_1: str, output_2: str,
                             template: str = ALPACA_EVAL_GPT4_TEMPLATE) -> list[dict]:
    """The [system, user] messages alpaca_eval_gpt4 sends to GPT-4, with outputs in the order
    shown to the judge (``output_1`` is "model_1"). Apply the swap first (annotator_request)."""
    return prompt_to_chatml(fill_template(template, instruction, output_1, output_2))


def _user_regex(template: str) -> re.Pattern:
    user = [m for m in prompt_to_chatml(template) if m["role"] == "user"][0]["content"]
    parts, pos = [], 0
    for m in _PLACEHOLDER.finditer(user):
        parts.append(re.escape(user[pos:m.start()]))
        parts.append(f"(?P<{m.group(1)}>.*?)")
        pos = m.end()
    parts.append(re.escape(user[pos:]))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


_USER_RE = _user_regex(ALPACA_EVAL_GPT4_TEMPLATE)


def extract_annotator_messages(messages: Sequence[Mapping]) -> dict:
    """Inverse of build_annotator_messages: {kind: "alpaca_eval", instruction, output_1, output_2}
    (output_1 is what the judge sees as model_1)."""
    users = [m for m in messages if m.get("role") == "user"]
    if len(users) != 1 or not isinstance(users[0].get("content"), str):
        raise ValueError("expected exactly one user message with text content")
    m = _USER_RE.match(users[0]["content"])
    if not m:
        raise ValueError("messages do not follow the alpaca_eval_gpt4 prompt")
    return {"kind": "alpaca_eval", **m.groupdict()}


def annotator_request(instruction: str, reference_output: str, model_output: str,
                      seed: int = SWITCH_SEED) -> dict:
    """One annotation request: output_1 = reference, output_2 = model, swapped for the judge when
    is_switched(instruction). ``needs_judge`` is False for identical outputs (preference 0)."""
    switched = is_switched(instruction, seed)
    shown_1, shown_2 = (model_output, reference_output) if switched else (reference_output, model_output)
    return {"instruction": instruction, "is_switched": switched,
            "needs_judge": reference_output != model_output,
            "messages": build_annotator_messages(instruction, shown_1, shown_2)}


def parse_ranking(text: Any) -> int | None:
    """completion_parsers.ranking_parser: ``ast.literal_eval`` the whole reply, take the rank of
    the entry whose model is "model_1" (1 -> output_1 better, 2 -> output_2 better). Any failure
    (extra prose, no model_1 entry, rank not 1/2) gives None."""
    try:
        ordered = ast.literal_eval(text) if isinstance(text, str) else text
        rank = [c for c in ordered if c["model"] == "model_1"][0]["rank"]
        if rank not in (1, 2):
            return None
    except Exception:  # the official parser catches everything and returns NaN
        return None
    return int(rank)


def annotate_preference(instruction: str, output_1: str, output_2: str, reply: str | None,
                        seed: int = SWITCH_SEED) -> float | None:
    """Preference in AlpacaEval's convention for (output_1 = reference, output_2 = model):
    0.0 if the outputs are identical (no judge needed), else the parsed ranking of ``reply``
    (judge saw the swapped order when is_switched) mapped back with 3 - x; None if unparsed."""
    if output_1 == output_2:
        return 0.0
    if reply is None:
        raise ValueError("a judge reply is needed when the outputs differ")
    parsed = parse_ranking(reply)
    if parsed is None:
        return None
    return float(3 - parsed if is_switched(instruction, seed) else parsed)


# --------------------------------------------------------------------------------------------
# Annotations and win rate
# --------------------------------------------------------------------------------------------

def normalize_preference(value: Any, where: str = "preference") -> float | None:
    """A preference as float, or None when missing/unparsed (None, NaN, "None", "nan", "").
    Valid values are 0 (identical outputs) and 1 <= p <= 2."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none", "nan", "null"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{where}: not a preference: {value!r}") from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: not a preference: {value!r}")
    value = float(value)
    if math.isnan(value):
        return None
    if value != 0 and not 1 <= value <= 2:
        raise ValueError(f"{where}: preference {value} outside {{0}} U [1, 2]")
    return value


def annotation_record(instruction: str, output_1: str, output_2: str, preference: float | None,
                      generator_1: str = REFERENCE_GENERATOR, generator_2: str = "",
                      dataset: str = "", raw_completion: str | None = None,
                      annotator: str = ANNOTATOR) -> dict:
    """One row of alpaca_eval's annotations.json (output_1 = reference, output_2 = model)."""
    row = {"instruction": instruction, "output_1": output_1, "generator_1": generator_1,
           "dataset": dataset, "output_2": output_2, "generator_2": generator_2,
           "annotator": annotator, "preference": normalize_preference(preference)}
    if raw_completion is not None:
        row["raw_completion"] = raw_completion
    return row


def write_annotations(path: str | Path, rows: Iterable[Mapping]) -> Path:
    """Write annotation rows as annotations.json (atomic); preferences are normalized."""
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        for field in ("instruction", "output_1", "output_2"):
            require(row, field, str, f"annotation {i}")
        row["preference"] = normalize_preference(row.get("preference"), f"annotation {i}")
        out.append(row)
    return write_json(path, out)


def load_annotations(path: str | Path) -> list[dict]:
    """Load annotations.json; ``preference`` becomes float or None (strings accepted)."""
    path = Path(path)
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of annotations")
    out = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object")
        for field in ("instruction", "output_1", "output_2"):
            require(row, field, str, where)
        if "preference" not in row:
            raise DataError(f"{where}: missing field 'preference'")
        try:
            pref = normalize_preference(row["preference"], f"{where}: field 'preference'")
        except ValueError as e:
            raise DataError(str(e)) from None
        out.append({**row, "preference": pref})
    return out


def win_rate(preferences: Iterable[Any]) -> dict:
    """AlpacaEval 1 metric: drop None (unparsed), map 0 to 1.5, win_rate = mean(p - 1) * 100,
    standard_error = std(p - 1, ddof=1) / sqrt(n) * 100; counts of wins, base wins and draws."""
    values, n_dropped = [], 0
    for i, p in enumerate(preferences):
        p = normalize_preference(p, f"preference {i}")
        if p is None:
            n_dropped += 1
            continue
        values.append(1.5 if p == 0 else p)
    if not values:
        raise ValueError("win_rate: no parsable preferences")
    x = np.asarray(values) - 1.0
    n = len(x)
    se = float(np.std(x, ddof=1) / math.sqrt(n) * 100) if n > 1 else None
    return {"win_rate": float(x.mean() * 100), "standard_error": se, "n": n,
            "n_dropped": n_dropped, "n_draws": int(np.sum(x == 0.5)),
            "n_wins": int(np.sum(x > 0.5)), "n_wins_base": int(np.sum(x < 0.5))}
