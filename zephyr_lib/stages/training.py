"""The settings every trainer-backed stage shares (dSFT, dDPO), declared once, and the one driver
that trains a stage and probes the result.

The pattern is TRL's shared base config: :class:`TrainingConfig` holds the common fields, grouped
(what is trained, the schedule, the batch, logging/checkpoints, hardware, LoRA); a stage's config
subclasses it and adds its own. :func:`train_and_probe` runs ``launch.train_stage`` (in-process, or
``accelerate launch`` for several processes) and then the held-out before/after probe.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ATTN_IMPLEMENTATIONS, PRECISIONS, StageConfig, opt, ref
from ..io import write_json, write_jsonl

def precision_hashed(cfg, value: str) -> dict:
    """What a trainer stage's run hash holds of ``precision``: the precision this machine trains in,
    as the ``bf16`` flag it replaced (an fp32 run, as every run before the setting, keeps its hash)."""
    from ..modeling import resolve_precision

    return {"bf16": resolve_precision(value) == "bf16"}


def base_precision_hashed(cfg, value: str) -> dict:
    """The base stage's: nothing for fp32 (every base run before the setting) or for a pretrained
    hub model (nothing trains), else the precision."""
    from ..modeling import resolve_precision

    resolved = "fp32" if getattr(cfg, "pretrained", "") else resolve_precision(value)
    return {} if resolved == "fp32" else {"precision": resolved}


SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
             "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class TrainingConfig(StageConfig):
    """Settings shared by the trainer-backed stages (sft, dpo)."""

    # what is trained, on what
    init: str = ref("base", "Run whose model training starts from.")
    data: str = ref("", "Run (or run/artifact) holding the training data.")
    # schedule
    learning_rate: float = opt(2e-5, "Peak learning rate.", gt=0)
    lr_scheduler_type: str = opt("linear", "Schedule shape (transformers' SchedulerType).", choices=SCHEDULES)
    warmup_ratio: float = opt(0.1, "Warmup fraction of the steps (paper: 0.1).", ge=0, lt=1)
    num_train_epochs: float = opt(1.0, "Epochs.", gt=0)
    # batch: global batch = per-device × accumulation × processes
    per_device_train_batch_size: int = opt(16, "Examples per device per step.", ge=1)
    gradient_accumulation_steps: int = opt(1, "Accumulation steps; global batch = per-device × accumulation × processes.", ge=1)
    num_processes: int = opt(1, "Processes (GPUs) in all; >1 launches through accelerate.", ge=1)
    num_machines: int = opt(1, "Machines the num_processes are spread over (num_processes is the total); >1: one launcher per node (tools/slurm_example.sh).", ge=1, hash_omit_default=True)
    max_length: int = opt(256, "Longest tokenized example in tokens.", ge=8)
    # logging, evaluation, checkpoints
    logging_steps: int = opt(10, "Log every N optimizer steps.", ge=1)
    eval_steps: int = opt(50, "Evaluate on the test split every N steps.", ge=1)
    # hardware
    precision: str = opt("auto", "Training precision: bf16 = mixed precision (fp32 master weights, bf16 autocast matmuls; the paper trained in bf16), fp32, or auto = bf16 on a GPU with native bf16, fp32 on a CPU (on the toy model bf16 measured no faster on CPUs, even with AMX). The run hash holds the resolved value; metrics.json records it.", choices=PRECISIONS, hash_as=precision_hashed)
    activation_checkpointing: bool = opt(False, "Activation (gradient) checkpointing: saves memory, costs 20-35% time.")
    attn_implementation: str = opt("auto", "Attention kernel for training and the held-out probe: auto = flash_attention_2 where the flash_attn package is importable and a GPU is visible (requirements-flash.txt), else sdpa (every earlier run's); or sdpa, flash_attention_2 (an error without the package), eager. metrics.json records the one used.", choices=ATTN_IMPLEMENTATIONS, hash_omit_default=True)
    accelerate_config: str = opt("", "accelerate config file for multi-process runs (e.g. configs/accelerate/zero3.yaml).")
    # LoRA / QLoRA (optional; the paper trained all weights)
    use_peft: bool = opt(False, "Train LoRA adapters (peft) instead of all weights, for smaller GPUs; needs `pip install peft`.", hash_omit_default=True)
    lora_r: int = opt(16, "LoRA rank (use_peft).", ge=1, hash_omit_default=True)
    lora_alpha: int = opt(32, "LoRA scaling alpha (use_peft).", ge=1, hash_omit_default=True)
    lora_dropout: float = opt(0.05, "LoRA dropout (use_peft).", ge=0, lt=1, hash_omit_default=True)
    lora_target_modules: list[str] = opt(LORA_MODULES, "Modules that get LoRA adapters (use_peft; Mistral's attention and MLP projections).", hash_omit_default=True)
    load_in_4bit: bool = opt(False, "QLoRA: load the frozen base weights in 4-bit NF4 (use_peft, CUDA only); needs `pip install bitsandbytes`.", hash_omit_default=True)
    seed: int = opt(0, "Training seed.")

    @property
    def bf16(self) -> bool:
        """Whether this machine trains the stage in bf16 (``precision`` resolved here)."""
        from ..modeling import resolve_precision

        return resolve_precision(self.precision) == "bf16"

    @property
    def global_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_processes

    def trl_kwargs(self, output_dir: str | Path, use_cpu: bool | None = None) -> dict:
        """The TRL arguments every trainer stage shares (the one mapping of these fields onto
        ``trl.SFTConfig`` / ``trl.DPOConfig`` / any TRL config); a wrapper's ``trl_args`` adds its
        own. ``use_cpu``: default, when no GPU is available."""
        import torch

        return dict(
            output_dir=str(output_dir),
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=self.warmup_ratio,  # transformers 5: a float < 1 is a fraction of the steps
            num_train_epochs=self.num_train_epochs,
            per_device_train_batch_size=self.per_device_train_batch_size,
            per_device_eval_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            logging_steps=self.logging_steps,
            eval_strategy="steps",
            eval_steps=self.eval_steps,
            save_total_limit=2,
            bf16=self.bf16,  # the resolved precision
            use_cpu=(not torch.cuda.is_available()) if use_cpu is None else use_cpu,
            activation_checkpointing=self.activation_checkpointing,
            report_to=[],
            seed=self.seed,
            data_seed=self.seed,
            dataloader_num_workers=0,
        )


ERROR_KINDS = ("wrong", "constraint", "hallucinated", "boilerplate", "lowercase", "junk", "empty", "repetitive", "verbose")


def error_kinds(a) -> list[str]:
    """The kinds of error the toy checker found in one answer (its Assessment), by name."""
    flags = {"wrong": a.correct is False, "constraint": bool(a.violations), "hallucinated": a.hallucinated,
             "boilerplate": a.boilerplate, "lowercase": a.lowercase > 0, "junk": a.junk, "empty": a.empty,
             "repetitive": a.repetitive, "verbose": a.verbose}
    return [k for k in ERROR_KINDS if flags[k]]


def held_out_before_after(ctx, init, trained: Path, seed: int, prefix: str, n: int = 160,
                          attn_implementation: str = "auto"):
    """Greedy answers of the initial and the trained model to `n` new toy prompts (disjoint from
    every benchmark): per-prompt rows, and per model the judge stand-in's mean score, the rate of
    answers that end with eos, and the α/β defect rates."""
    from .. import curate as cur
    from ..agent import Agent
    from ..generate import ModelAgent
    from ..toyworld import shared_world, assess
    from ..toyworld.checker import depth_and_format
    from .curate import N_ALPACA_MAX

    world = shared_world(ctx.world)
    exclude = world.eval_prompts(N_ALPACA_MAX)
    try:  # distinct prompts where the world has enough of them; a tiny test world repeats some
        probe = world.tasks(n, seed=seed, followups=0, prefix=prefix, exclude=exclude, unique=True)
    except ValueError:
        probe = world.tasks(n, seed=seed, followups=0, prefix=prefix, exclude=exclude)
    convs = [[{"role": "user", "content": t.turns[0]}] for t in probe]
    rows = [{"prompt": c[0]["content"], "category": t.category} for c, t in zip(convs, probe)]
    metrics = {}
    for who, path in (("init", init), ("model", trained)):
        agent: Agent = ModelAgent(path, name=who, attn_implementation=attn_implementation)
        answers, stopped = agent.respond_many(convs, max_new_tokens=96, return_stopped=True,
                                              desc=f"held-out answers ({who})")
        verdicts = [assess(world, t.specs[0], a) for t, a in zip(probe, answers)]
        looks = [depth_and_format(world, t.specs[0], v, first_turn=True) for t, v in zip(probe, verdicts)]
        scores = [v.score10() for v in verdicts]
        errors = [error_kinds(v) for v in verdicts]
        for r, a, st, sc, er in zip(rows, answers, stopped, scores, errors):
            r.update({f"{who}_answer": a, f"{who}_stopped": st, f"{who}_score": sc, f"{who}_errors": er})
        depth = [x["informative"] for x in looks if x["depth"]]
        habit = [x["compliant"] for x in looks if x["habit"]]
        for r, x in zip(rows, looks):
            r[f"{who}_informative"] = x["informative"] if x["depth"] else None
            r[f"{who}_compliant"] = x["compliant"] if x["habit"] else None
        metrics[who] = {"stop_rate": sum(stopped) / len(stopped), "score": sum(scores) / len(scores),
                        "informative_rate": sum(depth) / len(depth) if depth else None, "n_depth": len(depth),
                        "habit_compliance_rate": sum(habit) / len(habit) if habit else None, "n_habit": len(habit),
                        "defects": cur.defect_rates(answers),
                        "error_rates": {k: sum(k in er for er in errors) / len(errors) for k in ERROR_KINDS}}
    return rows, metrics


def train_and_probe(ctx, out: Path, probe_seed: int, after=None, **in_process) -> dict:
    """Train the run's stage (``launch.train_stage``), then probe the model before and after on
    held-out prompts; writes log_history.jsonl, samples.jsonl and metrics.json. ``after(result)``,
    if given, turns the training result (a ``trl_shared.TrainResult``) into more metrics;
    ``in_process`` goes to the stage's ``train`` when it runs in this process."""
    from .. import launch, modeling

    modeling.set_threads()
    cfg, stage = ctx.cfg, ctx.run.stage
    init, data = ctx.resolve(cfg.init), ctx.resolve(cfg.data)
    res = launch.train_stage(ctx.run.spec, cfg, init, data, out, **in_process)  # in-process, or accelerate launch for >1 process
    write_jsonl(out / "log_history.jsonl", res.log_history)
    extra = after(res) if after else {}
    rows, held_out = held_out_before_after(ctx, init, out / "model", seed=probe_seed + cfg.seed, prefix=f"{stage}probe",
                                     attn_implementation=cfg.attn_implementation)
    metrics = {**res.metrics, **held_out, **extra}
    write_jsonl(out / "samples.jsonl", rows)
    write_json(out / "metrics.json", metrics)
    return metrics
