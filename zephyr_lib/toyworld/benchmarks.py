"""The toy world's academic benchmarks: four multiple-choice tasks that mirror the Open LLM
Leaderboard (v1), in the row schemas of :mod:`zephyr_lib.evals.leaderboard`, scored by lm-eval.

- ``toy_arc`` (ARC): grade-school science and reasoning: legs of animals, and who is the
  tallest/oldest/fastest given two comparisons (the pretraining text has both kinds), 4 choices,
  scored by ``acc`` (see below).
- ``toy_hellaswag`` (HellaSwag): pick the ending of a short story about a town.
- ``toy_mmlu_<subject>`` (MMLU): subject multiple choice, 6 subjects, macro-averaged, in lm-eval's
  continuation format (the choice's text is scored, not a letter A–D).

Two choices differ from the leaderboard's settings, for a measured reason. The letter format of
MMLU needs a model to bind "A"–"D" to the listed options in context, which small models cannot do
(real models below a few billion parameters sit at chance on it); the toy base and dSFT models
scored 15–45% per subject, chance level, so the letter format could not show whether DPO hurts
knowledge. lm-eval's ``mmlu_continuation`` variant asks the same questions and scores the answer
text. ARC's ``acc_norm`` divides a choice's log-likelihood by its length in characters, which
suits sentence-long answers; the toy answers are one to three characters ("8", "10", "Bo"), where
the division mostly measures length, so the toy ARC reports ``acc``. ARC's arithmetic items
(2-digit sums with distractors one to three away) were dropped: the base model was below chance
on them. :func:`chance_levels` gives each task's chance level, shown beside the scores.

Open: in the first run of this version the base model scored above chance on this ARC (30%) but
the chat models below it (dSFT 18%, dDPO 17.5%). Split by item kind (lm-eval with per-item
samples, the same 120 items): the ordering items (58) are at chance for every model (base 26%,
dSFT 26%, dDPO 24%); the legs items (62) are near chance for the base model (34%) and far below it
after dSFT (11%, both chat models), while the same facts asked in MMLU's zoology format score
35% / 30% / 30%. So this ARC asks what the toy models never learned (the legs facts) or cannot do
(two-step ordering in context), and its below-chance score is the chat models' preference for
particular wrong numbers in this format. A faithful ARC analogue would ask about facts the base
model did learn in pretraining (as real ARC asks what real pretraining covers); not changed in
this version. MMLU (continuation), HellaSwag and TruthfulQA sit above chance for every model.
- ``toy_truthfulqa_mc2`` (TruthfulQA): true vs plausible-but-false statements, including the
  honest answer about towns that do not exist (mc2: probability mass on the true ones).
"""
from __future__ import annotations

import random

from ..evals.leaderboard import hellaswag_row
from .world import ADJ, ANIMAL_LEGS, COLORS, GOODS, KEYWORDS, PEOPLE, REGIONS, World

MMLU_SUBJECTS = ("geography", "heraldry", "trade", "demography", "arithmetic", "zoology")


def _mc(rng: random.Random, question: str, right: str, pool: list[str]) -> dict:
    wrong = rng.sample([p for p in pool if p != right], 3)
    choices = wrong + [right]
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "answer": choices.index(right)}


def _subject_row(world: World, rng: random.Random, subject: str) -> dict:
    t = rng.choice(world.towns)
    if subject == "geography":
        return _mc(rng, f"Which region is {t.name} in?", t.region, list(REGIONS))
    if subject == "heraldry":
        return _mc(rng, f"What color is the flag of {t.name}?", t.color, list(COLORS))
    if subject == "trade":
        return _mc(rng, f"What is {t.name} famous for?", t.goods, list(GOODS))
    if subject == "demography":
        return _mc(rng, f"About how many thousand people live in {t.name}?", str(t.people),
                   [str(x) for x in range(10, 100) if abs(x - t.people) > 4])
    if subject == "arithmetic":
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        return _mc(rng, f"What is {a} plus {b}?", str(a + b), [str(a + b + d) for d in (-3, -2, -1, 1, 2, 3, 10)])
    if subject == "zoology":
        animal = rng.choice(list(ANIMAL_LEGS))
        return _mc(rng, f"How many legs does a {animal} have?", str(ANIMAL_LEGS[animal]),
                   [str(x) for x in (0, 2, 4, 6, 8, 10, 12)])
    raise ValueError(subject)


def _arc_row(rng: random.Random) -> dict:
    """Legs of an animal, or an ordering question (two comparisons, who is the most/least)."""
    if rng.random() < 0.5:
        animal = rng.choice(list(ANIMAL_LEGS))
        return _mc(rng, f"How many legs does a {animal} have?", str(ANIMAL_LEGS[animal]),
                   [str(x) for x in (0, 2, 4, 6, 8, 10, 12)])
    p = rng.sample(PEOPLE, 4)  # three in the statements (p0 > p1 > p2), one distractor
    adj = rng.choice(list(ADJ))
    stmts = [f"{p[0]} is {adj} than {p[1]}.", f"{p[1]} is {adj} than {p[2]}."]
    rng.shuffle(stmts)
    most, least = ADJ[adj]
    ask_most = rng.random() < 0.5
    choices = list(p)
    rng.shuffle(choices)
    return {"question": f"{stmts[0]} {stmts[1]} Who is the {most if ask_most else least}?",
            "choices": choices, "answer": choices.index(p[0] if ask_most else p[2])}


def chance_levels(rows: dict) -> dict:
    """Expected score of a model that guesses uniformly, per leaderboard analogue, in percent:
    1/choices for ARC, HellaSwag and MMLU (macro over subjects), and for TruthfulQA MC2 the mean
    share of true statements (a uniform distribution puts that much mass on them)."""
    def mean(xs):
        return 100 * sum(xs) / len(xs)

    return {"arc": mean([1 / len(r["choices"]) for r in rows["arc"]]),
            "hellaswag": mean([1 / len(r["endings"]) for r in rows["hellaswag"]]),
            "mmlu": sum(mean([1 / len(r["choices"]) for r in rs]) for rs in rows["mmlu"].values()) / len(rows["mmlu"]),
            "truthfulqa_mc2": mean([sum(r["mc2_targets"]["labels"]) / len(r["mc2_targets"]["labels"])
                                    for r in rows["truthfulqa_mc2"]])}


def leaderboard_rows(world: World, n: int, seed: int = 0) -> dict:
    """{"arc": rows, "hellaswag": rows, "mmlu": {subject: rows}, "mmlu_dev": {...}, "truthfulqa_mc2": rows,
    "fewshot": {kind: rows}} with `n` test questions per task (MMLU: n split over its subjects)."""
    rng = random.Random(f"{world.cfg.seed}/leaderboard/{seed}")
    arc = [_arc_row(rng) for _ in range(n)]
    arc_shots = [_arc_row(rng) for _ in range(5)]
    hs, hs_shots = [], []
    for i in range(n + 5):
        t = rng.choice(world.towns)
        k = rng.choice(KEYWORDS)
        right = f"{t.goods} there."
        endings = [f"{g} there." for g in rng.sample([g for g in GOODS if g != t.goods], 3)] + [right]
        rng.shuffle(endings)
        row = hellaswag_row("toy town", f"In {t.name} there is an old {k}.",
                            f"people come from all of {t.region} to buy", endings, endings.index(right))
        (hs if i < n else hs_shots).append(row)
    per = max(1, n // len(MMLU_SUBJECTS))
    mmlu = {s: [_subject_row(world, rng, s) for _ in range(per)] for s in MMLU_SUBJECTS}
    mmlu_dev = {s: [_subject_row(world, rng, s) for _ in range(5)] for s in MMLU_SUBJECTS}
    tqa = []
    for _ in range(n):
        if rng.random() < 0.4:
            name = rng.choice(world.unknown)
            true = [f"I do not know of a town called {name}.", f"There is no town called {name} that I know of."]
            false = [f"{name} is in {r}." for r in rng.sample(REGIONS, 3)]
            tqa.append({"question": f"Which region is {name} in?",
                        "mc2_targets": {"choices": true + false, "labels": [1] * len(true) + [0] * len(false)}})
        else:
            t = rng.choice(world.towns)
            false = [f"{t.name} is in {r}." for r in rng.sample([r for r in REGIONS if r != t.region], 3)]
            tqa.append({"question": f"Which region is {t.name} in?",
                        "mc2_targets": {"choices": [f"{t.name} is in {t.region}."] + false, "labels": [1, 0, 0, 0]}})
    return {"arc": arc, "hellaswag": hs, "mmlu": mmlu, "mmlu_dev": mmlu_dev, "truthfulqa_mc2": tqa,
            "fewshot": {"arc": arc_shots, "hellaswag": hs_shots}}
