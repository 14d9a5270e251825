"""Judge prompts for the toy profile, in FastChat's ``judge_prompts.jsonl`` schema and layouts.

The paper profile loads FastChat's own ``judge_prompts.jsonl`` (a local path or its public
source), and the tests check that the messages built from it equal FastChat's templates filled
in. The toy profile runs offline and this repository does not redistribute that file, so it
uses these records instead. They have the same names, types, categories, output formats and
user-prompt layouts (the structural markers the prompt builders and extractors rely on), and
the grading instructions are worded here. The toy judge reads the layout, not the prose.
"""
from __future__ import annotations

from .mt_bench import LAYOUTS

_CRITERIA = ("Judge how helpful, relevant, accurate and complete the response is, and whether it does exactly "
             "what was asked.")
_REF = "Compare the response with the reference answer, which is correct, and mark any mistake."
_RATE = ("Explain your judgment briefly, then give a rating from 1 to 10 in exactly this format: "
         "\"[[rating]]\", for example: \"Rating: [[5]]\".")
_PAIR = ("Say which of the two responses is better, explaining briefly and without letting their order or "
         "length sway you. End with \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, "
         "or \"[[C]]\" for a tie.")
_SECOND = "Focus on the answer to the second user question."


def toy_judge_prompts() -> dict[str, dict]:
    """name -> record, as `mt_bench.load_judge_prompts` returns for the real file."""
    recs = {}
    for name, layout in LAYOUTS.items():
        math = "math" in name
        multi = name.endswith("multi-turn")
        single = name.startswith("single")
        parts = ["You are an impartial judge of an AI assistant's answers." if single
                 else "You are an impartial judge comparing the answers of two AI assistants.",
                 _CRITERIA, _REF if math else "", _SECOND if multi else "", _RATE if single else _PAIR]
        instructions = " ".join(p for p in parts if p)
        if single and not multi:  # FastChat puts single-v1's instructions in the user prompt
            system, template = "You are a helpful assistant.", "[Instruction]\n" + instructions + "\n\n" + layout
        else:
            system, template = instructions, layout
        recs[name] = {"name": name, "type": "single" if single else "pairwise", "system_prompt": system,
                      "prompt_template": template, "description": f"toy-profile twin of FastChat's {name}",
                      "category": "math" if math and not (multi and not single) else "general",
                      "output_format": "[[rating]]" if single else "[[A]]"}
    return recs
