"""What the TRL wrappers (:mod:`zephyr_lib.sft`, :mod:`zephyr_lib.dpo`, and any trainer stage's
wrapper) share: the typed result a wrapper's ``train`` returns (:class:`TrainResult`), LoRA / QLoRA
set-up, the final save (adapters merged) and the final evaluation.

The TRL arguments the trainer stages share are mapped once, by the shared training config
(``stages.training.TrainingConfig.trl_kwargs``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .modeling import weights_source


@dataclass
class TrainResult:
    """What a TRL wrapper's ``train(cfg, init, data, out)`` returns, in-process or (as JSON, see
    ``launch.train_stage``) from the main process of an ``accelerate launch`` job."""

    log_history: list[dict]  # the Trainer's log, one entry per logging/eval step (log_history.jsonl)
    metrics: dict  # what goes into the run's metrics.json: steps, n_train, n_test, global_batch_size, final eval_*
    ref_logps: dict | None = field(default=None)  # dDPO: the reference log-probs of every training pair ({"chosen", "rejected"})


def lora_setup(cfg) -> tuple[object | None, dict]:
    """``(peft_config, extra from_pretrained kwargs)`` for an SFT or DPO stage config.

    ``use_peft=False``: ``(None, {})``, full fine-tuning. ``use_peft=True``: a ``peft.LoraConfig``
    from the ``lora_*`` fields for TRL's ``peft_config``; with ``load_in_4bit`` (QLoRA) also a
    bitsandbytes 4-bit NF4 ``quantization_config`` and a per-process ``device_map``. peft and
    bitsandbytes are optional and imported only here: a missing one is a clear ImportError.
    """
    if not cfg.use_peft:
        if cfg.load_in_4bit:
            raise ValueError("load_in_4bit=True needs use_peft=True (4-bit weights cannot be trained directly: QLoRA)")
        return None, {}
    try:
        import peft
    except ImportError:
        raise ImportError("use_peft=True needs the peft package: pip install peft") from None
    lora = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                           target_modules=list(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM")
    kwargs: dict = {}
    if cfg.load_in_4bit:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError("load_in_4bit=True needs the bitsandbytes package: pip install bitsandbytes")
        import torch
        from accelerate import PartialState
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if cfg.bf16 else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=False, bnb_4bit_quant_storage=compute)
        kwargs["device_map"] = {"": PartialState().local_process_index}
    return lora, kwargs


def save_final(trainer, cfg, tok, init, out: Path) -> None:
    """Write the trained model + tokenizer to ``out/model`` (main process writes the tokenizer).

    With ``use_peft`` the adapter goes to ``out/adapter`` and ``out/model`` is the base model at
    ``init`` with the adapter merged in (a plain model, as later stages expect)."""
    if not cfg.use_peft:
        trainer.save_model(str(out / "model"))  # every process: ZeRO-3 / FSDP gather the weights here
        if trainer.is_world_process_zero():
            tok.save_pretrained(out / "model")
        return
    trainer.save_model(str(out / "adapter"))
    if trainer.is_world_process_zero():
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        source, source_kwargs = weights_source(init)
        base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16 if cfg.bf16 else "auto", **source_kwargs)
        PeftModel.from_pretrained(base, str(out / "adapter")).merge_and_unload().save_pretrained(out / "model")
        tok.save_pretrained(out / "model")
    trainer.accelerator.wait_for_everyone()


def final_eval(trainer) -> dict:
    """The final evaluation metrics. With a step-based eval strategy the Trainer already evaluates
    after the last step; that result (same weights, same test set) is reused instead of running
    the whole evaluation a second time. Otherwise ``trainer.evaluate()``."""
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            if entry.get("step") == trainer.state.global_step:
                return {k: v for k, v in entry.items() if k.startswith("eval_")}
            break
    return trainer.evaluate()
