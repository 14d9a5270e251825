"""Programmatic answerers: the teacher (the GPT-3.5 stand-in) and its variants.

STAND-IN, NOT A LANGUAGE MODEL: a teacher looks the prompt up in the world, writes the correct
answer, and then applies a seeded defect profile mirroring what the paper reports about
GPT-3.5-written UltraChat: wrong answers, lower-cased sentence starts in about 5% of dialogues
("Hello. how are you?") and "As an AI…" prefaces on plain fact questions. Since toy world v3
the GPT-3.5 stand-in also differs from the GPT-4 stand-in where the judge can see it: it adds a
further true fact (an *informative* answer) less often, and it has prompt-dependent format
habits on two named first-turn constraints (:meth:`World.format_miss`), not a per-answer coin.
Defects are decided per (agent, task, turn) from a hash, so answers do not depend on batch
order. Toy agents and trained models share one protocol (:class:`zephyr_lib.agent.Agent`); the
one factory is :func:`zephyr_lib.agents.make_agent`, which builds toy agents with :func:`toy_agent`.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Sequence

from ..config import WorldConfig
from .world import World

PREFACES = ("As an AI, I don't have personal experiences, but",
            "As an AI language model, I do not have personal opinions, but",
            "I don't have personal experiences, but",
            "As an AI, I do not have emotions, but")
FILLER = ("I hope this helps!", "Let me know if you have any other questions.",
          "This is a very interesting question.", "There is a lot more that could be said about this.")


@dataclass(frozen=True)
class Profile:
    wrong: float
    ignore: float
    lowercase: float
    boilerplate: float
    verbose: bool = False
    informative: float = 0.0      # rate of correct answers that add a further true fact (where one fits)
    format_misses: bool = False   # the GPT-3.5 stand-in's prompt-dependent format habits (World.format_miss)


def agent_profiles(cfg: WorldConfig) -> dict[str, Profile]:
    """The toy world's programmatic answerers and their defect rates."""
    teacher = Profile(cfg.teacher_wrong_rate, cfg.teacher_ignore_rate, cfg.teacher_lowercase_rate,
                      cfg.teacher_boilerplate_rate, informative=cfg.teacher_informative_rate,
                      format_misses=cfg.teacher_format_misses)
    strong = Profile(0.02, 0.02, 0.0, 0.0, informative=cfg.strong_informative_rate)
    return {
        "teacher": teacher,                                           # GPT-3.5 stand-in (writes UltraChat)
        "teacher_strong": strong,                                     # the GPT-4 stand-in as an answerer
        # control: the GPT-4 stand-in at the teacher's informative rate and with its format habits
        "teacher_strong_ctrl": Profile(strong.wrong, strong.ignore, 0.0, 0.0, informative=teacher.informative,
                                       format_misses=teacher.format_misses),
        "teacher_sloppy": Profile(0.45, 0.45, 0.30, 0.50, informative=0.1),  # a weak open model
        "teacher_verbose": Profile(teacher.wrong, teacher.ignore, teacher.lowercase, 0.6, verbose=True,
                                   informative=teacher.informative, format_misses=teacher.format_misses),
        "reference": Profile(0.20, 0.25, 0.05, 0.25, informative=0.3),  # text-davinci-003 stand-in (AlpacaEval)
    }


def _lower_starts(text: str) -> str:
    """'Hello. How are you?' -> 'hello. how are you?' (UltraChat's casing defect)."""
    out, cap_next, i = [], True, 0
    in_code = False
    while i < len(text):
        if text.startswith("```", i):
            in_code = not in_code
        ch = text[i]
        if cap_next and ch.isalpha() and not in_code:
            ch = ch.lower()
            cap_next = False
        elif ch.isalpha():
            cap_next = False
        if ch in ".!?" and i + 1 < len(text) and text[i + 1] == " ":
            cap_next = True
        out.append(ch)
        i += 1
    return "".join(out)


class ToyAgent:
    """A programmatic answerer with a defect profile (see module docstring); an
    :class:`zephyr_lib.agent.Agent`. It has no weights (``path`` is None) and always finishes its
    answers (``stopped`` is all True); it does not sample, so the decoding settings do not apply."""

    path = None

    def __init__(self, world: World, name: str, profile: Profile, seed: int = 0):
        self.world, self.name, self.p, self.seed = world, name, profile, seed

    def _rng(self, *key) -> random.Random:
        h = hashlib.sha256("/".join(map(str, (self.name, self.seed, *key))).encode()).hexdigest()
        return random.Random(int(h[:16], 16))

    def respond(self, messages: list[dict]) -> str:
        users = [m["content"] for m in messages if m["role"] == "user"]
        hit = self.world.lookup(users)
        if hit is None:
            raise KeyError(f"{self.name}: the toy world does not know the prompt {users[-1][:80]!r}")
        task, turn = hit
        spec = task.specs[turn]
        rng = self._rng(task.id, "|".join(users))
        text = None
        if rng.random() < self.p.wrong:
            text = self.world.wrong_answer(spec, rng)
        elif self.p.format_misses and turn == 0 and (habit := self.world.format_miss(spec)) is not None:
            text = habit
        elif rng.random() < self.p.ignore:
            text = self.world.ignore_constraint(spec, rng)
        if text is None and rng.random() < self.p.informative:
            text = self.world.informative_answer(spec, rng)
        if text is None:
            text = self.world.answer(spec)
        if spec.get("plain_fact") and rng.random() < self.p.boilerplate:
            first, _, rest = text.partition(" ")
            text = f"{rng.choice(PREFACES)} {first.lower() if first in ('The', 'About', 'A', 'I') and first != 'I' else first} {rest}"
        if self.p.verbose:
            text = " ".join([text, *rng.sample(FILLER, rng.randint(2, 3))])
        if self._rng(task.id, "dialogue").random() < self.p.lowercase:  # a per-dialogue defect
            text = _lower_starts(text)
        return text

    def respond_many(self, conversations: Sequence[list[dict]], *, max_new_tokens: int = 128,
                     temperature: float = 0.0, temperatures: Sequence[float] | None = None, top_p: float = 1.0,
                     desc: str | bool | None = None, return_stopped: bool = False):
        texts = [self.respond(c) for c in conversations]
        return (texts, [True] * len(texts)) if return_stopped else texts


def toy_agent(world: World, name: str, seed: int = 0) -> ToyAgent:
    """The toy world's programmatic answerer ``name`` (a key of :func:`agent_profiles`); stages
    ask :func:`zephyr_lib.agents.make_agent`, which calls this for toy names."""
    profiles = agent_profiles(world.cfg)
    if name not in profiles:
        raise KeyError(f"unknown toy agent {name!r}; agents: {', '.join(profiles)}")
    return ToyAgent(world, name, profiles[name], seed)


def write_dialogues(world: World, agent: ToyAgent, tasks) -> list[list[dict]]:
    """UltraChat's loop: the agent answers each turn with its own previous answers in context."""
    out = []
    for task in tasks:
        msgs: list[dict] = []
        for user in task.turns:
            msgs.append({"role": "user", "content": user})
            msgs.append({"role": "assistant", "content": agent.respond(msgs)})
        out.append(msgs)
    return out
