"""Stage drivers: what each stage notebook runs when its run is not in the store yet.

Each ``build_<stage>(ctx, out)`` reads its config and upstream runs from ``ctx``, writes its
artifacts and ``metrics.json`` into ``out`` (the run's partial folder; the store renames it
when the function returns), and returns the metrics. The notebooks call these and then draw
their page from the stored artifacts, so a cached run renders the same page.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from . import curate as cur
from .io import read_json, write_json, write_jsonl
from .store import RunContext
from .toyworld import World, assess, make_agent, write_dialogues

N_ALPACA_MAX = 805  # training prompts exclude every prompt any toy benchmark could ask


def world_of(ctx: RunContext) -> World:
    return World(ctx.world)


# ---- base ---------------------------------------------------------------------------------

def build_base(ctx: RunContext, out: Path) -> dict:
    from . import modeling

    cfg = ctx.cfg
    if cfg.pretrained:  # paper profile: record the hub model; later stages load it by id
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(cfg.pretrained, revision=cfg.revision or None)
        if tok.pad_token is None or tok.pad_token == tok.eos_token:
            tok.add_special_tokens({"pad_token": modeling.PAD})
        tok.chat_template = modeling.CHAT_TEMPLATE
        tok.save_pretrained(out / "tokenizer")
        metrics = {"pretrained": cfg.pretrained, "revision": cfg.revision}
        write_json(out / "pretrained.json", metrics)
        write_json(out / "metrics.json", metrics)
        return metrics
    modeling.set_threads()
    world = world_of(ctx)
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
               "steps": res["steps"], "fact_recall": probes["recall"]}
    write_jsonl(out / "log_history.jsonl", res["log_history"])
    write_jsonl(out / "fact_probe.jsonl", probes["rows"])
    write_json(out / "metrics.json", metrics)
    return metrics


def fact_probe(model, tok, world: World, max_new_tokens: int = 8) -> dict:
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


# ---- curate -------------------------------------------------------------------------------

def build_curate(ctx: RunContext, out: Path) -> dict:
    cfg = ctx.cfg
    phrases = tuple(cfg.boilerplate_phrases) or cur.DEFAULT_PHRASES
    if cfg.source == "toy":
        world = world_of(ctx)
        tasks = world.tasks(cfg.n_dialogues, seed=cfg.seed, followups=cfg.max_followups,
                            exclude=world.eval_prompts(N_ALPACA_MAX), prefix="uc")
        dialogues = write_dialogues(world, make_agent(world, "teacher", seed=cfg.seed), tasks)
        raw = [cur.to_raw_ultrachat(t.id, d) for t, d in zip(tasks, dialogues)]
    else:
        raw = list(cur.load_raw_ultrachat(cfg.source, limit=cfg.n_dialogues))
    write_jsonl(out / "raw_ultrachat.jsonl", raw)  # raw UltraChat's schema: {"id", "data": [...]}
    alpha, alpha_report = cur.curate(raw, phrases=phrases, truecase=False, filter_boilerplate=False, dedup=cfg.dedup)
    beta, beta_report = cur.curate(raw, phrases=phrases, truecase=cfg.truecase,
                                   filter_boilerplate=cfg.filter_boilerplate, dedup=cfg.dedup)
    sizes = {}
    for name, kept in (("alpha", alpha), ("beta", beta)):
        dsd = cur.split_dataset([cur.to_ultrachat_200k_row(m) for m in kept], test_frac=cfg.test_fraction, seed=cfg.seed)
        cur.save_dataset(dsd, out / name)
        sizes[name] = {split: len(ds) for split, ds in dsd.items()}
    rates = {name: cur.defect_rates([m["content"] for d in kept for m in d if m["role"] == "assistant"], phrases)
             for name, kept in (("alpha", alpha), ("beta", beta))}
    metrics = {"n_generated": len(raw), "splits": sizes, "defects": rates,
               "alpha_report": _slim(alpha_report), "beta_report": _slim(beta_report)}
    write_json(out / "examples.json", beta_report.get("truecase_examples", []))
    write_json(out / "metrics.json", metrics)
    return metrics


def _slim(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("truecase_examples", "errors")}


# ---- sft ----------------------------------------------------------------------------------

def build_sft(ctx: RunContext, out: Path) -> dict:
    from . import modeling, sft
    from .generate import ModelAgent

    modeling.set_threads()
    cfg = ctx.cfg
    init, data = model_path(ctx, cfg.init), ctx.resolve(cfg.data)
    res = sft.train(cfg, init, data, out)
    write_jsonl(out / "log_history.jsonl", res.pop("log_history"))
    # Held-out behaviour of the initial and the trained model on the same new prompts:
    # chat format, stopping at eos, the judge stand-in's score, and the α/β defect rates.
    world = world_of(ctx)
    probe = world.tasks(96, seed=10_000 + cfg.seed, followups=0, prefix="sftprobe",
                        exclude=world.eval_prompts(N_ALPACA_MAX))
    convs = [[{"role": "user", "content": t.turns[0]}] for t in probe]
    rows = [{"prompt": c[0]["content"], "category": t.category} for c, t in zip(convs, probe)]
    metrics = dict(res)
    for who, path in (("init", init), ("model", out / "model")):
        agent = ModelAgent(path, name=who)
        answers, stopped = agent.respond_many(convs, max_new_tokens=96, return_stopped=True,
                                              desc=f"held-out answers ({who})")
        scores = [assess(world, t.specs[0], a).score10() for t, a in zip(probe, answers)]
        for r, a, st, sc in zip(rows, answers, stopped, scores):
            r.update({f"{who}_answer": a, f"{who}_stopped": st, f"{who}_score": sc})
        metrics[who] = {"stop_rate": sum(stopped) / len(stopped), "score": sum(scores) / len(scores),
                        "defects": cur.defect_rates(answers)}
    write_jsonl(out / "samples.jsonl", rows)
    write_json(out / "metrics.json", metrics)
    return metrics


def model_path(ctx: RunContext, ref: str) -> Path | str:
    """A model reference -> local folder, or the hub id a paper-scale base run recorded."""
    up = ctx.upstream(ref)
    pre = up.dir / "pretrained.json"
    if "@" not in ref and "/" not in ref and pre.is_file():
        return read_json(pre)["pretrained"]
    return ctx.resolve(ref)


def load_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
