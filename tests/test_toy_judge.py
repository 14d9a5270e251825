"""The toy judge (GPT-4 stand-in): real prompts in, real formats out, real parsers on its replies."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from zephyr_lib.config import TOY_JUDGE_VERSION

from zephyr_lib import feedback as fb
from zephyr_lib.evals import alpaca_eval as ae
from zephyr_lib.evals import mt_bench as mt
from zephyr_lib.judges import Backend, Judge, judge_from_config
from zephyr_lib.toyworld import World, toy_agent, write_dialogues
from zephyr_lib.toyworld.judge import ToyJudge

REF = Path(__file__).resolve().parents[2] / "shared" / "reference-data"
PROMPTS = REF / "mt_bench" / "judge_prompts.jsonl"


class CountingBackend:
    """Wraps a backend and counts the calls that reach it."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, 0

    def complete(self, messages, *, temperature, max_tokens):
        self.calls += 1
        return self.inner.complete(messages, temperature=temperature, max_tokens=max_tokens)


@pytest.fixture(scope="module")
def world():
    return World()


@pytest.fixture(scope="module")
def mt_tasks(world):
    return world.mt_bench_tasks()


@pytest.fixture(scope="module")
def prompts():
    if not PROMPTS.is_file():
        pytest.skip(f"reference data absent: {PROMPTS} (FastChat judge_prompts.jsonl)")
    return mt.load_judge_prompts(PROMPTS)


def _question(task) -> dict:
    return {"question_id": int(task.id), "category": task.category, "turns": list(task.turns)}


def _refs(world, task):
    return [world.answer(s) for s in task.specs] if task.category in mt.NEED_REF_CATS else None


def _judge(world, tmp_path, sub="cache") -> Judge:
    return Judge(ToyJudge(world), cache_dir=tmp_path / sub, progress=False)


def _ok(results):
    bad = [r.error for r in results if not r.ok]
    assert not bad, bad[:3]
    return [r.parsed for r in results]


# --------------------------------------------------------------------------------------------
# MT-Bench
# --------------------------------------------------------------------------------------------

def test_mt_bench_single_oracle_gets_10_and_wrong_answer_at_most_3(world, mt_tasks, prompts, tmp_path):
    assert len(mt_tasks) == 80
    rng = random.Random(0)
    good_msgs, wrong_msgs = [], []
    for t in mt_tasks:
        q, refs = _question(t), _refs(world, t)
        good = [world.informative_answer(s, rng) or world.answer(s) for s in t.specs]  # depth graded: a further fact
        wrong = [world.wrong_answer(s, rng) for s in t.specs]
        for turn in (1, 2):
            good_msgs.append(mt.build_single_judge_messages(q, good, prompts, turn, refs))
            # turn 2: a correct first answer in context, a wrong second answer judged
            bad = wrong if turn == 1 else [good[0], wrong[1]]
            wrong_msgs.append(mt.build_single_judge_messages(q, bad, prompts, turn, refs))
    judge = _judge(world, tmp_path)
    good_scores = _ok(judge.complete_many(good_msgs, parse=mt.parse_single_rating, temperature=0.0,
                                          max_tokens=mt.JUDGE_MAX_TOKENS))
    wrong_scores = _ok(judge.complete_many(wrong_msgs, parse=mt.parse_single_rating))
    assert -1 not in good_scores and -1 not in wrong_scores
    assert good_scores == [10.0] * 160
    assert max(wrong_scores) <= 3 and min(wrong_scores) >= 1
    # the reply is FastChat's format: an explanation, then "Rating: [[x]]"
    reply = judge.complete(wrong_msgs[1]).text
    assert reply.rstrip().endswith("Rating: [[3]]") and "second question" in reply
    assert reply.count("[") == 2  # no stray brackets that FastChat's regexes could pick up
    ref_based = [m for m, t in zip(good_msgs[::2], mt_tasks) if t.category == "math"][0]
    assert mt.extract_single(ref_based)["reference_based"]
    assert "reference answer" in judge.complete(ref_based).text


def test_mt_bench_scores_rank_the_agents(world, mt_tasks, prompts, tmp_path):
    questions = [_question(t) for t in mt_tasks]
    refs = {int(t.id): mt.answer_record(int(t.id), "gpt-4", [world.answer(s) for s in t.specs], tstamp=0)
            for t in mt_tasks if t.category in mt.NEED_REF_CATS}
    judge = _judge(world, tmp_path)
    means = {}
    for name in ("teacher_strong", "teacher", "teacher_sloppy"):
        dialogues = write_dialogues(world, toy_agent(world, name), mt_tasks)
        answers = {int(t.id): mt.answer_record(int(t.id), name, [m["content"] for m in d if m["role"] == "assistant"],
                                               tstamp=0) for t, d in zip(mt_tasks, dialogues)}
        requests = mt.single_judge_requests(questions, answers, prompts, refs)
        assert len(requests) == 160
        results = judge.complete_many([r["messages"] for r in requests], parse=mt.parse_single_rating,
                                      temperature=mt.JUDGE_TEMPERATURE, max_tokens=mt.JUDGE_MAX_TOKENS)
        replies = [r.text for r in results]
        records = mt.judgments_from_replies(requests, replies, name, judge_model=judge.backend.name, tstamp=0)
        summary = mt.scores(records, questions, n_boot=50)
        assert summary["n_failed"] == 0 and summary["n"] == 160
        means[name] = summary["overall"]
    assert means["teacher_strong"] > means["teacher"] > means["teacher_sloppy"], means
    assert means["teacher_strong"] >= 9.0 and means["teacher_sloppy"] <= 7.0, means
    assert judge.stats.prompt_tokens > 0 and judge.stats.completion_tokens > 0  # word counts


def test_mt_bench_pairwise_picks_the_oracle_in_both_orders(world, mt_tasks, prompts, tmp_path):
    rng = random.Random(1)
    msgs = []
    for t in mt_tasks:
        q, refs = _question(t), _refs(world, t)
        good = [world.informative_answer(s, rng) or world.answer(s) for s in t.specs]  # depth graded: a further fact
        wrong = [world.wrong_answer(s, rng) for s in t.specs]
        for turn in (1, 2):
            msgs.append(mt.build_pair_judge_messages(q, good, wrong, prompts, turn, refs))
            msgs.append(mt.build_pair_judge_messages(q, wrong, good, prompts, turn, refs))
    verdicts = _ok(_judge(world, tmp_path).complete_many(msgs, parse=mt.parse_pair_verdict))
    assert "error" not in verdicts
    assert verdicts[0::2] == ["A"] * 160 and verdicts[1::2] == ["B"] * 160
    outcomes = [mt.pair_outcome(a, b) for a, b in zip(verdicts[0::2], verdicts[1::2])]
    assert mt.pairwise_summary(outcomes)["win_rate"] == 1.0


def test_judge_is_blind_and_deterministic(world, mt_tasks, prompts, tmp_path):
    """Identical texts get identical grades: a pair of identical answers is a tie, and the
    verdict does not depend on which side an answer is shown on."""
    sloppy = write_dialogues(world, toy_agent(world, "teacher_sloppy"), mt_tasks)
    strong = write_dialogues(world, toy_agent(world, "teacher_strong"), mt_tasks)
    judge = ToyJudge(world)
    n_same_text = 0
    for t, ds, dg in zip(mt_tasks, sloppy, strong):
        q, refs = _question(t), _refs(world, t)
        a_s = [m["content"] for m in ds if m["role"] == "assistant"]
        a_g = [m["content"] for m in dg if m["role"] == "assistant"]
        for turn in (1, 2):
            same = mt.build_pair_judge_messages(q, a_s, a_s, prompts, turn, refs)
            assert mt.parse_pair_verdict(judge.complete(same).text) == "tie"
            ab = mt.parse_pair_verdict(judge.complete(mt.build_pair_judge_messages(q, a_g, a_s, prompts, turn, refs)).text)
            ba = mt.parse_pair_verdict(judge.complete(mt.build_pair_judge_messages(q, a_s, a_g, prompts, turn, refs)).text)
            assert {"A": "B", "B": "A", "tie": "tie"}[ab] == ba
            if a_s[turn - 1] == a_g[turn - 1]:  # both agents wrote the same text: same grade
                n_same_text += 1
                s1 = mt.build_single_judge_messages(q, a_s, prompts, turn, refs)
                s2 = mt.build_single_judge_messages(q, a_g, prompts, turn, refs)
                if turn == 1 or a_s[0] == a_g[0]:
                    assert s1 == s2
                assert mt.parse_single_rating(judge.complete(s1).text) == mt.parse_single_rating(judge.complete(s2).text)
    assert n_same_text > 10
    # deterministic: a fresh judge gives the very same text
    m = mt.build_single_judge_messages(_question(mt_tasks[0]), [a["content"] for a in sloppy[0][1::2]], prompts, 2)
    assert ToyJudge(world).complete(m, temperature=0.7, max_tokens=10).text == judge.complete(m).text


# --------------------------------------------------------------------------------------------
# AlpacaEval
# --------------------------------------------------------------------------------------------

def _alpaca_preferences(world, judge, tasks, model_name):
    """AlpacaEval preferences (output_1 = reference agent, output_2 = model), swap included."""
    reference, model = toy_agent(world, "reference"), toy_agent(world, model_name)
    rows = []
    for t in tasks:
        user = [{"role": "user", "content": t.turns[0]}]
        ref_out, model_out = reference.respond(user), model.respond(user)
        rows.append((t.turns[0], ref_out, model_out, ae.annotator_request(t.turns[0], ref_out, model_out)))
    asked = [req["messages"] for *_, req in rows if req["needs_judge"]]
    results = judge.complete_many(asked, parse=ae.parse_ranking,
                                  temperature=ae.ANNOTATOR_CONFIG["temperature"],
                                  max_tokens=ae.ANNOTATOR_CONFIG["max_tokens"])
    _ok(results)
    replies = iter(r.text for r in results)
    return [ae.annotate_preference(inst, ref_out, model_out, next(replies) if req["needs_judge"] else None)
            for inst, ref_out, model_out, req in rows]


def test_alpaca_eval_win_rates_through_the_swap(world, tmp_path):
    tasks = world.alpaca_tasks(200)
    judge = _judge(world, tmp_path)
    rates = {}
    for name in ("teacher_strong", "teacher_sloppy"):
        prefs = _alpaca_preferences(world, judge, tasks, name)
        assert None not in prefs  # every reply parsed
        rates[name] = ae.win_rate(prefs)
    strong, sloppy = rates["teacher_strong"], rates["teacher_sloppy"]
    # Identical outputs are draws without a judge call (preference 0 -> 1.5); the reference agent
    # writes the same canonical text whenever neither answer has a defect, so most rows are draws.
    assert strong["win_rate"] > 60 and sloppy["win_rate"] < 50, rates
    # on the rows the judge actually saw, the careful teacher beats the reference > 80% of the time
    assert strong["n_wins"] / (strong["n_wins"] + strong["n_wins_base"]) > 0.8, strong
    assert sloppy["n_wins_base"] > sloppy["n_wins"], sloppy


def test_alpaca_eval_reply_format_and_tie_break(world):
    judge = ToyJudge(world)
    task = next(t for t in world.tasks(40, seed=11, followups=0) if t.specs[0]["type"] == "fact"
                and t.specs[0]["attr"] == "region")
    inst, good = task.turns[0], world.answer(task.specs[0])
    longer = good.replace(" is in ", " is a town in ")          # same grade, longer
    wrong = world.wrong_answer(task.specs[0], random.Random(3))
    reply = judge.complete(ae.build_annotator_messages(inst, wrong, good)).text
    assert reply == "[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]"
    assert ae.parse_ranking(reply) == 2
    assert ae.parse_ranking(judge.complete(ae.build_annotator_messages(inst, good, wrong)).text) == 1
    # equal grades: the shorter output wins, whichever side it is on
    assert ae.parse_ranking(judge.complete(ae.build_annotator_messages(inst, longer, good)).text) == 2
    assert ae.parse_ranking(judge.complete(ae.build_annotator_messages(inst, good, longer)).text) == 1
    # equal grades and length: the output shown first (documented position bias)
    same_len = good[:-1] + "!"
    assert len(same_len) == len(good)
    assert ae.parse_ranking(judge.complete(ae.build_annotator_messages(inst, same_len, good)).text) == 1
    assert ae.parse_ranking(judge.complete(ae.build_annotator_messages(inst, good, same_len)).text) == 1


# --------------------------------------------------------------------------------------------
# UltraFeedback
# --------------------------------------------------------------------------------------------

def test_ultrafeedback_aspect_and_overall_replies_parse(world, tmp_path):
    tasks = world.tasks(120, seed=7, followups=0, prefix="uf")
    fact = next(t for t in tasks if t.specs[0]["type"] == "fact")
    unknown = next(t for t in tasks if t.specs[0]["type"] == "unknown")
    rng = random.Random(5)
    judge = _judge(world, tmp_path)
    for task in (fact, unknown):
        inst, spec = task.turns[0], task.specs[0]
        user = [{"role": "user", "content": inst}]
        comps = [world.informative_answer(spec, rng) or world.answer(spec), world.wrong_answer(spec, rng),
                 toy_agent(world, "teacher_sloppy").respond(user), toy_agent(world, "teacher").respond(user)]
        msgs = [fb.build_aspect_messages(a, inst, comps, world_knowledge=fb.DEFAULT_WORLD_KNOWLEDGE)
                for a in fb.ASPECTS]
        parsed = _ok(judge.complete_many(msgs, parse=lambda text: fb.parse_aspect_reply(text, 4)))
        by_aspect = dict(zip(fb.ASPECTS, parsed))
        for aspect, items in by_aspect.items():
            assert len(items) == 4 and all(it["rationale"] for it in items)
            assert all(it["rating"] is None or 1 <= it["rating"] <= 5 for it in items)
            assert all(("type" in it) == (aspect in fb.TYPED_ASPECTS) for it in items)
            assert all(fb.aspect_annotation(aspect, it) for it in items)  # the published layout
        oracle = {a: by_aspect[a][0]["rating"] for a in fb.ASPECTS}
        assert oracle == {a: 5 for a in fb.ASPECTS}
        assert by_aspect["truthfulness"][0]["type"] == []
        assert by_aspect["truthfulness"][1]["rating"] <= 2 and by_aspect["truthfulness"][1]["type"] == ["1"]
        if task is unknown:  # "<made-up town> is in <region>": a confident hallucination
            assert world.wrong_answer(spec, random.Random(0)).startswith(spec["entity"])
            assert by_aspect["honesty"][1]["rating"] == 1
        overall = [fb.build_overall_messages(inst, c) for c in comps]
        overall.append(fb.build_overall_messages(inst, comps[0], note="Answer honestly and concisely."))
        scores = _ok(judge.complete_many(overall, parse=fb.parse_overall_reply))
        assert scores[0][1] == 10.0 and scores[-1][1] == 10.0 and scores[1][1] <= 3.0
        assert all(crit for crit, _ in scores)


# --------------------------------------------------------------------------------------------
# Refusals, cache, factory
# --------------------------------------------------------------------------------------------

def test_unknown_question_or_request_kind_raises(world, mt_tasks, prompts, tmp_path):
    judge = ToyJudge(world)
    q = {"question_id": 999, "category": "writing", "turns": ["Describe the moons of Jupiter.", "And of Saturn?"]}
    msgs = mt.build_single_judge_messages(q, ["Many.", "Also many."], prompts, 1)
    with pytest.raises(ValueError, match="does not know the question 'Describe the moons of Jupiter"):
        judge.complete(msgs)
    with pytest.raises(ValueError, match="does not know"):
        judge.complete(ae.build_annotator_messages("Describe the moons of Jupiter.", "a", "b"))
    with pytest.raises(ValueError, match="does not know"):
        judge.complete(fb.build_overall_messages("Describe the moons of Jupiter.", "a"))
    # a known first turn with an unknown second turn is unknown too
    t = mt_tasks[0]
    multi = mt.build_single_judge_messages({**_question(t), "turns": [t.turns[0], "Something else?"]},
                                           ["x", "y"], prompts, 2, _refs(world, t))
    with pytest.raises(ValueError, match="does not know"):
        judge.complete(multi)
    odd = [{"role": "user", "content": "Rate this poem from 1 to 10. " * 10}]
    with pytest.raises(ValueError, match="unknown kind of judge request") as err:
        judge.complete(odd)
    assert odd[0]["content"][:100] in str(err.value)
    # through the Judge: recorded as a failed row, never scored
    res = Judge(judge, tmp_path, progress=False).complete_many([msgs, mt.build_single_judge_messages(
        _question(t), [world.answer(s) for s in t.specs], prompts, 1)], parse=mt.parse_single_rating)
    assert not res[0].ok and "does not know" in res[0].error and res[0].parsed is None
    assert res[1].ok and res[1].parsed == 10.0


def test_second_judge_over_the_same_cache_makes_no_backend_call(world, mt_tasks, prompts, tmp_path):
    msgs = [mt.build_single_judge_messages(_question(t), [world.answer(s) for s in t.specs], prompts, turn,
                                           _refs(world, t)) for t in mt_tasks[:20] for turn in (1, 2)]
    first = CountingBackend(ToyJudge(world))
    j1 = Judge(first, tmp_path / "c", progress=False)
    r1 = j1.complete_many(msgs, parse=mt.parse_single_rating)
    assert first.calls == 40 and j1.stats.calls == 40
    assert j1.stats.prompt_tokens == sum(len(m["content"].split()) for ms in msgs for m in ms)
    assert j1.stats.completion_tokens == sum(len(r.text.split()) for r in r1)
    second = CountingBackend(ToyJudge(world))
    j2 = Judge(second, tmp_path / "c", progress=False)
    r2 = j2.complete_many(msgs, parse=mt.parse_single_rating)
    assert second.calls == 0 and j2.stats.cache_hits == 40
    assert [r.text for r in r2] == [r.text for r in r1] and all(r.cached for r in r2)


def test_registered_as_kind_toy(world, mt_tasks, prompts, tmp_path):
    judge = judge_from_config("toy", world=world, cache_dir=tmp_path, progress=False)
    assert isinstance(judge.backend, ToyJudge) and isinstance(judge.backend, Backend)
    assert judge.backend.name == TOY_JUDGE_VERSION
    # a config shared with real judges may carry a model name: the stand-in keeps its own label
    named = judge_from_config("toy", world=world, model="gpt-4-0613", name="toy-judge-v2", cache_dir=tmp_path)
    assert named.backend.name == "toy-judge-v2"
    t = mt_tasks[0]
    res = judge.complete(mt.build_single_judge_messages(_question(t), [world.answer(s) for s in t.specs],
                                                        prompts, 1), parse=mt.parse_single_rating)
    assert res.ok and res.parsed == 10.0
    with pytest.raises(TypeError, match="world"):
        judge_from_config("toy", cache_dir=tmp_path)
    with pytest.raises(TypeError, match="unknown option"):
        judge_from_config("toy", world=world, cache_dir=tmp_path, flavour="x")
