"""Stage `dpo`: distilled DPO (dDPO) through TRL's DPOTrainer (the wrapper is :mod:`zephyr_lib.dpo`):
the policy and the frozen reference both start from `init`; a model is saved after every epoch
(Figure 3); then the same held-out before/after probe as dSFT, on other prompts.

Notebook: ``notebooks/04_dpo.ipynb``. Run: ``python -m zephyr_lib run --profile toy --stages dpo``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, opt, ref
from ..stage import Stage
from .training import SCHEDULES, TrainingConfig, train_and_probe

# TRL 1.16's DPOConfig.loss_type values (the paper's loss is 'sigmoid')
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass(frozen=True)
class DPOConfig(TrainingConfig):
    """Stage `dpo`: distilled DPO with TRL's DPOTrainer; the reference is a frozen copy of `init`."""

    init: str = ref("sft", "Run whose model is the policy's start and the frozen reference (sft, or base for the ablation).")
    data: str = ref("aif", "Preference data run (ultrafeedback_binarized schema).")
    beta: float = opt(0.1, "DPO β (paper: 0.1; handbook: 0.01).", gt=0, paper=0.1)
    learning_rate: float = opt(5e-7, "Peak learning rate (paper: 5e-7).", gt=0, paper=5e-7)
    lr_scheduler_type: str = opt("linear", "Schedule shape (paper: linear; handbook: cosine).", choices=SCHEDULES)
    num_train_epochs: float = opt(3.0, "Epochs (paper: 3; handbook: 1).", gt=0)
    per_device_train_batch_size: int = opt(8, "Pairs per device per step.", ge=1)
    max_prompt_length: int = opt(128, "Prompt budget inside max_length (paper: 512); longer prompts keep their end.", ge=1)
    loss_type: str = opt("sigmoid", "TRL loss type (the paper's loss is 'sigmoid').", choices=LOSS_TYPES)
    optim: str = opt("adamw_torch", "Optimizer name (the first handbook config used rmsprop).",
                     choices=("adamw_torch", "adamw_torch_fused", "adamw_hf", "adafactor", "sgd", "rmsprop",
                              "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"))
    logging_steps: int = opt(5, "Log every N steps.", ge=1)
    eval_steps: int = opt(20, "Evaluate on test_prefs every N steps.", ge=1)
    padding_free: bool = opt(True, "Run the model on each batch's real tokens only (zephyr_lib.modeling.UnpaddedBackbone: one row, attention inside each sequence): the padded batch's log-probs within float rounding, without computing padding.", hash_omit_default=True)
    save_per_epoch: bool = opt(True, "Save a model after every epoch (Figure 3: MT-Bench vs epochs).")
    diagnose_pairs: int = opt(256, "Training pairs whose starting-policy log-probs of the chosen and rejected answers (the precomputed reference's) are averaged per pool member (how on-policy the pairs are; 0 = off).", ge=0, hash_omit_default=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_prompt_length >= self.max_length:
            raise ConfigError("dpo.max_prompt_length must be smaller than dpo.max_length")


def build(ctx, out: Path) -> dict:
    # Runs with the same reference and pairs (seeds, the 1-epoch ablation) share one reference pass.
    return train_and_probe(ctx, out, probe_seed=20_000, after=lambda res: on_policy_diagnostics(ctx, res),
                           ref_cache=ctx.root / ctx.profile.name / "ref_logps_cache")


def on_policy_diagnostics(ctx, res) -> dict:
    """How on-policy the preference pairs are: the starting policy's mean log π(y|x) of the chosen
    and of the rejected answers, by the pool member that wrote them (needs the aif run's
    pair_members.jsonl). These are the reference log-probs TRL precomputed for every training
    pair (the reference is the ``init`` policy, tokenized and truncated as DPO sees the pair), so
    the diagnostic costs no forward pass; ``diagnose_pairs`` of them, sampled with the run's seed."""
    import random
    from collections import Counter

    from datasets import load_from_disk

    from ..config import ref_run
    from ..feedback import prompt_id
    from ..io import read_jsonl

    cfg = ctx.cfg
    ref = res.ref_logps
    members_file = ctx.upstream(ref_run(cfg.data)).dir / "pair_members.jsonl"
    if not cfg.diagnose_pairs or not ref or not members_file.exists():
        return {}
    members = read_jsonl(members_file)
    counts = Counter(m["prompt_id"] for m in members)
    repeated = {i for i, c in counts.items() if c > 1}
    # a pair is credited to a pool member only when its prompt has one pair: a repeated prompt's
    # pairs cannot be told apart by prompt_id (the toy world's AI-feedback prompts are unique)
    who = {m["prompt_id"]: m for m in members if m["prompt_id"] not in repeated}
    train = load_from_disk(str(ctx.resolve(cfg.data)))["train_prefs"]
    if len(train) != len(ref["chosen"]):
        raise RuntimeError(f"{ctx.resolve(cfg.data)}: {len(train)} train_prefs rows but {len(ref['chosen'])} "
                           "reference log-probs (TRL dropped pairs?)")
    idx = sorted(random.Random(cfg.seed).sample(range(len(train)), min(cfg.diagnose_pairs, len(train))))
    sums: dict[str, dict[str, list[float]]] = {}
    for i in idx:
        row = train[i]
        m = who.get(row.get("prompt_id") or prompt_id(row["prompt"]))
        if m is None:
            continue
        for side in ("chosen", "rejected"):
            sums.setdefault(m[f"{side}_model"], {"chosen": [], "rejected": []})[side].append(ref[side][i])
    on_policy = {member: {f"{side}_logp": (sum(v) / len(v) if v else None) for side, v in d.items()}
                 | {f"n_{side}": len(v) for side, v in d.items()} for member, d in sums.items()}
    return {"on_policy": on_policy, "on_policy_ambiguous_prompts": len(repeated)} if on_policy else {}


STAGE = Stage("dpo", DPOConfig, notebook="04_dpo", artifact="model", build=build, resumable=True, trains=True,
              trainer="zephyr_lib.dpo")
