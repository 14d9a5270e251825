"""The toy world: determinism, the teacher's defect profile, the checker on real-looking answers."""
from __future__ import annotations

import random

from zephyr_lib import curate
from zephyr_lib.config import WorldConfig
from zephyr_lib.toyworld import CATEGORIES, World, assess, make_agent, write_dialogues
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
    dialogues = write_dialogues(w, make_agent(w, "teacher"), tasks)
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
    a = write_dialogues(w, make_agent(w, "teacher_sloppy"), tasks)
    b = write_dialogues(w, make_agent(w, "teacher_sloppy"), list(reversed(tasks)))
    assert a == list(reversed(b))


def test_checker_on_real_looking_answers():
    w = World()
    t = w.towns[0]
    fact = {"type": "fact", "entity": t.name, "attr": "region", "plain_fact": True}
    assert assess(w, fact, f"{t.name} is in {t.region}.").score10() == 10
    other = next(r for r in ("Arvania", "Belmorth", "Cindral") if r != t.region)
    assert assess(w, fact, f"{t.name} is in {other}.").score10() <= 3
    boiler = assess(w, fact, f"As an AI, I don't have personal experiences, but {t.name} is in {t.region}.")
    assert boiler.correct and boiler.boilerplate and boiler.score10() == 8
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
            assert assess(w, spec, w.answer(spec)).score10() == 10, spec
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
