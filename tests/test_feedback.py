"""Tests for zephyr_lib.feedback: judge prompts and their inverse, reply parsers, the raw
UltraFeedback and ultrafeedback_binarized schemas, binarization rules, and loaders."""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from zephyr_lib.feedback import (
    ASPECTS,
    BINARIZED_SPLITS,
    DEFAULT_WORLD_KNOWLEDGE,
    aspect_annotation,
    binarize,
    build_aspect_messages,
    build_overall_messages,
    extract_aspect_request,
    extract_overall_request,
    fine_grained_score,
    format_aspect_reply,
    format_overall_reply,
    load_binarized,
    load_raw_ultrafeedback,
    mean_aspect_score,
    parse_aspect_reply,
    parse_overall_reply,
    raw_completion,
    raw_row,
    save_binarized,
    to_dataset_dict,
    validate_binarized_row,
    validate_raw_row,
    world_knowledge_for,
)
from zephyr_lib.io import DataError, write_jsonl

FIX = Path(__file__).parent / "fixtures" / "feedback"
RAW = FIX / "ultrafeedback_raw.jsonl"
BIN = FIX / "ultrafeedback_binarized"

ROW_KEYS = {"source", "instruction", "models", "completions", "correct_answers", "incorrect_answers"}
COMPLETION_KEYS = {"annotations", "critique", "custom_system_prompt", "fine-grained_score", "model",
                   "overall_score", "principle", "response"}
ANNOTATION_KEYS = {"instruction_following": {"Rating", "Rationale"}, "honesty": {"Rating", "Rationale"},
                   "truthfulness": {"Rating", "Rationale", "Rationale For Rating", "Type"},
                   "helpfulness": {"Rating", "Rationale", "Rationale For Rating", "Type"}}
BIN_KEYS = {"prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"}

TRICKY = [
    "Plain answer.",
    "Line one\n\nLine three after a blank line\n",
    "```python\ndef f(x):\n    # Text 2 is not a marker here\n    return x\n```",
    "Mentions <text 2> inline, Text 3, and\n#### Output for Text 1\nRating: 5\nthe word Text at line start:\nText 4",
    "",
]


# ---------------------------------------------------------------- prompts and their inverse


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("completions", [TRICKY[:4], TRICKY[1:3], TRICKY])
def test_aspect_request_round_trip(aspect, completions):
    instruction = "Instruction: do this.\nTexts:\nthen answer in <text 1> style"
    messages = build_aspect_messages(aspect, instruction, completions)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert extract_aspect_request(messages) == (aspect, instruction, completions)
    user = messages[1]["content"]
    n = len(completions)
    for i in range(1, n + 1):
        assert f"#### Output for Text {i}\n" in user and f"\n<text {i}> " in user
    assert "Rating: [Rating for text 1]" in user and user.endswith("\n\n### Output\n")
    assert ("Type: [" in user) == (aspect in ("truthfulness", "helpfulness"))


def test_world_knowledge_round_trip_and_system_prompt():
    comps = ["A", "B\nwith World Knowledge:\ninside", "C", "D"]
    wk = "a subset of correct answers: ['x']\na subset of incorrect_answers: ['y']"
    for aspect in ("truthfulness", "helpfulness"):
        msgs = build_aspect_messages(aspect, "Q?", comps, world_knowledge=wk)
        assert "\n\nWorld Knowledge:\n" + wk + "\n\n### Output\n" in msgs[1]["content"]
        assert extract_aspect_request(msgs, include_world_knowledge=True) == (aspect, "Q?", comps, wk)
    honesty = build_aspect_messages("honesty", "Q?", comps, world_knowledge=wk)
    assert "\n\nWorld Knowledge:\n" not in honesty[1]["content"]  # the honesty template has no such section
    assert extract_aspect_request(honesty, include_world_knowledge=True)[3] == ""
    assert "four text outputs" in honesty[0]["content"]
    assert "two text outputs" in build_aspect_messages("honesty", "Q", ["a", "b"])[0]["content"]


def test_overall_request_round_trip():
    completion = "### Answer\nIt is 4.\n---\nOverall Score: 3\n\n### Feedback\nnot really"
    msgs = build_overall_messages("What is 2+2?\nShow work.", completion)
    assert extract_overall_request(msgs) == ("What is 2+2?\nShow work.", completion)
    user = msgs[1]["content"]
    assert "### Instruction\n" in user and "Overall Score: [1-10]" in user and user.endswith("### Feedback\n")
    with_note = build_overall_messages("Q", "A", note="Be concise.")
    assert extract_overall_request(with_note) == ("Q\nNote: Be concise.", "A")
    with pytest.raises(ValueError, match="not an overall"):
        extract_overall_request(build_aspect_messages("honesty", "Q", ["a"]))
    with pytest.raises(ValueError, match="not an aspect"):
        extract_aspect_request(msgs)
    with pytest.raises(ValueError, match="unknown aspect"):
        build_aspect_messages("harmlessness", "Q", ["a"])


def test_world_knowledge_by_source():
    rows = load_raw_ultrafeedback(RAW)
    assert world_knowledge_for(rows[0]) == DEFAULT_WORLD_KNOWLEDGE
    assert world_knowledge_for(rows[1]) == "['Le chat dort sur le canapé.']"
    assert world_knowledge_for(rows[3]).startswith("a subset of correct answers: ['It passes")
    assert world_knowledge_for({"source": "false_qa"}) == "The question is based on a false promise."


# ---------------------------------------------------------------- reply parsers


def aspect_reply(ratings, typed=False):
    blocks = []
    for i, r in enumerate(ratings, 1):
        lines = [f"#### Output for Text {i}"]
        if typed:
            lines += ["Type: 1, 3" if i % 2 else "Type: None", f"Rationale: types of text {i}"]
        lines += [f"Rating: {r}", f"Rationale: text {i} rated {r}."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def test_parse_aspect_reply_well_formed_with_noise():
    text = "Sure, here are my annotations.\n\n### Output\n" + aspect_reply([5, 3, "N/A", 1]) + \
        "\n\nLet me know if you need anything else."
    parsed = parse_aspect_reply(text, 4)
    assert [p["rating"] for p in parsed] == [5, 3, None, 1]
    assert parsed[1]["rationale"] == "text 2 rated 3."
    assert parsed[3]["rationale"] == "text 4 rated 1."  # trailing chatter is not part of it


def test_parse_aspect_reply_typed_blocks():
    parsed = parse_aspect_reply(aspect_reply([4, 2], typed=True), 2)
    assert parsed[0] == {"rating": 4, "rationale": "text 1 rated 4.", "type": ["1", "3"],
                         "type_rationale": "types of text 1"}
    assert parsed[1]["type"] == [] and parsed[1]["rationale"] == "text 2 rated 2."
    ann = aspect_annotation("truthfulness", parsed[1])
    assert ann == {"Type": ["None"], "Rationale": "types of text 2", "Rating": "2",
                   "Rationale For Rating": "text 2 rated 2."}
    assert aspect_annotation("honesty", {"rating": None, "rationale": "creative"}) == {"Rating": "N/A",
                                                                                       "Rationale": "creative"}


def test_parse_aspect_reply_formatting_variants():
    text = ("##### Output for Text 1\n**Rating:** 4\n**Rationale:** bold fields\n\n"
            "### Output for Text 2\nRating: 4.0\nRationale: an integral decimal\ncontinues here\n\n"
            "#### Output for Text 3\nRating: 5/5\n\nRationale: after a blank line\n\n"
            "#### Output for Text 4\n- Rating: 3 (Partial Compliance)\n- Rationale for the rating: bulleted")
    parsed = parse_aspect_reply(text, 4)
    assert [p["rating"] for p in parsed] == [4, 4, 5, 3]
    assert parsed[3]["rationale"] == "bulleted"
    assert parsed[0]["rationale"] == "bold fields"
    assert parsed[1]["rationale"] == "an integral decimal\ncontinues here"


@pytest.mark.parametrize("bad, pattern", [
    ("0", r"Text 2: Rating 0 out of range 1-5"),
    ("6", r"Text 2: Rating 6 out of range 1-5"),
    ("11", r"Text 2: Rating 11 out of range 1-5"),
    ("4.5", r"Text 2: Rating 4.5 is not a whole number"),
    ("[Rating]", r"Text 2: Rating .* is not a number"),
    ("excellent", r"Text 2: Rating 'excellent' is not a number"),
    ("1-5", r"Text 2: Rating '1-5' is not a number"),
])
def test_parse_aspect_reply_bad_ratings(bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_aspect_reply(aspect_reply([5, bad, 3, 3]), 4)


def test_parse_aspect_reply_structural_errors():
    missing_rating = aspect_reply([5, 4, 3, 2]).replace("Rating: 4\n", "")
    with pytest.raises(ValueError, match=r"Text 2: missing 'Rating:'"):
        parse_aspect_reply(missing_rating, 4)
    with pytest.raises(ValueError, match=r"missing Text 4"):
        parse_aspect_reply(aspect_reply([5, 4, 3]), 4)
    with pytest.raises(ValueError, match=r"Text 3: missing 'Rationale:'"):
        parse_aspect_reply(aspect_reply([5, 4, 3, 2]).replace("Rationale: text 3 rated 3.", ""), 4)
    with pytest.raises(ValueError, match=r"Text 1: more than one"):
        parse_aspect_reply(aspect_reply([5, 4]) + "\n\n" + aspect_reply([5]), 2)
    with pytest.raises(ValueError, match=r"Text 3: unexpected block"):
        parse_aspect_reply(aspect_reply([5, 4, 3]), 2)
    with pytest.raises(ValueError, match=r"missing Text 1, 2"):
        parse_aspect_reply("I cannot rate these.", 2)


def test_reply_formatters_round_trip():
    items = [{"rating": 5, "rationale": "Fully aligned.\nSecond line."}, {"rating": None, "rationale": "Creative task."},
             {"rating": 1, "rationale": "Mentions Text 2 and Rating: 5 inline."}]
    assert parse_aspect_reply(format_aspect_reply(items), 3) == items
    typed = [{"rating": 4, "rationale": "ok", "type": ["1", "2"], "type_rationale": "clear"},
             {"rating": 2, "rationale": "wrong", "type": [], "type_rationale": ""}]
    assert parse_aspect_reply(format_aspect_reply(typed, "helpfulness"), 2) == typed
    assert parse_overall_reply(format_overall_reply("Cite sources.\nBe brief.", 7.5)) == ("Cite sources.\nBe brief.", 7.5)
    assert format_overall_reply("x", 8.0).endswith("Overall Score: 8")


@pytest.mark.parametrize("text, expected", [
    ("### Feedback\nGood structure, but cite sources.\nOverall Score: 7", ("Good structure, but cite sources.", 7.0)),
    ("Nice.\nOverall Score: 7.5", ("Nice.", 7.5)),
    ("Fine.\n**Overall Score:** 8/10", ("Fine.", 8.0)),
    ("Meh.\nOverall Score: 6. Keep practising.\n", ("Meh.", 6.0)),
    ("Intro text.\nOverall Score: 2\nOn reflection:\nOverall Score: 10", ("Intro text.\nOverall Score: 2\nOn reflection:", 10.0)),
])
def test_parse_overall_reply_ok(text, expected):
    assert parse_overall_reply(text) == expected


@pytest.mark.parametrize("text, pattern", [
    ("Great answer, well done.", "no 'Overall Score:' line"),
    ("Bad.\nOverall Score: 0", "out of range 1-10"),
    ("Too good.\nOverall Score: 11", "out of range 1-10"),
    ("Weird.\nOverall Score: [1-10]", "not a number"),
    ("Weird.\nOverall Score: 4/5", "not on the 1-10 scale"),
])
def test_parse_overall_reply_errors(text, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_overall_reply(text)


# ---------------------------------------------------------------- raw UltraFeedback schema


def test_raw_fixture_is_in_the_published_schema():
    rows = load_raw_ultrafeedback(RAW)
    assert len(rows) == 4
    ratings = []
    for row in rows:
        assert set(row) == ROW_KEYS and len(row["models"]) == 4 == len(row["completions"])
        for c in row["completions"]:
            assert set(c) == COMPLETION_KEYS and isinstance(c["overall_score"], float)
            assert {a: set(v) for a, v in c["annotations"].items()} == ANNOTATION_KEYS
            ratings += [v["Rating"] for v in c["annotations"].values()]
            assert c["fine-grained_score"] == pytest.approx(fine_grained_score(c["annotations"]))
    assert all(isinstance(r, str) for r in ratings) and ratings.count("N/A") == 1


def test_raw_builders_match_the_fixture_schema():
    comps = [raw_completion(f"m{k}", f"answer {k}", overall_score=5 + k,
                            ratings={"instruction_following": 4, "honesty": None, "truthfulness": 5,
                                     "helpfulness": "3"}) for k in range(4)]
    row = raw_row("Q?", comps, source="sharegpt")
    validate_raw_row(row, "built")
    fixture = load_raw_ultrafeedback(RAW)[0]
    assert set(row) == set(fixture) and set(row["completions"][0]) == set(fixture["completions"][0])
    assert row["models"] == ["m0", "m1", "m2", "m3"] and row["correct_answers"] == ["None"]
    assert comps[0]["annotations"]["honesty"]["Rating"] == "N/A"
    assert comps[0]["fine-grained_score"] == pytest.approx(4.0)
    assert mean_aspect_score(comps[0]) == pytest.approx(4.0)


@pytest.mark.parametrize("mutate, pattern", [
    (lambda r: r["completions"][1].pop("overall_score"), r"row 2: completions\[1\]: missing field 'overall_score'"),
    (lambda r: r["completions"][2]["annotations"]["honesty"].update(Rating="6"),
     r"row 2: completions\[2\]\.annotations\.honesty: field 'Rating' should be one of"),
    (lambda r: r["completions"][0]["annotations"]["truthfulness"].update(Rating=4),
     r"row 2: completions\[0\]\.annotations\.truthfulness: field 'Rating' should be str, got int"),
    (lambda r: r.update(models="gpt-4"), r"row 2: field 'models' should be list"),
    (lambda r: r["completions"][3].update(response=None), r"row 2: completions\[3\]: field 'response' should be str"),
    (lambda r: r["completions"][0]["annotations"].pop("helpfulness"),
     r"row 2: completions\[0\]\.annotations: missing field 'helpfulness'"),
    (lambda r: r["completions"][0].update(overall_score=float("nan")), r"finite number"),
])
def test_malformed_raw_rows_name_row_and_field(mutate, pattern):
    row = copy.deepcopy(load_raw_ultrafeedback(RAW)[2])
    mutate(row)
    with pytest.raises(DataError, match=pattern):
        validate_raw_row(row, "row 2")


def test_raw_loaders_local_formats(tmp_path):
    rows = load_raw_ultrafeedback(RAW)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "uf.parquet")
    assert load_raw_ultrafeedback(tmp_path / "uf.parquet") == rows
    (tmp_path / "uf.json").write_text(json.dumps(rows))
    assert load_raw_ultrafeedback(tmp_path / "uf.json") == rows

    bad = copy.deepcopy(rows)
    bad[3]["completions"][0]["annotations"]["honesty"]["Rating"] = "five"
    write_jsonl(tmp_path / "bad.jsonl", bad)
    with pytest.raises(DataError, match=r"bad\.jsonl row 3: completions\[0\]\.annotations\.honesty: field 'Rating'"):
        load_raw_ultrafeedback(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text(RAW.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: not valid JSON"):
        load_raw_ultrafeedback(tmp_path / "broken.jsonl")


# ---------------------------------------------------------------- binarization


def scored_row(i, scores, ratings=None):
    comps = []
    for k, s in enumerate(scores):
        r = ratings[k] if ratings else {a: 3 for a in ASPECTS}
        comps.append(raw_completion(f"model{k}", f"row {i} answer {k}", overall_score=s, ratings=r))
    return raw_row(f"prompt {i}", comps)


def idx_of(pair, row, field):
    return [c["response"] for c in row["completions"]].index(pair[field][1]["content"])


def test_overall_rule_on_fixture():
    rows = load_raw_ultrafeedback(RAW)
    pairs, counts = binarize(rows, rule="overall", seed=42)
    assert counts["n_in"] == 4 and counts["n_out"] == 4 and counts["dropped"] == {}
    for pair, row in zip(pairs, rows):
        validate_binarized_row(pair, "pair", split="train_prefs")
        assert set(pair) == BIN_KEYS
        assert pair["prompt"] == row["instruction"]
        assert pair["prompt_id"] == hashlib.sha256(row["instruction"].encode()).hexdigest()
        assert pair["messages"] == pair["chosen"]
        scores = [c["overall_score"] for c in row["completions"]]
        assert pair["score_chosen"] == max(scores)
        assert idx_of(pair, row, "chosen") == scores.index(max(scores))  # first max on ties
        assert idx_of(pair, row, "rejected") != idx_of(pair, row, "chosen")
    assert pairs[1]["chosen"][1]["content"] == "Le chat dort sur le canapé."  # tie 7.0/7.0: first wins
    assert counts["n_ties"] == sum(p["score_chosen"] == p["score_rejected"] for p in pairs)


def test_overall_rule_keeps_ties_and_spreads_rejected_uniformly():
    rows = [scored_row(i, [4.0, 9.0, 6.0, 2.0]) for i in range(600)]
    pairs, counts = binarize(rows, rule="overall", seed=7)
    picks = Counter(idx_of(p, r, "rejected") for p, r in zip(pairs, rows))
    assert set(picks) == {0, 2, 3}
    assert all(150 <= picks[k] <= 250 for k in (0, 2, 3)), picks
    assert all(p["score_chosen"] == 9.0 for p in pairs)

    tied = [scored_row(0, [5.0, 5.0, 5.0, 5.0])]
    pairs, counts = binarize(tied, rule="overall")
    assert counts["n_out"] == 1 and counts["n_ties"] == 1  # ties are not removed
    assert pairs[0]["chosen"][1]["content"] == "row 0 answer 0"


def test_seed_determinism():
    rows = [scored_row(i, [1.0, 8.0, 3.0, 5.0]) for i in range(50)]
    for rule in ("overall", "mean_aspects"):
        if rule == "mean_aspects":
            rows = [scored_row(i, [1.0] * 4, [{a: v for a in ASPECTS} for v in (2, 5, 3, 1)]) for i in range(50)]
        a, ca = binarize(rows, rule=rule, seed=42)
        b, cb = binarize(rows, rule=rule, seed=42)
        c, _ = binarize(rows, rule=rule, seed=43)
        assert a == b and ca == cb
        assert a != c  # another seed draws other rejected answers


def test_mean_aspects_rule():
    rows = load_raw_ultrafeedback(RAW)
    pairs, counts = binarize(rows, rule="mean_aspects", seed=42)
    assert counts["n_out"] == 4 and counts["n_ties"] == 0
    # row 2: overall_score prefers gpt-3.5-turbo (9.0, ratings 5, N/A, 5, 4 -> mean 4.67);
    # the mean of aspects prefers ultralm-13b (all 5s)
    haiku = pairs[2]
    assert haiku["chosen"][1]["content"].startswith("Golden leaves") and haiku["score_chosen"] == 5.0
    overall_pairs, _ = binarize(rows, rule="overall", seed=42)
    assert overall_pairs[2]["chosen"][1]["content"].startswith("Crimson leaves")
    for pair, row in zip(pairs, rows):
        means = [mean_aspect_score(c) for c in row["completions"]]
        assert pair["score_chosen"] == pytest.approx(max(means))
        assert pair["score_rejected"] < pair["score_chosen"]
    assert mean_aspect_score(rows[2]["completions"][0]) == pytest.approx(14 / 3)  # N/A ignored


def test_mean_aspects_drops_all_na_all_tied_and_small_rows():
    na = {a: None for a in ASPECTS}
    five, three = {a: 5 for a in ASPECTS}, {a: 3 for a in ASPECTS}
    rows = [
        scored_row(0, [1, 2, 3, 4], [five, na, three, na]),  # 2 usable -> kept
        scored_row(1, [1, 2, 3, 4], [five, na, na, na]),  # 1 usable -> dropped
        scored_row(2, [1, 2, 3, 4], [five, five, five, five]),  # all tied -> dropped
        scored_row(3, [1, 2, 3, 4], [five, five, three, three]),  # tie at top, lower exist -> kept
        scored_row(4, [9.0], [five]),
    ]
    pairs, counts = binarize(rows, rule="mean_aspects", seed=1)
    assert counts["n_in"] == 5 and counts["n_out"] == 2 and counts["n_ties"] == 0
    assert counts["dropped"] == {"all_tied": 1, "fewer_than_2_usable": 2}
    assert counts["completions_all_na"] == 5
    assert pairs[0]["rejected"][1]["content"] == "row 0 answer 2"
    assert pairs[1]["chosen"][1]["content"] == "row 3 answer 0"
    assert pairs[1]["rejected"][1]["content"] in ("row 3 answer 2", "row 3 answer 3")
    _, overall_counts = binarize(rows, rule="overall")
    assert overall_counts["dropped"] == {"fewer_than_2_completions": 1}


def test_mean_aspects_rejected_spread_over_lower_ones():
    ratings = [{a: v for a in ASPECTS} for v in (2, 5, 3, 1)]
    rows = [scored_row(i, [5.0] * 4, ratings) for i in range(600)]
    pairs, _ = binarize(rows, rule="mean_aspects", seed=3)
    picks = Counter(idx_of(p, r, "rejected") for p, r in zip(pairs, rows))
    assert set(picks) == {0, 2, 3} and all(150 <= picks[k] <= 250 for k in (0, 2, 3)), picks


def test_exclusions_and_validation_in_binarize():
    rows = load_raw_ultrafeedback(RAW)
    pairs, counts = binarize(rows, exclude_sources=["truthful_qa"],
                             exclude_prompts=["Write a haiku about autumn leaves."])
    assert counts["n_out"] == 2 and counts["dropped"] == {"excluded_prompt": 1, "excluded_source": 1}
    bad = copy.deepcopy(rows)
    del bad[1]["completions"][0]["response"]
    with pytest.raises(DataError, match=r"row 1: completions\[0\]: missing field 'response'"):
        binarize(bad)
    with pytest.raises(ValueError, match="unknown binarization rule"):
        binarize(rows, rule="best_of")


# ---------------------------------------------------------------- binarized dataset


def make_pairs(n=40):
    rows = [scored_row(i, [float(i % 7 + 1), 9.5, 3.0, 2.0]) for i in range(n)]
    return binarize(rows, rule="overall", seed=42)[0]


def test_to_dataset_dict_splits_like_create_dataset():
    pairs = make_pairs(40)
    dsd = to_dataset_dict(pairs, test_size=10, seed=42)
    assert set(dsd) == set(BINARIZED_SPLITS)
    sizes = {k: len(v) for k, v in dsd.items()}
    assert sizes == {"train_prefs": 30, "train_sft": 30, "test_prefs": 10, "test_sft": 5,
                     "train_gen": 30, "test_gen": 5}
    for split, ds in dsd.items():
        assert set(ds.column_names) == BIN_KEYS
        for i, row in enumerate(ds):
            validate_binarized_row(row, f"{split} {i}", split=split)
    assert dsd["train_prefs"]["prompt_id"] == dsd["train_sft"]["prompt_id"] == dsd["train_gen"]["prompt_id"]
    assert set(dsd["test_sft"]["prompt_id"]) <= set(dsd["test_prefs"]["prompt_id"])
    assert not set(dsd["train_prefs"]["prompt_id"]) & set(dsd["test_prefs"]["prompt_id"])
    assert all(len(m) == 1 and m[0]["role"] == "user" for m in dsd["test_gen"]["messages"])
    assert dsd["train_prefs"].features["score_chosen"].dtype == "float64"
    again = to_dataset_dict(pairs, test_size=10, seed=42)
    assert again["test_prefs"]["prompt_id"] == dsd["test_prefs"]["prompt_id"]


@pytest.mark.parametrize("fmt", ["disk", "parquet", "jsonl"])
def test_save_and_load_binarized_round_trip(tmp_path, fmt):
    dsd = to_dataset_dict(make_pairs(12), test_size=4, seed=0)
    out = save_binarized(dsd, tmp_path / "ufb", fmt=fmt)
    save_binarized(dsd, out, fmt=fmt)  # overwriting an existing folder is atomic too
    loaded = load_binarized(out)
    assert set(loaded) == set(BINARIZED_SPLITS)
    for split in BINARIZED_SPLITS:
        assert loaded[split].to_list() == dsd[split].to_list()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_load_binarized_fixture_and_malformed_rows(tmp_path):
    dsd = load_binarized(BIN)
    assert {k: len(v) for k, v in dsd.items()} == {"train_prefs": 3, "train_sft": 3, "test_prefs": 2,
                                                    "test_sft": 1, "train_gen": 3, "test_gen": 1}
    row = dsd["train_prefs"][1]
    assert row["score_chosen"] == row["score_rejected"] == 7.0  # the published data keeps ties

    def broken(split, k, change):
        target = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        shutil.copytree(BIN, target)
        f = target / "data" / f"{split}-00000-of-00001.jsonl"
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        change(rows[k])
        write_jsonl(f, rows)
        return target

    cases = [
        ("test_prefs", 1, lambda r: r.update(prompt_id="0" * 64), r"\[test_prefs\] row 1: field 'prompt_id'"),
        ("train_gen", 2, lambda r: r.update(messages=r["chosen"]), r"\[train_gen\] row 2: field 'messages'"),
        ("train_sft", 0, lambda r: r.update(score_rejected=99.0), r"\[train_sft\] row 0: field 'score_chosen'"),
        ("train_prefs", 0, lambda r: r["rejected"].reverse(), r"\[train_prefs\] row 0: field 'rejected\[0\]'"),
        ("test_sft", 0, lambda r: r.pop("chosen"), r"\[test_sft\] row 0: missing field 'chosen'"),
    ]
    for split, k, change, pattern in cases:
        with pytest.raises(DataError, match=pattern):
            load_binarized(broken(split, k, change))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no save_to_disk dataset"):
        load_binarized(tmp_path / "empty")


def _raw_with_two_bad_rows(tmp_path) -> Path:
    """12 openbmb/UltraFeedback rows (the fixture's 4, three times, re-worded): row 3 has a rating
    outside "1".."5"/"N/A", row 9 a completion without its critique."""
    rows = [{**copy.deepcopy(r), "instruction": f"{r['instruction']} ({k})"}
            for k in range(3) for r in load_raw_ultrafeedback(RAW)]
    rows[3]["completions"][0]["annotations"]["honesty"]["Rating"] = "five"
    del rows[9]["completions"][2]["critique"]
    write_jsonl(tmp_path / "uf.jsonl", rows)
    return tmp_path / "uf.jsonl"


def test_raw_loader_drops_and_counts_a_few_malformed_rows_and_stops_over_the_threshold(tmp_path):
    from zephyr_lib.feedback import RATING_VALUES

    f = _raw_with_two_bad_rows(tmp_path)
    report: dict = {}
    rows = load_raw_ultrafeedback(f, max_bad_row_fraction=0.2, report=report)
    assert len(rows) == 10 and all(r["instruction"] not in {"", None} for r in rows)
    assert report == {"train": {"n_rows": 12, "n_dropped": 2, "max_bad_row_fraction": 0.2, "kinds": {
        f"completions[].annotations.honesty: field 'Rating' should be one of {list(RATING_VALUES)}":
            {"count": 1, "rows": [f"{f} row 3"]},
        "completions[]: missing field 'critique'": {"count": 1, "rows": [f"{f} row 9"]}}}}
    assert all(c["annotations"]["honesty"]["Rating"] != "five" and "critique" in c for r in rows for c in r["completions"])
    with pytest.raises(DataError) as err:
        load_raw_ultrafeedback(f, max_bad_row_fraction=0.1)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(
        f"{f}: 2 of 12 rows malformed (16.667%, over max_bad_row_fraction=0.1); first: {f} row 3: "
        "completions[0].annotations.honesty: field 'Rating' should be one of")
    # the aif stage's setting: 0.1% by default, outside the run hash while it is
    from zephyr_lib.config import hashed_config
    from zephyr_lib.stages.aif import AIFConfig
    assert AIFConfig().max_bad_row_fraction == 0.001 and "max_bad_row_fraction" not in hashed_config(AIFConfig())


def test_binarized_loader_drops_and_counts_malformed_rows_per_split_and_stops_over_the_threshold(tmp_path):
    shutil.copytree(BIN, tmp_path / "bin")
    f = tmp_path / "bin" / "data" / "train_prefs-00000-of-00001.jsonl"
    rows = [json.loads(line) for line in f.read_text().splitlines()]
    rows[1]["score_rejected"] = 99.0  # above score_chosen
    write_jsonl(f, rows)
    report: dict = {}
    dsd = load_binarized(tmp_path / "bin", max_bad_row_fraction=0.5, report=report)
    assert len(dsd["train_prefs"]) == 2 and 99.0 not in dsd["train_prefs"]["score_rejected"]
    assert report["train_prefs"]["kinds"] == {"field 'score_chosen' is below 'score_rejected'": {
        "count": 1, "rows": [f"{tmp_path / 'bin'}[train_prefs] row 1"]}}
    assert report["test_prefs"] == {"n_rows": 2, "n_dropped": 0, "max_bad_row_fraction": 0.5, "kinds": {}}
    with pytest.raises(DataError, match=r"^.*train_prefs-00000-of-00001\.jsonl: 1 of 3 rows malformed \(33\.333%, over "
                                        r"max_bad_row_fraction=0\.2\); first: .*\[train_prefs\] row 1: field 'score_chosen'"):
        load_binarized(tmp_path / "bin", max_bad_row_fraction=0.2)
