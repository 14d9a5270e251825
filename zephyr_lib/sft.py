"""Stage `sft`: distilled supervised fine-tuning (dSFT) through TRL's SFTTrainer.

The stage maps the profile's :class:`~zephyr_lib.config.SFTConfig` onto ``trl.SFTConfig``
(:func:`trl_args`; the paper profile resolves to the paper's values) and wraps ``SFTTrainer``.
Loss on assistant tokens only (the chat template's ``{% generation %}`` markers, eos inside) or
packing (the paper's setting, which trains on every token) is selectable. Without packing, batches
are padding-free by default (``padding_free``): the batch's examples back to back in one row, with
attention kept inside each example (:func:`~zephyr_lib.modeling.document_sdpa`), which gives the
padded batch's loss without computing its padding, and TRL's LM head scores only the tokens that
carry loss (:func:`~zephyr_lib.modeling.labelled_positions_only`). The order of examples stays
uniformly random (batches grouped by length would save padding too, but their longest-first order
changes what a tiny model learns). Checkpoints go to
``<run>/checkpoints``; a killed run resumes from the newest complete one when re-run.

Run it through the runner (``python -m zephyr_lib run --profile toy --stages sft``) or open
``notebooks/02_sft.ipynb``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from .stages.sft import SFTConfig
from .modeling import (labelled_positions_only, last_checkpoint, register_document_attention,
                       resolve_attn_implementation, weights_source)
from .trl_shared import TrainResult, final_eval, lora_setup, save_final


def trl_args(cfg: SFTConfig, output_dir: str | Path, use_cpu: bool | None = None):
    """The exact ``trl.SFTConfig`` a stage config resolves to."""
    from trl import SFTConfig as TRLSFTConfig

    return TRLSFTConfig(
        **cfg.trl_kwargs(output_dir, use_cpu),  # the settings every trainer stage shares
        # Padding-free batches: TRL does not truncate them, so train() truncates to max_length itself.
        max_length=None if _padding_free(cfg) else cfg.max_length,
        padding_free=_padding_free(cfg),
        packing=cfg.packing,
        packing_strategy=getattr(cfg, "packing_strategy", "bfd"),
        assistant_only_loss=cfg.assistant_only_loss and not cfg.packing,
        weight_decay=cfg.weight_decay,
        save_strategy="steps",
        save_steps=cfg.save_steps,
    )


def _padding_free(cfg) -> bool:
    return bool(getattr(cfg, "padding_free", False)) and not cfg.packing


def truncate_prepared(dataset, max_length: int):
    """TRL's tokenized dataset cut to ``max_length`` tokens per example (what TRL itself does when
    it is given ``max_length``; padding-free training has to do it here)."""
    columns = [c for c in ("input_ids", "assistant_masks", "completion_mask", "labels") if c in dataset.column_names]
    if all(len(ids) <= max_length for ids in dataset["input_ids"]):
        return dataset
    return dataset.map(lambda ex: {c: ex[c][:max_length] for c in columns}, desc=f"truncate to {max_length}")


def load_sft_data(path: Path, max_train_samples: int = 0):
    """train_sft / test_sft (``messages`` only) from a DatasetDict saved by curate or aif."""
    from datasets import load_from_disk

    dsd = load_from_disk(str(path), keep_in_memory=True)  # in memory: no cache files in the finished upstream run
    for split in ("train_sft", "test_sft"):
        if split not in dsd:
            raise ValueError(f"{path}: dataset has no split {split!r} (splits: {list(dsd)})")
        if "messages" not in dsd[split].column_names:
            raise ValueError(f"{path}: split {split!r} has no 'messages' column")
    train = dsd["train_sft"].select_columns(["messages"])
    if max_train_samples:
        train = train.select(range(min(max_train_samples, len(train))))
    return train, dsd["test_sft"].select_columns(["messages"])


def train(cfg: SFTConfig, init: Path, data: Path, out: Path, callbacks: list | None = None) -> TrainResult:
    """Fine-tune the model at `init` on `data`; save to out/model. Returns the trainer's log and final metrics."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    tok = AutoTokenizer.from_pretrained(init)  # the tokenizer always lives in the local init folder
    source, source_kwargs = weights_source(init)  # the weights may be a hub model (paper-scale base run)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        raise ValueError(f"{init}: the tokenizer's pad token must exist and differ from eos "
                         "(pad = eos masks the eos label, so the model would never learn to stop)")
    # The arguments first: under DeepSpeed ZeRO-3 they must exist before the model is loaded
    # (zero3_init_flag: the weights are sharded while loading).
    attn = resolve_attn_implementation(cfg.attn_implementation, "sft.attn_implementation")
    args = trl_args(cfg, out / "checkpoints")
    peft_config, model_kwargs = lora_setup(cfg)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", attn_implementation=attn,
                                                 **model_kwargs, **source_kwargs)
    attention = model.config._attn_implementation
    if _padding_free(cfg) and attention != "flash_attention_2":  # flash-attn's varlen kernel reads the boundaries itself
        model.set_attn_implementation(register_document_attention())
    train_attention = model.config._attn_implementation
    train_ds, test_ds = load_sft_data(data, cfg.max_train_samples)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds,
                         eval_dataset=test_ds, processing_class=tok, callbacks=callbacks,
                         **({"peft_config": peft_config} if peft_config is not None else {}))
    if _padding_free(cfg):
        trainer.train_dataset = truncate_prepared(trainer.train_dataset, cfg.max_length)
        trainer.eval_dataset = truncate_prepared(trainer.eval_dataset, cfg.max_length)
    with labelled_positions_only() if _padding_free(cfg) else contextlib.nullcontext():
        trainer.train(resume_from_checkpoint=last_checkpoint(out / "checkpoints"))
        final = final_eval(trainer)
    if _padding_free(cfg):
        trainer.model.set_attn_implementation(attention)  # the saved model decodes with the standard kernel
    save_final(trainer, cfg, tok, init, out)
    return TrainResult(log_history=trainer.state.log_history,
                       metrics={"eval_loss": final["eval_loss"], "steps": trainer.state.global_step,
                                "n_train": len(train_ds), "n_test": len(test_ds),
                                "global_batch_size": cfg.global_batch_size,
                                "attn_implementation": attention, "train_attention": train_attention, "precision": "bf16" if args.bf16 else "fp32"})
