"""Stage `sft`: distilled supervised fine-tuning (dSFT) through TRL's SFTTrainer (the wrapper is
:mod:`zephyr_lib.sft`), then the held-out before/after probe: chat format, stopping at eos, the
judge stand-in's score and the α/β defect rates.

Notebook: ``notebooks/02_sft.ipynb``. Run: ``python -m zephyr_lib run --profile toy --stages sft``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import opt, ref
from ..stage import Stage
from .training import SCHEDULES, TrainingConfig, train_and_probe


@dataclass(frozen=True)
class SFTConfig(TrainingConfig):
    """Stage `sft`: distilled supervised fine-tuning with TRL's SFTTrainer."""

    init: str = ref("base", "Run whose model is fine-tuned (base, or sft for dSFT-2).")
    data: str = ref("curate/beta", "Dataset: curate/beta, curate/alpha, or aif/sft (chosen answers, dSFT-2).")
    learning_rate: float = opt(2e-5, "Peak learning rate (paper: 2e-5).", gt=0, paper=2e-5)
    lr_scheduler_type: str = opt("cosine", "Schedule shape (paper: cosine).", choices=SCHEDULES)
    num_train_epochs: float = opt(1.0, "Epochs (paper tried 1–3, final 1).", gt=0)
    packing: bool = opt(False, "Pack examples into blocks (paper) instead of padding; packing trains on all tokens.")
    packing_strategy: str = opt("wrapped", "TRL packing: 'wrapped' (TRL 0.7's, the paper's: concatenate and cut into max_length blocks, no token lost) or 'bfd' (best-fit; truncates examples longer than a block).",
                                choices=("wrapped", "bfd"), hash_omit_default=True)
    padding_free: bool = opt(True, "Without packing: each batch is one row of its examples back to back, attention kept inside each example (zephyr_lib.modeling.document_sdpa): the same loss as a padded batch, without computing padding.")
    assistant_only_loss: bool = opt(True, "Loss on assistant tokens only (ignored when packing).")
    weight_decay: float = opt(0.0, "AdamW weight decay (paper: none).", ge=0)
    max_train_samples: int = opt(0, "Use at most this many training dialogues (0 = all).", ge=0)
    save_steps: int = opt(100, "Checkpoint every N steps (resume after a kill).", ge=1)


def build(ctx, out: Path) -> dict:
    return train_and_probe(ctx, out, probe_seed=10_000)


STAGE = Stage("sft", SFTConfig, notebook="02_sft", artifact="model", build=build, resumable=True, trains=True,
              trainer="zephyr_lib.sft")
