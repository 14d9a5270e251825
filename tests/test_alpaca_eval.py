"""AlpacaEval 1 protocol (zephyr_lib.evals.alpaca_eval) against alpaca_eval's rules and real files."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from zephyr_lib.evals import alpaca_eval as ae
from zephyr_lib.io import DataError

REF = Path(__file__).resolve().parents[2] / "shared" / "reference-data" / "alpaca_eval"
ANNOTATIONS = REF / "zephyr-7b-beta_alpaca_eval_gpt4_annotations.json"
REFERENCE_OUTPUTS = REF / "text_davinci_003_outputs.json"
ZEPHYR_OUTPUTS = REF / "zephyr-7b-beta_outputs.json"


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"reference data absent: {path} (AlpacaEval files)")
    return path


@pytest.fixture(scope="module")
def eval_set():
    return ae.load_instructions(_need(REFERENCE_OUTPUTS))


@pytest.fixture(scope="module")
def zephyr():
    return json.loads(_need(ZEPHYR_OUTPUTS).read_text())


# ---------------------------------------------------------------- win rate

def test_paper_win_rate_from_real_annotations():
    rows = ae.load_annotations(_need(ANNOTATIONS))
    res = ae.win_rate([r["preference"] for r in rows])
    assert round(res["win_rate"], 2) == 90.60
    assert round(res["standard_error"], 2) == 1.03
    assert (res["n"], res["n_dropped"], res["n_draws"], res["n_wins"], res["n_wins_base"]) == (803, 2, 1, 727, 75)
    # preferences given as strings ('2.0', 'None', '0.0') give the same numbers
    as_text = [str(r["preference"]) for r in rows]
    assert {"2.0", "1.0", "0.0", "None"} == set(as_text)
    assert ae.win_rate(as_text) == res
    assert {r["annotator"] for r in rows} == {ae.ANNOTATOR}
    assert {r["generator_1"] for r in rows} == {ae.REFERENCE_GENERATOR}


def test_win_rate_hand_numbers():
    res = ae.win_rate([2, 1, 0, None, 1.5, 2, float("nan")])
    # p - 1 = [1, 0, .5, .5, 1]: mean .6, sample std sqrt(.7/4)
    assert res["win_rate"] == pytest.approx(60.0)
    assert res["standard_error"] == pytest.approx((0.7 / 4) ** 0.5 / 5 ** 0.5 * 100)
    assert (res["n"], res["n_dropped"], res["n_draws"], res["n_wins"], res["n_wins_base"]) == (5, 2, 2, 2, 1)
    assert ae.win_rate([2])["standard_error"] is None
    with pytest.raises(ValueError, match="preference 1: preference 3.0 outside"):
        ae.win_rate([2, 3])
    with pytest.raises(ValueError, match="no parsable"):
        ae.win_rate([None, "None"])


def test_annotations_write_load(tmp_path):
    rows = [ae.annotation_record("i1", "ref", "mod", 2, generator_2="m", dataset="koala", raw_completion="[...]"),
            ae.annotation_record("i2", "ref", "mod", None, generator_2="m", dataset="koala")]
    assert rows[0]["preference"] == 2.0 and rows[0]["generator_1"] == "text_davinci_003"
    path = ae.write_annotations(tmp_path / "annotations.json", rows)
    assert ae.load_annotations(path) == rows
    bad = json.loads(path.read_text())
    bad[1]["preference"] = "two"
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"annotations.json: row 1: field 'preference'"):
        ae.load_annotations(path)


# ---------------------------------------------------------------- model outputs

def test_real_eval_set(eval_set):
    assert len(eval_set) == 805
    assert {r["generator"] for r in eval_set} == {"text_davinci_003"}
    counts = {d: sum(r["dataset"] == d for r in eval_set) for d in {r["dataset"] for r in eval_set}}
    assert counts == {"selfinstruct": 252, "oasst": 188, "koala": 156, "helpful_base": 129, "vicuna": 80}


def test_model_outputs_reproduce_the_real_file(tmp_path, eval_set, zephyr):
    rows = ae.model_outputs(eval_set, [r["output"] for r in zephyr], "zephyr-7b-beta")
    assert rows == zephyr  # same fields, values and order as results/zephyr-7b-beta/model_outputs.json
    path = ae.write_model_outputs(tmp_path / "model_outputs.json", rows, instructions=eval_set)
    assert ae.load_model_outputs(path, instructions=eval_set) == zephyr
    assert ae.validate_model_outputs(zephyr, eval_set) == zephyr
    with pytest.raises(DataError, match=r"row 3: field 'output' should be str"):
        ae.validate_model_outputs(zephyr[:3] + [dict(zephyr[3], output=None)])
    with pytest.raises(DataError, match="instructions differ from the eval set"):
        ae.validate_model_outputs(zephyr[:-1], eval_set)


@pytest.mark.parametrize("rows, message", [
    ({"instruction": "x"}, "expected a JSON list"),
    ([{"instruction": "x", "output": "o", "generator": "g"}], "row 0: missing field 'dataset'"),
    ([{"instruction": " ", "output": "o", "generator": "g", "dataset": "d"}], "row 0: field 'instruction' is empty"),
    ([{"instruction": "x", "output": "o", "generator": "g", "dataset": "d"}] * 2, "row 1: duplicate instruction"),
    ([{"instruction": "x", "output": "o", "generator": "g", "dataset": "d"},
      {"instruction": "y", "output": "o", "generator": "h", "dataset": "d"}], "several generators"),
])
def test_validate_model_outputs_errors(rows, message):
    with pytest.raises(DataError, match=message):
        ae.validate_model_outputs(rows)


def test_load_instructions_names_file(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps([{"instruction": "a", "output": 1, "generator": "g", "dataset": "d"}]))
    with pytest.raises(DataError, match=rf"{path}: row 0: field 'output' should be str"):
        ae.load_instructions(path)


# ---------------------------------------------------------------- swap

def test_swap_rule_is_alpaca_evals_seeded_choice(eval_set):
    flags = [ae.is_switched(r["instruction"]) for r in eval_set]
    assert flags == [ae.is_switched(r["instruction"]) for r in eval_set]  # stable across calls
    assert 0.40 <= sum(flags) / len(flags) <= 0.60
    assert sum(flags) == 406  # exact count under the rule (pinned)
    # the rule: random.Random("is_switched_outputs" + instruction + "0").choices([False, True], k=1)[0]
    for r in eval_set[:50]:
        expected = random.Random("is_switched_outputs" + r["instruction"] + "0").choices([False, True], k=1)[0]
        assert ae.is_switched(r["instruction"]) == expected
    assert [ae.is_switched(r["instruction"], seed=1) for r in eval_set] != flags


def test_swap_is_deterministic_without_reference_data():
    texts = [f"instruction number {i}" for i in range(400)]
    flags = [ae.is_switched(t) for t in texts]
    assert 0.40 <= sum(flags) / len(flags) <= 0.60
    assert flags == [ae.is_switched(t) for t in texts]


# ---------------------------------------------------------------- prompt and parser

def test_annotator_messages_and_round_trip():
    msgs = ae.build_annotator_messages("Say {hi}.", "Out one\nwith lines", 'Out "two"')
    assert msgs[0] == {"role": "system",
                       "content": "You are a helpful assistant, that ranks models by the quality of their answers."}
    user = msgs[1]["content"]
    assert msgs[1]["role"] == "user" and len(msgs) == 2
    assert user.startswith("I want you to create a leaderboard of different of large-language models.")
    assert '{\n    "instruction": """Say {hi}.""",\n}' in user
    assert '"model": "model_1",\n        "answer": """Out one\nwith lines"""' in user
    assert user.endswith("Please provide the ranking that the majority of humans would give.")
    assert ae.extract_annotator_messages(msgs) == {"kind": "alpaca_eval", "instruction": "Say {hi}.",
                                                   "output_1": "Out one\nwith lines", "output_2": 'Out "two"'}
    with pytest.raises(ValueError):
        ae.extract_annotator_messages([{"role": "user", "content": "hello"}])


def test_placeholders_are_replaced_in_order_like_make_prompts():
    # str.replace of the first occurrence, in order: a literal "{output_2}" inside output_1 is
    # what gets replaced by output_2 (alpaca_eval's utils.make_prompts behaves the same way).
    user = ae.build_annotator_messages("i", "see {output_2}", "B")[1]["content"]
    assert '"""see B"""' in user and '"""{output_2}"""' in user


def test_round_trip_real_pairs(eval_set, zephyr):
    for ref, mod in zip(eval_set, zephyr):
        req = ae.annotator_request(ref["instruction"], ref["output"], mod["output"])
        got = ae.extract_annotator_messages(req["messages"])
        shown = (mod["output"], ref["output"]) if req["is_switched"] else (ref["output"], mod["output"])
        assert (got["instruction"], got["output_1"], got["output_2"]) == (ref["instruction"], *shown)


@pytest.mark.parametrize("text, rank", [
    ("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]", 1),
    ("[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]", 2),
    ('[\n    {"model": "model_1", "rank": 2},\n    {"model": "model_2", "rank": 1}\n]', 2),
    ("[{'model': 'model_1', 'rank': 3}, {'model': 'model_2', 'rank': 1}]", None),
    ("Model 2 is better: [{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]", None),
    ("```python\n[{'model': 'model_1', 'rank': 1}]\n```", None),
    ("[{'model': 'model_2', 'rank': 1}]", None),
    ("", None),
])
def test_parse_ranking(text, rank):
    assert ae.parse_ranking(text) == rank


def test_annotate_preference_undoes_the_swap():
    plain = next(f"q{i}" for i in range(100) if not ae.is_switched(f"q{i}"))
    swapped = next(f"q{i}" for i in range(100) if ae.is_switched(f"q{i}"))
    first_wins = "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]"
    assert ae.annotate_preference(plain, "ref", "model", first_wins) == 1.0  # reference shown first, wins
    assert ae.annotate_preference(swapped, "ref", "model", first_wins) == 2.0  # model shown first, wins
    assert ae.annotate_preference(plain, "same", "same", None) == 0.0  # identical: no judge call
    assert ae.annotate_preference(plain, "ref", "model", "garbage") is None
    assert ae.annotator_request(plain, "x", "x")["needs_judge"] is False


def test_offline_stand_in_judge_end_to_end(eval_set, zephyr):
    """A text-only judge preferring the longer answer: after the swap is undone, the preference
    must be 2 exactly when the model's output is longer than the reference."""
    def judge(messages):
        info = ae.extract_annotator_messages(messages)
        first = len(info["output_1"]) >= len(info["output_2"])
        return str([{"model": "model_1", "rank": 1 if first else 2},
                    {"model": "model_2", "rank": 2 if first else 1}])

    prefs, expected = [], []
    for ref, mod in list(zip(eval_set, zephyr))[:200]:
        req = ae.annotator_request(ref["instruction"], ref["output"], mod["output"])
        reply = judge(req["messages"]) if req["needs_judge"] else None
        prefs.append(ae.annotate_preference(ref["instruction"], ref["output"], mod["output"], reply))
        if ref["output"] == mod["output"]:
            expected.append(0.0)
        elif len(mod["output"]) == len(ref["output"]):
            expected.append(2.0 if req["is_switched"] else 1.0)
        else:
            expected.append(2.0 if len(mod["output"]) > len(ref["output"]) else 1.0)
    assert prefs == expected
    assert ae.win_rate(prefs)["n"] == 200


# ---------------------------------------------------------------- the baseline, the run's judge step

BASELINE_AS_JUDGED = REF / "text_davinci_003_baseline_as_judged.json"


def test_baseline_check_detects_the_later_davinci_outputs():
    rows, info = ae.load_baseline(_need(BASELINE_AS_JUDGED))
    assert info["kind"] == "as_judged" and info["n"] == 805 and round(info["mean_chars"]) == 482
    with pytest.raises(ae.BaselineError, match=r"results/text_davinci_003/model_outputs.json .*785 of 805 outputs differ"):
        ae.load_baseline(_need(REFERENCE_OUTPUTS))
    later, info = ae.load_baseline(REFERENCE_OUTPUTS, strict=False)
    assert info["kind"] == "later_davinci" and round(info["mean_chars"]) == 308
    assert ae.check_baseline(later, as_judged=rows, strict=False)["n_differ"] == 785
    assert ae.check_baseline(rows, as_judged=rows)["n_differ"] == 0
    one_changed = [dict(r) for r in rows]
    one_changed[0]["output"] += " "
    assert ae.check_baseline(one_changed)["kind"] == "other"  # a toy or custom set passes, named as such


def _replay_backend(annotations):
    """A judge that answers alpaca_eval_gpt4's prompt as GPT-4 did in the real annotations (its
    ranking text for the order shown), and with prose where GPT-4's reply was unparsable."""
    from zephyr_lib.judges import Completion

    by_instruction = {a["instruction"]: a for a in annotations}

    class Replay:
        name = "replay-gpt4"
        calls = 0

        def complete(self, messages, *, temperature, max_tokens):
            Replay.calls += 1
            assert (temperature, max_tokens) == (0, 100)
            info = ae.extract_annotator_messages(messages)
            a = by_instruction[info["instruction"]]
            if a["preference"] is None:
                return Completion("Both answers are fine.")
            switched = ae.is_switched(info["instruction"])
            assert (info["output_1"], info["output_2"]) == ((a["output_2"], a["output_1"]) if switched
                                                            else (a["output_1"], a["output_2"]))
            model_wins = a["preference"] == 2.0
            rank_1 = 1 if switched == model_wins else 2
            return Completion(str([{"model": "model_1", "rank": rank_1}, {"model": "model_2", "rank": 3 - rank_1}]))

    return Replay()


def test_paper_win_rate_through_the_run_path(tmp_path):
    """90.60 +- 1.03 from the baseline loader, the model's outputs and the judge step a paper run
    uses (prompt, swap, parser, a judges.Judge with its cache), the judge replaying GPT-4."""
    from zephyr_lib.judges import Judge

    annotations = ae.load_annotations(_need(ANNOTATIONS))
    baseline, info = ae.load_baseline(_need(BASELINE_AS_JUDGED))
    assert info["kind"] == "as_judged"
    zephyr = {r["instruction"]: r["output"] for r in ae.load_model_outputs(_need(ZEPHYR_OUTPUTS), baseline)}
    outputs = [zephyr[b["instruction"]] for b in baseline]
    backend = _replay_backend(annotations)
    judge = Judge(backend, tmp_path / "cache", progress=False)
    rows, metrics = ae.judge_outputs(baseline, outputs, "zephyr-7b-beta", judge)
    assert round(metrics["win_rate"], 2) == 90.60 and round(metrics["standard_error"], 2) == 1.03
    assert (metrics["n"], metrics["n_dropped"], metrics["n_unparsed"], metrics["n_judge_failed"]) == (803, 2, 2, 0)
    assert backend.calls == 804  # one identical output needs no call
    assert [r["preference"] for r in rows] == [a["preference"] for a in annotations]


def test_failed_judge_calls_are_recorded_and_retried_on_the_rerun(tmp_path):
    from zephyr_lib.judges import Completion, Judge, TransportError

    instrs = [{"instruction": f"Name a colour ({i}).", "output": "Blue.", "generator": "text_davinci_003",
               "dataset": "helpful_base"} for i in range(6)]
    outputs = ["Red, a warm colour.", "Green.", "Blue.", "Yellow, like the sun.", "Purple.", "Orange."]

    class Flaky:
        name = "flaky"
        down = {"Name a colour (1).", "Name a colour (4)."}
        asked: list = []

        def complete(self, messages, *, temperature, max_tokens):
            info = ae.extract_annotator_messages(messages)
            Flaky.asked.append(info["instruction"])
            if info["instruction"] in Flaky.down:
                raise TransportError("HTTP 503 from the judge")
            longer_first = len(info["output_1"]) >= len(info["output_2"])
            return Completion(str([{"model": "model_1", "rank": 1 if longer_first else 2},
                                   {"model": "model_2", "rank": 2 if longer_first else 1}]))

    judge = Judge(Flaky(), tmp_path / "cache", progress=False)
    rows, m = ae.judge_outputs(instrs, outputs, "m", judge)  # no exception: recorded and counted
    assert [r["preference"] for r in rows] == [2.0, None, 0.0, 2.0, None, 2.0]
    assert [("judge_error" in r) for r in rows] == [False, True, False, False, True, False]
    assert "HTTP 503" in rows[1]["judge_error"]
    assert (m["n_judge_failed"], m["n"], m["n_dropped"], m["win_rate"]) == (2, 4, 2, pytest.approx(87.5))
    assert sorted(Flaky.asked) == sorted(i["instruction"] for i in instrs if i["instruction"] != "Name a colour (2).")
    Flaky.down, Flaky.asked = set(), []
    rows, m = ae.judge_outputs(instrs, outputs, "m", judge)  # the rerun asks only for the failed calls
    assert sorted(Flaky.asked) == ["Name a colour (1).", "Name a colour (4)."]
    assert m["n_judge_failed"] == 0 and m["n"] == 6 and not any("judge_error" in r for r in rows)
    assert ae.annotate_preference("x", "a", "b", None) is None  # no reply: no preference, never an exception


def test_decoding_settings():
    from types import SimpleNamespace

    assert ae.decoding_settings(SimpleNamespace(max_new_tokens=1024)) == \
        {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 1024}  # today's greedy path
    paper = SimpleNamespace(max_new_tokens=1024, alpaca_temperature=0.7, alpaca_top_p=1.0, alpaca_max_new_tokens=2048)
    assert ae.decoding_settings(paper) == ae.ZEPHYR_DECODING == {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 2048}
