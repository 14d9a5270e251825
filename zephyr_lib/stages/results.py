"""Stage `results`: the paper's tables and figures beside this run's, with paired-bootstrap
intervals and computed verdicts. Every cross-run comparison of the book (α vs β, the ablation,
DPO epochs, the DPO settings tried, the largest regressions) is computed here and stored in the
run; the page only shows it. Which claims are checked, and which paper row each run stands for,
are data in the profile (``results.claims``, ``results.analogues``), not run names in code.

Notebook: ``notebooks/06_results.ipynb``. Run: ``python -m zephyr_lib run --profile toy --stages results``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, StageConfig, opt, ref
from ..io import read_jsonl, write_json
from ..stage import Stage

DEFAULT_CLAIMS = [
    "dSFT > base model: sft > base",
    "dDPO > dSFT (Zephyr-7B-β over its dSFT starting point): dpo > sft",
    "β > α (curated data beats raw UltraChat): sft > sft_alpha",
    "dDPO + dSFT > dSFT-1: dpo_1ep > sft",
    "dSFT-1 > dSFT-2 (more SFT on chosen answers does not help): sft > sft2",
    "dSFT-1 > dDPO − dSFT (DPO without SFT fails): sft > dpo_base",
    "3 DPO epochs beat 1: dpo > dpo@1",
]
DEFAULT_ANALOGUES = [
    "base=Mistral-7B-v0.1 (base)", "sft_alpha=dSFT on raw UltraChat (α data)", "sft=dSFT-1 (Table 3)",
    "dpo=Zephyr-7B-β (dDPO)", "teacher=GPT-3.5-turbo", "reference=text-davinci-003",
]


def _pairs(items: list[str], sep: str, what: str) -> list[tuple[str, str]]:
    out = []
    for x in items:
        if sep not in x:
            raise ConfigError(f"results.{what}: {x!r} must look like 'a{sep}b'")
        a, b = x.rsplit(sep, 1) if sep == ":" else x.split(sep, 1)
        out.append((a.strip(), b.strip()))
    return out


@dataclass(frozen=True)
class ResultsConfig(StageConfig):
    """Stage `results`: the paper's tables and figures beside this run's."""

    eval: str = ref("eval", "The eval run whose metrics and predictions feed the tables.")
    table1: list[str] = opt(["base", "sft_alpha", "sft", "dpo", "teacher", "reference"],
                            "Models of the Table 1/2 analogue, in order (runs or toy agents).")
    analogues: list[str] = opt(DEFAULT_ANALOGUES, "'model=paper model': the paper's row each model stands for (its numbers come from results.PAPER_MODELS).")
    claims: list[str] = opt(DEFAULT_CLAIMS, "'claim: a > b': the paper's findings checked by a paired bootstrap on each benchmark with a comparison record (evals.benchmarks: MT-Bench, AlpacaEval).")
    ablation: list[str] = opt(["dDPO − dSFT=dpo_base", "dSFT-1=sft", "dSFT-2=sft2", "dDPO + dSFT=dpo_1ep"],
                              "Table 3 arms as 'arm=run' (the paper's arm names).")
    epochs: list[str] = opt(["sft", "dpo@1", "dpo@2", "dpo"], "Models of the MT-Bench-vs-DPO-epochs curve (Figure 3).")
    dpo: str = opt("dpo", "The DPO run whose training curves Figure 3 shows.")
    sweep: list[str] = opt([], "DPO runs compared with their dSFT start (what was tried when dDPO > dSFT did not reproduce).")
    alpha_beta: list[str] = opt(["sft_alpha", "sft"], "dSFT runs whose answers' defect rates are compared (α vs β).")
    regressions: str = opt("sft -> dpo", "'a -> b': list the MT-Bench questions where b lost most against a.")
    academic: list[str] = opt(["dpo > sft"], "'a > b' pairs whose Open LLM Leaderboard (analogue) differences get a 95% interval and a verdict.")
    predictions: list[str] = opt([], "Toy world only: 'label: METRIC a > b + M' (or '<'), METRIC 'informative' (share of MT-Bench turns that grade depth whose answer adds a further true fact) or 'habit' (share of first turns with one of the GPT-3.5 stand-in's format habits answered compliantly), in points; a paired bootstrap gives the verdict against the margin M.", hash_omit_default=True)
    behaviour: list[str] = opt([], "Toy world only: models whose MT-Bench answers get the informative and format-habit rates, by category.", hash_omit_default=True)
    n_bootstrap: int = opt(2000, "Paired-bootstrap resamples for differences between models.", ge=100)
    seed: int = opt(0, "Bootstrap seed.")
    like_for_like: list[str] = opt([], "'run=anchor': this reproduction's run beside the paper's published model (an eval.anchors label) under today's judge; the table has, per benchmark, the paper (GPT-4-0613, 2023), the paper's model today and this run today, and the verdict compares the last two.", hash_omit_default=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _pairs(self.like_for_like, "=", "like_for_like")
        _pairs(self.analogues, "=", "analogues")
        _pairs(self.claims, ":", "claims")
        _pairs(self.ablation, "=", "ablation")
        if self.regressions:
            _pairs([self.regressions], "->", "regressions")
        _pairs(self.academic, ">", "academic")
        for p in self.predictions:
            parse_prediction(p)


PREDICTION = re.compile(r"^(?P<label>.+):\s*(?P<metric>informative|habit)\s+(?P<a>[\w@.-]+)\s*(?P<op>[<>])\s*"
                        r"(?P<b>[\w@.-]+)\s*(?:(?P<sign>[+-])\s*(?P<margin>\d+(?:\.\d+)?))?\s*$")


def parse_prediction(text: str) -> dict:
    """'label: informative dpo > sft + 15' -> its parts (margin in points, signed)."""
    m = PREDICTION.match(text)
    if not m:
        raise ConfigError(f"results.predictions: {text!r} must look like 'label: informative|habit a > b + M'")
    margin = float(m["margin"] or 0) * (-1 if m["sign"] == "-" else 1)
    return {"label": m["label"].strip(), "metric": m["metric"], "a": m["a"], "op": m["op"], "b": m["b"], "margin": margin}


def behaviour_items(world, specs: dict[int, list[dict]], folder: Path) -> dict[str, dict]:
    """Per MT-Bench turn of one model: the depth and format-habit flags of its answer (toy world;
    ``specs``: each question id's turn specs)."""
    from ..toyworld.checker import assess, depth_and_format

    out: dict[str, dict] = {}
    for r in read_jsonl(folder / "predictions.jsonl"):
        turn = int(r["turn"])
        spec = specs[int(r["question_id"])][turn - 1]
        out[f"{r['question_id']}/{turn}"] = {"category": r["category"], **depth_and_format(
            world, spec, assess(world, spec, r["answer"]), first_turn=turn == 1)}
    return out


def behaviour_summary(items: dict[str, dict]) -> dict:
    """Rates (in %) over the turns that grade depth / have a format habit, overall and by category."""
    def rate(rows, flag, where):
        sel = [r[flag] for r in rows if r[where]]
        return {"rate": 100 * sum(sel) / len(sel) if sel else None, "n": len(sel)}
    rows = list(items.values())
    cats = sorted({r["category"] for r in rows})
    return {"informative": rate(rows, "informative", "depth"), "habit": rate(rows, "compliant", "habit"),
            "by_category": {c: {"informative": rate([r for r in rows if r["category"] == c], "informative", "depth"),
                                "habit": rate([r for r in rows if r["category"] == c], "compliant", "habit")}
                            for c in cats}}


def prediction_verdict(p: dict, d: dict) -> str:
    """'reproduced' when the interval clears the margin on the predicted side, 'not reproduced' when
    it lies wholly on the other side, else 'inconclusive'."""
    m = p["margin"]
    if p["op"] == ">":
        status = "as predicted" if d["lo"] > m else "not as predicted" if d["hi"] < m else "inconclusive"
    else:
        status = "as predicted" if d["hi"] < m else "not as predicted" if d["lo"] > m else "inconclusive"
    return (f"{p['label']}: {status}, {p['metric']} rate {p['a']} − {p['b']} = {d['diff']:+.1f} pts "
            f"[95% CI {d['lo']:+.1f}, {d['hi']:+.1f}] (predicted {p['op']} {m:+g}), n = {d['n']}")


def build(ctx, out: Path) -> dict:
    """The paper's tables beside this run's, paired comparisons and computed verdicts."""
    from .. import curate as cur
    from .. import results as R
    from ..evals.benchmarks import BENCHMARKS

    cfg = ctx.cfg
    ev = ctx.upstream(cfg.eval)
    em = ev.metrics()["models"]
    have = lambda m, b: m in em and b in em[m]  # noqa: E731
    items = lambda m, b: BENCHMARKS[b].per_item(ev.dir / m / b)  # noqa: E731

    def row(name: str) -> dict:  # one model's columns: each benchmark's Benchmark.summary, in BENCHMARKS order
        r: dict = {"model": name}
        for bench in BENCHMARKS.values():
            if have(name, bench.name):
                r.update(bench.summary(em[name][bench.name]))
        return r

    # the benchmarks two models are compared on (paired bootstrap), each with its Comparison record
    compared = [b for b in BENCHMARKS.values() if b.comparison is not None]

    def diff(a: str, b: str, bench: str) -> dict | None:
        if not (have(a, bench) and have(b, bench)):
            return None
        return R.paired_diff(items(a, bench), items(b, bench), cfg.n_bootstrap, cfg.seed,
                             BENCHMARKS[bench].comparison.scale)

    verdicts: list[str] = []
    for claim, pair in _pairs(cfg.claims, ":", "claims"):
        a, b = _pairs([pair], ">", "claims")[0]
        for bench in compared:
            d = diff(a, b, bench.name)
            if d is not None:
                verdicts.append(R.verdict(f"{claim} ({bench.comparison.label})", d, bench.comparison.unit))

    analogue = dict(_pairs(cfg.analogues, "=", "analogues"))
    table1 = []
    for m in cfg.table1:
        if m in em:
            name = analogue.get(m, "")
            p_mt, p_ae, p_se = R.PAPER_MODELS.get(name, (None, None, None))
            table1.append({**row(m), "paper_analogue": name, "paper_mt_bench": p_mt, "paper_alpaca": p_ae,
                           "paper_alpaca_se": p_se})
    table3 = [{"arm": arm, **row(run), "paper_mt_bench": R.PAPER_TABLE3[arm][0], "paper_alpaca": R.PAPER_TABLE3[arm][1]}
              for arm, run in _pairs(cfg.ablation, "=", "ablation") if run in em and arm in R.PAPER_TABLE3]
    epochs = [row(m) for m in cfg.epochs if m in em]
    # α vs β: defect rates of the models' answers on held-out prompts (stage sft) and on MT-Bench
    alpha_beta = {}
    for name in cfg.alpha_beta:
        if name in ctx.profile.runs and have(name, "mt_bench"):
            held_out = ev.upstream(name).metrics()["model"]
            answers = [r["answer"] for r in read_jsonl(ev.dir / name / "mt_bench" / "predictions.jsonl")]
            alpha_beta[name] = {"data": ctx.profile.runs[name].config.data, **cur.defect_rates(answers),
                                "mt_bench": em[name]["mt_bench"]["overall"],
                                "held_out_boilerplate_rate": held_out["defects"]["boilerplate_rate"],
                                "held_out_lowercase_rate": held_out["defects"]["lowercase_rate"],
                                "held_out_score": held_out["score"], "held_out_stop_rate": held_out["stop_rate"]}
    dpo_log, dpo_final = [], {}
    if cfg.dpo in ctx.profile.runs:
        dctx = ev.upstream(cfg.dpo)
        dpo_log = read_jsonl(dctx.dir / "log_history.jsonl")
        dpo_final = {k: v for k, v in dctx.metrics().items() if k.startswith("eval_") and isinstance(v, float)}
    sweep = []
    for name in cfg.sweep:
        if have(name, "mt_bench"):
            dcfg, dm = ctx.profile.runs[name].config, ev.upstream(name).metrics()
            entry = {"run": name, "beta": dcfg.beta, "learning_rate": dcfg.learning_rate, "seed": dcfg.seed,
                     "epochs": dcfg.num_train_epochs, "test_reward_accuracy": dm.get("eval_rewards/accuracies"),
                     "test_loss": dm.get("eval_loss"), "start": dcfg.init, **row(name)}
            for who in ("init", "model"):  # the held-out probe (stage dpo): greedy answers before and after
                probe = dm.get(who) or {}
                entry[f"held_out_informative_{who}"] = probe.get("informative_rate")
                entry[f"held_out_habit_{who}"] = probe.get("habit_compliance_rate")
            d = diff(name, dcfg.init, "mt_bench")
            if d is not None:
                entry.update({"mt_diff": d["diff"], "mt_diff_lo": d["lo"], "mt_diff_hi": d["hi"]})
            sweep.append(entry)
    regressions = []
    if cfg.regressions:
        a, b = _pairs([cfg.regressions], "->", "regressions")[0]
        if have(a, "mt_bench") and have(b, "mt_bench"):
            pa = {(r["question_id"], r["turn"]): r for r in read_jsonl(ev.dir / a / "mt_bench" / "predictions.jsonl")}
            pb = {(r["question_id"], r["turn"]): r for r in read_jsonl(ev.dir / b / "mt_bench" / "predictions.jsonl")}
            both = [{"category": pa[k]["category"], "question": pa[k]["question"], f"answer ({a})": pa[k]["answer"],
                     f"answer ({b})": pb[k]["answer"], "change": pb[k]["score"] - pa[k]["score"]}
                    for k in sorted(set(pa) & set(pb), key=str) if pa[k]["score"] >= 0 and pb[k]["score"] >= 0]
            regressions = sorted(both, key=lambda r: r["change"])[:6]
    # academic benchmarks: differences with a normal 95% interval from the two scores' standard
    # errors (lm-eval's per-task stderr; unpaired, so conservative), and whether each sits above chance
    academic, chance = [], {}
    for a, b in _pairs(cfg.academic, ">", "academic"):
        if not (have(a, "leaderboard") and have(b, "leaderboard")):
            continue
        la, lb_ = em[a]["leaderboard"], em[b]["leaderboard"]
        chance = la.get("chance") or chance
        for k, label in (("arc", "ARC"), ("hellaswag", "HellaSwag"), ("mmlu", "MMLU"), ("truthfulqa_mc2", "TruthfulQA")):
            sa, sb = la.get(f"{k}_stderr"), lb_.get(f"{k}_stderr")
            if sa is None or sb is None:
                continue
            d = 100 * (la[k] - lb_[k])
            half = 1.96 * 100 * (sa ** 2 + sb ** 2) ** 0.5
            entry = {"pair": f"{a} − {b}", "benchmark": label, a: 100 * la[k], b: 100 * lb_[k], "diff": d,
                     "lo": d - half, "hi": d + half, "chance": (chance or {}).get(k)}
            status = ("higher" if entry["lo"] > 0 else "lower" if entry["hi"] < 0 else "no significant difference")
            entry["verdict"] = (f"{label}: {a} vs {b}: {status}, {d:+.1f} pts [95% CI {entry['lo']:+.1f}, "
                                f"{entry['hi']:+.1f}]" + (f"; chance {entry['chance']:.0f}" if entry["chance"] else ""))
            academic.append(entry)
    behaviour, predictions = {}, []
    if cfg.behaviour or cfg.predictions:
        from ..toyworld import shared_world
        world = shared_world(ctx.world)
        preds = [parse_prediction(p) for p in cfg.predictions]
        names = list(dict.fromkeys([*cfg.behaviour, *(x for p in preds for x in (p["a"], p["b"]))]))
        specs = {int(t.id): t.specs for t in world.mt_bench_tasks()}
        flags = {m: behaviour_items(world, specs, ev.dir / m / "mt_bench") for m in names if have(m, "mt_bench")}
        behaviour = {m: behaviour_summary(flags[m]) for m in cfg.behaviour if m in flags}
        for p in preds:
            if p["a"] not in flags or p["b"] not in flags:
                continue
            flag, where = ("informative", "depth") if p["metric"] == "informative" else ("compliant", "habit")
            pick = lambda m: {k: float(v[flag]) for k, v in flags[m].items() if v[where]}  # noqa: E731
            d = R.paired_diff(pick(p["a"]), pick(p["b"]), cfg.n_bootstrap, cfg.seed, 100.0)
            predictions.append({**p, **d, "verdict": prediction_verdict(p, d)})
    # like with like: the paper's number (its 2023 judge), the paper's model and this run under today's judge
    analogue_of = dict(_pairs(cfg.analogues, "=", "analogues"))
    like_for_like, drift = [], ev.metrics().get("alpaca_rejudge")
    for run, anchor in _pairs(cfg.like_for_like, "=", "like_for_like"):
        if run not in em or anchor not in em:
            continue
        for bench in compared:
            c, name = bench.comparison, bench.name
            if not (have(run, name) and have(anchor, name)):
                continue
            paper = R.paper_score(analogue_of.get(run, ""), name)
            d = diff(run, anchor, name)
            entry = {"benchmark": c.metric_label, "run": run, "anchor": anchor, "paper_model": analogue_of.get(run, ""),
                     "paper_2023_judge": paper, "anchor_today": em[anchor][name][c.metric],
                     "run_today": em[run][name][c.metric], "diff": d["diff"], "lo": d["lo"], "hi": d["hi"], "n": d["n"],
                     "judge_drift": None if paper is None else em[anchor][name][c.metric] - paper}
            rejudged = ev.metrics().get(c.rejudge) if c.rejudge else None  # the paper model's archived outputs
            if rejudged and rejudged.get(c.metric) is not None and anchor == "zephyr-7b-beta":
                entry["archived_outputs_today"] = rejudged[c.metric]
            entry["verdict"] = R.verdict(f"{run} vs the paper's {anchor}, same judge ({c.metric_label})", d, c.unit)
            verdicts.append(entry["verdict"])
            like_for_like.append(entry)
    weakest = {}
    if have(cfg.dpo, "mt_bench"):
        cats = em[cfg.dpo]["mt_bench"]["categories"]
        weakest = dict(sorted(cats.items(), key=lambda kv: kv[1])[:2])
    metrics = {"table1": table1, "table3": table3, "epochs": epochs, "alpha_beta": alpha_beta, "sweep": sweep,
               "verdicts": verdicts, "dpo_log": dpo_log, "dpo_final": dpo_final, "regressions": regressions,
               "weakest_categories": weakest, "academic": academic, "behaviour": behaviour,
               "predictions": predictions, "like_for_like": like_for_like, "alpaca_judge_drift": drift,
               "leaderboard_chance": chance,
               "categories": {m: em[m]["mt_bench"]["categories"] for m in cfg.table1 if have(m, "mt_bench")}}
    write_json(out / "metrics.json", metrics)
    return metrics


STAGE = Stage("results", ResultsConfig, notebook="06_results", artifact="metrics.json", build=build)
