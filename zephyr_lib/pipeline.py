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


# ---- shared: answerers and the judge ------------------------------------------------------

def answerer(ctx: RunContext, name: str, world: World, batch_size: int = 32, seed: int = 0):
    """A toy-world agent by name, or a trained model from a run reference (e.g. 'sft', 'dpo@2')."""
    from .config import TOY_AGENTS
    from .toyworld.agents import agent_profiles

    if name in TOY_AGENTS or name in agent_profiles(world.cfg):
        return make_agent(world, name, seed=seed)
    from .generate import ModelAgent
    return ModelAgent(model_path(ctx, name), name=name, batch_size=batch_size, seed=seed)


def make_judge(ctx: RunContext, world: World):
    """The judge a stage config names: the toy world's GPT-4 stand-in or an OpenAI-compatible endpoint.
    Its on-disk cache is shared by every stage of the profile, so reruns make no new calls."""
    from . import judges
    from .toyworld import judge as _toy  # noqa: F401  (registers the "toy" backend)

    cfg = ctx.cfg
    cache = ctx.root / ctx.profile.name / "judge_cache"
    if cfg.judge == "toy":
        return judges.judge_from_config("toy", world=world, cache_dir=cache / "toy")
    return judges.judge_from_config("openai", base_url=cfg.judge_base_url, model=cfg.judge_model,
                                    api_key_env=cfg.judge_api_key_env, cache_dir=cache / "openai")


# ---- aif ----------------------------------------------------------------------------------

def build_aif(ctx: RunContext, out: Path) -> dict:
    """UltraFeedback-style AI feedback: 4 pool answers per prompt, judged on every aspect, binarized."""
    from . import feedback as fb
    from . import modeling

    modeling.set_threads()
    cfg = ctx.cfg
    if cfg.source != "toy":  # real data: raw UltraFeedback -> binarize, or an already binarized set
        try:
            rows = fb.load_raw_ultrafeedback(cfg.source, revision=cfg.revision or None)
        except Exception:  # noqa: BLE001 - not raw: try the binarized schema
            dsd = fb.load_binarized(cfg.source, revision=cfg.revision or None)
            fb.save_binarized(dsd, out / "binarized")
            metrics = {"source": cfg.source, "splits": {k: len(v) for k, v in dsd.items()}}
            write_json(out / "metrics.json", metrics)
            return metrics
        return _binarize_and_save(cfg, rows[: cfg.n_prompts or None], out, {"source": cfg.source})

    world = world_of(ctx)
    sft_ctx = ctx.upstream(cfg.policy)
    from datasets import load_from_disk
    seen = set(load_from_disk(str(sft_ctx.resolve(sft_ctx.cfg.data)))["train_sft"]["prompt"])
    tasks = world.tasks(cfg.n_prompts, seed=cfg.seed, followups=0, prefix="uf",
                        exclude=world.eval_prompts(N_ALPACA_MAX) | seen)
    rng = random.Random(cfg.seed)
    members = {t.id: rng.sample(cfg.pool, cfg.completions_per_prompt) for t in tasks}
    answers: dict[tuple[str, str], str] = {}
    for name in cfg.pool:  # each pool member answers the prompts it was drawn for, in one batch
        mine = [t for t in tasks if name in members[t.id]]
        agent = answerer(ctx, _pool_ref(cfg, name), world, seed=cfg.seed)
        texts = agent.respond_many([[{"role": "user", "content": t.turns[0]}] for t in mine],
                                   max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                   desc=f"pool: {name}")
        answers.update({(t.id, name): a for t, a in zip(mine, texts)})

    judge = make_judge(ctx, world)
    aspect_reqs, overall_reqs = [], []
    for t in tasks:
        comps = [answers[(t.id, n)] for n in members[t.id]]
        aspect_reqs += [fb.build_aspect_messages(a, t.turns[0], comps) for a in fb.ASPECTS]
        overall_reqs += [fb.build_overall_messages(t.turns[0], c) for c in comps]
    k = cfg.completions_per_prompt
    aspect_res = judge.complete_many(aspect_reqs, parse=lambda s: fb.parse_aspect_reply(s, k), parse_retries=2,
                                     desc="judge: aspects")
    overall_res = judge.complete_many(overall_reqs, parse=fb.parse_overall_reply, parse_retries=2,
                                      desc="judge: overall")
    rows, failed = [], 0
    for i, t in enumerate(tasks):
        asp = aspect_res[i * len(fb.ASPECTS):(i + 1) * len(fb.ASPECTS)]
        ovr = overall_res[i * k:(i + 1) * k]
        if not all(r.ok for r in asp + ovr):  # never silently scored: dropped and counted
            failed += 1
            continue
        comps = []
        for j, name in enumerate(members[t.id]):
            ratings = {a: r.parsed[j]["rating"] for a, r in zip(fb.ASPECTS, asp)}
            rationales = {a: r.parsed[j]["rationale"] for a, r in zip(fb.ASPECTS, asp)}
            critique, score = ovr[j].parsed
            comps.append(fb.raw_completion(name, answers[(t.id, name)], ratings=ratings, rationales=rationales,
                                           overall_score=score, critique=critique))
        rows.append(fb.raw_row(t.turns[0], comps, source=f"toy/{t.category}"))
    extra = {"source": "toy", "n_prompts": len(tasks), "n_judge_failed_prompts": failed,
             "judge": judge.backend.name if hasattr(judge, "backend") else cfg.judge,
             "judge_stats": judge.stats.as_dict()}
    return _binarize_and_save(cfg, rows, out, extra)


def _pool_ref(cfg, name: str) -> str:
    """Pool members 'policy' and 'base' are the runs the config names; the rest are toy agents."""
    return {"policy": cfg.policy, "base": cfg.base}.get(name, name)


def _binarize_and_save(cfg, rows: list[dict], out: Path, extra: dict) -> dict:
    from . import feedback as fb

    write_jsonl(out / "raw_ultrafeedback.jsonl", rows)  # openbmb/UltraFeedback's schema
    pairs, counts = fb.binarize(rows, rule=cfg.rule, seed=cfg.binarize_seed)
    dsd = fb.to_dataset_dict(pairs, test_size=cfg.test_fraction, seed=cfg.binarize_seed)
    fb.save_binarized(dsd, out / "binarized")
    per_member: dict[str, list] = {}
    for r in rows:
        for c in r["completions"]:
            per_member.setdefault(c["model"], []).append(
                {"overall": c["overall_score"], "mean_aspects": fb.mean_aspect_score(c)})
    members = {m: {"n": len(v), "overall": sum(x["overall"] for x in v) / len(v),
                   "mean_aspects": sum(x["mean_aspects"] or 0 for x in v) / len(v),
                   "overall_scores": [x["overall"] for x in v]} for m, v in per_member.items()}
    gaps = [p["score_chosen"] - p["score_rejected"] for p in pairs]
    metrics = {**extra, "binarize": counts, "splits": {k: len(v) for k, v in dsd.items()}, "pool": members,
               "mean_gap": sum(gaps) / max(1, len(gaps)), "gaps": gaps}
    write_json(out / "metrics.json", metrics)
    return metrics


# ---- dpo ----------------------------------------------------------------------------------

def build_dpo(ctx: RunContext, out: Path) -> dict:
    """dDPO through TRL's DPOTrainer: policy and frozen reference both start from `init`."""
    from . import dpo, modeling

    modeling.set_threads()
    cfg = ctx.cfg
    init, data = model_path(ctx, cfg.init), ctx.resolve(cfg.data)
    res = dpo.train(cfg, init, data, out)
    write_jsonl(out / "log_history.jsonl", res.pop("log_history"))
    # Sample answers before and after DPO on held-out AIF-style prompts, graded by the judge stand-in's checker.
    world = world_of(ctx)
    probe = world.tasks(96, seed=20_000 + cfg.seed, followups=0, prefix="dpoprobe",
                        exclude=world.eval_prompts(N_ALPACA_MAX))
    convs = [[{"role": "user", "content": t.turns[0]}] for t in probe]
    rows = [{"prompt": c[0]["content"], "category": t.category} for c, t in zip(convs, probe)]
    metrics = dict(res)
    from .generate import ModelAgent
    for who, path in (("init", init), ("model", out / "model")):
        answers, stopped = ModelAgent(path, name=who).respond_many(convs, max_new_tokens=96, return_stopped=True,
                                                                  desc=f"held-out answers ({who})")
        scores = [assess(world, t.specs[0], a).score10() for t, a in zip(probe, answers)]
        for r, a, sc in zip(rows, answers, scores):
            r.update({f"{who}_answer": a, f"{who}_score": sc})
        metrics[who] = {"score": sum(scores) / len(scores), "stop_rate": sum(stopped) / len(stopped)}
    write_jsonl(out / "samples.jsonl", rows)
    write_json(out / "metrics.json", metrics)
    return metrics
