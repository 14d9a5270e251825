"""The toy world: determinism, the teacher's defect profile, the checker on real-looking answers."""
from __future__ import annotations

import random

from zephyr_lib import curate
from zephyr_lib.config import WorldConfig
from zephyr_lib.toyworld import CATEGORIES, World, assess, toy_agent, write_dialogues
from zephyr_lib.toyworld.checker import lowercase_starts


def test_the_world_is_a_function_of_its_seed():
    a, b, c = World(), World(), World(WorldConfig(seed=7))
    assert a.towns == b.towns and a.towns != c.towns
    ta, tb = a.tasks(40, seed=3), b.tasks(40, seed=3)
    assert [(t.turns, t.specs) for t in ta] == [(t.turns, t.specs) for t in tb]
    assert {t.category for t in ta} == set(CATEGORIES)
    assert not set(a.unknown) & set(a.by_name)


def test_mt_bench_set_has_80_two_turn_questions_in_8_blocks():
    mt = World().mt_bench_tasks()
    assert len(mt) == 80 and all(len(t.turns) == 2 for t in mt)
    assert [t.id for t in mt] == [str(i) for i in range(81, 161)]
    for k, cat in enumerate(("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")):
        assert {t.category for t in mt[10 * k: 10 * k + 10]} == {cat}


def test_training_prompts_exclude_benchmark_prompts():
    w = World()
    ev = w.eval_prompts(200)
    tasks = w.tasks(500, seed=0, exclude=ev)
    assert not {t.turns[0] for t in tasks} & ev


def test_teacher_defect_profile_matches_the_config():
    w = World()
    tasks = w.tasks(2000, seed=1)
    dialogues = write_dialogues(w, toy_agent(w, "teacher"), tasks)
    plain = [m["content"] for t, d in zip(tasks, dialogues) for s, m in zip(t.specs, d[1::2]) if s.get("plain_fact")]
    other = [m["content"] for t, d in zip(tasks, dialogues) for s, m in zip(t.specs, d[1::2]) if not s.get("plain_fact")]
    rate = sum(curate.has_boilerplate(x) for x in plain) / len(plain)
    assert 0.25 < rate < 0.45                      # configured 0.35, on plain fact questions only
    assert not any(curate.has_boilerplate(x) for x in other)
    lower = sum(any(lowercase_starts(m["content"]) for m in d[1::2]) for d in dialogues) / len(dialogues)
    assert 0.02 < lower < 0.09                     # configured 0.05 of dialogues
    # answers are graded, and the wrong-rate shows up as lower scores
    scores = [assess(w, s, m["content"]).score10() for t, d in zip(tasks, dialogues) for s, m in zip(t.specs, d[1::2])]
    assert 8.5 < sum(scores) / len(scores) < 9.7


def test_agents_are_deterministic_and_order_independent():
    w = World()
    tasks = w.tasks(50, seed=2)
    a = write_dialogues(w, toy_agent(w, "teacher_sloppy"), tasks)
    b = write_dialogues(w, toy_agent(w, "teacher_sloppy"), list(reversed(tasks)))
    assert a == list(reversed(b))


def test_checker_on_real_looking_answers():
    w = World()
    t = w.towns[0]
    fact = {"type": "fact", "entity": t.name, "attr": "region", "plain_fact": True}
    assert assess(w, fact, f"{t.name} is in {t.region}.").score10() == 9  # correct, minimal (v3: depth graded)
    assert assess(w, fact, f"{t.name} is in {t.region}. Its flag is {t.color}.").score10() == 10
    other = next(r for r in ("Arvania", "Belmorth", "Cindral") if r != t.region)
    assert assess(w, fact, f"{t.name} is in {other}.").score10() <= 3
    boiler = assess(w, fact, f"As an AI, I don't have personal experiences, but {t.name} is in {t.region}.")
    assert boiler.correct and boiler.boilerplate and boiler.score10() == 7
    assert assess(w, fact, f"<|user|> {t.name} is in {t.region}.").junk
    assert assess(w, fact, "").score10() == 1
    code = {"type": "code", "name": "calc", "op": "*"}
    assert assess(w, code, "```python\ndef calc(a, b):\n    return a * b\n```").score10() == 10
    wrong_name = assess(w, code, "```python\ndef solve(x, y):\n    return x * y\n```")
    assert wrong_name.correct and wrong_name.violations
    assert not assess(w, code, "def calc(a, b):\n    return a + b").correct
    assert not assess(w, code, "def calc(a, b):\n    import os\n    return os.system('x')").correct
    unknown = {"type": "unknown", "entity": w.unknown[0], "plain_fact": True}
    assert assess(w, unknown, f"I do not know of a town called {w.unknown[0]}.").score10() == 10
    hall = assess(w, unknown, f"{w.unknown[0]} is in Arvania.")
    assert hall.hallucinated and hall.aspects()["honesty"] == 1
    arith = {"type": "arith", "a": 3, "op": "plus", "b": 4, "answer": 7}
    assert assess(w, arith, "3 plus 4 is 7.").correct and not assess(w, arith, "3 plus 4 is 8.").correct
    assert not assess(w, arith, "7 plus 8 is 7.").correct  # the right number after a garbled restatement


def test_oracle_answers_get_full_marks_in_every_category():
    w = World()
    rng = random.Random(0)
    for task in w.tasks(80, seed=5):
        for spec in task.specs:
            full = w.informative_answer(spec, rng) or w.answer(spec)  # where depth is graded, with a further fact
            assert assess(w, spec, full).score10() == 10, spec
            assert assess(w, spec, w.answer(spec)).score10() == (9 if w.extra_facts(spec) else 10), spec
            assert assess(w, spec, w.wrong_answer(spec, rng)).correct is False, spec


def test_leaderboard_analogues_are_answerable_and_state_their_chance_levels():
    """ARC: legs of animals and orderings, each answer correct by the world; chance levels are
    1/choices (25%) and, for MC2, the share of true statements."""
    from zephyr_lib.toyworld.benchmarks import chance_levels, leaderboard_rows
    from zephyr_lib.toyworld.world import ANIMAL_LEGS

    w = World()
    rows = leaderboard_rows(w, 60, seed=0)
    kinds = {"legs": 0, "order": 0}
    for r in rows["arc"]:
        right = r["choices"][r["answer"]]
        if r["question"].startswith("How many legs"):
            kinds["legs"] += 1
            assert right == str(ANIMAL_LEGS[r["question"].split("does a ")[1].split(" have")[0]])
        else:
            kinds["order"] += 1
            first, second, ask = r["question"].split(". ")  # "A is taller than B" "B is taller than C" "Who is the tallest?"
            pairs = [tuple(x.replace(".", "").split(" is ")[0::1]) for x in (first, second)]
            bigger = {p[0]: p[1].split(" than ")[1] for p in pairs}
            top = next(a for a in bigger if a not in bigger.values())
            bottom = next(b for b in bigger.values() if b not in bigger)
            assert right == (top if ask.endswith(("tallest?", "oldest?", "fastest?")) else bottom)
    assert min(kinds.values()) > 10 and len(rows["arc"]) == 60
    chance = chance_levels(rows)
    assert chance["arc"] == chance["hellaswag"] == chance["mmlu"] == 25.0
    assert 25.0 < chance["truthfulqa_mc2"] < 40.0  # 1 of 4 true for real towns, 2 of 5 for unknown ones


# ---- toy world v3: clean splits, depth, the GPT-3.5 stand-in's habits (toy-world page) ----------

def test_training_prompts_exclude_benchmark_questions_by_text_normalized_text_and_spec():
    from zephyr_lib.toyworld.world import normalize, spec_key

    w = World()
    bench = w.mt_bench_tasks() + w.alpaca_tasks(200)
    ev = w.eval_prompts(200)
    tasks = w.tasks(12000, seed=0, exclude=ev, prefix="uc")  # the toy profile's dSFT draw
    assert not {spec_key(t) for t in tasks} & {spec_key(t) for t in bench}
    assert not {normalize(t.turns[0]) for t in tasks} & {normalize(t.turns[0]) for t in bench}
    # the spec catches paraphrases: some training prompt asks a benchmark question's spec in other
    # words only when exclusion is by text alone
    loose = w.tasks(12000, seed=0, exclude={t.turns[0] for t in bench}, prefix="uc")
    assert {spec_key(t) for t in loose} & {spec_key(t) for t in bench}
    # every category keeps a real prompt space after the exclusion (the old world kept 2 coding prompts)
    distinct = {c: len({spec_key(t) for t in tasks if t.category == c}) for c in CATEGORIES}
    assert min(distinct.values()) >= 100, distinct


def test_an_exhausted_prompt_space_raises_naming_the_category():
    import pytest

    w = World()
    with pytest.raises(ValueError, match="'stem' prompt space is exhausted"):
        w.tasks(10_000, seed=0, categories=("stem",), followups=0, unique=True)


def test_ai_feedback_prompts_are_unique_and_clean():
    from zephyr_lib.toyworld.world import normalize

    w = World()
    ev = w.eval_prompts(200)
    uf = w.tasks(2000, seed=0, followups=0, prefix="uf", exclude=ev, unique=True)
    texts = [normalize(t.turns[0]) for t in uf]
    assert len(set(texts)) == 2000 and not set(texts) & {normalize(x) for x in ev}


def test_the_judge_grades_depth_where_it_fits_and_nowhere_else():
    w = World()
    t = w.towns[0]
    other = next(x for x in w.towns if x.region != t.region)
    spec = {"type": "fact", "entity": t.name, "attr": "goods", "plain_fact": True}
    minimal = w.answer(spec)
    informative = f"{minimal} {t.name} is in {t.region}."
    false_extra = f"{minimal} {t.name} is in {other.region}."
    filler = f"{minimal} I hope this helps!"
    grade = lambda text: assess(w, spec, text)  # noqa: E731
    assert (grade(minimal).score10(), grade(informative).score10(), grade(false_extra).score10()) == (9, 10, 3)
    assert grade(filler).score10() == 9 and grade(filler).informative is False  # filler states no fact
    assert (grade(minimal).aspects()["helpfulness"], grade(informative).aspects()["helpfulness"]) == (4, 5)
    # reference-graded and exact-format turns: correct stays 10, no depth graded
    for s in ({"type": "arith", "a": 3, "op": "plus", "b": 4, "answer": 7},
              {"type": "extract", "items": [x.name for x in w.towns[:3]]}):
        a = assess(w, s, w.answer(s))
        assert a.informative is None and a.score10() == 10
    legs = {"type": "number", "answer": 8, "subject": "spider", "plain_fact": True}
    assert assess(w, legs, "A spider has 8 legs. A spider is an arachnid.").score10() == 10
    assert assess(w, legs, "A spider has 8 legs. A spider is an insect.").score10() == 3
    assert assess(w, legs, "A spider has 8 legs.").score10() == 9


def test_the_gpt35_stand_in_is_informative_less_often_and_keeps_its_format_habits():
    w = World()
    tasks = w.tasks(3000, seed=5, followups=0)
    rates, habits = {}, {}
    for name in ("teacher", "teacher_strong"):
        ag = toy_agent(w, name)
        answers = [ag.respond([{"role": "user", "content": t.turns[0]}]) for t in tasks]
        looks = [assess(w, t.specs[0], a) for t, a in zip(tasks, answers)]
        depth = [a.informative for a in looks if a.informative is not None and a.correct]
        rates[name] = sum(depth) / len(depth)
        habit = [bool(a.violations) for t, a in zip(tasks, looks) if w.format_miss(t.specs[0]) is not None and a.correct]
        habits[name] = sum(habit) / len(habit)
    assert 0.15 < rates["teacher"] < 0.25 and 0.75 < rates["teacher_strong"] < 0.85  # configured 0.2 / 0.8
    assert habits["teacher"] == 1.0 and habits["teacher_strong"] < 0.05  # a habit, not a coin
