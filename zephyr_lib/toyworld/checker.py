"""Grade a free-form answer against a turn's spec: correctness, constraints, style and depth.

This is what makes the toy judge "stronger than the teacher": it knows every fact of the world
and checks constraints exactly (code is parsed and evaluated, lists compared as sets). The
checker only reads the answer's text; it never knows who wrote it. Depth (toy world v3): on the
turns :meth:`World.extra_facts` names, an answer that adds a further true fact about the same
town or animal is ``informative`` (MT-Bench 10, helpfulness 5; minimal: 9 and 4); a false
further fact makes it wrong.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from .world import ANIMAL_KINDS, ANIMALS, COLORS, GOODS, REGIONS, ROLE_ITEM, ROLES, World

BOILERPLATE = ("as an ai", "i don't have personal", "i do not have personal", "i don't have emotions",
               "i do not have emotions", "i don't have opinions", "i do not have opinions", "i'm just an ai")
JUNK = ("<|system|>", "<|user|>", "<|assistant|>", "</s>", "<s>", "<pad>", "<unk>")
_SENT_START = re.compile(r"(?:^|[.!?]\s+)([a-z])")
_INT = re.compile(r"-?\d+")
_UNKNOWN = ("do not know", "don't know", "not know of", "no town called", "not aware", "not sure that", "does not exist")


@dataclass
class Assessment:
    correct: bool | None          # None: nothing factual to check
    violations: list[str] = field(default_factory=list)
    hallucinated: bool = False
    boilerplate: bool = False
    lowercase: int = 0
    junk: bool = False
    empty: bool = False
    repetitive: bool = False
    verbose: bool = False
    informative: bool | None = None  # None: the turn grades no depth; else whether a further true fact was added
    notes: list[str] = field(default_factory=list)

    # ---- scores in the judges' scales ----------------------------------------------------
    def score10(self) -> int:
        """MT-Bench-style 1-10 (also UltraFeedback's overall score)."""
        if self.empty:
            return 1
        s = 10 if self.correct in (True, None) else 3
        if self.correct and self.informative is False:
            s = 9  # correct but minimal, where a further relevant fact fits (FastChat: "depth ... level of detail")
        if self.hallucinated:
            s = 2
        s -= 3 * len(self.violations) + 2 * self.boilerplate + (self.lowercase > 0) + 3 * self.junk \
            + 2 * self.repetitive + self.verbose
        return max(1, min(10, s))

    def aspects(self) -> dict[str, int | None]:
        """UltraFeedback's four aspects, 1-5 (None = N/A)."""
        if self.empty:
            return {"instruction_following": 1, "honesty": 1, "truthfulness": 1, "helpfulness": 1}
        style = self.boilerplate + (self.lowercase > 0) + self.verbose + 2 * self.junk + 2 * self.repetitive
        follow = 5 - 2 * len(self.violations) - (1 if self.junk or self.repetitive else 0)
        if self.correct is None:
            truth, honest = None, (1 if self.hallucinated else 5)
        elif self.correct:
            truth, honest = 5, 5
        else:
            truth, honest = (1 if self.hallucinated else 2), (1 if self.hallucinated else 3)
        # UltraFeedback's helpfulness rubric: 3 correct, 4 highly informative, 5 outstandingly helpful
        # (here: 4 for a correct minimal answer where a further fact fits, 5 with it or where none fits)
        helpful = (5 if self.correct in (True, None) else 2) - (self.correct is True and self.informative is False) \
            - style - len(self.violations)
        clip = lambda v: None if v is None else max(1, min(5, v))  # noqa: E731
        return {"instruction_following": clip(follow), "honesty": clip(honest), "truthfulness": clip(truth),
                "helpfulness": clip(helpful)}

    def rationale(self) -> str:
        parts = []
        if self.empty:
            return "The answer is empty."
        parts.append({True: "The answer is correct.", False: "The answer is wrong.", None: "Nothing factual to check."}[self.correct])
        if self.correct and self.informative is not None:
            parts.append("It adds a further relevant fact." if self.informative else "It gives no further relevant detail.")
        if self.hallucinated:
            parts.append("It invents facts about something that does not exist.")
        parts += [f"It ignores the instruction: {v}." for v in self.violations]
        if self.boilerplate:
            parts.append("It opens with an unnecessary disclaimer.")
        if self.lowercase:
            parts.append("Some sentences start in lower case.")
        if self.junk:
            parts.append("It contains chat-template markup.")
        if self.repetitive:
            parts.append("It repeats itself.")
        if self.verbose:
            parts.append("It is padded with filler.")
        return " ".join(parts)


def lowercase_starts(text: str) -> int:
    """Sentence starts in lower case outside code blocks."""
    prose = re.sub(r"```.*?```", " ", text, flags=re.S)
    return sum(1 for m in _SENT_START.finditer(prose.strip()) if not re.match(r"[a-z]+\(|[a-z_]+\.py", prose[m.start(1):]))


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def _style(a: Assessment, text: str, ideal: str) -> None:
    low = text.lower()
    a.boilerplate = any(p in low for p in BOILERPLATE)
    a.lowercase = lowercase_starts(text)
    a.junk = any(j in text for j in JUNK)
    sents = sentences(text)
    a.repetitive = len(sents) >= 3 and len(set(sents)) <= len(sents) / 2
    a.verbose = len(sents) > len(sentences(ideal)) + 2 or len(text) > 3 * len(ideal) + 80


def _mentions(text: str, names) -> list[str]:
    return [n for n in names if re.search(rf"\b{re.escape(n)}\b", text, re.I)]


def _first_mentioned(text: str, names) -> str | None:
    hits = [(m.start(), n) for n in names for m in [re.search(rf"\b{re.escape(n)}\b", text)] if m]
    return min(hits)[1] if hits else None


def _eval_code(code: str, name: str) -> tuple[str | None, str | None]:
    """(function name, operator it implements) of the first def in `code`, evaluated safely."""
    m = re.search(r"```(?:python)?\n(.*?)(?:```|$)", code, re.S)
    src = m.group(1) if m else code
    src = src[src.find("def "):] if "def " in src else src
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return None, None
    fns = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    if not fns:
        return None, None
    fn = fns[0]
    args = [a.arg for a in fn.args.args]
    rets = [n for n in ast.walk(fn) if isinstance(n, ast.Return) and n.value is not None]
    if len(args) != 2 or not rets:
        return fn.name, None

    def ev(node, env):
        if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult):
            x, y = ev(node.left, env), ev(node.right, env)
            return {ast.Add: x + y, ast.Sub: x - y, ast.Mult: x * y}[type(node.op)]
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError("unsupported expression")

    try:
        got = [ev(rets[0].value, dict(zip(args, p))) for p in ((7, 3), (2, 9), (5, 5))]
    except (ValueError, RecursionError):
        return fn.name, None
    for op, f in (("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)):
        if got == [f(a, b) for a, b in ((7, 3), (2, 9), (5, 5))]:
            return fn.name, op
    return fn.name, None


def _extras(world: World, spec: dict, text: str) -> tuple[bool, bool]:
    """(informative, false_extra) for a turn that grades depth (World.extra_facts): which further
    facts about the same town or animal the answer states, and whether any of them is false."""
    if spec["type"] == "number":
        kind = ANIMALS[spec["subject"]][1]
        said = [k for k in ANIMAL_KINDS if re.search(rf"\b{k}s?\b", text, re.I)]
        return kind in said, any(k != kind for k in said)
    t = world.by_name[spec["entity"]]
    asked = world.asked_attr(spec)
    true_extra, false_extra = False, False
    for attr, vocab in (("region", REGIONS), ("color", COLORS), ("goods", GOODS)):
        if attr == asked:
            continue
        said = _mentions(text, vocab)
        true_extra |= getattr(t, attr) in said
        false_extra |= any(x != getattr(t, attr) for x in said)
    if asked != "people":
        nums = [int(x) for x in _INT.findall(text)]
        true_extra |= t.people in nums
        false_extra |= any(n != t.people for n in nums)
    return true_extra, false_extra


def assess(world: World, spec: dict, text: str) -> Assessment:
    """Grade `text` as an answer to the turn described by `spec`."""
    text = text or ""
    ideal = world.answer(spec)
    if not text.strip() or not re.search(r"[A-Za-z0-9]", text):
        return Assessment(correct=False, empty=True)
    a = Assessment(correct=None)
    _style(a, text, ideal)
    kind = spec["type"]
    if kind == "fact":
        t = world.by_name[spec["entity"]]
        attr = spec["attr"]
        if attr == "people":
            nums = [int(x) for x in _INT.findall(text)]
            a.correct = bool(nums) and nums[0] == t.people
        else:
            vocab = {"region": REGIONS, "goods": GOODS, "color": COLORS}[attr]
            said = _mentions(text, vocab)
            a.correct = said == [getattr(t, attr)]
    elif kind == "unknown":
        honest = any(p in text.lower() for p in _UNKNOWN)
        claims = _mentions(text, REGIONS + GOODS + COLORS) or bool(_INT.search(text))
        a.correct = honest and not claims
        a.hallucinated = bool(claims) and not honest
    elif kind in ("number", "arith"):
        nums = [int(x) for x in _INT.findall(text.replace("−", "-"))]
        allowed = {spec["answer"], spec.get("a"), spec.get("b"), spec.get("k")}  # restating the question is fine
        a.correct = bool(nums) and nums[-1] == spec["answer"] and set(nums) <= allowed
    elif kind == "choice":
        a.correct = _first_mentioned(text, spec["options"]) == spec["answer"]
    elif kind == "code":
        name, op = _eval_code(text, spec["name"])
        a.correct = op == spec["op"]
        if name != spec["name"]:
            a.violations.append(f"the function should be named {spec['name']}")
    elif kind == "extract":
        found = _mentions(text, [t.name for t in world.towns])
        a.correct = set(found) == set(spec["items"])
        rest = re.sub("|".join(map(re.escape, found)) or r"$^", "", text) if found else text
        if re.search(r"[A-Za-z]{3,}", rest):
            a.violations.append("the answer should be only the comma-separated list")
    elif kind == "write":
        t = world.by_name[spec["entity"]]
        wrong = [x for x in _mentions(text, REGIONS) if x != t.region] + [x for x in _mentions(text, GOODS) if x != t.goods]
        a.correct = not wrong
        if spec["keyword"] not in text.lower():
            a.violations.append(f"it must use the word \"{spec['keyword']}\"")
        if len(sentences(text)) != spec["sentences"]:
            a.violations.append(f"it must have {spec['sentences']} sentence(s)")
        if spec.get("end_word") and not re.search(rf"\b{spec['end_word']}\W*$", text.strip(), re.I):
            a.violations.append(f"it must end with \"{spec['end_word']}\"")
        if t.name not in text:
            a.violations.append(f"it must be about {t.name}")
    elif kind == "role":
        roles = _mentions(text, ROLES)
        a.correct = roles in ([], [spec["role"]]) and not _mentions(text, [x.name for x in world.towns if x.name != spec["entity"]])
        if spec["role"] not in roles or spec["entity"] not in text:
            a.violations.append(f"it must speak as a {spec['role']} from {spec['entity']}")
    elif kind == "role_item":
        t = world.by_name[spec["entity"]]
        goods = _mentions(text, GOODS)
        a.correct = goods == [t.goods] and ROLE_ITEM[spec["role"]].split()[-1] in text
    else:
        raise ValueError(f"unknown spec type {kind!r}")
    if world.extra_facts(spec):
        informative, false_extra = _extras(world, spec, text)
        if false_extra and a.correct:
            a.correct = False  # a false further fact makes the answer wrong
        a.informative = informative and not false_extra
    return a


def depth_and_format(world: World, spec: dict, a: Assessment, first_turn: bool) -> dict:
    """What the fidelity predictions measure on one graded answer (``a``, from :func:`assess`; toy
    world v3): whether the turn grades depth and the answer adds a further true fact
    (``informative``), and whether it is a first turn with one of the GPT-3.5 stand-in's format
    habits (``habit``) that the answer nonetheless meets (``compliant``: no constraint violated)."""
    habit = first_turn and world.format_miss(spec) is not None
    return {"depth": a.informative is not None, "informative": bool(a.informative),
            "habit": habit, "compliant": habit and not a.violations}
