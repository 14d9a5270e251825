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

The baseline (reference outputs) of AlpacaEval 1 is the hub dataset ``tatsu-lab/alpaca_eval``,
config ``alpaca_eval`` (file ``alpaca_eval.json``): :func:`load_baseline` reads it from the hub or a
local copy, and :func:`check_baseline` recognises alpaca_eval's ``results/text_davinci_003/
model_outputs.json`` (a later davinci generation: 785 of 805 outputs differ, 36% shorter), which
is not what GPT-4 judged. :func:`judge_outputs` is the whole judge step of a run: a failed judge
call is recorded (preference None, ``judge_error``) and counted, never raised, and since failures
are not cached a rerun asks only for them. Zephyr's own AlpacaEval generation sampled
(:data:`ZEPHYR_DECODING`).
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
#: Where AlpacaEval 1 (alpaca_eval 0.3.x, ``ALPACAEVAL_REFERENCE_OUTPUTS``) takes its baseline.
BASELINE_SOURCE = {"hub_id": "tatsu-lab/alpaca_eval", "config": "alpaca_eval", "file": "alpaca_eval.json"}
#: Fingerprints (:func:`outputs_fingerprint`) of the two text_davinci_003 output sets in circulation:
#: the baseline GPT-4 judged Zephyr against (mean output 482 characters), and alpaca_eval's
#: results/text_davinci_003/model_outputs.json (a later generation, mean 308 characters).
BASELINE_FINGERPRINT = "81d9e3490579af0cc68e16dde46131ace7bc0f02a662794072b407570b58cd34"
LATER_DAVINCI_FINGERPRINT = "9c7ad113356979ae1673f0ed63ff7b08966eb7586716a2b6fdcd659f99de546a"
#: How Zephyr-7B-beta's AlpacaEval outputs were generated (sampled; PAPER.md section 5).
ZEPHYR_DECODING = {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 2048}

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


def outputs_fingerprint(rows: Sequence[Mapping]) -> str:
    """sha256 over (instruction, output) pairs in instruction order: identifies an output set."""
    import hashlib

    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r["instruction"]):
        h.update(hashlib.sha256(r["instruction"].encode("utf-8")).digest())
        h.update(hashlib.sha256(r["output"].encode("utf-8")).digest())
    return h.hexdigest()


class BaselineError(DataError):
    """The reference outputs are not the AlpacaEval 1 baseline (the message says which set they are)."""


def check_baseline(rows: Sequence[Mapping], where: str = "baseline", *, as_judged: Sequence[Mapping] | None = None,
                   strict: bool = True) -> dict:
    """Which text_davinci_003 outputs ``rows`` are. Returns ``{"kind", "fingerprint", "n",
    "mean_chars", "n_differ"}``; kind is "as_judged" (the AlpacaEval 1 baseline), "later_davinci"
    (alpaca_eval's results/text_davinci_003/model_outputs.json) or "other" (a toy or custom set).

    "later_davinci" raises :class:`BaselineError` when ``strict`` (its win rates are not the
    paper's: 785 of 805 outputs differ from what GPT-4 judged, and they are 36% shorter). With
    ``as_judged`` (the baseline rows), ``n_differ`` counts instructions whose outputs differ."""
    fp = outputs_fingerprint(rows)
    kind = "as_judged" if fp == BASELINE_FINGERPRINT else "later_davinci" if fp == LATER_DAVINCI_FINGERPRINT else "other"
    info = {"kind": kind, "fingerprint": fp, "n": len(rows),
            "mean_chars": sum(len(r["output"]) for r in rows) / max(1, len(rows))}
    if as_judged is not None:
        ref = {r["instruction"]: r["output"] for r in as_judged}
        info["n_differ"] = sum(1 for r in rows if r["instruction"] in ref and ref[r["instruction"]] != r["output"])
    if kind == "later_davinci" and strict:
        raise BaselineError(
            f"{where}: these are alpaca_eval's results/text_davinci_003/model_outputs.json (a later text-davinci-003 "
            f"generation, mean {info['mean_chars']:.0f} characters), not the AlpacaEval 1 baseline GPT-4 judged "
            "(785 of 805 outputs differ, mean 482 characters): use the hub dataset tatsu-lab/alpaca_eval, "
            "config alpaca_eval (eval.alpaca_eval_set: tatsu-lab/alpaca_eval)")
    return info


def load_baseline(source: str | Path, revision: str | None = None, *, cache_dir: str | Path | None = None,
                  strict: bool = True) -> tuple[list[dict], dict]:
    """The AlpacaEval 1 eval set with its reference outputs: ``(rows, check_baseline info)``.

    ``source``: the hub id ``tatsu-lab/alpaca_eval`` (its ``alpaca_eval.json``, the config
    ``alpaca_eval`` that alpaca_eval 0.3.x loads; ``revision`` pins it) or a local JSON file in
    the model_outputs schema. Raises BaselineError for alpaca_eval's later davinci outputs
    (``strict``)."""
    src = str(source)
    if src == BASELINE_SOURCE["hub_id"]:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(src, BASELINE_SOURCE["file"], repo_type="dataset", revision=revision,
                                    cache_dir=str(cache_dir) if cache_dir else None))
    else:
        path = Path(src)
    rows = load_instructions(path)
    return rows, check_baseline(rows, str(path), strict=strict)


def decoding_settings(cfg: Any) -> dict:
    """The AlpacaEval generation settings an eval config resolves to: ``alpaca_temperature``,
    ``alpaca_top_p`` and ``alpaca_max_new_tokens`` when the config has them (paper profile:
    :data:`ZEPHYR_DECODING`), else greedy with ``cfg.max_new_tokens`` (0 means that too)."""
    max_new = int(getattr(cfg, "alpaca_max_new_tokens", 0) or cfg.max_new_tokens)
    return {"temperature": float(getattr(cfg, "alpaca_temperature", 0.0)),
            "top_p": float(getattr(cfg, "alpaca_top_p", 1.0)), "max_new_tokens": max_new}


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
    (judge saw the swapped order when is_switched) mapped back with 3 - x; None if unparsed or
    if there is no reply (a failed judge call)."""
    if output_1 == output_2:
        return 0.0
    if reply is None:  # no reply (a failed call): no preference; judge_outputs records and counts it
        return None
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


def judge_outputs(instructions: Sequence[Mapping], outputs: Sequence[str], model_id: str, judge: Any, *,
                  seed: int = SWITCH_SEED, desc: str | None = None) -> tuple[list[dict], dict]:
    """The judge step of an AlpacaEval run: annotate ``outputs`` (the model's, in eval-set order)
    against the eval set's reference outputs with ``judge`` (a ``judges.Judge``), alpaca_eval_gpt4's
    prompt, swap and call settings. Returns ``(annotation rows, metrics)``.

    Identical outputs get preference 0 without a call. A failed call or an unparsable reply gives
    None with ``judge_error`` set, counted in ``n_judge_failed`` or ``n_unparsed`` (the row is left
    out of the win rate, as alpaca_eval drops it). Both are failures of the judge: neither is cached
    as final, so running this again asks only for them (an unparsable one with the next attempt
    index). ``metrics`` is :func:`win_rate` plus ``n_judge_failed``, ``n_unparsed`` and
    ``inputs_total`` / ``inputs_lost`` (instructions without a usable judgment; ``win_rate`` is
    None when no preference is left)."""
    if len(instructions) != len(outputs):
        raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs")
    reqs = [annotator_request(i["instruction"], i["output"], o, seed) for i, o in zip(instructions, outputs)]
    need = [k for k, r in enumerate(reqs) if r["needs_judge"]]
    replies = judge.complete_many([reqs[k]["messages"] for k in need], parse=parse_ranking,
                                  temperature=ANNOTATOR_CONFIG["temperature"],
                                  max_tokens=ANNOTATOR_CONFIG["max_tokens"], desc=desc or f"AlpacaEval judge ({model_id})")
    reply_of = dict(zip(need, replies))
    rows, n_failed, n_unparsed = [], 0, 0
    for k, (inst, out) in enumerate(zip(instructions, outputs)):
        res = reply_of.get(k)
        error = None
        if res is None:
            pref = annotate_preference(inst["instruction"], inst["output"], out, None, seed)
        elif not res.ok:  # a failed call (no text) or an unparsable reply: lost, asked again on a rerun
            pref, error = None, res.error or "judge call failed"
            n_failed += res.text is None
            n_unparsed += res.text is not None
        else:
            pref = annotate_preference(inst["instruction"], inst["output"], out, res.text, seed)
        row = annotation_record(inst["instruction"], inst["output"], out, pref,
                                generator_1=inst.get("generator", REFERENCE_GENERATOR), generator_2=model_id,
                                dataset=inst.get("dataset", ""), raw_completion=res.text if res is not None else None)
        if error is not None:
            row["judge_error"] = error
        rows.append(row)
    prefs = [r["preference"] for r in rows]
    try:
        metrics = win_rate(prefs)
    except ValueError:  # every call failed or was unparsable: nothing to score yet
        metrics = {"win_rate": None, "standard_error": None, "n": 0, "n_dropped": len(prefs)}
    metrics.update({"n_judge_failed": n_failed, "n_unparsed": n_unparsed, "inputs_total": len(rows),
                    "inputs_lost": n_failed + n_unparsed})
    return rows, metrics


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
