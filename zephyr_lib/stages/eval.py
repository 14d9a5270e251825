"""Stage `eval`: every benchmark of :data:`zephyr_lib.evals.benchmarks.BENCHMARKS` that the run
names (MT-Bench, AlpacaEval 1, the Open LLM Leaderboard tasks), for every model the results need.

Each model's outputs, verdicts and metrics land in ``<run>/<model>/<benchmark>/`` in the
benchmarks' official formats, plus ``metrics.json`` + ``predictions.jsonl``. A model's results
are also kept in a content-addressed cache (``runs/<profile>/eval_cache/``, keyed by the model's
run hash, the benchmark inputs and the judge), so adding one model to ``eval.models`` generates
and judges for that model only.

Notebook: ``notebooks/05_eval.ipynb``. Run: ``python -m zephyr_lib run --profile toy --stages eval``.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import ATTN_IMPLEMENTATIONS, TOY_AGENTS, TOY_JUDGE_VERSION, StageConfig, config_hash, endpoint, opt, ref_run, refs
from ..io import read_json, write_json, write_jsonl
from ..evals.benchmarks import BENCHMARKS
from ..stage import Stage

BENCHMARK_NAMES = tuple(BENCHMARKS)  # the one list of benchmarks (evals/benchmarks.py)


@dataclass(frozen=True)
class EvalConfig(StageConfig):
    """Stage `eval`: MT-Bench, AlpacaEval (v1) and the Open LLM Leaderboard tasks for several models."""

    models: list[str] = refs(["base", "sft", "dpo", "teacher"], "Runs (or run@epoch), toy agents ('teacher', 'reference') or 'endpoint:<name>' to evaluate.")
    benchmarks: list[str] = opt(["mt_bench", "alpaca_eval", "leaderboard"], "Which benchmarks to run.", choices=BENCHMARK_NAMES)
    mt_bench_questions: str = opt("toy", "'toy' or a FastChat question.jsonl path/URL.")
    mt_bench_references: str = opt("", "FastChat reference answers (reference_answer/gpt-4.jsonl) for math, reasoning, coding; toy: the world's answers.")
    judge_prompts: str = opt("", "FastChat judge_prompts.jsonl path (empty = the toy profile's prompts in FastChat's schema and layouts).")
    alpaca_eval_set: str = opt("toy", "'toy', tatsu-lab/alpaca_eval (AlpacaEval 1's eval set with the baseline GPT-4 judged), or a local JSON in its schema; alpaca_eval's later results/text_davinci_003 outputs are refused.")
    alpaca_temperature: float = opt(0.0, "AlpacaEval sampling temperature (Zephyr's official generation: 0.7; 0 = greedy).", ge=0, hash_omit_default=True)
    alpaca_top_p: float = opt(1.0, "AlpacaEval top_p (Zephyr: 1.0).", gt=0, le=1, hash_omit_default=True)
    alpaca_max_new_tokens: int = opt(0, "AlpacaEval generation length (Zephyr: 2048; 0 = max_new_tokens).", ge=0, hash_omit_default=True)
    device: str = opt("auto", "Where models run (generation, lm-eval): auto (cuda if present, else cpu), cpu, cuda, cuda:N.", hash_omit_default=True)
    attn_implementation: str = opt("auto", "Attention kernel of the models generating with transformers: auto = flash_attention_2 where the flash_attn package is importable and a GPU is visible, else sdpa; or sdpa, flash_attention_2, eager (vLLM uses its own). metrics.json records the one used per model.", choices=ATTN_IMPLEMENTATIONS, hash_omit_default=True)
    vllm_gpu_memory_utilization: float = opt(0.9, "GPU fraction vLLM may hold while generating; it is released before lm-eval loads the model.", gt=0, le=1, hash_omit_default=True)
    leaderboard_tasks: str = opt("toy", "'toy' (the toy world's four tasks) or 'paper' (arc_challenge, hellaswag, mmlu, truthfulqa_mc2 with the leaderboard v1 settings).",
                                 choices=("toy", "paper"))
    mt_bench_pairwise_baseline: str = opt("", "Also run MT-Bench's pairwise mode: every other model against this one, both orders, disagreement = tie (empty = off).", hash_omit_default=True)
    n_alpaca: int = opt(200, "Toy AlpacaEval instructions (real set: all 805).", ge=1)
    n_leaderboard: int = opt(200, "Toy questions per leaderboard task.", ge=1)
    max_new_tokens: int = opt(128, "Generation length (FastChat: 1024).", ge=1)
    batch_size: int = opt(32, "Generation batch size.", ge=1)
    n_bootstrap: int = opt(1000, "Bootstrap resamples for 95% intervals.", ge=100)
    judge: str = endpoint("toy", "Endpoint that judges MT-Bench and AlpacaEval (the paper: GPT-4).")
    judge_failure_budget: float = opt(0.0, "Share of each benchmark's inputs (questions, instructions, pairwise games) allowed to be lost to failed or unusable (unparsable) judgments before the run counts as incomplete; 0 = any loss stops it (resumable: the cache keeps every usable answer). A budget above 0 is shown on the page.", ge=0, lt=1, hash_omit_default=True)
    seed: int = opt(0, "Sampling seed.")
    anchors: list[str] = opt([], "The paper's published models, evaluated beside `models` under the same judge so that today's scores compare like with like: 'label=org/model@revision' (a hub snapshot, fetched at that commit) or 'label=/local/path'.", hash_omit_default=True)
    alpaca_rejudge: str = opt("", "Archived AlpacaEval outputs of the paper's model (model_outputs.json: path or URL), re-judged by `judge` against this eval set's baseline: the judge drift from the paper's published win rate, as a number (empty = off).", hash_omit_default=True)
    alpaca_eval_revision: str = opt("", "Hub revision (commit) of `alpaca_eval_set` when it is the hub dataset (empty = default branch).", hash_omit_default=True)


def eval_inputs(ctx) -> dict:
    """Questions, judge prompts, references and instruction sets for this run's benchmarks: each
    benchmark of :data:`BENCHMARKS` adds its own (:meth:`Benchmark.prepare`), in the registry's order."""
    inputs: dict = {}
    for bench in BENCHMARKS.values():
        bench.prepare(ctx, inputs)
    return inputs


def model_key(ctx, name: str) -> dict:
    """What a model's answers depend on: its run's hash (and epoch), or the toy agent and world."""
    if name in TOY_AGENTS:
        return {"agent": name, "world": dataclasses.asdict(ctx.world)}
    if name.startswith("endpoint:"):
        return {"endpoint": dataclasses.asdict(ctx.profile.endpoints[name.split(":", 1)[1]])}
    return {"run_hash": ctx.profile.run_hash(ref_run(name)), "ref": name.split(ref_run(name), 1)[1]}


def anchor_path(source: str, revision: str) -> str:
    """A published model's weights as a local folder: a hub snapshot at ``revision`` (from the hub
    cache when ``zephyr fetch`` put it there; works with ``HF_HUB_OFFLINE=1``) or a local path."""
    if Path(source).exists():
        return str(source)
    from huggingface_hub import snapshot_download
    return snapshot_download(source, revision=revision or None)


def build(ctx, out: Path) -> dict:
    """Every benchmark for every model: from the per-model cache when it has the result, else run."""
    from .. import modeling
    from ..agents import WeightsOnly, judge_for, make_agent
    from ..vllm_backend import available as vllm_available
    from ..vllm_backend import generation_agent, memory_plan, release

    modeling.set_threads()
    cfg = ctx.cfg
    inputs = eval_inputs(ctx)
    write_jsonl(out / "mt_bench_question.jsonl", inputs["mt_questions"])  # FastChat's question.jsonl schema
    if "toy_specs" in inputs:
        write_jsonl(out / "toy_specs.jsonl", inputs["toy_specs"])  # what each benchmark question asks
    judge = judge_for(ctx, cfg.judge)
    benches = {b: BENCHMARKS[b](cfg, inputs) for b in cfg.benchmarks}
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k not in ("models", "mt_bench_pairwise_baseline", "batch_size", "anchors", "alpaca_rejudge",
                             "alpaca_eval_revision", "attn_implementation")}
    if cfg.alpaca_eval_revision:  # (only when set: the caches of earlier runs keep their keys)
        settings["alpaca_eval_revision"] = cfg.alpaca_eval_revision
    if cfg.attn_implementation != "auto":  # (likewise)
        settings["attn_implementation"] = cfg.attn_implementation
    judge_id = TOY_JUDGE_VERSION if cfg.judge == "toy" else dataclasses.asdict(ctx.profile.endpoints[cfg.judge])
    cache_root = ctx.root / ctx.profile.name / "eval_cache"
    vllm_kw = {"gpu_memory_utilization": cfg.vllm_gpu_memory_utilization} if vllm_available() else {}
    results: dict = {}
    attention: dict = {}  # model -> the attention kernel it generated with (models that generated here)
    from ..preflight import parse_anchor
    anchors = {label: (src, rev) for label, src, rev in map(parse_anchor, cfg.anchors)}
    clash = sorted(set(anchors) & set(cfg.models))
    if clash:
        raise ValueError(f"eval.anchors: label(s) {clash} are also in eval.models; give the anchors other labels")
    for name in [*cfg.models, *anchors]:
        model_id = f"zephyr-{ctx.profile.name}-{name}".replace("@", "-epoch")  # FastChat picks the template by id
        res: dict = {"model_id": model_id}
        anchor = anchors.get(name)
        if anchor:
            res["anchor"] = {"source": anchor[0], "revision": anchor[1]}
        is_run = anchor is not None or (name not in TOY_AGENTS and not name.startswith("endpoint:"))
        weights = None  # the model's folder, for lm-eval (which loads the model itself)
        plan = memory_plan(list(benches), use_vllm=is_run and vllm_available(),
                           gpu_memory_utilization=cfg.vllm_gpu_memory_utilization)
        agent = None
        for step in plan["steps"]:
            if step == "release":  # vLLM (or the generation model) and lm-eval never hold the GPU at once
                if agent is not None:
                    release(agent)
                agent = None
                continue
            bench = benches[step]
            folder = out / name / bench.name
            mkey = {"anchor": anchor[0], "revision": anchor[1]} if anchor else model_key(ctx, name)
            key = config_hash({"benchmark": bench.name, "settings": settings, "model": mkey,
                               "model_id": model_id, "judge": judge_id if bench.judged else None})
            cached = cache_root / bench.name / key
            if (cached / "metrics.json").exists():
                shutil.copytree(cached, folder, dirs_exist_ok=True)
                res[bench.name] = read_json(folder / "metrics.json")
                continue
            if bench.needs_weights and not is_run:
                continue  # programs and API models have no log-likelihoods
            if weights is None:
                weights = anchor_path(*anchor) if anchor else None
            folder.mkdir(parents=True, exist_ok=True)
            if bench.needs_weights:  # lm-eval loads the weights itself: no generation model is built for it
                path = weights if anchor else ctx.resolve(name)
                res[bench.name] = bench.run(WeightsOnly(name, path), model_id, judge, folder)
            else:
                if agent is None:
                    agent = (generation_agent(weights, name=name, batch_size=cfg.batch_size, seed=cfg.seed,
                                              device=cfg.device, attn_implementation=cfg.attn_implementation,
                                              **vllm_kw) if anchor else
                             make_agent(ctx, name, batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device,
                                        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                                        attn_implementation=cfg.attn_implementation))
                    if getattr(agent, "attn_implementation", None):
                        attention[name] = agent.attn_implementation
                res[bench.name] = bench.run(agent, model_id, judge, folder)
            if bench.failures(res[bench.name]):
                continue  # never cached: the rerun asks the judge again for what failed
            tmp = cached.with_name(f".tmp-{key}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(folder, tmp)
            shutil.rmtree(cached, ignore_errors=True)
            os.replace(tmp, cached)
        results[name] = res
        del agent
    for bench in benches.values():
        for model, extra in bench.after_all(list(results), judge, out).items():
            results[model].update(extra)
    drift = None
    if "alpaca_archived" in inputs:
        drift = rejudge_archived(inputs, judge, out / "alpaca_rejudge", cfg)
    # over the budget the run stays partial; the judge cache keeps every usable reply, so a rerun
    # asks only for what was lost
    failures = check_losses(benches, results, cfg.judge_failure_budget, where=f"eval run {ctx.run.name!r}")
    metrics = {"models": results, "judge": getattr(judge.backend, "name", cfg.judge),
               "judge_stats": judge.stats.as_dict(), "judge_failures": failures}
    if "alpaca_baseline" in inputs:  # which reference outputs the win rates are against (check_baseline)
        metrics["alpaca_baseline"] = inputs["alpaca_baseline"]
    if drift is not None:
        metrics["alpaca_rejudge"] = drift
    if attention:
        metrics["attn_implementation"] = attention
    write_json(out / "metrics.json", metrics)
    return metrics


def rejudge_archived(inputs: dict, judge, folder: Path, cfg) -> dict:
    """AlpacaEval's judge step over archived outputs of the paper's model (``eval.alpaca_rejudge``)
    against this eval set's baseline, with today's judge: the win rate beside the paper's (90.60
    for Zephyr-7B-β under GPT-4-0613) is the judge drift, measured. Every reply is cached by the
    judge (a rerun asks only for what is missing); a failed call is counted, never scored."""
    from .. import results as R
    from ..evals import alpaca_eval as ae

    by_instr = {r["instruction"]: r for r in inputs["alpaca_archived"]}
    rows_in = inputs["alpaca"]
    outputs = [by_instr[r["instruction"]]["output"] for r in rows_in]
    generator = by_instr[rows_in[0]["instruction"]]["generator"]
    rows, m = ae.judge_outputs(rows_in, outputs, f"{generator} (archived)", judge,
                               desc=f"AlpacaEval re-judging ({generator}, archived outputs)")
    ae.write_annotations(folder / "annotations.json", rows)
    write_jsonl(folder / "predictions.jsonl", rows)
    paper = R.PAPER_MODELS["Zephyr-7B-β (dDPO)"]
    m.update({"generator": generator, "source": cfg.alpaca_rejudge, "paper_win_rate": paper[1],
              "paper_standard_error": paper[2], "paper_judge": "gpt-4-0613 (alpaca_eval_gpt4, 2023)",
              "drift": None if m["win_rate"] is None else m["win_rate"] - paper[1]})
    write_json(folder / "metrics.json", m)
    return m


def check_losses(benches: dict, results: dict, budget: float, where: str) -> dict:
    """The failure budget per input: questions (MT-Bench), instructions (AlpacaEval) and pairwise
    games each benchmark lost, over all models, to failed or unusable judgments
    (:func:`zephyr_lib.judges.require_inputs`; raises JudgeFailuresError over the budget)."""
    from ..judges import require_inputs

    losses: dict[str, tuple[int, int]] = {}
    for bench in benches.values():
        if bench.judged:
            per_model = [bench.losses(res[bench.name]) for res in results.values() if bench.name in res]
            losses[bench.name] = (sum(x for x, _ in per_model), sum(n for _, n in per_model))
    pairwise = [res["mt_bench_pairwise"] for res in results.values() if "mt_bench_pairwise" in res]
    if pairwise:
        losses["mt_bench_pairwise"] = (sum(p["inputs_lost"] for p in pairwise), sum(p["inputs_total"] for p in pairwise))
    return require_inputs(losses, budget, where=where, what={"mt_bench": "questions", "alpaca_eval": "instructions",
                                                           "mt_bench_pairwise": "games"})


STAGE = Stage("eval", EvalConfig, notebook="05_eval", artifact="metrics.json", build=build,
              alone=True)  # every model, after everything else
