"""MT-Bench protocol (zephyr_lib.evals.mt_bench) against FastChat's rules and the real files."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

from zephyr_lib.evals import mt_bench as mt
from zephyr_lib.io import DataError

REF = Path(__file__).resolve().parents[2] / "shared" / "reference-data" / "mt_bench"


def _need_ref() -> Path:
    if not (REF / "question.jsonl").is_file():
        pytest.skip(f"reference data absent: {REF} (FastChat MT-Bench files)")
    return REF


@pytest.fixture(scope="module")
def real():
    ref = _need_ref()
    return {
        "questions": mt.load_questions(ref / "question.jsonl"),
        "prompts": mt.load_judge_prompts(ref / "judge_prompts.jsonl"),
        "refs": mt.load_reference_answers(ref / "reference_answer" / "gpt-4.jsonl"),
    }


def _fake_answers(questions):
    """Made-up two-turn answers with awkward text (braces, newlines, brackets)."""
    return {q["question_id"]: mt.answer_record(q["question_id"], "toy-model",
                                               [f"Answer {{one}} to {q['question_id']}\n[[5]] line",
                                                f"Second\n\n### User:\nnot a real turn {q['question_id']}"],
                                               tstamp=0.0)
            for q in questions}


# ---------------------------------------------------------------- loading

def test_real_questions_and_references(real):
    qs = real["questions"]
    assert len(qs) == 80
    assert [q["question_id"] for q in qs] == list(range(81, 161))
    # 8 categories in blocks of 10 ids, in the paper's order
    assert [qs[i * 10]["category"] for i in range(8)] == list(mt.CATEGORIES)
    assert all(qs[i]["category"] == qs[i // 10 * 10]["category"] for i in range(80))
    ref_ids = sorted(real["refs"])
    assert ref_ids == list(range(101, 131))
    assert {q["category"] for q in qs if q["question_id"] in real["refs"]} == mt.NEED_REF_CATS
    assert set(real["prompts"]) >= set(mt.SINGLE_PROMPTS.values()) | set(mt.PAIR_PROMPTS.values())


@pytest.mark.parametrize("line, field", [
    ('{"question_id": 1, "category": "math"}', "turns"),
    ('{"question_id": "1", "category": "math", "turns": ["a", "b"]}', "question_id"),
    ('{"question_id": 1, "category": "math", "turns": ["a"]}', "turns"),
    ('{"question_id": 1, "category": "math", "turns": ["a", 2]}', "turns[1]"),
    ('{"question_id": 1, "category": "math", "turns": ["a", "b"], "reference": "x"}', "reference"),
    ('{"question_id": true, "category": "math", "turns": ["a", "b"]}', "question_id"),
])
def test_bad_question_rows_name_file_line_field(tmp_path, line, field):
    path = tmp_path / "question.jsonl"
    path.write_text('{"question_id": 0, "category": "writing", "turns": ["x", "y"]}\n\n' + line + "\n")
    with pytest.raises(DataError) as err:
        mt.load_questions(path)
    assert f"{path}:3" in str(err.value) and f"'{field}'" in str(err.value)


def test_bad_json_and_duplicates(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "category": "math", "turns": ["a", "b"]}\n{oops\n')
    with pytest.raises(DataError, match=r"q.jsonl:2"):
        mt.load_questions(path)
    path.write_text('{"question_id": 1, "category": "math", "turns": ["a", "b"]}\n' * 2)
    with pytest.raises(DataError, match="duplicate question_id 1"):
        mt.load_questions(path)
    ans = tmp_path / "a.jsonl"
    ans.write_text('{"question_id": 1, "model_id": "m", "choices": [{"index": 0}]}\n')
    with pytest.raises(DataError, match=r"a.jsonl:1: choices\[0\]: missing field 'turns'"):
        mt.load_answers(ans)


def test_generation_settings():
    assert mt.TEMPERATURE == {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1,
                              "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0}
    assert mt.generation_config("math") == {"temperature": 0.0, "do_sample": False, "max_new_tokens": 1024}
    assert mt.generation_config("stem")["do_sample"] is True
    assert mt.generation_config("unknown")["temperature"] == 0.7
    assert mt.NEED_REF_CATS == {"math", "reasoning", "coding"}


def test_answer_records_roundtrip(tmp_path):
    recs = [mt.answer_record(q, "m", [f"a{q}", f"b{q}"], tstamp=1.5) for q in (90, 81, 85)]
    assert recs[0] == {"question_id": 90, "answer_id": recs[0]["answer_id"], "model_id": "m",
                       "choices": [{"index": 0, "turns": ["a90", "b90"]}], "tstamp": 1.5}
    assert len(recs[0]["answer_id"]) == 22
    assert recs[0]["answer_id"] == mt.answer_record(90, "m", ["a90", "b90"])["answer_id"]
    path = mt.write_answers(tmp_path / "model_answer" / "m.jsonl", recs)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["question_id"] for r in lines] == [81, 85, 90]
    assert mt.load_answers(path) == {r["question_id"]: r for r in recs}
    with pytest.raises(ValueError, match="duplicate"):
        mt.write_answers(tmp_path / "x.jsonl", recs + recs[:1])
    assert not list((tmp_path / "model_answer").glob(".*tmp"))


# ---------------------------------------------------------------- judge messages

def test_layouts_match_the_real_templates(real):
    for name, layout in mt.LAYOUTS.items():
        template = real["prompts"][name]["prompt_template"]
        assert template.endswith(layout), name
        assert (template == layout) == (name not in ("single-v1", "single-math-v1")), name


def test_single_messages_as_fastchat_builds_them(real):
    q = next(q for q in real["questions"] if q["category"] == "writing")
    ans = ["First answer.", "Second answer."]
    m1 = mt.build_single_judge_messages(q, ans, real["prompts"], turn=1)
    assert [m["role"] for m in m1] == ["system", "user"]
    assert m1[0]["content"] == "You are a helpful assistant."
    assert m1[1]["content"].startswith("[Instruction]\nPlease act as an impartial judge")
    assert m1[1]["content"].endswith(f"[Question]\n{q['turns'][0]}\n\n[The Start of Assistant's Answer]\n"
                                     "First answer.\n[The End of Assistant's Answer]")
    m2 = mt.build_single_judge_messages(q, ans, real["prompts"], turn=2)
    assert m2[0]["content"] == real["prompts"]["single-v1-multi-turn"]["system_prompt"]
    assert m2[0]["content"].endswith("\"Rating: [[5]]\".\n\n")
    assert m2[1]["content"] == (
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n" + q["turns"][0]
        + "\n\n### Assistant A:\nFirst answer.\n\n### User:\n" + q["turns"][1]
        + "\n\n### Assistant A:\nSecond answer.\n\n<|The End of Assistant A's Conversation with User|>")


def test_reference_guided_messages(real):
    q = next(q for q in real["questions"] if q["category"] == "math")
    ref = real["refs"][q["question_id"]]["choices"][0]["turns"]
    m1 = mt.build_single_judge_messages(q, ["x", "y"], real["prompts"], 1, ref_answers=real["refs"])
    assert f"[The Start of Reference Answer]\n{ref[0]}\n[The End of Reference Answer]" in m1[1]["content"]
    assert ref[1] not in m1[1]["content"]
    m2 = mt.build_single_judge_messages(q, ["x", "y"], real["prompts"], 2, ref_answers=real["refs"])
    assert m2[1]["content"].startswith(f"<|The Start of Reference Answer|>\n\n### User:\n{q['turns'][0]}"
                                       f"\n\n### Reference answer:\n{ref[0]}")
    assert m2[0]["content"] == real["prompts"]["single-math-v1-multi-turn"]["system_prompt"]
    with pytest.raises(ValueError, match="needs a reference answer"):
        mt.build_single_judge_messages(q, ["x", "y"], real["prompts"], 1)
    assert mt.single_prompt_name("coding", 2) == "single-math-v1-multi-turn"
    assert mt.pair_prompt_name("roleplay", 1) == "pair-v2"


def test_single_round_trip_all_questions(real):
    answers = _fake_answers(real["questions"])
    requests = mt.single_judge_requests(real["questions"], answers, real["prompts"], real["refs"])
    assert len(requests) == 160
    for req in requests:
        q = next(q for q in real["questions"] if q["question_id"] == req["question_id"])
        got = mt.extract_single(req["messages"])
        turns = answers[q["question_id"]]["choices"][0]["turns"]
        assert got["kind"] == "single" and got["turn"] == req["turn"]
        assert got["prompt_name"] == req["prompt_name"] == mt.single_prompt_name(q["category"], req["turn"])
        assert got["questions"] == (q["turns"][:1] if req["turn"] == 1 else q["turns"])
        assert got["answers"] == (turns[:1] if req["turn"] == 1 else turns)
        if q["category"] in mt.NEED_REF_CATS:
            ref = real["refs"][q["question_id"]]["choices"][0]["turns"]
            assert got["references"] == (ref[:1] if req["turn"] == 1 else ref)
        else:
            assert got["references"] == [] and not got["reference_based"]


def test_pair_round_trip_all_questions(real):
    a = _fake_answers(real["questions"])
    for q in real["questions"]:
        b = ["B1 " + q["category"], "B2 {x}"]
        for turn in (1, 2):
            msgs = mt.build_pair_judge_messages(q, a[q["question_id"]], b, real["prompts"], turn, real["refs"])
            assert msgs[0]["content"] == real["prompts"][mt.pair_prompt_name(q["category"], turn)]["system_prompt"]
            got = mt.extract_pair(msgs)
            a_turns = a[q["question_id"]]["choices"][0]["turns"]
            assert got["turn"] == turn
            assert got["questions"] == (q["turns"][:1] if turn == 1 else q["turns"])
            assert got["answers_a"] == a_turns[:turn] and got["answers_b"] == b[:turn]
            assert got["reference_based"] == (q["category"] in mt.NEED_REF_CATS)
            with pytest.raises(ValueError):
                mt.extract_single(msgs)


def test_round_trip_with_made_up_prompts():
    """Runs without the reference data: prompts with FastChat's layout but invented prose."""
    prompts = {name: {"name": name, "type": "single" if name.startswith("single") else "pairwise",
                      "system_prompt": f"sys {name}", "output_format": "[[rating]]",
                      "prompt_template": ("Grade it.\n\n" if name in ("single-v1", "single-math-v1") else "")
                      + layout}
               for name, layout in mt.LAYOUTS.items()}
    q = {"question_id": 7, "category": "reasoning", "turns": ["Why?", "And then?"]}
    msgs = mt.build_single_judge_messages(q, ["Because.", "Done."], prompts, 2, ref_answers=["R1", "R2"])
    assert msgs[0] == {"role": "system", "content": "sys single-math-v1-multi-turn"}
    got = mt.extract_single(msgs)
    assert (got["questions"], got["answers"], got["references"]) == (q["turns"], ["Because.", "Done."], ["R1", "R2"])
    with pytest.raises(ValueError, match="layout"):
        mt.extract_single([{"role": "user", "content": "no structure"}])


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, score", [
    ("The answer is good. Rating: [[7.5]]", 7.5),
    ("Rating: [7]", 7.0),
    ("I'd give it 7/10.", -1.0),
    ("Rating: [[3]]. On reflection [[9]]", 3.0),
    ("first [8], then the real one [[6]]", 6.0),  # [[x]] is searched in the whole text first
    ("no rating at all", -1.0),
    ("Rating: [[10]]", 10.0),
    ("Rating: [[7.]]", 7.0),
    ("Rating: [[ 7 ]]", -1.0),
    ("Rating: [[-3]]", -1.0),
])
def test_parse_single_rating(text, score):
    assert mt.parse_single_rating(text) == score


@pytest.mark.parametrize("text, score", [
    ("Rating: [[07]]", 7.0),           # FastChat's literal_eval raises on the leading zero; the number is 7
    ("Rating: [[08.5]]", 8.5),
    ("Rating: [[٧]]", -1.0),           # \d matches Arabic-Indic digits, literal_eval cannot read them
    ("Rating: [[७]] then [8]", -1.0),  # the first [[x]] match decides, as in FastChat
    ("Rating: [[" + "9" * 5000 + "]]", -1.0),   # too many digits for int(), or not finite
    ("Rating: [[1" + "0" * 400 + ".0]]", -1.0),
])
def test_a_reply_that_fails_to_parse_costs_one_score_never_an_exception(text, score):
    assert mt.parse_single_rating(text) == score


def test_unparsable_replies_are_counted_failures_of_one_model():
    reqs = [{"question_id": q, "prompt_name": mt.single_prompt_name("writing", t), "turn": t,
             "messages": [{"role": "user", "content": f"q{q} t{t}"}]} for q in (81, 82) for t in (1, 2)]
    replies = ["Rating: [[07]]", "Rating: [[٧]]", "", "Rating: [[9]]"]
    judgments = mt.judgments_from_replies(reqs, replies, model="m", judge_model="gpt-4")
    assert [j["score"] for j in judgments] == [7.0, -1.0, -1.0, 9.0]
    s = mt.scores(judgments, QUESTIONS[:2], n_boot=50)
    assert s["n_failed"] == 2 and s["overall"] == pytest.approx(8.0)


@pytest.mark.parametrize("text, verdict", [
    ("[[A]]", "A"), ("verdict: [[B]]", "B"), ("[[C]]", "tie"),
    ("Assistant B is better: [[B]]. (not [[A]])", "A"),  # substring test order A, B, C
    ("[A]", "error"), ("", "error"),
])
def test_parse_pair_verdict(text, verdict):
    assert mt.parse_pair_verdict(text) == verdict


def test_pair_outcome_both_orders():
    assert mt.pair_outcome("A", "B") == "model_1"  # model_1 wins in both orders
    assert mt.pair_outcome("B", "A") == "model_2"
    assert mt.pair_outcome("A", "A") == "tie"  # position bias: disagreement is a tie
    assert mt.pair_outcome("tie", "B") == "tie"
    assert mt.pair_outcome("A", "tie") == "tie"
    assert mt.pair_outcome("error", "A") == "error"
    summary = mt.pairwise_summary(["model_1", "model_1", "tie", "model_2", "error"])
    assert summary["win_rate_adjusted"] == pytest.approx(2.5 / 4)
    assert (summary["n"], summary["n_error"], summary["loss_rate"]) == (4, 1, 0.25)


# ---------------------------------------------------------------- aggregation

def _judgments():
    rows = [(81, 1, 8), (81, 2, 6), (111, 1, -1), (111, 2, 4), (82, 1, 9), (82, 2, 9)]
    return [mt.judgment_record(q, "m", "gpt-4", mt.single_prompt_name("x", t), "u", "j", s, t, tstamp=0)
            for q, t, s in rows]


QUESTIONS = [{"question_id": 81, "category": "writing"}, {"question_id": 82, "category": "writing"},
             {"question_id": 111, "category": "math"}]


def test_scores_as_show_result():
    s = mt.scores(_judgments(), QUESTIONS)
    assert s["overall"] == pytest.approx((8 + 6 + 4 + 9 + 9) / 5)
    assert s["turn1"] == pytest.approx(8.5)
    assert s["turn2"] == pytest.approx(19 / 3)
    assert s["categories"] == {"writing": pytest.approx(8.0), "math": pytest.approx(4.0)}
    assert (s["n"], s["n_failed"], s["n_turn1"], s["n_turn2"], s["n_questions"]) == (5, 1, 2, 3, 3)
    low, high = s["ci95"]
    assert 4.0 <= low <= s["overall"] <= high <= 9.0
    assert mt.scores(_judgments(), QUESTIONS)["ci95"] == s["ci95"]  # seeded


def test_scores_errors():
    with pytest.raises(DataError, match="duplicate judgment"):
        mt.scores(_judgments() + _judgments()[:1], QUESTIONS)
    other = [dict(r, model="n") for r in _judgments()]
    with pytest.raises(ValueError, match="pass model="):
        mt.scores(_judgments() + other, QUESTIONS)
    assert mt.scores(_judgments() + other, QUESTIONS, model="n")["n"] == 5
    with pytest.raises(DataError, match="unknown question_id"):
        mt.scores(_judgments(), QUESTIONS[:2])


def test_bootstrap_ci():
    assert mt.bootstrap_ci({1: [5.0, 5.0], 2: 5.0}) == (5.0, 5.0)
    low, high = mt.bootstrap_ci({i: [float(i % 10)] for i in range(200)}, n_boot=2000, seed=1)
    assert 4.0 < low < 4.5 < high < 5.0  # mean 4.5, se ~0.2


def test_judgments_write_load_and_from_replies(tmp_path):
    reqs = [{"question_id": 81, "turn": 1, "prompt_name": "single-v1",
             "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "U"}]},
            {"question_id": 81, "turn": 2, "prompt_name": "single-v1-multi-turn",
             "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "U2"}]}]
    recs = mt.judgments_from_replies(reqs, ["Rating: [[6]]", "hmm"], "m", tstamp=3.0)
    assert recs[0] == {"question_id": 81, "model": "m", "judge": ["gpt-4", "single-v1"], "user_prompt": "U",
                       "judgment": "Rating: [[6]]", "score": 6.0, "turn": 1, "tstamp": 3.0}
    assert recs[1]["score"] == -1
    path = mt.write_judgments(tmp_path / "gpt-4_single.jsonl", recs)
    assert mt.load_judgments(path) == recs
    path.write_text(path.read_text().replace('"turn": 2', '"turn": 3'))
    with pytest.raises(DataError, match=r"gpt-4_single.jsonl:2: field 'turn'"):
        mt.load_judgments(path)


def test_offline_stand_in_judge_end_to_end(real):
    """A text-only judge: rates each answer by its length; aggregation matches a direct count."""
    answers = {q["question_id"]: mt.answer_record(q["question_id"], "toy", ["x" * (q["question_id"] % 7),
                                                                            "y" * (q["question_id"] % 5)])
               for q in real["questions"]}
    requests = mt.single_judge_requests(real["questions"], answers, real["prompts"], real["refs"])

    def judge(messages):
        info = mt.extract_single(messages)
        n = len(info["answers"][-1])
        return "no verdict" if n == 0 else f"Explanation.\n\nRating: [[{n}]]"

    recs = mt.judgments_from_replies(requests, [judge(r["messages"]) for r in requests], "toy")
    s = mt.scores(recs, real["questions"])
    expected = [q % 7 for q in range(81, 161)] + [q % 5 for q in range(81, 161)]
    kept = [v for v in expected if v > 0]
    assert s["n"] == len(kept) and s["n_failed"] == len(expected) - len(kept)
    assert s["overall"] == pytest.approx(sum(kept) / len(kept))


def test_radar_plot(tmp_path):
    import matplotlib.pyplot as plt

    cats = {c: float(i + 1) for i, c in enumerate(mt.CATEGORIES)}
    path = tmp_path / "fig" / "radar.png"
    fig = mt.radar_plot({"zephyr": cats, "other": {c: 5.0 for c in mt.CATEGORIES}}, path, title="MT-Bench")
    try:
        assert isinstance(fig, matplotlib.figure.Figure)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [p.name for p in path.parent.iterdir()] == ["radar.png"]
        ax = fig.axes[0]
        assert ax.name == "polar"
        assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["Writing", "Roleplay", "Reasoning"]
        assert [line.get_label() for line in ax.get_lines()] == ["zephyr", "other"]
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="no score"):
        mt.radar_plot({"m": {"writing": 1.0, "math": 2.0, "stem": 3.0}}, path, categories=list(mt.CATEGORIES))
