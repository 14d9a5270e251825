"""The benchmarks the eval stage runs, as small classes with the same three steps, in one registry.

Each :class:`Benchmark` has its inputs prepared once per eval run (``prepare``), then answers ``generate`` (the model's outputs, in the benchmark's official
format), ``judge`` (the judge's verdicts, or log-likelihood scoring) and ``score`` (metrics.json);
:meth:`Benchmark.run` does the three for one model and writes ``metrics.json`` +
``predictions.jsonl`` into ``out``. ``columns`` (through ``summary``) gives a model's columns in
the results stage's tables;
``per_item`` gives per-question scores for paired comparisons between models, and ``comparison``
(a :class:`Comparison`) says how the results stage names, scales and checks those comparisons: the
claims' verdicts and the like-for-like table loop over the benchmarks that declare one.

Adding a benchmark: one class here and one line in :data:`BENCHMARKS`.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..agent import Agent
from ..io import read_jsonl, write_json, write_jsonl


@dataclass(frozen=True)
class Comparison:
    """How the results stage compares two models on a benchmark: a paired bootstrap over the
    benchmark's ``per_item`` scores, reported against its headline metric."""

    metric: str  # the headline metric's key in the benchmark's metrics.json
    label: str  # the benchmark's name in verdicts: "claim (label): reproduced, ..."
    metric_label: str  # the headline metric's name in tables, with its unit if it has one
    unit: str = ""  # after a difference in verdicts
    scale: float = 1.0  # a per_item score times this is on the headline metric's scale
    rejudge: str = ""  # the eval run's metrics key holding the paper model's archived outputs judged today


class Benchmark:
    """One benchmark: its inputs are prepared once per eval run, then it runs for each model."""

    name: ClassVar[str]
    title: ClassVar[str]
    columns: ClassVar[dict[str, tuple[str, float]]] = {}  # metric key -> (results-table column, scale)
    comparison: ClassVar[Comparison | None] = None  # set: claims are checked on it (``per_item`` needed)
    needs_weights: ClassVar[bool] = False  # scores log-likelihoods: only trained models (agent.path set)
    judged: ClassVar[bool] = True  # calls the judge

    def __init__(self, cfg, inputs: dict):
        self.cfg, self.inputs = cfg, inputs

    @classmethod
    def prepare(cls, ctx, inputs: dict) -> None:
        """Add this benchmark's inputs for the eval run ``ctx`` to ``inputs``, the one dict every
        benchmark of the run reads (the eval stage calls this for each benchmark of
        :data:`BENCHMARKS`, in its order, whether or not the run names it; a benchmark with costly
        inputs checks ``ctx.cfg.benchmarks``). Toy benchmarks append what each question asks to
        ``inputs["toy_specs"]``. None by default."""

    def run(self, agent: Agent, model_id: str, judge, out: Path) -> dict:
        outputs = self.generate(agent, model_id, out)
        judgments = self.judge(outputs, model_id, judge, out)
        metrics = self.score(judgments, model_id, out)
        write_json(out / "metrics.json", metrics)
        return metrics

    def generate(self, agent: Agent, model_id: str, out: Path) -> Any:
        """The model's outputs; a ``needs_weights`` benchmark reads only ``agent.path``."""
        raise NotImplementedError

    def judge(self, outputs: Any, model_id: str, judge, out: Path) -> Any:
        raise NotImplementedError

    def score(self, judgments: Any, model_id: str, out: Path) -> dict:
        raise NotImplementedError

    #: what one input of the benchmark is (the failure budget counts these)
    input_name: ClassVar[str] = "inputs"

    def losses(self, metrics: dict) -> tuple[int, int]:
        """(inputs lost, inputs) of one model: an input is lost when a judgment it needs failed or
        was unusable. Metrics written before inputs were counted fall back to the failed calls."""
        if "inputs_lost" in metrics:
            return int(metrics["inputs_lost"]), int(metrics.get("inputs_total", 0))
        failed = int(metrics.get("n_judge_failed", 0) or 0) + int(metrics.get("n_transport_failures", 0) or 0)
        return failed, int(metrics.get("n", 0) or 0) + failed

    def failures(self, metrics: dict) -> int:
        """Inputs one model lost to failed or unusable judgments (the eval run is then not complete,
        and the model's results are not cached)."""
        return self.losses(metrics)[0]

    @classmethod
    def summary(cls, metrics: dict) -> dict:
        """One model's columns in the results stage's tables (``stages/results.py``: table 1, the
        ablation, the epochs, the sweep), from ``columns``: {column: scale × metric}; a metric that
        is None (or missing) gives None."""
        return {col: None if metrics.get(k) is None else metrics[k] if scale == 1 else scale * metrics[k]
                for k, (col, scale) in cls.columns.items()}

    def after_all(self, models: list[str], judge, out: Path) -> dict[str, dict]:
        """Comparisons across models once every model ran ({model: extra metrics}); none by default."""
        return {}

    @staticmethod
    def per_item(folder: Path) -> dict:
        """{question key: score} from a model's predictions.jsonl (for paired bootstraps)."""
        raise NotImplementedError


class MTBench(Benchmark):
    """FastChat's MT-Bench: 2 turns per question, per-category temperatures, single-answer grading."""

    name, title = "mt_bench", "MT-Bench"
    columns = {"overall": ("mt_bench", 1.0)}
    comparison = Comparison(metric="overall", label="MT-Bench", metric_label="MT-Bench")  # a score of 1-10
    input_name = "questions"

    @classmethod
    def prepare(cls, ctx, inputs):
        """The questions (the toy world's, or FastChat's question.jsonl), the references for the
        categories that need them, and the judge prompts. Always prepared: the eval run writes
        FastChat's ``mt_bench_question.jsonl``."""
        from . import mt_bench as mt
        from .toy_prompts import toy_judge_prompts

        cfg = ctx.cfg
        if cfg.mt_bench_questions == "toy":
            from ..toyworld import shared_world
            from ..toyworld.world import spec_key

            world = shared_world(ctx.world)
            tasks = world.mt_bench_tasks()
            inputs["mt_questions"] = [{"question_id": int(t.id), "category": t.category, "turns": t.turns} for t in tasks]
            inputs["toy_specs"] = inputs.get("toy_specs", []) + [
                {"benchmark": "mt_bench", "instruction": t.turns[0], "spec": spec_key(t)} for t in tasks]
            inputs["mt_references"] = {int(t.id): mt.answer_record(int(t.id), "toy-oracle", [world.answer(s) for s in t.specs])
                                       for t in tasks if t.category in mt.NEED_REF_CATS}
        else:
            inputs["mt_questions"] = mt.load_questions(_fetch(ctx, cfg.mt_bench_questions))
            inputs["mt_references"] = (mt.load_reference_answers(_fetch(ctx, cfg.mt_bench_references))
                                       if cfg.mt_bench_references else None)
        inputs["judge_prompts"] = mt.load_judge_prompts(_fetch(ctx, cfg.judge_prompts)) if cfg.judge_prompts else toy_judge_prompts()

    def generate(self, agent, model_id, out):
        from . import mt_bench as mt

        cfg, qs = self.cfg, self.inputs["mt_questions"]
        temps = [mt.TEMPERATURE.get(q["category"], mt.DEFAULT_TEMPERATURE) for q in qs]
        first = [[{"role": "user", "content": q["turns"][0]}] for q in qs]
        a1 = agent.respond_many(first, max_new_tokens=cfg.max_new_tokens, temperatures=temps,
                                desc=f"MT-Bench turn 1 ({model_id})")
        second = [c + [{"role": "assistant", "content": a}, {"role": "user", "content": q["turns"][1]}]
                  for c, a, q in zip(first, a1, qs)]  # turn 2 sees the model's own turn-1 answer
        a2 = agent.respond_many(second, max_new_tokens=cfg.max_new_tokens, temperatures=temps,
                                desc=f"MT-Bench turn 2 ({model_id})")
        answers = {q["question_id"]: mt.answer_record(q["question_id"], model_id, [x, y]) for q, x, y in zip(qs, a1, a2)}
        mt.write_answers(out / "model_answer.jsonl", answers.values())
        return answers

    def judge(self, answers, model_id, judge, out):
        from . import mt_bench as mt

        qs = self.inputs["mt_questions"]
        reqs = mt.single_judge_requests(qs, answers, self.inputs["judge_prompts"], self.inputs["mt_references"])
        # a reply without a rating (FastChat's -1) is unusable: a failure, re-asked, never cached as final
        replies = judge.complete_many([r["messages"] for r in reqs], parse=mt.usable_rating, temperature=0.0,
                                      max_tokens=mt.JUDGE_MAX_TOKENS, desc=f"MT-Bench judge ({model_id})")
        texts = [r.text if r.text is not None else "" for r in replies]  # failed or unusable: -1, dropped
        judgments = mt.judgments_from_replies(reqs, texts, model=model_id, judge_model=getattr(judge.backend, "name", "judge"))
        mt.write_judgments(out / "judgments.jsonl", judgments)
        by_q = {q["question_id"]: q for q in qs}
        write_jsonl(out / "predictions.jsonl", [
            {"question_id": j["question_id"], "category": by_q[j["question_id"]]["category"], "turn": j["turn"],
             "question": by_q[j["question_id"]]["turns"][j["turn"] - 1],
             "answer": answers[j["question_id"]]["choices"][0]["turns"][j["turn"] - 1],
             "judgment": j["judgment"], "score": j["score"]} for j in judgments])
        lost = {req["question_id"] for req, r in zip(reqs, replies) if not r.ok}  # a question needs both turns
        return {"judgments": judgments, "n_transport_failures": sum(not r.ok and r.text is None for r in replies),
                "n_unusable": sum(not r.ok and r.text is not None for r in replies),
                "inputs_lost": len(lost), "inputs_total": len(qs)}

    def score(self, judged, model_id, out):
        from . import mt_bench as mt

        try:
            metrics = mt.scores(judged["judgments"], self.inputs["mt_questions"], model=model_id,
                                n_boot=self.cfg.n_bootstrap, seed=self.cfg.seed)
        except ValueError:  # every judgment failed: nothing to score yet (the run is not complete)
            metrics = {"model": model_id, "overall": None, "n": 0, "n_failed": len(judged["judgments"])}
        metrics.update({k: judged[k] for k in ("n_transport_failures", "n_unusable", "inputs_lost", "inputs_total")})
        return metrics

    @classmethod
    def summary(cls, metrics):
        """The overall score and its bootstrap 95% interval (``mt_lo``, ``mt_hi``)."""
        lo, hi = metrics.get("ci95") or (None, None)
        return {**super().summary(metrics), "mt_lo": lo, "mt_hi": hi}

    def after_all(self, models, judge, out):
        """FastChat's pairwise mode against `eval.mt_bench_pairwise_baseline`: each turn judged in
        both orders; the two games disagreeing count as a tie, an unparsed game drops the row."""
        from . import mt_bench as mt

        baseline = self.cfg.mt_bench_pairwise_baseline
        if not baseline:
            return {}
        if baseline not in models:
            raise ValueError(f"eval.mt_bench_pairwise_baseline {baseline!r} is not one of eval.models {models}")
        extra = {}
        for model in models:
            if model == baseline:
                continue
            ans = {m: mt.load_answers(out / m / "mt_bench" / "model_answer.jsonl") for m in (model, baseline)}
            games, keys = [], []
            for q in self.inputs["mt_questions"]:
                a, b = ans[model][q["question_id"]], ans[baseline][q["question_id"]]
                for turn in (1, 2):
                    for x, y in ((a, b), (b, a)):
                        games.append(mt.build_pair_judge_messages(q, x, y, self.inputs["judge_prompts"], turn,
                                                                  self.inputs["mt_references"]))
                    keys.append((q["question_id"], turn))
            # a verdict-less reply ("error") is unusable: a failure, re-asked, never cached as final
            res = judge.complete_many(games, parse=mt.usable_verdict, temperature=0.0, max_tokens=mt.JUDGE_MAX_TOKENS,
                                      desc=f"MT-Bench pairwise ({model})")
            verdicts = [r.parsed if r.ok else "error" for r in res]
            outcomes = [mt.pair_outcome(verdicts[2 * i], verdicts[2 * i + 1]) for i in range(len(keys))]
            write_jsonl(out / model / "mt_bench" / f"pairwise_vs_{baseline}.jsonl",
                        [{"question_id": q, "turn": t, "verdict_ab": verdicts[2 * i], "verdict_ba": verdicts[2 * i + 1],
                          "outcome": o} for i, ((q, t), o) in enumerate(zip(keys, outcomes))])
            try:
                summary = mt.pairwise_summary(outcomes)
            except ValueError:  # every game failed: nothing to summarise yet
                summary = {"n": 0, "n_error": len(outcomes)}
            extra[model] = {"mt_bench_pairwise": {"baseline": baseline, **summary, "inputs_total": len(outcomes),
                                                  "inputs_lost": outcomes.count("error")}}
        return extra

    @staticmethod
    def per_item(folder):
        out: dict = {}
        for r in read_jsonl(Path(folder) / "predictions.jsonl"):
            if r["score"] >= 0:
                out.setdefault(r["question_id"], []).append(r["score"])
        return {k: sum(v) / len(v) for k, v in out.items()}


class AlpacaEval(Benchmark):
    """AlpacaEval 1: the model against text-davinci-003's outputs, alpaca_eval_gpt4's ranking prompt."""

    name, title = "alpaca_eval", "AlpacaEval"
    columns = {"win_rate": ("alpaca", 1.0), "standard_error": ("alpaca_se", 1.0)}  # both in points already
    # per_item: 1 a win, 0.5 a tie, 0 a loss; the win rate is in percent
    comparison = Comparison(metric="win_rate", label="AlpacaEval", metric_label="AlpacaEval %", unit=" pts",
                            scale=100.0, rejudge="alpaca_rejudge")
    input_name = "instructions"

    @classmethod
    def prepare(cls, ctx, inputs):
        """The instructions with the baseline's outputs (the toy world's, with its text-davinci-003
        stand-in's answers; or AlpacaEval's eval set), and ``eval.alpaca_rejudge``'s archived
        outputs. Always prepared: re-judging archived outputs needs them."""
        from . import alpaca_eval as ae

        cfg = ctx.cfg
        if cfg.alpaca_eval_set == "toy":
            from ..config import N_ALPACA_MAX, ConfigError
            from ..toyworld import shared_world, toy_agent
            from ..toyworld.world import spec_key

            if cfg.n_alpaca > N_ALPACA_MAX:
                raise ConfigError(f"eval.n_alpaca: the toy AlpacaEval has at most {N_ALPACA_MAX} instructions "
                                  f"(the ones training data is kept clean of), got {cfg.n_alpaca}")
            world = shared_world(ctx.world)
            tasks = world.alpaca_tasks(cfg.n_alpaca)
            inputs["toy_specs"] = inputs.get("toy_specs", []) + [
                {"benchmark": "alpaca_eval", "instruction": t.turns[0], "spec": spec_key(t)} for t in tasks]
            ref = toy_agent(world, "reference", seed=0).respond_many([[{"role": "user", "content": t.turns[0]}] for t in tasks])
            inputs["alpaca"] = [{"instruction": t.turns[0], "output": o, "generator": "toy_reference (text-davinci-003 stand-in)",
                                 "dataset": f"toy/{t.category}"} for t, o in zip(tasks, ref)]
        elif cfg.alpaca_eval_set == ae.BASELINE_SOURCE["hub_id"]:
            inputs["alpaca"], inputs["alpaca_baseline"] = ae.load_baseline(cfg.alpaca_eval_set, cfg.alpaca_eval_revision or None)
        else:  # a local file or URL; alpaca_eval's later davinci outputs are refused (BaselineError)
            inputs["alpaca"], inputs["alpaca_baseline"] = ae.load_baseline(_fetch(ctx, cfg.alpaca_eval_set))
        if cfg.alpaca_rejudge:
            inputs["alpaca_archived"] = ae.load_model_outputs(_fetch(ctx, cfg.alpaca_rejudge), inputs["alpaca"])

    def generate(self, agent, model_id, out):
        from . import alpaca_eval as ae

        instrs, dec = self.inputs["alpaca"], ae.decoding_settings(self.cfg)  # Zephyr's: 0.7, top_p 1, 2048
        outputs = agent.respond_many([[{"role": "user", "content": i["instruction"]}] for i in instrs],
                                     max_new_tokens=dec["max_new_tokens"], temperature=dec["temperature"],
                                     **({"top_p": dec["top_p"]} if dec["top_p"] != 1.0 else {}),
                                     desc=f"AlpacaEval ({model_id})")
        ae.write_model_outputs(out / "model_outputs.json", ae.model_outputs(instrs, outputs, model_id), instrs)
        return outputs

    def judge(self, outputs, model_id, judge, out):
        from . import alpaca_eval as ae

        rows, metrics = ae.judge_outputs(self.inputs["alpaca"], outputs, model_id, judge)  # failed call: None, counted
        ae.write_annotations(out / "annotations.json", rows)
        write_jsonl(out / "predictions.jsonl", rows)
        return metrics

    def score(self, metrics, model_id, out):
        return metrics

    @staticmethod
    def per_item(folder):
        out = {}
        for r in read_jsonl(Path(folder) / "predictions.jsonl"):
            p = r["preference"]
            if p is not None:
                out[r["instruction"]] = (1.5 if p == 0 else p) - 1
        return out


class Leaderboard(Benchmark):
    """The Open LLM Leaderboard v1 tasks through lm-evaluation-harness (the toy world's analogues,
    or the real tasks with the leaderboard's settings)."""

    name, title = "leaderboard", "Open LLM Leaderboard"
    columns = {"arc": ("arc", 100), "hellaswag": ("hellaswag", 100), "mmlu": ("mmlu", 100),
               "truthfulqa_mc2": ("truthfulqa_mc2", 100)}  # accuracies -> percent
    needs_weights, judged = True, False

    @classmethod
    def prepare(cls, ctx, inputs):
        """The toy leaderboard's tasks (lm-eval YAMLs with their data) and chance levels, when the
        run names the leaderboard and its tasks are the toy world's (the paper's are lm-eval's own)."""
        cfg = ctx.cfg
        if cls.name not in cfg.benchmarks or cfg.leaderboard_tasks != "toy":
            return
        from ..toyworld import shared_world
        from ..toyworld.benchmarks import chance_levels, leaderboard_rows

        rows = leaderboard_rows(shared_world(ctx.world), cfg.n_leaderboard, seed=cfg.seed)
        inputs["leaderboard_tasks"] = _toy_leaderboard_tasks(ctx, rows)
        inputs["leaderboard_chance"] = chance_levels(rows)

    def generate(self, agent, model_id, out):
        from . import leaderboard as lb

        if self.cfg.leaderboard_tasks == "paper":
            return lb.run_paper_leaderboard(agent.path)
        task_dir, tasks = self.inputs["leaderboard_tasks"]
        names = [tasks["arc"], tasks["hellaswag"], tasks["truthfulqa_mc2"], *tasks["mmlu"]]
        # each few-shot context once for all its choices: lm-eval's numbers within float rounding
        return lb.run_lm_eval(agent.path, task_dir, names, batch_size=32, share_contexts=True)

    def judge(self, flat, model_id, judge, out):
        return flat  # log-likelihood scoring happened in generate; no judge

    def score(self, flat, model_id, out):
        from . import leaderboard as lb

        if self.cfg.leaderboard_tasks == "paper":
            return flat
        _, tasks = self.inputs["leaderboard_tasks"]
        subj = {t: flat[f"{t}/acc"] for t in tasks["mmlu"]}
        # the macro average's standard error: subjects are independent samples
        mmlu_se = (sum(p * (1 - p) / flat[f"{t}/n"] for t, p in subj.items()) ** 0.5 / len(subj)
                   if all(flat.get(f"{t}/n") for t in subj) else None)
        # the toy ARC's answers are 1-3 characters: acc, not the per-character acc_norm (toyworld/benchmarks.py)
        return {"arc": flat[f"{tasks['arc']}/acc"], "arc_stderr": flat.get(f"{tasks['arc']}/acc_stderr"),
                "hellaswag": flat[f"{tasks['hellaswag']}/acc_norm"],
                "hellaswag_stderr": flat.get(f"{tasks['hellaswag']}/acc_norm_stderr"),
                "mmlu": lb.macro_average(subj), "mmlu_stderr": mmlu_se, "mmlu_subjects": subj,
                "chance": self.inputs.get("leaderboard_chance"),
                "truthfulqa_mc2": flat[f"{tasks['truthfulqa_mc2']}/acc"],
                "truthfulqa_mc2_stderr": flat.get(f"{tasks['truthfulqa_mc2']}/acc_stderr"), "raw": flat}


def _fetch(ctx, source: str) -> Path:
    """A local path, or a public URL downloaded once into the profile's downloads folder."""
    from ..io import fetch

    return fetch(source, ctx.root / ctx.profile.name / "downloads")


def _toy_leaderboard_tasks(ctx, rows):
    """The toy leaderboard tasks as lm-eval task YAMLs with their jsonl data, written once into a
    content-addressed folder (lm-eval needs absolute data paths: they must outlive this run's partial folder)."""
    from ..config import config_hash
    from . import leaderboard as lb

    task_dir = ctx.root / ctx.profile.name / "eval_cache" / "leaderboard_tasks" / config_hash(rows)
    tasks = {"arc": "toy_arc", "hellaswag": "toy_hellaswag", "truthfulqa_mc2": "toy_truthfulqa_mc2"}
    mmlu_names = [f"toy_mmlu_{s}" for s in rows["mmlu"]]
    if not (task_dir / "complete").exists():
        tmp = task_dir.with_name(f".tmp-{task_dir.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        lb.write_mc_task(tmp, "toy_arc", rows["arc"], "arc", fewshot_rows=rows["fewshot"]["arc"])
        lb.write_mc_task(tmp, "toy_hellaswag", rows["hellaswag"], "hellaswag", fewshot_rows=rows["fewshot"]["hellaswag"])
        lb.write_mc_task(tmp, "toy_truthfulqa_mc2", rows["truthfulqa_mc2"], "truthfulqa_mc2")
        mmlu_names = lb.write_mmlu_tasks(tmp, rows["mmlu"], rows["mmlu_dev"], prefix="toy_mmlu",
                                         kind="mmlu_continuation")
        # the YAMLs hold absolute data paths: point them at the final folder before it takes its name
        for y in tmp.rglob("*.yaml"):
            y.write_text(y.read_text().replace(str(tmp), str(task_dir)))
        (tmp / "complete").write_text("\n".join(mmlu_names) + "\n")
        task_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, task_dir)
        except OSError:  # another process finished it first
            shutil.rmtree(tmp, ignore_errors=True)
    mmlu_names = (task_dir / "complete").read_text().split()
    return task_dir, {**tasks, "mmlu": mmlu_names}


BENCHMARKS: dict[str, type[Benchmark]] = {b.name: b for b in (MTBench, AlpacaEval, Leaderboard)}
