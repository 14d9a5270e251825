"""The toy world's judge: an offline STAND-IN for GPT-4, not a model.

:class:`ToyJudge` is a :class:`zephyr_lib.judges.Backend`. It receives exactly the chat
messages a real GPT-4 judge would receive -- built by the project's real prompt builders -- and
replies in text, in the real output formats, which then go through the real parsers. It does
not understand language: it recovers what was asked with the builders' inverse extractors,
finds the prompt's task in the world (:meth:`World.lookup`, by the user turns' text), and grades
every answer with :func:`zephyr_lib.toyworld.checker.assess`, which checks the answer against
the world's facts and the prompt's explicit constraints. That is what makes it "stronger than
the teacher": it knows every fact and checks constraints exactly. It never sees which model
wrote an answer (the prompts carry no model names, and there is no side channel).

Formats answered (tried in this order; the first extractor that accepts the messages wins):

* MT-Bench single answer (FastChat ``single-v1``, ``single-math-v1`` and their multi-turn
  twins): a short explanation, then ``Rating: [[x]]`` with x = ``Assessment.score10()``.
  Turn 1 grades ``answer`` against the task's turn-1 spec; the multi-turn prompt grades
  ``answer_2`` against the turn-2 spec (as FastChat's prompt asks: focus on the second answer).
  Reference-guided prompts are acknowledged in the explanation, but the grade is the checker's.
* MT-Bench pairwise (``pair-v2``, ``pair-math-v1`` and multi-turn twins): both answers graded,
  a short explanation, then ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie when the scores are equal).
* AlpacaEval 1, ``alpaca_eval_gpt4`` ranking prompt: the reply is only the Python list
  ``[{'model': 'model_X', 'rank': 1}, {'model': 'model_Y', 'rank': 2}]`` (``ranking_parser``
  literal_evals the whole reply), better output first.
* UltraFeedback aspect rating (``feedback.build_aspect_messages``): one ``#### Output for Text
  i`` block per completion via ``feedback.format_aspect_reply``; the rating is
  ``Assessment.aspects()[aspect]`` (None -> ``N/A``); truthfulness and helpfulness blocks carry
  a plausible ``Type`` (hallucination / informativeness identifiers derived from the assessment).
* UltraFeedback overall critique (``feedback.build_overall_messages``, with or without the
  ``Note:`` principle suffix): the checker's rationale plus a suggestion, then ``Overall Score:
  x`` with x = ``score10()``, via ``feedback.format_overall_reply``.

A prompt whose task the world does not know raises ValueError naming the start of the prompt
(a real judge would answer anyway; the stand-in never invents a grade). A request of no known
kind raises ValueError with its first 100 characters. :class:`zephyr_lib.judges.Judge` records
both as failed rows, never as scores.

Known biases (deliberate, documented):

* It grades only what the checker checks: correctness of the one asked fact/number/choice,
  explicit constraints (sentence count, keyword, end word, function name, list-only output),
  style defects (disclaimers, lower-case sentence starts, chat-template junk, repetition,
  filler) and, since toy world v3, depth where FastChat's and UltraFeedback's prompts name it: on
  a turn about a town or an animal, a further true fact about it (checker ``informative``; a
  false one makes the answer wrong). Anything else (elegance, style beyond the defects) is
  invisible to it; two answers that pass the same checks get the same score.
* AlpacaEval ranking on equal scores prefers the SHORTER output, and on equal length the one
  shown first (``model_1``): a mild position bias, as real judges have; alpaca_eval's
  per-instruction order swap balances it. MT-Bench pairwise has no tie-break: equal scores
  give ``[[C]]``.
* It is deterministic (no sampling; temperature is ignored): the same messages always give
  the same reply.
* ``max_tokens`` is not enforced: replies are short (an AlpacaEval ranking is ~12 words, an
  aspect reply ~30 words per completion), never truncated.

Token accounting: ``Completion.prompt_tokens`` / ``completion_tokens`` are whitespace word
counts (approximate, not a tokenizer's), so the judge's cost-accounting paths are exercised.

Registered with :func:`zephyr_lib.judges.register_backend` as kind ``"toy"``::

    judge = judge_from_config("toy", world=world, cache_dir="runs/x/aif/judge_cache")

(``world=`` is passed through ``judge_from_config``'s ``**options``; ``name=`` renames the stand-in;
the shared config's ``model=`` / ``base_url=`` are accepted and ignored: the stand-in has neither.)
"""
from __future__ import annotations

from ..config import TOY_JUDGE_VERSION

import logging
from typing import Any, Callable, Sequence

from ..evals import alpaca_eval as ae
from ..evals import mt_bench as mt
from .. import feedback as fb
from ..judges import Completion, register_backend
from .checker import Assessment, assess
from .world import Task, World

log = logging.getLogger(__name__)

KIND = "toy"
DEFAULT_NAME = TOY_JUDGE_VERSION

# Truthfulness "Type" identifiers (feedback._RUBRICS): 1 = contradicts the world (factual error),
# 2 = contradicts the instruction or its input, 3 = self-contradictory / logical error.
_TRUTH_TYPE = {"fact": "1", "unknown": "1", "number": "1", "write": "1", "role": "1", "role_item": "1",
               "extract": "2", "arith": "3", "choice": "3", "code": "3"}


def _words(text: str) -> int:
    return len(text.split())


def _clean(text: str) -> str:
    """Explanations must not contain brackets: FastChat's parsers pick the first ``[[x]]`` /
    ``[x]`` and any ``[[A]]`` anywhere, so a stray bracket in prose could change the verdict."""
    return text.replace("[", "(").replace("]", ")").strip()


def _preview(text: str, n: int = 80) -> str:
    return text[:n] + ("…" if len(text) > n else "")


class ToyJudge:
    """The GPT-4 stand-in as a judge backend (see the module docstring)."""

    def __init__(self, world: World, name: str = DEFAULT_NAME):
        if not isinstance(world, World):
            raise TypeError(f"ToyJudge needs a toyworld World, got {type(world).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError("ToyJudge needs a non-empty name")
        self.world = world
        self.name = name

    def __repr__(self) -> str:
        return f"ToyJudge(name={self.name!r})"

    # -- Backend protocol ------------------------------------------------------------------

    def complete(self, messages: list[dict], *, temperature: float = 0.0,
                 max_tokens: int = mt.JUDGE_MAX_TOKENS) -> Completion:
        """Reply to one judge request, as text (see the module docstring for the formats)."""
        text = self.reply(messages)
        prompt_words = sum(_words(m["content"]) for m in messages
                           if isinstance(m, dict) and isinstance(m.get("content"), str))
        return Completion(text=text, prompt_tokens=prompt_words, completion_tokens=_words(text))

    def reply(self, messages: Sequence[dict]) -> str:
        """The reply text; raises ValueError for an unknown task or request kind."""
        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("a judge request is a list of {'role', 'content'} messages")
        for extract, answer in self._handlers():
            try:
                request = extract(messages)
            except ValueError:
                continue
            return answer(request)
        users = [m.get("content") for m in messages if m.get("role") == "user"]
        first = next((c for c in users if isinstance(c, str)), None)
        if first is None:
            first = next((m.get("content") for m in messages if isinstance(m.get("content"), str)), "")
        raise ValueError(f"toy judge: unknown kind of judge request: {first[:100]!r}")

    def _handlers(self) -> list[tuple[Callable[[Any], Any], Callable[[Any], str]]]:
        return [
            (mt.extract_single, self._mt_single),
            (mt.extract_pair, self._mt_pair),
            (ae.extract_annotator_messages, self._alpaca),
            (fb.extract_aspect_request, self._aspect),
            (fb.extract_overall_request, self._overall),
        ]

    # -- task lookup -----------------------------------------------------------------------

    def _spec(self, user_turns: Sequence[str]) -> tuple[Task, dict]:
        hit = self.world.lookup(list(user_turns))
        if hit is None:
            raise ValueError(f"toy judge: the toy world does not know the question {_preview(user_turns[0])!r}"
                             + (f" (turn {len(user_turns)})" if len(user_turns) > 1 else "")
                             + "; the stand-in judge will not invent a grade")
        task, turn = hit
        return task, task.specs[turn]

    def _instruction_spec(self, instruction: str) -> dict:
        """Spec of a single-turn instruction; UltraFeedback's overall prompt may carry a
        ``\\nNote: <principle>`` suffix after the instruction, which is tried off as well."""
        if self.world.lookup([instruction]) is None:
            cut = instruction.rfind("\nNote: ")
            while cut >= 0:
                if self.world.lookup([instruction[:cut]]) is not None:
                    instruction = instruction[:cut]
                    break
                cut = instruction.rfind("\nNote: ", 0, cut)
        return self._spec([instruction])[1]

    def _assess(self, spec: dict, text: str) -> Assessment:
        return assess(self.world, spec, text)

    # -- MT-Bench --------------------------------------------------------------------------

    @staticmethod
    def _mt_intro(req: dict) -> str:
        parts = []
        if req["turn"] == 2:
            parts.append("I focus on the answer to the second question, in the context of the first.")
        if req["reference_based"]:
            parts.append("I compared the answer with the reference answer and checked it against the known facts.")
        return " ".join(parts)

    def _mt_single(self, req: dict) -> str:
        _, spec = self._spec(req["questions"])
        a = self._assess(spec, req["answers"][-1])
        score = a.score10()
        explanation = " ".join(p for p in (self._mt_intro(req), a.rationale()) if p)
        return f"{_clean(explanation)}\n\nRating: [[{score}]]"

    def _mt_pair(self, req: dict) -> str:
        _, spec = self._spec(req["questions"])
        a = self._assess(spec, req["answers_a"][-1])
        b = self._assess(spec, req["answers_b"][-1])
        sa, sb = a.score10(), b.score10()
        if sa > sb:
            verdict, summary = "A", "Assistant A's answer is better."
        elif sb > sa:
            verdict, summary = "B", "Assistant B's answer is better."
        else:
            verdict, summary = "C", "Both answers are of the same quality."
        explanation = " ".join(p for p in (
            self._mt_intro(req),
            f"Assistant A: {a.rationale().rstrip('.')}; score {sa} out of 10.",
            f"Assistant B: {b.rationale().rstrip('.')}; score {sb} out of 10.",
            summary) if p)
        return f"{_clean(explanation)}\n\n[[{verdict}]]"

    # -- AlpacaEval ------------------------------------------------------------------------

    def _alpaca(self, req: dict) -> str:
        spec = self._spec([req["instruction"]])[1]
        out1, out2 = req["output_1"], req["output_2"]
        s1, s2 = self._assess(spec, out1).score10(), self._assess(spec, out2).score10()
        if s1 != s2:
            first_wins = s1 > s2
        else:  # documented bias: shorter first, then the one shown first
            first_wins = len(out1) <= len(out2)
        best, worst = ("model_1", "model_2") if first_wins else ("model_2", "model_1")
        return f"[{{'model': '{best}', 'rank': 1}}, {{'model': '{worst}', 'rank': 2}}]"

    # -- UltraFeedback ---------------------------------------------------------------------

    @staticmethod
    def _types(aspect: str, spec: dict, a: Assessment) -> tuple[list[str], str]:
        if aspect == "truthfulness":
            if a.empty:
                return [], "There is no content to check."
            if a.correct is False or a.hallucinated:
                t = _TRUTH_TYPE.get(spec["type"], "1")
                what = {"1": "It states something that contradicts the known facts.",
                        "2": "It does not match the input given in the instruction.",
                        "3": "Its result does not follow from the question."}[t]
                return [t], what
            return [], "No hallucination found."
        # helpfulness: 1 clarity and relevance, 2 useful information, 3 not lengthy, no repetition
        types, notes = [], []
        if not a.empty and not a.junk and a.correct is not False:
            types.append("1")
            notes.append("relevant and clear")
        if a.correct is True and not a.violations:
            types.append("2")
            notes.append("gives the information asked for")
        if not a.empty and not a.verbose and not a.repetitive:
            types.append("3")
            notes.append("concise")
        if not notes:
            return types, "The answer is not informative."
        listed = notes[0] if len(notes) == 1 else ", ".join(notes[:-1]) + " and " + notes[-1]
        return types, f"The answer is {listed}."

    def _aspect(self, request: tuple) -> str:
        aspect, instruction, completions = request
        spec = self._instruction_spec(instruction)
        items = []
        for text in completions:
            a = self._assess(spec, text)
            item: dict[str, Any] = {"rating": a.aspects()[aspect], "rationale": a.rationale()}
            if aspect in fb.TYPED_ASPECTS:
                item["type"], item["type_rationale"] = self._types(aspect, spec, a)
            items.append(item)
        return fb.format_aspect_reply(items, aspect)

    def _overall(self, request: tuple) -> str:
        instruction, completion = request
        spec = self._instruction_spec(instruction)
        a = self._assess(spec, completion)
        tips = []
        if a.correct is False:
            tips.append("Check the facts of the question before answering.")
        if a.violations:
            tips.append("Follow every explicit requirement of the instruction.")
        if a.boilerplate:
            tips.append("Answer directly without a disclaimer.")
        if a.lowercase:
            tips.append("Start every sentence with a capital letter.")
        if a.junk:
            tips.append("Do not output chat-template markup.")
        if a.repetitive or a.verbose:
            tips.append("Be concise and do not repeat yourself.")
        critique = " ".join([a.rationale(), *tips])
        return fb.format_overall_reply(critique, a.score10())


def toy_judge_backend(world: World | None = None, *, name: str | None = None, model: str | None = None,
                      base_url: str | None = None, **options: Any) -> ToyJudge:
    """Factory registered as judge kind ``"toy"``: ``judge_from_config("toy", world=..., cache_dir=...)``.

    ``world`` is required (the judge looks prompts up in it). ``model`` / ``base_url`` come from
    configs shared with real judges and are ignored: the stand-in has no model and no endpoint.
    """
    if options:
        raise TypeError(f"unknown option(s) for the toy judge: {sorted(options)}")
    if world is None:
        raise TypeError("the toy judge needs the toy world: judge_from_config('toy', world=World(...), ...)")
    if model is not None or base_url is not None:
        log.debug("toy judge: ignoring model=%r base_url=%r (the stand-in has neither)", model, base_url)
    return ToyJudge(world, name=name or DEFAULT_NAME)


register_backend(KIND, toy_judge_backend)
