"""Stage `base`: a tokenizer and a small Mistral pretrained from scratch on the toy world, or a
pointer to a pretrained hub model (the paper: Mistral-7B-v0.1).

Notebook: ``notebooks/00_base.ipynb``. Run: ``python -m zephyr_lib run --profile toy --stages base``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..config import PRECISIONS, ConfigError, StageConfig, opt
from ..io import write_json, write_jsonl
from ..stage import Stage
from .training import base_precision_hashed


@dataclass(frozen=True)
class BaseConfig(StageConfig):
    """Stage `base`: a tokenizer and a small Mistral trained from scratch, or a pretrained model."""

    pretrained: str = opt("", "Hub id or local path of a pretrained base model (paper: mistralai/Mistral-7B-v0.1); empty = train from scratch on the toy world.")
    revision: str = opt("", "Hub revision of `pretrained` (empty = default branch).")
    vocab_size: int = opt(1024, "BPE vocabulary size asked for (small corpora yield fewer).", ge=16)
    hidden_size: int = opt(192, "MistralConfig.hidden_size.", ge=1)
    intermediate_size: int = opt(512, "MistralConfig.intermediate_size.", ge=1)
    num_hidden_layers: int = opt(6, "MistralConfig.num_hidden_layers.", ge=1)
    num_attention_heads: int = opt(6, "MistralConfig.num_attention_heads.", ge=1)
    num_key_value_heads: int = opt(2, "MistralConfig.num_key_value_heads (grouped-query attention, as Mistral).", ge=1)
    max_position_embeddings: int = opt(512, "Longest sequence the model supports.", ge=1)
    n_docs: int = opt(12000, "Pretraining documents generated from the toy world.", ge=1)
    seq_len: int = opt(128, "Pretraining block length in tokens.", ge=2)
    num_train_epochs: float = opt(2.0, "Pretraining epochs over the document blocks.", gt=0)
    learning_rate: float = opt(2e-3, "Peak AdamW learning rate (cosine schedule).", gt=0)
    warmup_ratio: float = opt(0.05, "Fraction of steps of linear warmup.", ge=0, lt=1)
    batch_size: int = opt(32, "Blocks per optimizer step.", ge=1)
    precision: str = opt("auto", "Training precision: auto = bf16 mixed precision on a GPU with native bf16, fp32 on a CPU; or bf16, fp32. The run hash holds the resolved value; metrics.json records it.", choices=PRECISIONS, hash_as=base_precision_hashed)
    seed: int = opt(0, "Training seed.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("base: hidden_size must divide by num_attention_heads, and heads by num_key_value_heads")


def build(ctx, out: Path) -> dict:
    from .. import modeling
    from ..toyworld import shared_world

    cfg = ctx.cfg
    if cfg.pretrained:  # paper profile: record the hub model; later stages load it by id
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(cfg.pretrained, revision=cfg.revision or None)
        # pad = <unk> (never eos: that masks the eos labels), the Zephyr template with one <s> first
        modeling.prepare_hub_tokenizer(tok, cfg.pretrained, bos=True)
        tok.save_pretrained(out / "model")  # later stages read the tokenizer here, the weights from the hub
        metrics = {"pretrained": cfg.pretrained, "revision": cfg.revision}
        write_json(out / "model" / modeling.POINTER, metrics)
        write_json(out / "metrics.json", metrics)
        return metrics
    modeling.set_threads()
    world = shared_world(ctx.world)
    docs = world.pretraining_docs(cfg.n_docs, cfg.seed)
    tok = modeling.train_tokenizer(docs, cfg.vocab_size, out / "model")
    blocks = modeling.pack_blocks(tok, docs, cfg.seq_len)
    n_eval = max(8, len(blocks) // 50)
    rng = random.Random(cfg.seed)
    rng.shuffle(blocks)
    model = modeling.build_model(tok, cfg)
    res = modeling.pretrain(model, tok, blocks[n_eval:], blocks[:n_eval], cfg, out)
    model.save_pretrained(out / "model")
    probes = fact_probe(model, tok, world)
    metrics = {"n_params": sum(p.numel() for p in model.parameters()), "vocab_size": len(tok),
               "n_docs": len(docs), "n_train_tokens": (len(blocks) - n_eval) * cfg.seq_len,
               "eval_loss": res["eval_loss"], "eval_perplexity": res["eval_perplexity"],
               "steps": res["steps"], "precision": res["precision"], "fact_recall": probes["recall"]}
    write_jsonl(out / "log_history.jsonl", res["log_history"])
    write_jsonl(out / "fact_probe.jsonl", probes["rows"])
    write_json(out / "metrics.json", metrics)
    return metrics


def fact_probe(model, tok, world, max_new_tokens: int = 8) -> dict:
    """Greedy continuations of fact prefixes ("The flag of X is"): does the base model know the world?"""
    import torch

    rows = []
    for t in world.towns:
        for prefix, answer in ((f"{t.name} is a town in", t.region), (f"The flag of {t.name} is", t.color),
                               (f"{t.name} is famous for its", t.goods)):
            enc = tok(prefix, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            text = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            rows.append({"prefix": prefix, "expected": answer, "continuation": text, "correct": answer in text})
    return {"recall": sum(r["correct"] for r in rows) / len(rows), "rows": rows}


STAGE = Stage("base", BaseConfig, notebook="00_base", artifact="model", build=build, resumable=True, trains=True,
              alone=True)  # the long run the whole plan waits for
