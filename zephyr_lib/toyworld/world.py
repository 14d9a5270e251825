"""The toy world: a fictional knowledge base and a seeded task generator in MT-Bench's 8 categories.

Everything is a deterministic function of ``WorldConfig.seed`` (the world) and a per-call seed
(which tasks are drawn), so every process that builds ``World(cfg)`` sees the same towns and
facts. A task carries, for every user turn, a *spec*: the structured facts a checker needs
(the expected answer, the constraints to satisfy). Follow-up turns refer to the previous turn,
as in UltraChat's self-prompting loop and MT-Bench's second turns.

The world also registers every task it hands out under its user turns, so that the teacher and
the judge stand-ins, which see only text, can look up what a prompt asks (:meth:`World.lookup`).
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from ..config import WorldConfig

CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
REGIONS = ("Arvania", "Belmorth", "Cindral", "Dovesk", "Elthar", "Fennmark")
COLORS = ("red", "blue", "green", "yellow", "white", "black", "purple", "orange")
GOODS = ("glass", "cheese", "wool", "clocks", "tea", "boats", "paper", "honey")
PEOPLE = ("Ann", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo")
ADJ = {"taller": ("tallest", "shortest"), "older": ("oldest", "youngest"), "faster": ("fastest", "slowest")}
ROLES = ("baker", "sailor", "guard", "teacher", "farmer", "painter")
ROLE_ITEM = {"baker": "fresh bread", "sailor": "fish from the sea", "guard": "safe passage",
             "teacher": "lessons for children", "farmer": "fresh eggs", "painter": "bright pictures"}
KEYWORDS = ("river", "market", "bridge", "garden", "festival", "tower")
# animal -> (legs, kind): the kind is the further true fact an informative answer can add
ANIMALS = {"spider": (8, "arachnid"), "scorpion": (8, "arachnid"), "tick": (8, "arachnid"), "mite": (8, "arachnid"),
           "cat": (4, "mammal"), "horse": (4, "mammal"), "dog": (4, "mammal"), "goat": (4, "mammal"),
           "sheep": (4, "mammal"), "mouse": (4, "mammal"), "owl": (2, "bird"), "duck": (2, "bird"),
           "hen": (2, "bird"), "robin": (2, "bird"), "swan": (2, "bird"), "ant": (6, "insect"), "bee": (6, "insect"),
           "beetle": (6, "insect"), "moth": (6, "insect"), "snake": (0, "reptile"), "lizard": (4, "reptile"),
           "turtle": (4, "reptile"), "crab": (10, "crustacean"), "lobster": (10, "crustacean")}
ANIMAL_LEGS = {a: legs for a, (legs, _) in ANIMALS.items()}
ANIMAL_KINDS = tuple(sorted({k for _, k in ANIMALS.values()}))
OPS = {"plus": "+", "minus": "-", "times": "*"}
CODE_OPS = {"returns a plus b": "+", "returns a minus b": "-", "returns a times b": "*"}
# two phrasings per operation (a paraphrase asks the same question: the benchmark split excludes it too)
CODE_DESCS = {"returns a plus b": "+", "adds a and b": "+", "returns a minus b": "-", "subtracts b from a": "-",
              "returns a times b": "*", "multiplies a by b": "*"}
CODE_NAMES = ("add_two", "combine", "calc", "mix", "apply", "join_nums", "merge", "blend", "compute", "mingle",
              "pair_up", "fold", "unite", "meld", "fuse", "link", "bind", "tally", "weigh", "sum_up",
              "work_out", "crunch", "figure", "reckon", "count_up", "total", "process", "handle", "solve_it",
              "evaluate", "resolve", "settle", "derive", "deduce", "gauge", "measure", "rate", "score",
              "mark", "grade", "tabulate", "cast", "forge", "shape", "mold", "craft", "build", "make_num",
              "produce", "yield_num", "give", "hand_back", "deliver", "supply", "provide", "offer", "pass_on",
              "send", "emit", "output")
SYL_A = ("vel", "tor", "bri", "qua", "mor", "zan", "dul", "kes", "lin", "ost", "par", "rin", "sol", "tam", "vor", "wen")
SYL_B = ("mora", "ssk", "nwick", "dell", "holt", "gard", "ven", "ria", "bury", "ton", "mere", "stead", "lyn", "dor")


@dataclass(frozen=True)
class Town:
    name: str
    region: str
    color: str
    people: int  # thousands
    goods: str


MAX_REDRAWS = 5000  # draws of one category excluded in a row before its prompt space counts as exhausted


def normalize(text: str) -> str:
    """A prompt's text with case, punctuation and spacing removed (for the benchmark exclusion)."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def spec_key(task: "Task") -> str:
    """What a task's first turn asks, independent of its wording: category and first-turn spec."""
    return "spec:" + task.category + ":" + json.dumps(task.specs[0], sort_keys=True)


@dataclass
class Task:
    """A dialogue to answer: user turns and, per turn, the spec a checker grades against."""

    id: str
    category: str
    turns: list[str]
    specs: list[dict]
    meta: dict = field(default_factory=dict)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class World:
    """The knowledge base, the task generator and a registry of every task handed out."""

    def __init__(self, cfg: WorldConfig | None = None):
        self.cfg = cfg or WorldConfig()
        rng = random.Random(self.cfg.seed)
        names: list[str] = []
        while len(names) < self.cfg.n_entities + self.cfg.n_unknown:
            n = _cap(rng.choice(SYL_A) + rng.choice(SYL_B))
            if n not in names:
                names.append(n)
        self.towns = [Town(n, rng.choice(REGIONS), rng.choice(COLORS), rng.randint(10, 99), rng.choice(GOODS))
                      for n in names[: self.cfg.n_entities]]
        self.by_name = {t.name: t for t in self.towns}
        self.unknown = names[self.cfg.n_entities:]
        self._registry: dict[tuple[str, ...], dict] = {}

    # ---- registry ------------------------------------------------------------------------
    def register(self, task: Task) -> Task:
        for i in range(len(task.turns)):
            self._registry[tuple(task.turns[: i + 1])] = {"task": task, "turn": i}
        return task

    def lookup(self, user_turns: list[str]) -> tuple[Task, int] | None:
        hit = self._registry.get(tuple(t.strip() for t in user_turns))
        return (hit["task"], hit["turn"]) if hit else None

    # ---- pretraining text (stage base): facts and statements, no chat format ----------------
    def facts(self, town: Town) -> list[str]:
        return [f"{town.name} is a town in {town.region}.",
                f"The flag of {town.name} is {town.color}.",
                f"About {town.people} thousand people live in {town.name}.",
                f"{town.name} is famous for its {town.goods}."]

    def pretraining_docs(self, n: int, seed: int) -> list[str]:
        """Plain text: knowledge-base facts, arithmetic, orderings, code and short prose."""
        rng = random.Random(seed)
        docs = []
        for _ in range(n):
            kind = rng.random()
            if kind < 0.45:
                t = rng.choice(self.towns)
                f = self.facts(t)
                rng.shuffle(f)
                docs.append(" ".join(f[: rng.randint(2, 4)]))
            elif kind < 0.6:
                a, b = rng.randint(1, 30), rng.randint(1, 30)
                w = rng.choice(list(OPS))
                docs.append(f"{a} {w} {b} is {self._arith(a, w, b)}. " + self._statement(rng))
            elif kind < 0.7:
                people, adj = rng.sample(PEOPLE, 3), rng.choice(list(ADJ))
                docs.append(f"{people[0]} is {adj} than {people[1]}. {people[1]} is {adj} than {people[2]}. "
                            f"So {people[0]} is the {ADJ[adj][0]} and {people[2]} is the {ADJ[adj][1]}.")
            elif kind < 0.78:
                fn, (desc, op) = rng.choice(CODE_NAMES), rng.choice(list(CODE_DESCS.items()))
                docs.append(f"In Python, a function that {desc} is written:\ndef {fn}(a, b):\n    return a {op} b")
            elif kind < 0.86:
                animal = rng.choice(list(ANIMAL_LEGS))
                docs.append(f"A {animal} has {ANIMAL_LEGS[animal]} legs. {self.animal_fact(animal)} " + self._statement(rng))
            else:
                t = rng.choice(self.towns)
                k = rng.choice(KEYWORDS)
                docs.append(f"In {t.name} there is an old {k}. People come from all of {t.region} to buy "
                            f"{t.goods} there. The {t.color} flags of {t.name} fly over the {k}.")
        return docs

    def _statement(self, rng: random.Random) -> str:
        t = rng.choice(self.towns)
        return rng.choice(self.facts(t))

    @staticmethod
    def _arith(a: int, w: str, b: int) -> int:
        return {"plus": a + b, "minus": a - b, "times": a * b}[w]

    # ---- tasks ---------------------------------------------------------------------------
    def tasks(self, n: int, seed: int, categories: tuple[str, ...] = CATEGORIES, followups: int = 1,
              exclude: set[str] | None = None, prefix: str = "t", unique: bool = False) -> list[Task]:
        """`n` tasks, round-robin over `categories`, each with 1 + up to `followups` turns.

        A task is redrawn when its first turn is in `exclude`: by its exact text, its normalized
        text (:func:`normalize`) or its first-turn spec (:func:`spec_key`, so a paraphrase of a
        benchmark question is excluded too). With ``unique``, no two tasks share a first-turn
        spec. A category whose prompt space runs out raises ValueError naming it (the
        exclusion never gives up silently)."""
        rng = random.Random(f"{self.cfg.seed}/{seed}/{prefix}")
        out: list[Task] = []
        exclude = exclude or set()
        banned = {normalize(x) for x in exclude} | exclude
        taken: set[str] = set()
        misses = {c: 0 for c in categories}
        while len(out) < n:
            cat = categories[len(out) % len(categories)]
            task = getattr(self, f"_task_{cat}")(rng, 1 + (rng.randint(0, followups) if followups else 0))
            key, text = spec_key(task), normalize(task.turns[0])
            if task.turns[0] in banned or text in banned or key in banned or (unique and text in taken):
                misses[cat] += 1
                if misses[cat] > MAX_REDRAWS:
                    raise ValueError(f"toy world: the {cat!r} prompt space is exhausted after {len(out)} tasks "
                                     f"({MAX_REDRAWS} draws in a row excluded; excluded prompts: {len(exclude)}, "
                                     f"unique={unique}); ask for fewer tasks or enlarge the world")
                continue
            misses[cat] = 0
            taken.add(text)
            task.id = f"{prefix}{len(out):05d}"
            out.append(self.register(task))
        return out

    def _town(self, rng: random.Random) -> Town:
        return rng.choice(self.towns)

    def _task_humanities(self, rng, nturns):
        if rng.random() < 0.2:
            name = rng.choice(self.unknown)
            q = rng.choice(["Which region is {e} in?", "Where is the town of {e}?", "What is {e} famous for?",
                            "What color is the flag of {e}?"]).format(e=name)
            turns, specs = [q], [{"type": "unknown", "entity": name, "plain_fact": True}]
            if nturns > 1:
                turns.append("Are you sure? Please check again.")
                specs.append({"type": "unknown", "entity": name, "plain_fact": True})
            return Task("", "humanities", turns, specs)
        t = self._town(rng)
        attr = rng.choice(["region", "goods", "color"])
        turns = [self._fact_q(rng, attr, t.name)]
        specs = [{"type": "fact", "entity": t.name, "attr": attr, "plain_fact": True}]
        if nturns > 1:
            attr2 = rng.choice([a for a in ("region", "goods", "color", "people") if a != attr])
            turns.append({"region": "And which region is it in?", "goods": "And what is it famous for?",
                          "color": "And what color is its flag?", "people": "And how many people live there?"}[attr2])
            specs.append({"type": "fact", "entity": t.name, "attr": attr2, "plain_fact": True})
        return Task("", "humanities", turns, specs)

    @staticmethod
    def _fact_q(rng, attr, e):
        return rng.choice({
            "region": ["Which region is {e} in?", "Where is the town of {e}?", "In which region can I find {e}?"],
            "goods": ["What is {e} famous for?", "What is the town of {e} known for?"],
            "color": ["What color is the flag of {e}?", "Tell me the color of the flag of {e}."],
            "people": ["How many people live in {e}?", "What is the population of {e}?",
                       "How many people does {e} have?"],
        }[attr]).format(e=e)

    def _task_stem(self, rng, nturns):
        if rng.random() < 0.5:
            animal = rng.choice(list(ANIMAL_LEGS))
            turns = [rng.choice(["How many legs does a {a} have?", "Tell me how many legs a {a} has.",
                                 "How many legs has a {a} got?"]).format(a=animal)]
            specs = [{"type": "number", "answer": ANIMAL_LEGS[animal], "subject": animal, "plain_fact": True}]
            if nturns > 1:
                k = rng.randint(2, 5)
                turns.append(f"How many legs do {k} of them have together?")
                specs.append({"type": "number", "answer": k * ANIMAL_LEGS[animal], "subject": animal, "k": k})
            return Task("", "stem", turns, specs)
        t = self._town(rng)
        if rng.random() < 0.4:  # a comparison first, then the population of the larger town
            u = rng.choice([x for x in self.towns if x.people != t.people])
            big = t if t.people > u.people else u
            turns = [rng.choice(["Which has more people, {a} or {b}?", "Which town is bigger, {a} or {b}?"])
                     .format(a=t.name, b=u.name)]
            specs = [{"type": "choice", "answer": big.name, "options": [t.name, u.name], "frame": "more"}]
            if nturns > 1:
                turns.append("And how many people live there?")
                specs.append({"type": "fact", "entity": big.name, "attr": "people", "plain_fact": True})
            return Task("", "stem", turns, specs)
        turns = [self._fact_q(rng, "people", t.name)]
        specs = [{"type": "fact", "entity": t.name, "attr": "people", "plain_fact": True}]
        if nturns > 1:
            u = rng.choice([x for x in self.towns if x.people != t.people])
            turns.append(f"Which has more people, {t.name} or {u.name}?")
            specs.append({"type": "choice", "answer": t.name if t.people > u.people else u.name,
                          "options": [t.name, u.name], "frame": "more"})
        return Task("", "stem", turns, specs)

    def _task_math(self, rng, nturns):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        w = rng.choice(["plus", "minus", "times"] if a < 13 and b < 13 else ["plus", "minus"])
        r = self._arith(a, w, b)
        turns = [rng.choice(["What is {a} {w} {b}?", "Compute {a} {w} {b}.", "Please work out {a} {w} {b}."])
                 .format(a=a, w=w, b=b)]
        specs = [{"type": "arith", "a": a, "op": w, "b": b, "answer": r}]
        if nturns > 1:
            c = rng.randint(1, 9)
            w2 = rng.choice(["plus", "minus"])
            turns.append(f"Now {'add' if w2 == 'plus' else 'subtract'} {c} {'to' if w2 == 'plus' else 'from'} that.")
            specs.append({"type": "arith", "a": r, "op": w2, "b": c, "answer": self._arith(r, w2, c)})
        return Task("", "math", turns, specs)

    def _task_reasoning(self, rng, nturns):
        p = rng.sample(PEOPLE, 3)
        adj = rng.choice(list(ADJ))
        stmts = [f"{p[0]} is {adj} than {p[1]}.", f"{p[1]} is {adj} than {p[2]}."]
        rng.shuffle(stmts)
        most, least = ADJ[adj]
        ask_most = rng.random() < 0.5
        turns = [f"{stmts[0]} {stmts[1]} Who is the {most if ask_most else least}?"]
        specs = [{"type": "choice", "answer": p[0] if ask_most else p[2], "options": p, "frame": most if ask_most else least}]
        if nturns > 1:
            turns.append(f"And who is the {least if ask_most else most}?")
            specs.append({"type": "choice", "answer": p[2] if ask_most else p[0], "options": p,
                          "frame": least if ask_most else most})
        return Task("", "reasoning", turns, specs)

    def _task_coding(self, rng, nturns):
        fn = rng.choice(CODE_NAMES)
        desc, op = rng.choice(list(CODE_DESCS.items()))
        turns = [f"Write a Python function named {fn} that {desc}."]
        specs = [{"type": "code", "name": fn, "op": op}]
        if nturns > 1:
            desc2, op2 = rng.choice([(d, o) for d, o in CODE_DESCS.items() if o != op])
            turns.append(f"Now change it so that it {desc2}.")
            specs.append({"type": "code", "name": fn, "op": op2})
        return Task("", "coding", turns, specs)

    def _task_extraction(self, rng, nturns):
        k = rng.randint(2, 4)
        towns = [t.name for t in rng.sample(self.towns, k)]
        text = "We went from " + ", then to ".join(towns) + "."
        turns = [f"List the towns in this text, separated by commas: \"{text}\""]
        specs = [{"type": "extract", "items": towns}]
        if nturns > 1:
            turns.append("How many towns is that?")
            specs.append({"type": "number", "answer": k, "subject": "towns"})
        return Task("", "extraction", turns, specs)

    def _task_writing(self, rng, nturns):
        t = self._town(rng)
        kw = rng.choice(KEYWORDS)
        n = rng.choice([2, 3])
        turns = [f"Write {n} sentences about {t.name} that use the word \"{kw}\"."]
        specs = [{"type": "write", "entity": t.name, "keyword": kw, "sentences": n}]
        if nturns > 1:
            end = rng.choice(["peace", "home", "light", "joy"])
            turns.append(f"Now write it again in one sentence that ends with the word \"{end}\".")
            specs.append({"type": "write", "entity": t.name, "keyword": kw, "sentences": 1, "end_word": end})
        return Task("", "writing", turns, specs)

    def _task_roleplay(self, rng, nturns):
        t = self._town(rng)
        role = rng.choice(ROLES)
        turns = [rng.choice(["Pretend you are a {r} from {e}. Greet a visitor.",
                             "You are a {r} in {e}. Say hello to a traveler."]).format(r=role, e=t.name)]
        specs = [{"type": "role", "role": role, "entity": t.name}]
        if nturns > 1:
            turns.append("What do you sell, and what is your town famous for?")
            specs.append({"type": "role_item", "role": role, "entity": t.name})
        return Task("", "roleplay", turns, specs)

    # ---- the ideal answer (the judge's reference) ---------------------------------------------
    def answer(self, spec: dict) -> str:
        """The correct, well-formed answer to one turn's spec."""
        kind = spec["type"]
        if kind == "fact":
            t = self.by_name[spec["entity"]]
            return {"region": f"{t.name} is in {t.region}.", "goods": f"{t.name} is famous for its {t.goods}.",
                    "color": f"The flag of {t.name} is {t.color}.",
                    "people": f"About {t.people} thousand people live in {t.name}."}[spec["attr"]]
        if kind == "unknown":
            return f"I do not know of a town called {spec['entity']}."
        if kind == "number":
            if "k" in spec:
                return f"{spec['k']} {spec['subject']}s have {spec['answer']} legs together."
            if spec["subject"] == "towns":
                return f"That is {spec['answer']} towns."
            return f"A {spec['subject']} has {spec['answer']} legs."
        if kind == "arith":
            return f"{spec['a']} {spec['op']} {spec['b']} is {spec['answer']}."
        if kind == "choice":
            if spec["frame"] == "more":
                return f"{spec['answer']} has more people."
            return f"{spec['answer']} is the {spec['frame']}."
        if kind == "code":
            return f"```python\ndef {spec['name']}(a, b):\n    return a {spec['op']} b\n```"
        if kind == "extract":
            return ", ".join(spec["items"])
        if kind == "write":
            t = self.by_name[spec["entity"]]
            if spec.get("end_word"):
                return f"The {spec['keyword']} of {t.name} in {t.region} brings {spec['end_word']}."
            s = [f"{t.name} has a fine {spec['keyword']}.", f"It is a town in {t.region}.",
                 f"People love its {t.goods}."]
            return " ".join(s[: spec["sentences"]])
        if kind == "role":
            return f"Welcome, traveler! I am a {spec['role']} from {spec['entity']}."
        if kind == "role_item":
            t = self.by_name[spec["entity"]]
            return f"I sell {ROLE_ITEM[spec['role']]}, and {t.name} is famous for its {t.goods}."
        raise ValueError(f"unknown spec type {kind!r}")

    # ---- informative answers and the teacher's format misses (toy world v3) ------------------
    @staticmethod
    def animal_fact(animal: str) -> str:
        kind = ANIMALS[animal][1]
        return f"A {animal} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}."

    def extra_facts(self, spec: dict) -> list[str]:
        """True, relevant facts an *informative* answer adds beyond what the turn asks (one sentence
        each): another attribute of the town it is about, or an animal's kind. Empty where the
        toy judge grades no depth: the reference-graded categories (math, coding, reasoning),
        exact-format extraction, writing (whose sentence count is the constraint) and questions
        about towns that do not exist."""
        kind = spec["type"]
        if kind == "number" and spec.get("subject") in ANIMALS:
            return [self.animal_fact(spec["subject"])]
        if kind not in ("fact", "role", "role_item"):
            return []
        t = self.by_name[spec["entity"]]
        asked = self.asked_attr(spec)
        facts = {"region": f"{t.name} is in {t.region}.", "color": f"The flag of {t.name} is {t.color}.",
                 "goods": f"{t.name} is famous for its {t.goods}.",
                 "people": f"About {t.people} thousand people live in {t.name}."}
        return [v for k, v in facts.items() if k != asked]

    @staticmethod
    def asked_attr(spec: dict) -> str | None:
        """The town attribute a depth-graded town turn itself asks for (its answer states it; a
        further fact is any other one): the fact asked, the goods of a sale, none for a greeting."""
        return {"fact": spec.get("attr"), "role": None, "role_item": "goods"}[spec["type"]]

    def informative_answer(self, spec: dict, rng: random.Random) -> str | None:
        """The ideal answer plus one further true fact (None where no depth is graded)."""
        extra = self.extra_facts(spec)
        return f"{self.answer(spec)} {rng.choice(extra)}" if extra else None

    def format_miss(self, spec: dict) -> str | None:
        """The GPT-3.5 stand-in's prompt-dependent miss of a named first-turn constraint, or None:
        an extraction list of three or more towns wrapped in words ("The towns are A, B and C."),
        and a request for three sentences answered in two. Deterministic in the prompt: a habit,
        not a coin, so a student distilled from it learns it as its mode."""
        if spec["type"] == "extract" and len(spec["items"]) >= 3:
            items = spec["items"]
            return "The towns are " + ", ".join(items[:-1]) + " and " + items[-1] + "."
        if spec["type"] == "write" and spec["sentences"] == 3 and not spec.get("end_word"):
            return self.answer({**spec, "sentences": 2})
        return None

    def wrong_answer(self, spec: dict, rng: random.Random) -> str:
        """A fluent but wrong answer (the teacher's error mode)."""
        kind = spec["type"]
        if kind == "fact":
            t = self.by_name[spec["entity"]]
            fake = Town(t.name, rng.choice([r for r in REGIONS if r != t.region]),
                        rng.choice([c for c in COLORS if c != t.color]),
                        t.people + rng.choice([-7, -3, 4, 9]), rng.choice([g for g in GOODS if g != t.goods]))
            saved = self.by_name[t.name]
            self.by_name[t.name] = fake
            try:
                return self.answer(spec)
            finally:
                self.by_name[t.name] = saved
        if kind == "unknown":
            return f"{spec['entity']} is in {rng.choice(REGIONS)}."
        if kind in ("number", "arith"):
            return self.answer({**spec, "answer": spec["answer"] + rng.choice([-2, -1, 1, 3])})
        if kind == "choice":
            return self.answer({**spec, "answer": rng.choice([o for o in spec["options"] if o != spec["answer"]])})
        if kind == "code":
            return self.answer({**spec, "op": rng.choice([o for o in "+-*" if o != spec["op"]])})
        if kind == "extract":
            return ", ".join(spec["items"][:-1])
        if kind in ("write", "role_item"):
            t = self.by_name[spec["entity"]]
            return self.answer(spec).replace(t.region, rng.choice([r for r in REGIONS if r != t.region])) \
                .replace(t.goods, rng.choice([g for g in GOODS if g != t.goods]))
        if kind == "role":
            return f"Welcome, traveler! I am a {rng.choice([r for r in ROLES if r != spec['role']])} from {spec['entity']}."
        raise ValueError(kind)

    def ignore_constraint(self, spec: dict, rng: random.Random) -> str | None:
        """A correct-looking answer that ignores the explicit constraint, or None if the spec has none."""
        kind = spec["type"]
        if kind == "write":
            t = self.by_name[spec["entity"]]
            return f"{t.name} is a lovely town in {t.region}. It is famous for its {t.goods}. Many people visit it."
        if kind == "code":
            return f"```python\ndef solve(a, b):\n    return a {spec['op']} b\n```"
        if kind == "extract":
            return "The text mentions the towns " + " and ".join(spec["items"]) + "."
        if kind == "role":
            return "Hello! How can I help you today?"
        return None

    # ---- benchmark prompt sets (disjoint from training prompts) ----------------------------
    def mt_bench_tasks(self) -> list[Task]:
        """80 two-turn questions, 10 per category (FastChat ids 81-160 in category blocks)."""
        out = []
        order = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
        rng = random.Random(f"{self.cfg.seed}/mt_bench")
        qid = 81
        for cat in order:
            seen: set[str] = set()
            while len([t for t in out if t.category == cat]) < 10:
                task = getattr(self, f"_task_{cat}")(rng, 2)
                if spec_key(task) in seen:
                    continue
                seen.add(spec_key(task))
                task.id = str(qid)
                qid += 1
                out.append(self.register(task))
        return out

    def eval_prompts(self, n_alpaca: int) -> set[str]:
        """First turns of every benchmark prompt and their specs (:func:`spec_key`): training and
        AI-feedback generators exclude these, wording and paraphrase alike."""
        tasks = self.mt_bench_tasks() + self.alpaca_tasks(n_alpaca)
        return {t.turns[0] for t in tasks} | {spec_key(t) for t in tasks}

    def alpaca_tasks(self, n: int) -> list[Task]:
        """`n` single-turn instructions with distinct specs for the AlpacaEval stand-in (a prefix of
        a fixed sequence)."""
        return self.tasks(n, seed=-1, followups=0, prefix="alpaca", unique=True)
