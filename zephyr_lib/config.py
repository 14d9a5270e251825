"""Profiles and strict, typed stage configuration.

A profile (``configs/<profile>.yaml``) has four sections::

    seed: 0                  # global seed, copied into every stage that does not set its own
    world: {...}             # the toy world (WorldConfig): shared by every stage
    stages: {sft: {...}}     # defaults for every run of a stage (one dataclass per stage)
    runs:                    # the plan: named runs; `stage` defaults to the run's name
      sft: {}
      sft_alpha: {stage: sft, data: curate/alpha}

Loading is strict: an unknown key is an error naming the key, the stage and the file; values
are coerced to the annotated type (YAML's ``5e-7`` is a string, here it becomes a float; YAML's
``off`` is a bool and is refused for a string field). Overrides (``--set run.key=value`` or a
notebook's ``overrides`` parameter) go through the same validation. Each resolved run has a
stable hash over its config, the world and its upstream runs' hashes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
# A parameter NAME that means a credential. Words are separated by "_", "-" or "."; "token" counts
# only alone or after a credential word (hf_token, access_token, auth_token, ...), never in names
# like max_new_tokens, pad_token or prompt_tokens. Names ending in "_env" hold a variable's NAME.
SECRET_PATTERN = re.compile(
    r"(?:^|[_.-])(?:api[_-]?key|apikey|secret|secrets|password|passwd|passphrase|credentials?"
    r"|private[_-]?key|(?:hf|hub|huggingface|access|auth|bearer|refresh|api|id|session|oauth|github|gh"
    r"|openai|wandb|slack|bot|secret)[_-]token)(?:$|[_.-])|^token$", re.I)
# A parameter VALUE shaped like a key: well-known prefixes, or one long high-entropy word.
SECRET_VALUE_PATTERN = re.compile(
    r"(?:^|[^A-Za-z0-9])(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})")
ENV_VAR_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class ConfigError(ValueError):
    """A profile or override is invalid; the message names the file, stage and key."""


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a one-line description (shown by ``zephyr config``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def ref(default: str, help: str) -> Any:
    """A field naming an upstream run (``run``, ``run/artifact`` or ``run@epoch``)."""
    return opt(default, help, ref=True)


# --------------------------------------------------------------------------------------------
# One frozen dataclass per stage. Field help is the documentation; __post_init__ validates.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorldConfig:
    """The toy world: a fictional knowledge base, task generator, teacher and judge stand-ins."""

    seed: int = opt(1234, "Seed of the world itself (entities, facts); independent of training seeds.")
    n_entities: int = opt(40, "Number of fictional entities in the knowledge base.")
    n_unknown: int = opt(12, "Names of entities that do NOT exist (honest answer: say so).")
    teacher_wrong_rate: float = opt(0.08, "Teacher (GPT-3.5 stand-in): rate of wrong answers.")
    teacher_ignore_rate: float = opt(0.10, "Teacher: rate of ignoring an explicit constraint.")
    teacher_lowercase_rate: float = opt(0.05, "Teacher: rate of dialogues with lower-cased sentence starts.")
    teacher_boilerplate_rate: float = opt(0.35, "Teacher: rate of 'As an AI…' prefaces on plain fact questions.")

    def __post_init__(self) -> None:
        _check_rates(self, "teacher_wrong_rate", "teacher_ignore_rate", "teacher_lowercase_rate",
                     "teacher_boilerplate_rate")
        _check_positive(self, "n_entities")


@dataclass(frozen=True)
class BaseConfig:
    """Stage `base`: a tokenizer and a small Mistral trained from scratch, or a pretrained model."""

    pretrained: str = opt("", "Hub id or local path of a pretrained base model (paper: mistralai/Mistral-7B-v0.1); empty = train from scratch on the toy world.")
    revision: str = opt("", "Hub revision of `pretrained` (empty = default branch).")
    vocab_size: int = opt(1024, "BPE vocabulary size asked for (small corpora yield fewer).")
    hidden_size: int = opt(192, "MistralConfig.hidden_size.")
    intermediate_size: int = opt(512, "MistralConfig.intermediate_size.")
    num_hidden_layers: int = opt(6, "MistralConfig.num_hidden_layers.")
    num_attention_heads: int = opt(6, "MistralConfig.num_attention_heads.")
    num_key_value_heads: int = opt(2, "MistralConfig.num_key_value_heads (grouped-query attention, as Mistral).")
    max_position_embeddings: int = opt(512, "Longest sequence the model supports.")
    n_docs: int = opt(12000, "Pretraining documents generated from the toy world.")
    seq_len: int = opt(128, "Pretraining block length in tokens.")
    num_train_epochs: float = opt(2.0, "Pretraining epochs over the document blocks.")
    learning_rate: float = opt(2e-3, "Peak AdamW learning rate (cosine schedule).")
    warmup_ratio: float = opt(0.05, "Fraction of steps of linear warmup.")
    batch_size: int = opt(32, "Blocks per optimizer step.")
    seed: int = opt(0, "Training seed.")

    def __post_init__(self) -> None:
        _check_positive(self, "vocab_size", "hidden_size", "num_hidden_layers", "n_docs", "seq_len",
                        "num_train_epochs", "learning_rate", "batch_size")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("base: hidden_size must divide by num_attention_heads, and heads by num_key_value_heads")


@dataclass(frozen=True)
class CurateConfig:
    """Stage `curate`: the UltraChat-style corpus (α, raw) and its curated version (β)."""

    source: str = opt("toy", "'toy' (the teacher stand-in writes the corpus), 'api' (a real teacher writes it from teacher_seeds), or a raw UltraChat .jsonl path or hub id (stingning/ultrachat).")
    teacher_seeds: str = opt("", "source 'api': a text file (path or URL) of topics or opening questions, one per line.", hash_omit_default=True)
    teacher_model: str = opt("gpt-3.5-turbo", "source 'api': the teacher model (the paper: GPT-3.5-turbo).", hash_omit_default=True)
    teacher_base_url: str = opt("https://api.openai.com/v1", "source 'api': OpenAI-compatible base URL (e.g. a vLLM server).", hash_omit_default=True)
    teacher_api_key_env: str = opt("OPENAI_API_KEY", "source 'api': NAME of the environment variable holding the key.", hash_omit_default=True)
    n_dialogues: int = opt(3000, "Dialogues the teacher writes (toy) or rows read (real data, 0 = all).")
    max_followups: int = opt(1, "Most self-prompted follow-up turns per dialogue (UltraChat's loop).")
    truecase: bool = opt(True, "Apply truecasing heuristics for β.")
    filter_boilerplate: bool = opt(True, "Drop dialogues whose assistant turns contain a boilerplate phrase, for β.")
    dedup: bool = opt(True, "Drop exact duplicate dialogues.")
    boilerplate_phrases: list[str] = opt([], "Phrases that mark boilerplate (empty = the library's default list).")
    test_fraction: float = opt(0.05, "Fraction of dialogues held out for test_sft / test_gen.")
    seed: int = opt(0, "Seed for generation and splits.")

    def __post_init__(self) -> None:
        _check_rates(self, "test_fraction")
        if self.n_dialogues < 0:
            raise ConfigError("curate.n_dialogues must be >= 0")


@dataclass(frozen=True)
class SFTConfig:
    """Stage `sft`: distilled supervised fine-tuning with TRL's SFTTrainer."""

    init: str = ref("base", "Run whose model is fine-tuned (base, or sft for dSFT-2).")
    data: str = ref("curate/beta", "Dataset: curate/beta, curate/alpha, or aif/sft (chosen answers, dSFT-2).")
    learning_rate: float = opt(2e-5, "Peak learning rate (paper: 2e-5).")
    lr_scheduler_type: str = opt("cosine", "Schedule shape (paper: cosine).")
    warmup_ratio: float = opt(0.1, "Warmup fraction (paper: 0.1).")
    num_train_epochs: float = opt(1.0, "Epochs (paper tried 1–3, final 1).")
    per_device_train_batch_size: int = opt(16, "Batch per device.")
    gradient_accumulation_steps: int = opt(1, "Accumulation steps; global batch = per-device × accumulation × processes.")
    num_processes: int = opt(1, "Processes (GPUs); >1 launches through accelerate.")
    max_length: int = opt(256, "Longest tokenized example (packing: block length).")
    packing: bool = opt(False, "Pack examples into blocks (paper) instead of padding; packing trains on all tokens.")
    assistant_only_loss: bool = opt(True, "Loss on assistant tokens only (ignored when packing).")
    weight_decay: float = opt(0.0, "AdamW weight decay (paper: none).")
    max_train_samples: int = opt(0, "Use at most this many training dialogues (0 = all).")
    logging_steps: int = opt(10, "Log every N optimizer steps.")
    eval_steps: int = opt(50, "Evaluate on test_sft every N steps.")
    save_steps: int = opt(100, "Checkpoint every N steps (resume after a kill).")
    bf16: bool = opt(False, "bfloat16 training (GPUs; CPUs here have no fast bf16 path).")
    activation_checkpointing: bool = opt(False, "Activation (gradient) checkpointing: saves memory, costs 20-35% time.")
    accelerate_config: str = opt("", "accelerate config file for multi-process runs (e.g. configs/accelerate/zero3.yaml).")
    use_peft: bool = opt(False, "Train LoRA adapters (peft) instead of all weights, for smaller GPUs; needs `pip install peft`.", hash_omit_default=True)
    lora_r: int = opt(16, "LoRA rank (use_peft).", hash_omit_default=True)
    lora_alpha: int = opt(32, "LoRA scaling alpha (use_peft).", hash_omit_default=True)
    lora_dropout: float = opt(0.05, "LoRA dropout (use_peft).", hash_omit_default=True)
    lora_target_modules: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                         "Modules that get LoRA adapters (use_peft; Mistral's attention and MLP projections).", hash_omit_default=True)
    load_in_4bit: bool = opt(False, "QLoRA: load the frozen base weights in 4-bit NF4 (use_peft, CUDA only); needs `pip install bitsandbytes`.", hash_omit_default=True)
    seed: int = opt(0, "Training seed.")

    def __post_init__(self) -> None:
        _check_positive(self, "learning_rate", "num_train_epochs", "per_device_train_batch_size",
                        "gradient_accumulation_steps", "num_processes", "max_length")
        _check_rates(self, "warmup_ratio")

    @property
    def global_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_processes


@dataclass(frozen=True)
class AIFConfig:
    """Stage `aif`: UltraFeedback-style AI feedback (pool answers, judge ratings, binarization)."""

    source: str = opt("toy", "'toy', a raw openbmb/UltraFeedback path or hub id, or an ultrafeedback_binarized path or hub id.")
    revision: str = opt("", "Hub revision of `source` (paper: ultrafeedback_binarized @ 292c163…).")
    policy: str = ref("sft", "dSFT run whose model joins the pool.")
    base: str = ref("base", "Base run whose model joins the pool.")
    n_prompts: int = opt(600, "Prompts to answer and rate (toy) or rows to read (real, 0 = all).")
    pool: list[str] = opt(["teacher_strong", "teacher", "teacher_sloppy", "teacher_verbose", "policy", "base"],
                          "Pool members; each prompt gets answers from 4 of them.")
    completions_per_prompt: int = opt(4, "Answers per prompt (UltraFeedback: 4).")
    rule: str = opt("overall", "Binarization: 'overall' (the dataset's code) or 'mean_aspects' (Argilla's, ties dropped).")
    binarize_seed: int = opt(42, "Seed for picking the rejected answer (the dataset's code: 42).")
    drop_identical: bool = opt(True, "Drop pairs whose chosen and rejected answers are the same text (no DPO signal; counted).")
    test_fraction: float = opt(0.1, "Fraction of pairs held out as test_prefs.")
    max_new_tokens: int = opt(96, "Generation length for model pool members.")
    temperature: float = opt(0.7, "Sampling temperature for model pool members.")
    judge: str = opt("toy", "'toy' (the GPT-4 stand-in) or 'openai' (any OpenAI-compatible endpoint).")
    judge_model: str = opt("gpt-4-0613", "Model name sent to a real judge.")
    judge_base_url: str = opt("https://api.openai.com/v1", "Base URL of a real judge.")
    judge_api_key_env: str = opt("OPENAI_API_KEY", "NAME of the environment variable holding the judge's key.")
    seed: int = opt(0, "Seed for prompts and pool sampling.")

    def __post_init__(self) -> None:
        _check_choice(self, "rule", ("overall", "mean_aspects"))
        _check_choice(self, "judge", ("toy", "openai"))
        _check_rates(self, "test_fraction")
        if self.completions_per_prompt < 2 or self.completions_per_prompt > len(self.pool):
            raise ConfigError("aif.completions_per_prompt must be between 2 and the pool size")


@dataclass(frozen=True)
class DPOConfig:
    """Stage `dpo`: distilled DPO with TRL's DPOTrainer; the reference is a frozen copy of `init`."""

    init: str = ref("sft", "Run whose model is the policy's start and the frozen reference (sft, or base for the ablation).")
    data: str = ref("aif", "Preference data run (ultrafeedback_binarized schema).")
    beta: float = opt(0.1, "DPO β (paper: 0.1; handbook: 0.01).")
    learning_rate: float = opt(5e-7, "Peak learning rate (paper: 5e-7).")
    lr_scheduler_type: str = opt("linear", "Schedule shape (paper: linear; handbook: cosine).")
    warmup_ratio: float = opt(0.1, "Warmup fraction.")
    num_train_epochs: float = opt(3.0, "Epochs (paper: 3; handbook: 1).")
    per_device_train_batch_size: int = opt(8, "Pairs per device per step.")
    gradient_accumulation_steps: int = opt(1, "Accumulation; global batch = per-device × accumulation × processes.")
    num_processes: int = opt(1, "Processes (GPUs); >1 launches through accelerate.")
    max_length: int = opt(256, "Longest prompt + completion in tokens (paper: 1024).")
    max_prompt_length: int = opt(128, "Prompt budget inside max_length (paper: 512); longer prompts keep their end.")
    loss_type: str = opt("sigmoid", "TRL loss type (the paper's loss is 'sigmoid').")
    optim: str = opt("adamw_torch", "Optimizer name (the first handbook config used rmsprop).")
    logging_steps: int = opt(5, "Log every N steps.")
    eval_steps: int = opt(20, "Evaluate on test_prefs every N steps.")
    save_per_epoch: bool = opt(True, "Save a model after every epoch (Figure 3: MT-Bench vs epochs).")
    bf16: bool = opt(False, "bfloat16 training.")
    activation_checkpointing: bool = opt(False, "Activation (gradient) checkpointing.")
    accelerate_config: str = opt("", "accelerate config file for multi-process runs.")
    use_peft: bool = opt(False, "Train LoRA adapters (peft) instead of all weights, for smaller GPUs; needs `pip install peft`.", hash_omit_default=True)
    lora_r: int = opt(16, "LoRA rank (use_peft).", hash_omit_default=True)
    lora_alpha: int = opt(32, "LoRA scaling alpha (use_peft).", hash_omit_default=True)
    lora_dropout: float = opt(0.05, "LoRA dropout (use_peft).", hash_omit_default=True)
    lora_target_modules: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                         "Modules that get LoRA adapters (use_peft; Mistral's attention and MLP projections).", hash_omit_default=True)
    load_in_4bit: bool = opt(False, "QLoRA: load the frozen base weights in 4-bit NF4 (use_peft, CUDA only); needs `pip install bitsandbytes`.", hash_omit_default=True)
    seed: int = opt(0, "Training seed.")

    def __post_init__(self) -> None:
        _check_positive(self, "beta", "learning_rate", "num_train_epochs", "per_device_train_batch_size",
                        "gradient_accumulation_steps", "num_processes", "max_length", "max_prompt_length")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError("dpo.max_prompt_length must be smaller than dpo.max_length")

    @property
    def global_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_processes


@dataclass(frozen=True)
class EvalConfig:
    """Stage `eval`: MT-Bench, AlpacaEval (v1) and the Open LLM Leaderboard tasks for several models."""

    models: list[str] = opt(["base", "sft", "dpo", "teacher"], "Runs (or run@epoch, or toy agents 'teacher', 'reference') to evaluate.")
    benchmarks: list[str] = opt(["mt_bench", "alpaca_eval", "leaderboard"], "Which benchmarks to run.")
    mt_bench_questions: str = opt("toy", "'toy' or a FastChat question.jsonl path/URL.")
    mt_bench_references: str = opt("", "FastChat reference answers (reference_answer/gpt-4.jsonl) for math, reasoning, coding; toy: the world's answers.")
    judge_prompts: str = opt("", "FastChat judge_prompts.jsonl path (empty = the toy profile's prompts in FastChat's schema and layouts).")
    alpaca_eval_set: str = opt("toy", "'toy' or an AlpacaEval eval-set JSON path/URL (805 instructions with text-davinci-003 outputs).")
    leaderboard_tasks: str = opt("toy", "'toy' (the toy world's four tasks) or 'paper' (arc_challenge, hellaswag, mmlu, truthfulqa_mc2 with the leaderboard v1 settings).")
    mt_bench_pairwise_baseline: str = opt("", "Also run MT-Bench's pairwise mode: every other model against this one, both orders, disagreement = tie (empty = off).", hash_omit_default=True)
    n_alpaca: int = opt(200, "Toy AlpacaEval instructions (real set: all 805).")
    n_leaderboard: int = opt(200, "Toy questions per leaderboard task.")
    max_new_tokens: int = opt(128, "Generation length (FastChat: 1024).")
    batch_size: int = opt(32, "Generation batch size.")
    n_bootstrap: int = opt(1000, "Bootstrap resamples for 95% intervals.")
    judge: str = opt("toy", "'toy' or 'openai'.")
    judge_model: str = opt("gpt-4-0613", "Model name sent to a real judge (paper: GPT-4).")
    judge_base_url: str = opt("https://api.openai.com/v1", "Base URL of a real judge.")
    judge_api_key_env: str = opt("OPENAI_API_KEY", "NAME of the environment variable holding the judge's key.")
    seed: int = opt(0, "Sampling seed.")

    def __post_init__(self) -> None:
        _check_choice(self, "judge", ("toy", "openai"))
        _check_choice(self, "leaderboard_tasks", ("toy", "paper"))
        for b in self.benchmarks:
            if b not in ("mt_bench", "alpaca_eval", "leaderboard"):
                raise ConfigError(f"eval.benchmarks: unknown benchmark {b!r}")


@dataclass(frozen=True)
class ResultsConfig:
    """Stage `results`: the paper's tables and figures beside this run's."""

    eval: str = ref("eval", "The eval run whose metrics and predictions feed the tables.")
    table1: list[str] = opt(["base", "sft_alpha", "sft", "dpo", "teacher", "reference"],
                            "Models of the Table 1/2 analogue, in order (runs or toy agents).")
    ablation: list[str] = opt(["dDPO − dSFT=dpo_base", "dSFT-1=sft", "dSFT-2=sft2", "dDPO + dSFT=dpo_1ep"],
                              "Table 3 arms as 'arm=run' (the paper's arm names).")
    epochs: list[str] = opt(["sft", "dpo@1", "dpo@2", "dpo"], "Models of the MT-Bench-vs-DPO-epochs curve (Figure 3).")
    dpo: str = opt("dpo", "The DPO run whose training curves Figure 3 shows.")
    sweep: list[str] = opt([], "DPO runs compared with their dSFT start (what was tried when dDPO > dSFT did not reproduce).")
    n_bootstrap: int = opt(2000, "Paired-bootstrap resamples for differences between models.")
    seed: int = opt(0, "Bootstrap seed.")


STAGE_CONFIGS: dict[str, type] = {
    "base": BaseConfig, "curate": CurateConfig, "sft": SFTConfig, "aif": AIFConfig,
    "dpo": DPOConfig, "eval": EvalConfig, "results": ResultsConfig,
}
# Runs of these stages depend on other runs through fields marked ref=True; a list field
# (eval.models, results.evals) lists runs too.
LIST_REFS = {("eval", "models")}
TOY_AGENTS = ("teacher", "reference")  # toy-world programs that can be evaluated like models
# The toy judge's version: part of the hash of every run it grades (aif, eval), so changing how it
# grades reruns them instead of reusing stale verdicts (its cache is keyed by this name too).
TOY_JUDGE_VERSION = "toy-judge-v2"


# --------------------------------------------------------------------------------------------
# Coercion
# --------------------------------------------------------------------------------------------

def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads 5e-7 as the string '5e-7'
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got the boolean {value!r} "
                              "(YAML reads off/on/yes/no as booleans: quote the value)")
        if isinstance(value, (int, float)):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp!r}")


def build(cls: type, values: dict, where: str) -> Any:
    """Instantiate a stage dataclass from raw values: unknown keys and bad types are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"known keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """'run.key=value' -> (run, key, value parsed as YAML)."""
    m = re.fullmatch(r"([A-Za-z_][\w@]*)\.([A-Za-z_]\w*)=(.*)", text, re.S)
    if not m:
        raise ConfigError(f"--set {text!r}: expected run.key=value (e.g. sft.learning_rate=1e-4)")
    run, key, raw = m.groups()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return run, key, value


# --------------------------------------------------------------------------------------------
# Profiles and the plan
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One node of the plan: a named execution of a stage with a resolved config."""

    name: str
    stage: str
    config: Any
    upstream: tuple[str, ...]


@dataclass
class Profile:
    name: str
    path: Path
    seed: int
    world: WorldConfig
    runs: dict[str, Run]
    raw: dict

    def order(self, only: list[str] | None = None) -> list[Run]:
        """Runs in dependency order; with `only`, those runs plus everything they need."""
        wanted = set(self.runs) if not only else set()
        for name in only or []:
            if name not in self.runs:
                # allow a stage name: every run of that stage
                by_stage = [r.name for r in self.runs.values() if r.stage == name]
                if not by_stage:
                    raise ConfigError(f"--stages: {name!r} is neither a run nor a stage of profile "
                                      f"{self.name!r}; runs: {', '.join(self.runs)}")
                wanted.update(by_stage)
            else:
                wanted.add(name)
        seen: list[str] = []

        def visit(n: str, stack: tuple[str, ...]) -> None:
            if n in stack:
                raise ConfigError(f"{self.path}: runs form a cycle: {' -> '.join(stack + (n,))}")
            if n in seen:
                return
            for u in self.runs[n].upstream:
                visit(u, stack + (n,))
            seen.append(n)

        for n in self.runs:  # file order, then dependencies first
            if n in wanted:
                visit(n, ())
        return [self.runs[n] for n in seen]

    def run_hash(self, name: str) -> str:
        return _hash(self, name, {})


def ref_run(value: str) -> str:
    """'sft/beta' -> 'sft'; 'dpo@2' -> 'dpo'."""
    return re.split(r"[/@]", value, maxsplit=1)[0]


def _refs(stage: str, cfg: Any) -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.metadata.get("ref") and v:
            out.append(ref_run(v))
        elif (stage, f.name) in LIST_REFS:
            out.extend(ref_run(x) for x in v if ref_run(x) not in TOY_AGENTS)
    return out


def _hash(profile: Profile, name: str, memo: dict) -> str:
    if name in memo:
        return memo[name]
    run = profile.runs[name]
    payload = {
        "stage": run.stage,
        "config": hashed_config(run.config),
        "world": dataclasses.asdict(profile.world),
        "upstream": {u: _hash(profile, u, memo) for u in run.upstream},
    }
    if getattr(run.config, "judge", None) == "toy":
        payload["judge"] = TOY_JUDGE_VERSION
    memo[name] = config_hash(payload)
    return memo[name]


def hashed_config(cfg: Any) -> dict:
    """The config as hashed: fields marked ``hash_omit_default`` (options added later, such as
    LoRA) are left out while they hold their default, so adding them kept existing run hashes."""
    out = dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("hash_omit_default"):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if out[f.name] == default:
                del out[f.name]
    return out


def config_hash(payload: Any) -> str:
    """Stable short hash of canonical JSON (sorted keys; floats as Python repr)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def profile_path(profile: str) -> Path:
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    p = CONFIG_DIR / f"{profile}.yaml"
    if not p.exists():
        known = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {profile!r}: no {p}; profiles: {', '.join(known)}")
    return p


def load_profile(profile: str, overrides: list[str] | dict | None = None) -> Profile:
    """Load configs/<profile>.yaml strictly and apply overrides (``run.key=value`` strings, or
    a {run: {key: value}} dict). Raises ConfigError naming the file, run/stage and key."""
    path = profile_path(profile)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    known = {"seed", "world", "stages", "runs", "description"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; known: {sorted(known)}")
    seed = _coerce(raw.get("seed", 0), int, f"{path}: seed")
    world = build(WorldConfig, raw.get("world") or {}, f"{path}: world")
    stages = raw.get("stages") or {}
    for s in stages:
        if s not in STAGE_CONFIGS:
            raise ConfigError(f"{path}: stages: unknown stage {s!r}; stages: {', '.join(STAGE_CONFIGS)}")
    plan = raw.get("runs") or {s: {} for s in STAGE_CONFIGS}

    ov: dict[str, dict] = {}
    if isinstance(overrides, dict):
        ov = {k: dict(v) for k, v in overrides.items()}
    else:
        for text in overrides or []:
            run, key, value = parse_override(text)
            ov.setdefault(run, {})[key] = value
    for run in ov:
        if run not in plan:
            raise ConfigError(f"override {run}.*: profile {path.name} has no run {run!r}; runs: {', '.join(plan)}")

    runs: dict[str, Run] = {}
    for name, spec in plan.items():
        spec = dict(spec or {})
        stage = spec.pop("stage", name)
        if stage not in STAGE_CONFIGS:
            raise ConfigError(f"{path}: run {name!r}: unknown stage {stage!r}; stages: {', '.join(STAGE_CONFIGS)}")
        cls = STAGE_CONFIGS[stage]
        values = {}
        if "seed" in {f.name for f in dataclasses.fields(cls)}:
            values["seed"] = seed
        values.update(stages.get(stage) or {})
        values.update(spec)
        where = f"{path}: run {name!r} (stage {stage})"
        base_cfg = build(cls, values, where)
        if name in ov:
            refuse_secret_names(ov[name])
            values.update(ov[name])
            base_cfg = build(cls, values, f"override of run {name!r} (stage {stage}, profile {path.name})")
        runs[name] = Run(name, stage, base_cfg, ())
    for name, run in list(runs.items()):
        ups = _refs(run.stage, run.config)
        for u in ups:
            if u not in runs:
                raise ConfigError(f"{path}: run {name!r} refers to run {u!r}, which the plan does not have")
        runs[name] = Run(name, run.stage, run.config, tuple(dict.fromkeys(ups)))
    prof = Profile(path.stem, path, seed, world, runs, raw)
    prof.order()  # raises on cycles
    return prof


def describe(stage: str) -> str:
    """Markdown table of a stage's fields: name, type, default, help."""
    cls = STAGE_CONFIGS[stage] if stage != "world" else WorldConfig
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp = typing.get_type_hints(cls)[f.name]
        rows.append(f"| `{f.name}` | {getattr(tp, '__name__', str(tp))} | `{default!r}` | {f.metadata['help']} |")
    return "\n".join(rows)


def _check_rates(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{n} must be between 0 and 1, got {v}")


def _check_positive(obj: Any, *names: str) -> None:
    for n in names:
        if getattr(obj, n) <= 0:
            raise ConfigError(f"{n} must be positive, got {getattr(obj, n)}")


def _check_choice(obj: Any, name: str, choices: tuple) -> None:
    if getattr(obj, name) not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {getattr(obj, name)!r}")


def _entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    import math
    from collections import Counter

    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


def looks_like_secret_value(value: Any) -> bool:
    """Is ``value`` shaped like an API key or token (sk-…, hf_…, ghp_…, a JWT, or one long random
    word of letters and digits)? Paths, URLs, hub ids and hex digests (git revisions) are not."""
    if not isinstance(value, str):
        return False
    v = value.strip()
    if SECRET_VALUE_PATTERN.search(v):
        return True
    if len(v) < 32 or any(c.isspace() for c in v) or re.fullmatch(r"[0-9a-fA-F]+", v):
        return False
    if "/" in v or "\\" in v or ":" in v or "." in v:  # paths, URLs, hub ids, file names
        return False
    classes = sum(bool(re.search(p, v)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    return classes == 3 and _entropy(v) >= 4.0


def check_env_var_name(value: Any, where: str) -> str:
    """A ``*_api_key_env`` value must be the NAME of an environment variable (``OPENAI_API_KEY``),
    never the key itself. The error does not repeat the value: it may be a key typed by mistake."""
    if not isinstance(value, str) or not ENV_VAR_NAME.fullmatch(value):
        kind = "a key-like string" if looks_like_secret_value(value) else f"a {type(value).__name__} of {len(str(value))} characters"
        raise ConfigError(f"{where} must be the NAME of an environment variable (upper case, digits, "
                          f"'_', e.g. OPENAI_API_KEY), not its value; got {kind} (not shown). "
                          "Put the key in that variable: export OPENAI_API_KEY=...")
    return value


def _walk(params: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(params, dict):
        for k, v in params.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            yield name, v
            if isinstance(v, (dict, list, tuple)):
                yield from _walk(v, name)
    elif isinstance(params, (list, tuple)):
        for i, v in enumerate(params):
            if isinstance(v, (dict, list, tuple)):
                yield from _walk(v, f"{prefix}[{i}]")
            else:
                yield f"{prefix}[{i}]", v


def refuse_secret_names(names: list[str] | dict, where: str = "parameter") -> None:
    """Papermill writes parameters into the executed notebook: secrets must never be one.

    Given names, refuses names that mean a credential (``openai_api_key``, ``hf_token``; not
    ``max_new_tokens``). Given a dict (nested dicts and lists are walked), also refuses values
    shaped like keys and ``*_env`` values that are not environment-variable names. Errors name
    the parameter, never the value.
    """
    items = list(_walk(names)) if isinstance(names, dict) else [(str(n), None) for n in names]
    for n, value in items:
        leaf = re.split(r"[.\[]", n)[-1] if n else n
        if leaf.endswith("_env"):
            if isinstance(names, dict) and leaf.endswith("_api_key_env"):
                check_env_var_name(value, f"{where} {n!r}")
            continue
        if SECRET_PATTERN.search(leaf):
            raise ConfigError(f"{where} {n!r} looks like a secret; secrets come only from "
                              "environment variables (give the variable's NAME in a *_env field)")
        if isinstance(names, dict) and looks_like_secret_value(value):
            raise ConfigError(f"{where} {n!r} has a value that looks like an API key or token (not shown); "
                              "secrets come only from environment variables (give the variable's NAME "
                              "in a *_env field, e.g. judge_api_key_env=OPENAI_API_KEY)")


def check_secret_free(profile: "Profile") -> None:
    """Every run's ``*_api_key_env`` field names a variable, and no string field holds a key."""
    for name, run in profile.runs.items():
        values = dataclasses.asdict(run.config)
        refuse_secret_names(values, f"{profile.path.name}: run {name!r}: field")
