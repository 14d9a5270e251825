"""Open LLM Leaderboard v1 through lm-evaluation-harness (0.4), on local multiple-choice tasks.

Scoring is lm-eval's own: this module only writes task YAMLs over local jsonl files, runs
``lm_eval.simple_evaluate`` and flattens the results. The prompt texts (``doc_to_text``) of ARC,
MMLU and TruthfulQA are read at run time from the installed lm-eval task YAMLs, and TruthfulQA
MC2 uses lm-eval's ``truthfulqa.utils.process_results_mc2``.

Row schemas of the local tasks (one JSON object per line):

- ``arc``: ``{"question": str, "choices": [str, ...], "answer": int}`` (answer = index of the
  correct choice). Prompt "Question: {question}\\nAnswer:", metrics acc and acc_norm.
- ``hellaswag``: ``{"context": str, "endings": [str, ...], "label": int}`` with the context
  already preprocessed as lm-eval's hellaswag ``process_docs`` does (see ``hellaswag_row``);
  prompt = context, metrics acc and acc_norm.
- ``mmlu``: ``{"question": str, "choices": [4 str], "answer": int}``, one task per subject with
  lm-eval's MMLU prompt, description "The following are multiple choice questions (with answers)
  about {subject}.", few-shot from a ``dev`` split (first n); metric acc. The MMLU score is the
  unweighted mean over subjects (``macro_average``), not lm-eval's size-weighted ``mmlu`` group.
- ``mmlu_continuation``: MMLU's rows scored as lm-eval's ``mmlu_continuation`` tasks do: the
  prompt "Question: {question}\nAnswer:" (read from lm-eval's continuation template) and the
  log-likelihood of each choice's *text*, not of a letter A–D; metrics acc and acc_norm.
- ``truthfulqa_mc2``: ``{"question": str, "mc2_targets": {"choices": [str, ...],
  "labels": [0|1, ...]}}`` with lm-eval's fixed 6-shot QA prompt; metric acc = MC2 (normalized
  probability mass of the true answers).

acc_norm (lm-eval) divides each choice's summed log-likelihood by its length in characters.
"""
from __future__ import annotations

import contextlib
import functools
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from zephyr_lib.io import atomic_write_text, write_jsonl

KINDS = ("arc", "hellaswag", "mmlu", "mmlu_continuation", "truthfulqa_mc2")

#: The 57 MMLU (hendrycksTest) subjects.
MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics", "econometrics",
    "electrical_engineering", "elementary_mathematics", "formal_logic", "global_facts",
    "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics",
    "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management",
    "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios",
    "nutrition", "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies",
    "sociology", "us_foreign_policy", "virology", "world_religions",
)

#: Open LLM Leaderboard v1 settings (paper Table 2) for the real tasks. ``task`` is the lm-eval
#: 0.4 name, ``harness_v1_task`` the name in the old harness the leaderboard ran.
PAPER_SETTINGS: dict[str, Any] = {
    "add_bos_token": False,  # the old harness added no BOS token
    "benchmarks": {
        "arc": {"task": "arc_challenge", "harness_v1_task": "arc:challenge", "num_fewshot": 25,
                "metric": "acc_norm"},
        "hellaswag": {"task": "hellaswag", "harness_v1_task": "hellaswag", "num_fewshot": 10,
                      "metric": "acc_norm"},
        "mmlu": {"task": "mmlu", "subtasks": tuple(f"mmlu_{s}" for s in MMLU_SUBJECTS),
                 "harness_v1_task": "hendrycksTest-*", "num_fewshot": 5, "metric": "acc",
                 "average": "macro"},
        "truthfulqa": {"task": "truthfulqa_mc2", "harness_v1_task": "truthfulqa:mc", "num_fewshot": 0,
                       "metric": "acc", "harness_v1_metric": "mc2"},
    },
}
#: Paper Table 2 (percent) for Zephyr-7B-beta.
PAPER_ZEPHYR_SCORES = {"arc": 62.03, "hellaswag": 84.52, "mmlu": 61.44, "truthfulqa": 57.44}

_KIND_FEWSHOT = {"arc": 25, "hellaswag": 10, "mmlu": 5, "mmlu_continuation": 5, "truthfulqa_mc2": 0}
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_UTILS_MODULE = "zephyr_lm_eval_utils"


# --------------------------------------------------------------------------------------------
# Prompts taken from the installed lm-eval
# --------------------------------------------------------------------------------------------

def _lm_eval_task_field(relative_yaml: str, field: str) -> Any:
    """A field of one of the installed lm-eval task YAMLs (so prompts match the harness)."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / relative_yaml
    if not path.is_file():
        raise FileNotFoundError(f"installed lm-eval has no {path}")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if field not in config:
        raise KeyError(f"{path} has no field '{field}'")
    return config[field]


def _doc_to_text(kind: str) -> str:
    if kind == "arc":
        return _lm_eval_task_field("arc/arc_easy.yaml", "doc_to_text")
    if kind == "mmlu":
        return _lm_eval_task_field("mmlu/default/_default_template_yaml", "doc_to_text")
    if kind == "mmlu_continuation":
        return _lm_eval_task_field("mmlu/continuation/_continuation_template_yaml", "doc_to_text")
    if kind == "truthfulqa_mc2":
        return _lm_eval_task_field("truthfulqa/truthfulqa_mc1.yaml", "doc_to_text")
    return "{{context}}"


def hellaswag_row(activity_label: str, ctx_a: str, ctx_b: str, endings: Sequence[str], label: int) -> dict:
    """A local hellaswag row from raw HellaSwag fields, preprocessed exactly like lm-eval's
    hellaswag ``process_docs`` (query = activity_label + ": " + ctx_a + " " + ctx_b.capitalize())."""
    from lm_eval.tasks.hellaswag.utils import preprocess

    context = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())
    return {"context": context, "endings": [preprocess(e) for e in endings], "label": int(label)}


# --------------------------------------------------------------------------------------------
# Writing local tasks
# --------------------------------------------------------------------------------------------

def _check_choice_row(row: Mapping, where: str, text: str, choices: str, target: str,
                      n_choices: int | None = None) -> None:
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    if not isinstance(row.get(text), str) or not row[text].strip():
        raise ValueError(f"{where}: field '{text}' should be a non-empty str")
    opts = row.get(choices)
    if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(c, str) for c in opts):
        raise ValueError(f"{where}: field '{choices}' should be a list of at least 2 str")
    if n_choices is not None and len(opts) != n_choices:
        raise ValueError(f"{where}: field '{choices}' should hold {n_choices} choices, got {len(opts)}")
    idx = row.get(target)
    if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(opts):
        raise ValueError(f"{where}: field '{target}' should be an index into '{choices}', got {idx!r}")


def _check_mc2_row(row: Mapping, where: str) -> None:
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        raise ValueError(f"{where}: field 'question' should be a non-empty str")
    targets = row.get("mc2_targets")
    if not isinstance(targets, Mapping):
        raise ValueError(f"{where}: field 'mc2_targets' should be an object with choices and labels")
    choices, labels = targets.get("choices"), targets.get("labels")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{where}: field 'mc2_targets.choices' should be a list of at least 2 str")
    if (not isinstance(labels, list) or len(labels) != len(choices)
            or not all(l in (0, 1) and not isinstance(l, bool) for l in labels)):
        raise ValueError(f"{where}: field 'mc2_targets.labels' should be 0/1 ints, one per choice")
    if 1 not in labels:
        raise ValueError(f"{where}: field 'mc2_targets.labels' has no true answer")


def _check_rows(rows: Sequence[Mapping], kind: str, where: str) -> list[dict]:
    rows = [dict(r) if isinstance(r, Mapping) else r for r in rows]
    if not rows:
        raise ValueError(f"{where}: no rows")
    for i, row in enumerate(rows):
        row_where = f"{where} row {i}"
        if kind == "arc":
            _check_choice_row(row, row_where, "question", "choices", "answer")
        elif kind == "hellaswag":
            _check_choice_row(row, row_where, "context", "endings", "label")
        elif kind in ("mmlu", "mmlu_continuation"):
            _check_choice_row(row, row_where, "question", "choices", "answer", n_choices=4)
        else:
            _check_mc2_row(row, row_where)
    return rows


def write_mc_task(task_dir: str | Path, name: str, rows: Sequence[Mapping], kind: str,
                  fewshot_rows: Sequence[Mapping] | None = None, num_fewshot: int | None = None,
                  subject: str | None = None) -> Path:
    """Write a local lm-eval multiple-choice task: ``{name}.yaml`` plus its jsonl data (absolute
    ``data_files`` paths) in ``task_dir``. Returns the YAML path.

    ``kind`` is one of KINDS (row schemas in the module docstring). ``fewshot_rows`` become the
    train split (``dev`` for mmlu); ``num_fewshot`` defaults to the leaderboard count (25/10/5/0)
    capped by the number of few-shot rows (0 without them). ``subject`` (mmlu only) names the
    subject in the task description (defaults to ``name``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind should be one of {KINDS}, got {kind!r}")
    if not _NAME.match(name):
        raise ValueError(f"task name should match [A-Za-z0-9_]+, got {name!r}")
    task_dir = Path(task_dir).resolve()
    task_dir.mkdir(parents=True, exist_ok=True)
    rows = _check_rows(rows, kind, f"task {name}")
    shots = _check_rows(fewshot_rows, kind, f"task {name} few-shot") if fewshot_rows else []
    if kind == "truthfulqa_mc2" and shots:
        raise ValueError("truthfulqa_mc2 is 0-shot (its prompt already holds 6 fixed QA pairs)")
    if num_fewshot is None:
        num_fewshot = min(_KIND_FEWSHOT[kind], len(shots))
    if num_fewshot < 0 or num_fewshot > len(shots):
        raise ValueError(f"task {name}: num_fewshot={num_fewshot} but {len(shots)} few-shot rows")

    test_path = task_dir / f"{name}.test.jsonl"
    write_jsonl(test_path, rows)
    data_files = {"test": str(test_path)}
    mmlu = kind in ("mmlu", "mmlu_continuation")
    fewshot_split = "dev" if mmlu else "train"
    if shots:
        shot_path = task_dir / f"{name}.{fewshot_split}.jsonl"
        write_jsonl(shot_path, shots)
        data_files[fewshot_split] = str(shot_path)

    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
        "output_type": "multiple_choice",
        "test_split": "test",
        "num_fewshot": num_fewshot,
        "doc_to_text": _doc_to_text(kind),
    }
    if kind == "arc":
        config.update(doc_to_choice="{{choices}}", doc_to_target="{{answer}}",
                      metric_list=[_metric("acc"), _metric("acc_norm")])
    elif kind == "hellaswag":
        config.update(doc_to_choice="{{endings}}", doc_to_target="{{label}}",
                      metric_list=[_metric("acc"), _metric("acc_norm")])
    elif kind == "mmlu":
        subject_text = (subject or name).replace("_", " ")
        config.update(doc_to_choice=["A", "B", "C", "D"], doc_to_target="answer",
                      description=f"The following are multiple choice questions (with answers) "
                                  f"about {subject_text}.\n\n",
                      metric_list=[_metric("acc")])
    elif kind == "mmlu_continuation":
        subject_text = (subject or name).replace("_", " ")
        config.update(doc_to_choice="{{choices}}", doc_to_target="{{answer}}",
                      description=f"The following are questions (with answers) about {subject_text}.\n\n",
                      metric_list=[_metric("acc"), _metric("acc_norm")])
    else:
        config.update(doc_to_choice="{{mc2_targets.choices}}", doc_to_target=0,
                      metric_list=[_metric("acc")])
    if shots:
        if mmlu:
            config.update(fewshot_split="dev", fewshot_config={"sampler": "first_n"})
        else:  # as the real ARC/HellaSwag YAMLs: few-shot examples come from the train split
            config.update(training_split="train", fewshot_split="train")
    config["metadata"] = {"version": 1.0}
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=10_000)
    if kind == "truthfulqa_mc2":
        _write_utils_module(task_dir)
        text += f"process_results: !function {_UTILS_MODULE}.process_results_mc2\n"
    yaml_path = task_dir / f"{name}.yaml"
    atomic_write_text(yaml_path, text)
    return yaml_path


def _metric(name: str) -> dict:
    return {"metric": name, "aggregation": "mean", "higher_is_better": True}


def _write_utils_module(task_dir: Path) -> None:
    atomic_write_text(task_dir / f"{_UTILS_MODULE}.py", (
        '"""Generated by zephyr_lib.evals.leaderboard: lm-eval\'s own TruthfulQA MC2 scorer."""\n'
        "from lm_eval.tasks.truthfulqa.utils import process_results_mc2  # noqa: F401\n"))


def write_mmlu_tasks(task_dir: str | Path, rows_by_subject: Mapping[str, Sequence[Mapping]],
                     fewshot_by_subject: Mapping[str, Sequence[Mapping]] | None = None,
                     prefix: str = "local_mmlu", num_fewshot: int | None = None,
                     kind: str = "mmlu") -> list[str]:
    """One local MMLU task per subject (``{prefix}_{subject}``); returns the task names.
    ``kind``: "mmlu" (letters A–D, the leaderboard's) or "mmlu_continuation" (the choices' text)."""
    names = []
    for subject, rows in rows_by_subject.items():
        name = f"{prefix}_{subject}"
        shots = (fewshot_by_subject or {}).get(subject)
        write_mc_task(task_dir, name, rows, kind, fewshot_rows=shots, num_fewshot=num_fewshot,
                      subject=subject)
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------
# Running lm-eval
# --------------------------------------------------------------------------------------------

def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def flatten_results(results: Mapping) -> dict:
    """lm-eval's results dict as {"task/metric": value, "task/metric_stderr": value,
    "task/n": n, "task/num_fewshot": k}; filter suffixes ("acc,none") are dropped and
    non-numeric stderr ("N/A") becomes None."""
    flat: dict[str, Any] = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if key == "alias" or "," not in key:
                continue
            metric, _, filt = key.partition(",")
            label = metric if filt == "none" else f"{metric},{filt}"
            flat[f"{task}/{label}"] = _number_or_none(value)
        n = results.get("n-samples", {}).get(task, {})
        if "effective" in n:
            flat[f"{task}/n"] = int(n["effective"])
        config = results.get("configs", {}).get(task, {})
        if "num_fewshot" in config:
            flat[f"{task}/num_fewshot"] = config["num_fewshot"]
    return flat


def _device_and_dtype(device: str) -> tuple[str, str]:
    """lm-eval's device string and dtype name for a requested device (auto/cpu/cuda/cuda:N)."""
    from zephyr_lib.modeling import resolve_device

    dev = resolve_device(device, "eval.device")
    return dev, ("bfloat16" if dev.startswith("cuda") else "float32")


def prefix_shared_hflm(**kwargs):
    """lm-eval's ``HFLM`` (same arguments) whose log-likelihoods run each distinct context once.

    A multiple-choice question is one context scored with every choice: stock ``HFLM`` runs the
    few-shot context once per choice (4 times for ARC, HellaSwag and MMLU). This subclass runs a
    batch of distinct contexts once, keeps their key/value cache, and scores all continuations of
    each context against it: the same log-probabilities and greedy flags as ``HFLM`` within float
    rounding (``tests/test_leaderboard.py`` compares both on every request of the tiny tasks), for
    about a quarter of the tokens. Requests that lm-eval would truncate from the left (context and
    continuation longer than the model's window) go through ``HFLM``'s own path unchanged."""
    import torch
    import torch.nn.functional as F
    from lm_eval.models.huggingface import HFLM
    from tqdm.auto import tqdm

    class PrefixSharedHFLM(HFLM):
        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            if self.backend != "causal":
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            out: list = [None] * len(requests)
            groups: dict[tuple, list[int]] = {}
            long = []
            for i, (_, ctx, cont) in enumerate(requests):
                if not ctx or not cont or len(ctx) + len(cont) > self.max_length + 1:
                    long.append(i)
                else:
                    groups.setdefault(tuple(ctx), []).append(i)
            if long:
                for i, r in zip(long, super()._loglikelihood_tokens([requests[i] for i in long], True, override_bs)):
                    out[i] = r
            bs = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 32)
            keys = sorted(groups, key=len, reverse=True)  # similar lengths batch together
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            dtype = self.softmax_dtype or torch.float32
            for start in tqdm(range(0, len(keys), bs), disable=disable_tqdm or self.rank != 0,
                              desc="Log-likelihoods (shared contexts)"):
                chunk = keys[start:start + bs]
                lens = torch.tensor([len(k) for k in chunk], device=self.device)
                ids = torch.full((len(chunk), int(lens.max())), pad, dtype=torch.long, device=self.device)
                mask = torch.zeros_like(ids)
                for g, k in enumerate(chunk):
                    ids[g, :len(k)] = torch.tensor(k, device=self.device)
                    mask[g, :len(k)] = 1
                with torch.no_grad():
                    first = self.model(input_ids=ids, attention_mask=mask, use_cache=True)
                    last = F.log_softmax(first.logits[torch.arange(len(chunk)), lens - 1], dim=-1, dtype=dtype)
                    rows = [(g, i) for g, k in enumerate(chunk) for i in groups[k]]
                    conts = [requests[i][2] for _, i in rows]
                    width = max(len(c) for c in conts) - 1  # the continuations' own inputs (all but their last token)
                    rest = None
                    if width > 0:
                        owner = torch.tensor([g for g, _ in rows], device=self.device)
                        past = first.past_key_values
                        past.reorder_cache(owner)  # one copy of its context's cache per continuation
                        cin = torch.full((len(rows), width), pad, dtype=torch.long, device=self.device)
                        cmask = torch.zeros_like(cin)
                        for n, c in enumerate(conts):
                            cin[n, :len(c) - 1] = torch.tensor(c[:-1], device=self.device)
                            cmask[n, :len(c) - 1] = 1
                        pos = lens[owner][:, None] + torch.arange(width, device=self.device)[None]
                        rest = F.log_softmax(self.model(input_ids=cin, attention_mask=torch.cat([mask[owner], cmask], 1),
                                                        position_ids=pos, past_key_values=past, use_cache=False).logits,
                                             dim=-1, dtype=dtype)
                for n, ((g, i), c) in enumerate(zip(rows, conts)):
                    logp = [last[g]] + ([rest[n, j] for j in range(len(c) - 1)] if len(c) > 1 else [])
                    answer = (float(sum(lp[t] for lp, t in zip(logp, c))),
                              all(int(lp.argmax()) == t for lp, t in zip(logp, c)))
                    out[i] = answer
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            return out

    return PrefixSharedHFLM(**kwargs)


@contextlib.contextmanager
def compiled_templates():
    """While it is open, lm-eval compiles each Jinja prompt template once: its
    ``utils.apply_template`` compiles the template again for every document and choice (about
    8,000 compilations per toy model, a third of its evaluation time). Same environment, same text."""
    from lm_eval import utils

    original = utils.apply_template
    compile_once = functools.lru_cache(maxsize=1024)(utils.env.from_string)
    utils.apply_template = lambda template, doc: compile_once(template).render(**doc)
    try:
        yield
    finally:
        utils.apply_template = original


def run_lm_eval(model_dir: str | Path, task_dir: str | Path, tasks: Sequence[str],
                num_fewshot: int | None = None, batch_size: int | str = 8, limit: int | float | None = None,
                add_bos_token: bool | None = PAPER_SETTINGS["add_bos_token"], device: str = "auto",
                share_contexts: bool = False) -> dict:
    """Evaluate a local HF model on local tasks with ``lm_eval.simple_evaluate`` (model "hf",
    tasks indexed only from ``task_dir``) on ``device`` (``modeling.resolve_device``: auto = the
    GPU when there is one; float32 on CPU, bfloat16 on GPU). ``num_fewshot`` overrides every
    task's YAML value when given. ``share_contexts``: score with :func:`prefix_shared_hflm` (each
    context run once; the same numbers within float rounding). Returns flatten_results(...) of the run."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = list(tasks)
    if not tasks:
        raise ValueError("run_lm_eval: no tasks")
    device, dtype = _device_and_dtype(device)
    model_args = {"pretrained": str(Path(model_dir).resolve()), "dtype": dtype}
    if add_bos_token is not None:
        model_args["add_bos_token"] = add_bos_token
    task_manager = TaskManager(include_path=str(Path(task_dir).resolve()), include_defaults=False)
    unknown = [t for t in tasks if t not in task_manager.all_tasks]
    if unknown:
        raise ValueError(f"tasks {unknown} not found in {task_dir}")
    if share_contexts:
        model, model_args = prefix_shared_hflm(**model_args, batch_size=batch_size, device=device), None
    else:
        model, model_args = "hf", ",".join(f"{k}={v}" for k, v in model_args.items())
    with compiled_templates():
        results = lm_eval.simple_evaluate(
            model=model, model_args=model_args, tasks=tasks, num_fewshot=num_fewshot,
            batch_size=batch_size, limit=limit, task_manager=task_manager, device=device,
            log_samples=False)
    if results is None:
        raise RuntimeError("lm_eval.simple_evaluate returned no results")
    return flatten_results(results)


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------

def macro_average(subject_scores: Mapping[str, float]) -> float:
    """Unweighted mean over subjects (the leaderboard's MMLU score)."""
    if not subject_scores:
        raise ValueError("macro_average: no subjects")
    return sum(float(v) for v in subject_scores.values()) / len(subject_scores)


def micro_average(subject_scores: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    """Mean weighted by subject size (what lm-eval 0.4's ``mmlu`` group reports)."""
    if not subject_scores:
        raise ValueError("micro_average: no subjects")
    missing = [s for s in subject_scores if s not in sizes]
    if missing:
        raise ValueError(f"micro_average: no size for {missing}")
    total = sum(int(sizes[s]) for s in subject_scores)
    if total <= 0:
        raise ValueError("micro_average: sizes sum to 0")
    return sum(float(v) * int(sizes[s]) for s, v in subject_scores.items()) / total


def leaderboard_summary(metrics: Mapping[str, Any], tasks: Mapping[str, str | Sequence[str]]) -> dict:
    """Paper-style scores in percent from run_lm_eval metrics. ``tasks`` maps "arc", "hellaswag",
    "mmlu", "truthfulqa" to the task name that stands for each (a list of subject tasks for mmlu,
    macro-averaged); each uses its PAPER_SETTINGS metric. Adds "average" over the four."""
    out: dict[str, float] = {}
    for bench, task in tasks.items():
        if bench not in PAPER_SETTINGS["benchmarks"]:
            raise ValueError(f"unknown benchmark {bench!r}")
        metric = PAPER_SETTINGS["benchmarks"][bench]["metric"]
        names = [task] if isinstance(task, str) else list(task)
        values = {}
        for name in names:
            key = f"{name}/{metric}"
            if metrics.get(key) is None:
                raise KeyError(f"no value for {key}")
            values[name] = float(metrics[key])
        out[bench] = 100 * macro_average(values)
    if out:
        out["average"] = sum(out.values()) / len(out)
    return out


def run_paper_leaderboard(model_dir: str | Path, batch_size: int | str = "auto", device: str = "auto",
                          limit: int | float | None = None) -> dict:
    """The Open LLM Leaderboard v1 on the real lm-eval tasks, with PAPER_SETTINGS (per-task few-shot,
    no BOS); MMLU is the unweighted mean over its 57 subjects. Needs the hub (datasets); ``device``
    as in :func:`run_lm_eval` (a GPU in practice: bfloat16 there)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    device, dtype = _device_and_dtype(device)
    model_args = f"pretrained={model_dir},dtype={dtype},add_bos_token={PAPER_SETTINGS['add_bos_token']}"
    out: dict = {}
    tm = TaskManager()
    for key, spec in PAPER_SETTINGS["benchmarks"].items():
        tasks = list(spec.get("subtasks") or [spec["task"]])
        res = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=tasks, num_fewshot=spec["num_fewshot"],
                                      batch_size=batch_size, limit=limit, task_manager=tm, device=device)
        flat = flatten_results(res)
        scores = {t: flat[f"{t}/{spec['metric']}"] for t in tasks}
        out[key] = macro_average(scores) if spec.get("average") == "macro" else scores[tasks[0]]
        out[f"{key}_raw"] = flat
    return out
