"""UltraFeedback's original rating and critique prompts (OpenBMB/UltraFeedback @ bf80fd4, MIT),
read at run time as source text from the reference copy, filled as the original scripts fill
them; the paraphrased prompts of the toy judge stay byte for byte the same."""
from __future__ import annotations

import hashlib
import json
import random

import pytest

from zephyr_lib import feedback as fb
from zephyr_lib.io import DataError, read_jsonl

from conftest import REPO

ROW = read_jsonl(REPO / "tests" / "fixtures" / "feedback" / "ultrafeedback_raw.jsonl")[0]


@pytest.fixture(scope="module")
def originals(reference_data):
    uf = reference_data / "ultrafeedback"
    return fb.load_original_templates(uf / "preference_templates.py", critique_source=uf / "annotate_critique.py")


def test_original_templates_and_call_settings(originals):
    assert set(originals) == {"system_prompt", "instruction_following_template", "honesty_template",
                              "truthfulness_template_with_answer", "truthfulness_template_without_answer",
                              "helpfulness_template_with_answer", "helpfulness_template_without_answer",
                              "critique_system_prompt", "feedback_prompt"}
    assert originals["system_prompt"].startswith("Your role is to evaluate text quality based on given criteria.\n")
    assert originals["critique_system_prompt"].startswith("A chat between a curious user and an artificial intelligence expert.")
    assert fb.ORIGINAL_CALL_SETTINGS == {"rating": {"temperature": 0.0, "top_p": 0.6, "max_tokens": 500},
                                         "critique": {"temperature": 0.0, "top_p": 0.6, "max_tokens": 1024}}
    assert all(u.startswith("https://raw.githubusercontent.com/OpenBMB/UltraFeedback/bf80fd4/src/")
               for u in fb.ORIGINAL_SOURCES.values())


def test_original_rating_messages_for_a_raw_row(originals):
    responses = [c["response"] for c in ROW["completions"]]
    wk = "a subset of correct answers: ['Paris']"
    for aspect in fb.ASPECTS:
        system, user = fb.build_original_aspect_messages(originals, aspect, ROW["instruction"], responses, wk)
        assert system == {"role": "system", "content": originals["system_prompt"]}
        text = user["content"]
        assert user["role"] == "user" and text.endswith("\n### Output\n")
        assert f"## Annotation\n\n### Input\nInstruction: {ROW['instruction']}\n\nTexts:\n<text 1> {responses[0]}\n" in text
        assert all(f"<text {i}> {r}" in text for i, r in enumerate(responses, 1))
        assert ("World Knowledge:\n" + wk in text) is (aspect in fb.TYPED_ASPECTS)
    first = fb.build_original_aspect_messages(originals, "instruction_following", "Q?", ["a", "b", "c", "d"])
    assert first[1]["content"].startswith("# Instruction Following Assessment\n\nEvaluate alignment between output and intent.")
    # braces in texts are kept as they are (str.format does not re-read the values)
    braces = fb.build_original_aspect_messages(originals, "honesty", "Fill {x}", ["{a}", "b}", "{", "d"])[1]["content"]
    assert "Instruction: Fill {x}\n\nTexts:\n<text 1> {a}\n<text 2> b}\n<text 3> {\n<text 4> d" in braces
    without = fb.build_original_aspect_messages(originals, "truthfulness", "Q?", ["a", "b", "c", "d"])[1]["content"]
    assert "World Knowledge" not in without.split("## Annotation")[1]
    with pytest.raises(ValueError, match="exactly 4 completions, got 3"):
        fb.build_original_aspect_messages(originals, "honesty", "Q?", ["a", "b", "c"])


def test_original_critique_messages(originals):
    c = ROW["completions"][0]
    system, user = fb.build_original_critique_messages(originals, ROW["instruction"], c["response"],
                                                       c["custom_system_prompt"], c["principle"])
    assert system["content"] == originals["critique_system_prompt"]
    text = user["content"]
    assert f"### Instruction\n{ROW['instruction']}\nNote: {c['custom_system_prompt']}\n" in text
    assert f"### Answer\n{c['response']}\n" in text
    assert user["content"].rstrip().endswith("### Feedback")
    vc = fb.build_original_critique_messages(originals, "Q?", "A.", "Be calibrated. For instance, say 80%.",
                                             "verbalized_calibration")[1]["content"]
    assert "Q?\nNote: Be calibrated.\n" in vc and "For instance" not in vc


def test_a_reply_in_the_original_format_parses(originals):
    reply = "\n\n".join(f"#### Output for Text {i}\nType: [\"1\"]\nRationale: Fine.\nRating: {r}\nRationale: Clear."
                        for i, r in zip(range(1, 5), (5, 3, "N/A", 1)))
    parsed = fb.parse_aspect_reply(reply, 4)
    assert [p["rating"] for p in parsed] == [5, 3, None, 1]  # N/A: no rating, as the parser records it


def test_sources_are_parsed_never_executed(tmp_path, reference_data):
    src = (reference_data / "ultrafeedback" / "preference_templates.py").read_text()
    evil = tmp_path / "preference_templates.py"
    evil.write_text("import os\nraise SystemExit('executed')\n" + src)
    critique = reference_data / "ultrafeedback" / "annotate_critique.py"  # imports openai at the top: never run
    t = fb.load_original_templates(evil, critique_source=critique)
    assert t["honesty_template"].startswith("# Honesty and Uncertainty Expression Assessment")
    broken = tmp_path / "partial.py"
    broken.write_text(src.replace("honesty_template =", "honesty_template_v2 ="))
    with pytest.raises(DataError, match=r"partial.py: no string 'honesty_template'"):
        fb.load_original_templates(broken, critique_source=critique)
    (tmp_path / "bad.py").write_text("x = (\n")
    with pytest.raises(DataError, match=r"bad.py: not Python source"):
        fb.load_original_templates(tmp_path / "bad.py", critique_source=critique)
    with pytest.raises(ValueError, match="needs a cache_dir"):
        fb.load_original_templates()


def test_completion_principles_from_main_py(reference_data):
    principles = fb.load_original_principles(reference_data / "ultrafeedback" / "main.py")
    assert {k: len(v) for k, v in principles.items()} == {"helpfulness": 11, "harmlessness": 11, "honesty": 11,
                                                          "verbalized_calibration": 1, "truthfulness": 11}
    rng = random.Random(0)
    assert {fb.draw_principle("evol_instruct", principles, rng)[0] for _ in range(50)} == {"helpfulness"}
    draws = [fb.draw_principle("false_qa", principles, rng) for _ in range(4000)]
    kinds = [p for p, _ in draws]
    assert set(kinds) == {"honesty", "truthfulness", "verbalized_calibration"}
    honest = kinds.count("honesty") + kinds.count("verbalized_calibration")
    assert abs(kinds.count("verbalized_calibration") / honest - 0.1) < 0.03  # main.py: 10% of honesty draws
    assert all(prompt in principles[p] for p, prompt in draws)


def test_toy_paraphrase_path_is_byte_identical():
    """The toy judge's cache is keyed by these bytes: the default path must not change them."""
    args = ("truthfulness", "Name a {colour}.", ["Red.", "Blue {x}.", "Green.", "I am not sure."],
            "No additional world knowledge for reference.")
    msgs = fb.aspect_messages(*args)
    assert msgs == fb.build_aspect_messages(*args)
    assert hashlib.sha256(json.dumps(msgs, sort_keys=True).encode()).hexdigest() == \
        "f024ebd0d69d39f789c0ffe0c1efc256faadbe6977b82e4b47913941f30714f6"
