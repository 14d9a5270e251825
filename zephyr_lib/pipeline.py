"""Stage drivers: what each stage notebook runs when its run is not in the store yet.

Each ``build_<stage>(ctx, out)`` reads its config and upstream runs from ``ctx``, writes its
artifacts and ``metrics.json`` into ``out`` (the run's partial folder; the store renames it
when the function returns), and returns the metrics. The notebooks call these and then draw
their page from the stored artifacts, so a cached run renders the same page.
"""
from __future__ import annotations

import random
from pathlib import Path

from . import curate as cur
from .io import read_jsonl, write_json, write_jsonl
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
            # pad = eos would mask the eos labels; Mistral's <unk> is never produced by its tokenizer,
            # so it can pad without growing the vocabulary (no embedding resize).
            if tok.unk_token is None or tok.unk_token == tok.eos_token:
                raise ValueError(f"{cfg.pretrained}: no pad token distinct from eos, and no <unk> to use as one")
            tok.pad_token = tok.unk_token
        tok.chat_template = modeling.CHAT_TEMPLATE
        tok.save_pretrained(out / "model")  # later stages read the tokenizer here, the weights from the hub
        metrics = {"pretrained": cfg.pretrained, "revision": cfg.revision}
        write_json(out / "model" / modeling.POINTER, metrics)
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
    elif cfg.source == "api":  # UltraChat's loop against a real teacher (cached, so resumable)
        from . import distill, judges
        from .io import fetch
        seeds = [x.strip() for x in fetch(cfg.teacher_seeds, ctx.root / "downloads").read_text().splitlines() if x.strip()]
        cache = ctx.root / ctx.profile.name / "judge_cache" / "teacher"
        teacher = judges.judge_from_config("openai", base_url=cfg.teacher_base_url, model=cfg.teacher_model,
                                           api_key_env=cfg.teacher_api_key_env, cache_dir=cache)
        dialogues, stats = distill.ultrachat_dialogues(teacher, seeds[: cfg.n_dialogues or None],
                                                       max_turns=1 + cfg.max_followups)
        write_json(out / "teacher_stats.json", {k: v for k, v in stats.items() if k != "kept"})
        raw = distill.raw_ultrachat_rows(dialogues)
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

def held_out_before_after(ctx: RunContext, init, trained: Path, seed: int, prefix: str, n: int = 96):
    """Greedy answers of the initial and the trained model to `n` new toy prompts (disjoint from
    every benchmark): per-prompt rows, and per model the judge stand-in's mean score, the rate of
    answers that end with eos, and the α/β defect rates."""
    from .generate import ModelAgent

    world = world_of(ctx)
    probe = world.tasks(n, seed=seed, followups=0, prefix=prefix, exclude=world.eval_prompts(N_ALPACA_MAX))
    convs = [[{"role": "user", "content": t.turns[0]}] for t in probe]
    rows = [{"prompt": c[0]["content"], "category": t.category} for c, t in zip(convs, probe)]
    metrics = {}
    for who, path in (("init", init), ("model", trained)):
        answers, stopped = ModelAgent(path, name=who).respond_many(convs, max_new_tokens=96, return_stopped=True,
                                                                  desc=f"held-out answers ({who})")
        scores = [assess(world, t.specs[0], a).score10() for t, a in zip(probe, answers)]
        for r, a, st, sc in zip(rows, answers, stopped, scores):
            r.update({f"{who}_answer": a, f"{who}_stopped": st, f"{who}_score": sc})
        metrics[who] = {"stop_rate": sum(stopped) / len(stopped), "score": sum(scores) / len(scores),
                        "defects": cur.defect_rates(answers)}
    return rows, metrics


def build_sft(ctx: RunContext, out: Path) -> dict:
    """dSFT through TRL's SFTTrainer (see zephyr_lib.sft), then the held-out before/after probe:
    chat format, stopping at eos, the judge stand-in's score and the α/β defect rates."""
    return _train_and_probe(ctx, out, "sft", probe_seed=10_000)


def model_path(ctx: RunContext, ref: str) -> Path:
    """A model reference ('sft', 'dpo@2') -> its local folder. A paper-scale base run's folder holds
    the tokenizer and a pointer to the hub weights (modeling.weights_source)."""
    return ctx.resolve(ref)


# ---- shared: answerers and the judge ------------------------------------------------------

def answerer(ctx: RunContext, name: str, world: World, batch_size: int = 32, seed: int = 0):
    """A toy-world agent by name, or a trained model from a run reference (e.g. 'sft', 'dpo@2')."""
    from .config import TOY_AGENTS
    from .toyworld.agents import agent_profiles

    if name in TOY_AGENTS or name in agent_profiles(world.cfg):
        return make_agent(world, name, seed=seed)
    from .vllm_backend import generation_agent  # vLLM when installed and a GPU exists, else transformers
    return generation_agent(model_path(ctx, name), name=name, batch_size=batch_size, seed=seed)


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
    identical = [p for p in pairs if p["chosen"][-1]["content"] == p["rejected"][-1]["content"]]
    counts["n_identical"] = len(identical)
    if cfg.drop_identical and identical:  # same text twice: zero DPO gradient, and a reward margin of exactly 0
        pairs = [p for p in pairs if p["chosen"][-1]["content"] != p["rejected"][-1]["content"]]
        counts["dropped"] = {**counts.get("dropped", {}), "identical_answers": len(identical)}
        counts["n_out"] = len(pairs)
        counts["n_ties"] = sum(p["score_chosen"] == p["score_rejected"] for p in pairs)
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
    """dDPO through TRL's DPOTrainer (see zephyr_lib.dpo): policy and frozen reference both start
    from `init`; then the same held-out before/after probe as dSFT, on other prompts."""
    return _train_and_probe(ctx, out, "dpo", probe_seed=20_000)


def _train_and_probe(ctx: RunContext, out: Path, stage: str, probe_seed: int) -> dict:
    from . import launch, modeling

    modeling.set_threads()
    cfg = ctx.cfg
    init, data = model_path(ctx, cfg.init), ctx.resolve(cfg.data)
    res = launch.train_stage(stage, cfg, init, data, out)  # in-process, or accelerate launch for >1 process
    write_jsonl(out / "log_history.jsonl", res.pop("log_history"))
    rows, held_out = held_out_before_after(ctx, init, out / "model", seed=probe_seed + cfg.seed, prefix=f"{stage}probe")
    metrics = {**res, **held_out}
    write_jsonl(out / "samples.jsonl", rows)
    write_json(out / "metrics.json", metrics)
    return metrics


# ---- eval ---------------------------------------------------------------------------------

def eval_inputs(ctx: RunContext, world: World) -> dict:
    """Questions, judge prompts, references and instruction sets for this profile's benchmarks."""
    from .evals import alpaca_eval as ae
    from .evals import mt_bench as mt
    from .evals.toy_prompts import toy_judge_prompts

    from .io import fetch

    cfg = ctx.cfg
    cache = ctx.root / ctx.profile.name / "downloads"
    get = lambda src: fetch(src, cache)  # noqa: E731 - local path, or a public URL downloaded once
    out: dict = {}
    if cfg.mt_bench_questions == "toy":
        tasks = world.mt_bench_tasks()
        out["mt_questions"] = [{"question_id": int(t.id), "category": t.category, "turns": t.turns} for t in tasks]
        out["mt_references"] = {int(t.id): mt.answer_record(int(t.id), "toy-oracle", [world.answer(s) for s in t.specs])
                                for t in tasks if t.category in mt.NEED_REF_CATS}
    else:
        out["mt_questions"] = mt.load_questions(get(cfg.mt_bench_questions))
        out["mt_references"] = mt.load_reference_answers(get(cfg.mt_bench_references)) if cfg.mt_bench_references else None
    out["judge_prompts"] = mt.load_judge_prompts(get(cfg.judge_prompts)) if cfg.judge_prompts else toy_judge_prompts()
    if cfg.alpaca_eval_set == "toy":
        tasks = world.alpaca_tasks(cfg.n_alpaca)
        ref = make_agent(world, "reference", seed=0).respond_many([[{"role": "user", "content": t.turns[0]}] for t in tasks])
        out["alpaca"] = [{"instruction": t.turns[0], "output": o, "generator": "toy_reference (text-davinci-003 stand-in)",
                          "dataset": f"toy/{t.category}"} for t, o in zip(tasks, ref)]
    else:
        out["alpaca"] = ae.load_instructions(get(cfg.alpaca_eval_set))
    return out


def build_eval(ctx: RunContext, out: Path) -> dict:
    """MT-Bench, AlpacaEval (v1) and the academic tasks for every model of the run."""
    from . import modeling

    modeling.set_threads()
    cfg = ctx.cfg
    world = world_of(ctx)
    inputs = eval_inputs(ctx, world)
    write_jsonl(out / "mt_bench_question.jsonl", inputs["mt_questions"])  # FastChat's question.jsonl schema
    judge = make_judge(ctx, world)
    toy_lb = "leaderboard" in cfg.benchmarks and cfg.leaderboard_tasks == "toy"
    task_dir, lb_tasks = _leaderboard_tasks(ctx, world, out / "leaderboard_tasks") if toy_lb else (None, None)
    results: dict = {}
    for name in cfg.models:
        agent = answerer(ctx, name, world, batch_size=cfg.batch_size, seed=cfg.seed)
        model_id = f"zephyr-{ctx.profile.name}-{name}".replace("@", "-epoch")  # FastChat picks the template by id
        res: dict = {"model_id": model_id}
        if "mt_bench" in cfg.benchmarks:
            res["mt_bench"] = _mt_bench(cfg, agent, model_id, inputs, judge, out / name / "mt_bench")
        if "alpaca_eval" in cfg.benchmarks:
            res["alpaca_eval"] = _alpaca_eval(cfg, agent, model_id, inputs, judge, out / name / "alpaca_eval")
        if "leaderboard" in cfg.benchmarks and hasattr(agent, "path"):  # log-likelihoods need a real model
            if toy_lb:
                res["leaderboard"] = _leaderboard(agent.path, task_dir, lb_tasks, out / name / "leaderboard")
            else:
                from .evals.leaderboard import run_paper_leaderboard
                res["leaderboard"] = run_paper_leaderboard(agent.path)
                write_json(out / name / "leaderboard" / "metrics.json", res["leaderboard"])
        results[name] = res
        del agent
    if cfg.mt_bench_pairwise_baseline and "mt_bench" in cfg.benchmarks:
        base = cfg.mt_bench_pairwise_baseline
        if base not in results:
            raise ValueError(f"eval.mt_bench_pairwise_baseline {base!r} is not one of eval.models {cfg.models}")
        for name in results:
            if name != base:
                results[name]["mt_bench_pairwise"] = _mt_bench_pairwise(inputs, judge, out, name, base)
    metrics = {"models": results, "judge": getattr(judge.backend, "name", cfg.judge),
               "judge_stats": judge.stats.as_dict()}
    write_json(out / "metrics.json", metrics)
    return metrics


def _mt_bench(cfg, agent, model_id: str, inputs: dict, judge, out: Path) -> dict:
    from .evals import mt_bench as mt

    qs = inputs["mt_questions"]
    temps = [mt.TEMPERATURE.get(q["category"], mt.DEFAULT_TEMPERATURE) for q in qs]
    first = [[{"role": "user", "content": q["turns"][0]}] for q in qs]
    a1 = agent.respond_many(first, max_new_tokens=cfg.max_new_tokens, temperatures=temps, desc=f"MT-Bench turn 1 ({model_id})")
    second = [c + [{"role": "assistant", "content": a}, {"role": "user", "content": q["turns"][1]}]
              for c, a, q in zip(first, a1, qs)]  # turn 2 sees the model's own turn-1 answer
    a2 = agent.respond_many(second, max_new_tokens=cfg.max_new_tokens, temperatures=temps, desc=f"MT-Bench turn 2 ({model_id})")
    answers = {q["question_id"]: mt.answer_record(q["question_id"], model_id, [x, y]) for q, x, y in zip(qs, a1, a2)}
    mt.write_answers(out / "model_answer.jsonl", answers.values())
    reqs = mt.single_judge_requests(qs, answers, inputs["judge_prompts"], inputs["mt_references"])
    replies = judge.complete_many([r["messages"] for r in reqs], temperature=0.0, max_tokens=mt.JUDGE_MAX_TOKENS,
                                  desc=f"MT-Bench judge ({model_id})")
    texts = [r.text if r.ok and r.text is not None else "" for r in replies]  # failed call: no rating, dropped
    judgments = mt.judgments_from_replies(reqs, texts, model=model_id, judge_model=getattr(judge.backend, "name", "judge"))
    mt.write_judgments(out / "judgments.jsonl", judgments)
    by_q = {q["question_id"]: q for q in qs}
    write_jsonl(out / "predictions.jsonl", [
        {"question_id": j["question_id"], "category": by_q[j["question_id"]]["category"], "turn": j["turn"],
         "question": by_q[j["question_id"]]["turns"][j["turn"] - 1],
         "answer": answers[j["question_id"]]["choices"][0]["turns"][j["turn"] - 1],
         "judgment": j["judgment"], "score": j["score"]} for j in judgments])
    metrics = mt.scores(judgments, qs, model=model_id, n_boot=cfg.n_bootstrap, seed=cfg.seed)
    metrics["n_transport_failures"] = sum(not r.ok for r in replies)
    write_json(out / "metrics.json", metrics)
    return metrics


def _mt_bench_pairwise(inputs: dict, judge, out: Path, model: str, baseline: str) -> dict:
    """FastChat's pairwise mode: model (model_1) vs baseline (model_2), each turn judged in both
    orders; the two games disagreeing count as a tie, an unparsed game drops the row."""
    from .evals import mt_bench as mt

    ans = {m: mt.load_answers(out / m / "mt_bench" / "model_answer.jsonl") for m in (model, baseline)}
    games, keys = [], []
    for q in inputs["mt_questions"]:
        a, b = ans[model][q["question_id"]], ans[baseline][q["question_id"]]
        for turn in (1, 2):
            games.append(mt.build_pair_judge_messages(q, a, b, inputs["judge_prompts"], turn, inputs["mt_references"]))
            games.append(mt.build_pair_judge_messages(q, b, a, inputs["judge_prompts"], turn, inputs["mt_references"]))
            keys.append((q["question_id"], turn))
    res = judge.complete_many(games, temperature=0.0, max_tokens=mt.JUDGE_MAX_TOKENS, desc=f"MT-Bench pairwise ({model})")
    verdicts = [mt.parse_pair_verdict(r.text) if r.ok and r.text else "error" for r in res]
    outcomes = [mt.pair_outcome(verdicts[2 * i], verdicts[2 * i + 1]) for i in range(len(keys))]
    write_jsonl(out / model / "mt_bench" / f"pairwise_vs_{baseline}.jsonl",
                [{"question_id": q, "turn": t, "verdict_ab": verdicts[2 * i], "verdict_ba": verdicts[2 * i + 1],
                  "outcome": o} for i, ((q, t), o) in enumerate(zip(keys, outcomes))])
    return {"baseline": baseline, **mt.pairwise_summary(outcomes)}


def _alpaca_eval(cfg, agent, model_id: str, inputs: dict, judge, out: Path) -> dict:
    from .evals import alpaca_eval as ae

    instrs = inputs["alpaca"]
    outputs = agent.respond_many([[{"role": "user", "content": i["instruction"]}] for i in instrs],
                                 max_new_tokens=cfg.max_new_tokens, temperature=0.0, desc=f"AlpacaEval ({model_id})")
    ae.write_model_outputs(out / "model_outputs.json", ae.model_outputs(instrs, outputs, model_id), instrs)
    reqs = [ae.annotator_request(i["instruction"], i["output"], o) for i, o in zip(instrs, outputs)]
    need = [k for k, r in enumerate(reqs) if r["needs_judge"]]
    replies = judge.complete_many([reqs[k]["messages"] for k in need], temperature=0.0,
                                  max_tokens=ae.ANNOTATOR_CONFIG.get("max_tokens", 100), desc=f"AlpacaEval judge ({model_id})")
    reply_of = {k: (r.text if r.ok else None) for k, r in zip(need, replies)}
    rows = []
    for k, (i, o) in enumerate(zip(instrs, outputs)):
        pref = ae.annotate_preference(i["instruction"], i["output"], o, reply_of[k]) if k in reply_of else 0.0
        rows.append(ae.annotation_record(i["instruction"], i["output"], o, pref, generator_1=i.get("generator", ""),
                                         generator_2=model_id, dataset=i.get("dataset", ""),
                                         raw_completion=reply_of.get(k)))
    ae.write_annotations(out / "annotations.json", rows)
    write_jsonl(out / "predictions.jsonl", rows)
    metrics = ae.win_rate([r["preference"] for r in rows])
    write_json(out / "metrics.json", metrics)
    return metrics


def _leaderboard_tasks(ctx: RunContext, world: World, task_dir: Path):
    from .evals import leaderboard as lb
    from .toyworld.benchmarks import leaderboard_rows

    rows = leaderboard_rows(world, ctx.cfg.n_leaderboard, seed=ctx.cfg.seed)
    tasks = {"arc": "toy_arc", "hellaswag": "toy_hellaswag", "truthfulqa_mc2": "toy_truthfulqa_mc2"}
    lb.write_mc_task(task_dir, "toy_arc", rows["arc"], "arc", fewshot_rows=rows["fewshot"]["arc"])
    lb.write_mc_task(task_dir, "toy_hellaswag", rows["hellaswag"], "hellaswag", fewshot_rows=rows["fewshot"]["hellaswag"])
    lb.write_mc_task(task_dir, "toy_truthfulqa_mc2", rows["truthfulqa_mc2"], "truthfulqa_mc2")
    mmlu = lb.write_mmlu_tasks(task_dir, rows["mmlu"], rows["mmlu_dev"], prefix="toy_mmlu")
    return task_dir, {**tasks, "mmlu": mmlu}


def _leaderboard(model_dir: Path, task_dir: Path, tasks: dict, out: Path) -> dict:
    from .evals import leaderboard as lb

    names = [tasks["arc"], tasks["hellaswag"], tasks["truthfulqa_mc2"], *tasks["mmlu"]]
    flat = lb.run_lm_eval(model_dir, task_dir, names, batch_size=32)
    subj = {t: flat[f"{t}/acc"] for t in tasks["mmlu"]}
    metrics = {"arc": flat[f"{tasks['arc']}/acc_norm"], "arc_stderr": flat.get(f"{tasks['arc']}/acc_norm_stderr"),
               "hellaswag": flat[f"{tasks['hellaswag']}/acc_norm"],
               "hellaswag_stderr": flat.get(f"{tasks['hellaswag']}/acc_norm_stderr"),
               "mmlu": lb.macro_average(subj), "mmlu_subjects": subj,
               "truthfulqa_mc2": flat[f"{tasks['truthfulqa_mc2']}/acc"],
               "truthfulqa_mc2_stderr": flat.get(f"{tasks['truthfulqa_mc2']}/acc_stderr"), "raw": flat}
    write_json(out / "metrics.json", metrics)
    return metrics


# ---- results ------------------------------------------------------------------------------

def build_results(ctx: RunContext, out: Path) -> dict:
    """The paper's tables beside this run's, paired comparisons and computed verdicts."""
    from . import results as R

    cfg = ctx.cfg
    ev = ctx.upstream(cfg.eval)
    em = ev.metrics()["models"]
    have = lambda m, b: m in em and b in em[m]  # noqa: E731
    mt = lambda m: R.per_question(ev.dir, m, "mt_bench")  # noqa: E731
    ae = lambda m: R.per_question(ev.dir, m, "alpaca_eval")  # noqa: E731

    def row(name: str) -> dict:
        r: dict = {"model": name}
        if have(name, "mt_bench"):
            b = em[name]["mt_bench"]
            r.update({"mt_bench": b["overall"], "mt_lo": b["ci95"][0], "mt_hi": b["ci95"][1]})
        if have(name, "alpaca_eval"):
            b = em[name]["alpaca_eval"]
            r.update({"alpaca": b["win_rate"], "alpaca_se": b["standard_error"]})
        if have(name, "leaderboard"):
            b = em[name]["leaderboard"]
            r.update({k: 100 * b[k] for k in ("arc", "hellaswag", "mmlu", "truthfulqa_mc2")})
        return r

    verdicts: list[str] = []

    def compare(claim: str, a: str, b: str) -> None:
        for bench, fn, scale, unit in (("mt_bench", mt, 1.0, ""), ("alpaca_eval", ae, 100.0, " pts")):
            if have(a, bench) and have(b, bench):
                d = R.paired_diff(fn(a), fn(b), cfg.n_bootstrap, cfg.seed, scale)
                verdicts.append(R.verdict(f"{claim} ({'MT-Bench' if bench == 'mt_bench' else 'AlpacaEval'})", d, unit))

    table1 = [row(m) for m in cfg.table1 if m in em]
    compare("dSFT > base model", "sft", "base")
    compare("dDPO > dSFT (Zephyr-7B-β over its dSFT starting point)", "dpo", "sft")
    compare("β > α (curated data beats raw UltraChat)", "sft", "sft_alpha")
    arms = [a.split("=", 1) for a in cfg.ablation]
    table3 = [{"arm": arm, **row(run), "paper_mt_bench": R.PAPER_TABLE3[arm][0],
               "paper_alpaca": R.PAPER_TABLE3[arm][1]} for arm, run in arms if run in em and arm in R.PAPER_TABLE3]
    arm_run = dict(arms)
    if {"dDPO + dSFT", "dSFT-1"} <= set(arm_run):
        compare("dDPO + dSFT > dSFT-1", arm_run["dDPO + dSFT"], arm_run["dSFT-1"])
    if {"dSFT-1", "dSFT-2"} <= set(arm_run):
        compare("dSFT-1 > dSFT-2 (more SFT on chosen answers does not help)", arm_run["dSFT-1"], arm_run["dSFT-2"])
    if {"dSFT-1", "dDPO − dSFT"} <= set(arm_run):
        compare("dSFT-1 > dDPO − dSFT (DPO without SFT fails)", arm_run["dSFT-1"], arm_run["dDPO − dSFT"])
    epochs = [{"model": m, **row(m)} for m in cfg.epochs if m in em]
    if len(epochs) >= 2:
        compare(f"{cfg.epochs[-1]} > {cfg.epochs[1]} (3 DPO epochs beat 1)", cfg.epochs[-1], cfg.epochs[1])
    # α vs β: defect rates of the models' answers (stage sft) and of their MT-Bench answers
    from . import curate as cur
    alpha_beta = {}
    for name in ("sft_alpha", "sft"):
        if name in ctx.profile.runs and have(name, "mt_bench"):
            answers = [r["answer"] for r in read_jsonl(ev.dir / name / "mt_bench" / "predictions.jsonl")]
            rates = cur.defect_rates(answers)
            alpha_beta[name] = {"data": ctx.profile.runs[name].config.data, **rates, "mt_bench": em[name]["mt_bench"]["overall"]}
    # Figure 3: DPO reward accuracy over steps
    dpo_log = []
    if cfg.dpo in ctx.profile.runs:
        dctx = ev.upstream(cfg.dpo)
        dpo_log = read_jsonl(dctx.dir / "log_history.jsonl")
    sweep = []
    for name in cfg.sweep:
        if have(name, "mt_bench"):
            dcfg, dm = ctx.profile.runs[name].config, ev.upstream(name).metrics()
            start = dcfg.init
            entry = {"run": name, "beta": dcfg.beta, "learning_rate": dcfg.learning_rate, "epochs": dcfg.num_train_epochs,
                     "test_reward_accuracy": dm.get("eval_rewards/accuracies"), "test_loss": dm.get("eval_loss"),
                     "start": start, **row(name)}
            if have(start, "mt_bench"):
                d = R.paired_diff(mt(name), mt(start), cfg.n_bootstrap, cfg.seed)
                entry.update({"mt_diff": d["diff"], "mt_diff_lo": d["lo"], "mt_diff_hi": d["hi"]})
            sweep.append(entry)
    weakest = {}
    if have("dpo", "mt_bench"):
        cats = em["dpo"]["mt_bench"]["categories"]
        weakest = dict(sorted(cats.items(), key=lambda kv: kv[1])[:2])
    metrics = {"table1": table1, "table3": table3, "epochs": epochs, "alpha_beta": alpha_beta, "sweep": sweep,
               "verdicts": verdicts, "dpo_log": dpo_log, "weakest_categories": weakest,
               "categories": {m: em[m]["mt_bench"]["categories"] for m in cfg.table1 if have(m, "mt_bench")}}
    write_json(out / "metrics.json", metrics)
    return metrics
