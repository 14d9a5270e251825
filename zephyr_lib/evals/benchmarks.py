"""The benchmarks the eval stage runs, as small classes with the same three steps, in one registry.

Each :class:`Benchmark` answers ``generate`` (the model's outputs, in the benchmark's official
format), ``judge`` (the judge's verdicts, or log-likelihood scoring) and ``score`` (metrics.json);
:meth:`Benchmark.run` does the three for one model and writes ``metrics.json`` +
``predictions.jsonl`` into ``out``. ``columns`` names what the results tables show;
``per_item`` gives per-question scores for paired comparisons between models.

Adding a benchmark: one class here and one line in :data:`BENCHMARKS`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..agent import Agent
from ..io import read_jsonl, write_json, write_jsonl


class Benchmark:
    """One benchmark: its inputs are prepared once per eval run, then it runs for each model."""

    name: ClassVar[str]
    title: ClassVar[str]
    columns: ClassVar[dict[str, tuple[str, float]]] = {}  # metric key -> (table column, scale)
    needs_weights: ClassVar[bool] = False  # scores log-likelihoods: only trained models (agent.path set)
    judged: ClassVar[bool] = True  # calls the judge

    def __init__(self, cfg, inputs: dict):
        self.cfg, self.inputs = cfg, inputs

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

    def summary(self, metrics: dict) -> dict:
        """The table columns of one model's metrics."""
        return {col: scale * metrics[k] for k, (col, scale) in self.columns.items() if metrics.get(k) is not None}

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
    columns = {"overall": ("MT-Bench", 1.0)}
    input_name = "questions"

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
    columns = {"win_rate": ("AlpacaEval %", 1.0)}
    input_name = "instructions"

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

    def summary(self, metrics):
        return {"AlpacaEval %": metrics["win_rate"], "± se": metrics["standard_error"]}

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
    columns = {"arc": ("ARC", 100.0), "hellaswag": ("HellaSwag", 100.0), "mmlu": ("MMLU", 100.0),
               "truthfulqa_mc2": ("TruthfulQA", 100.0)}
    needs_weights, judged = True, False

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


BENCHMARKS: dict[str, type[Benchmark]] = {b.name: b for b in (MTBench, AlpacaEval, Leaderboard)}
