"""Tests for zephyr_lib.curate: truecasing, boilerplate filter, drop counts, schemas, loaders, splits."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zephyr_lib.curate import (
    DEFAULT_PHRASES, DROP_REASONS, SPLITS, boilerplate_hits, curate, defect_rates, from_raw_ultrachat,
    has_boilerplate, load_raw_ultrachat, load_ultrachat_200k, lowercase_sentence_starts, main, prompt_id,
    save_dataset, split_dataset, to_raw_ultrachat, to_ultrachat_200k_row, truecase, validate_200k_row,
)
from zephyr_lib.io import DataError

FIX = Path(__file__).parent / "fixtures" / "curate"
RAW = FIX / "ultrachat_raw.jsonl"
H4_JSONL = FIX / "ultrachat_200k_test_sft.jsonl"


def msgs(*turns: str, first: str = "user") -> list[dict]:
    roles = ("user", "assistant") if first == "user" else ("assistant", "user")
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


# ---------------------------------------------------------------------------- truecasing

@pytest.mark.parametrize("before, after", [
    ("Hello. how are you?", "Hello. How are you?"),                              # the paper's example
    ("i think so", "I think so"),
    ("Yes, i'm sure and i've seen it; i'd say i'll go.", "Yes, I'm sure and I've seen it; I'd say I'll go."),
    ("Really? yes! it works.", "Really? Yes! It works."),
    ('He said "stop." then he left.', 'He said "stop." Then he left.'),
    ("iPhone is popular. it works.", "iPhone is popular. It works."),             # iPhone untouched
    ("See https://example.com/path. next step", "See https://example.com/path. Next step"),
    ("https://example.com/path. next", "https://example.com/path. Next"),
    ("Write to help@example.org. thanks!", "Write to help@example.org. Thanks!"),
    ("It costs 3.5 million. that is a lot.", "It costs 3.5 million. That is a lot."),
    ("Call `run()`. it returns None.", "Call `run()`. It returns None."),
    ("**note:** read this.", "**Note:** read this."),
])
def test_truecase_fixes(before, after):
    new, n = truecase(before)
    assert new == after
    assert n >= 1
    assert truecase(new) == (new, 0)          # idempotent


@pytest.mark.parametrize("text", [
    "The city has 3.5 million people and grew 2.4% in 2023.",   # "5" after "3." is no sentence start
    "e.g. this is an example, i.e. a sample.",                   # starts with an allowed lower-case token
    "Use fruit, e.g. apples, etc. and more.",                    # no sentence end after e.g. / etc.
    "Ask Dr. smith or Mr. jones about it.",                      # abbreviations do not end sentences
    "She lives in the U.S. and works remotely.",
    "1. first item\n2. second item\n3. third item",             # list markers: items are not sentences
    "Steps:\n- open the app\n- press save",
    "The list: (i) one, (ii) two, (a) three.",
    "numpy is fast. foo.py imports it. x_1 holds the result. pH is 7. mRNA vaccines work.",
    "iOS 17 is out. eBay sells it.",
    "Wait... what happened",                                     # an ellipsis is not a sentence end
    "The loop is for i in range(10). It counts.",                # "i" after "for" looks like code
    "Visit www.example.com/docs.html for details.",
])
def test_truecase_leaves_alone(text):
    assert truecase(text) == (text, 0)
    assert lowercase_sentence_starts(text) == 0


def test_truecase_code_blocks_unchanged():
    code = "```python\n# this is fine. i = 0\nfor i in range(3):\n    print('done. next')\n```"
    text = f"Here it is. {code}\n\nThat is all."
    new, n = truecase(text)
    assert code in new and n == 0
    unclosed = "Try this:\n```\nx = 1. y = 2\nprint(x)"          # an unclosed fence runs to the end
    assert truecase(unclosed) == (unclosed, 0)
    inline = "Run `pip install numpy. then`. then rerun."
    assert truecase(inline) == ("Run `pip install numpy. then`. Then rerun.", 1)


def test_truecase_url_kept_intact():
    text = "Read https://example.com/a.b/c.html?q=x. the page. then go."
    new, n = truecase(text)
    assert new == "Read https://example.com/a.b/c.html?q=x. The page. Then go."
    assert n == 2


def test_truecase_counts_each_fix():
    assert truecase("hello. how are you? i am fine. and you?") == ("Hello. How are you? I am fine. And you?", 4)
    assert lowercase_sentence_starts("hello. how are you? fine, i guess.") == 3   # lone "i" is not a start


# ---------------------------------------------------------------------------- metrics

def test_boilerplate_matching():
    assert has_boilerplate("As an AI language model, I cannot taste food.")
    assert has_boilerplate("I DO NOT HAVE EMOTIONS, but here is a summary.")
    assert has_boilerplate("I don’t have personal opinions on this.")            # curly apostrophe
    assert has_boilerplate("Sadly I don't\nhave opinions.")                     # any whitespace
    assert not has_boilerplate("AI research in Europe is growing; the EU funds many AI labs.")
    assert not has_boilerplate("She works as an aide to the senator.")          # word boundary
    assert not has_boilerplate("I do not have emotions", phrases=("as an AI",))
    assert boilerplate_hits("As an AI language model, I don't have emotions.") == [
        "I don't have emotions", "As an AI", "as an AI language model"]


def test_defect_rates_on_answers():
    answers = [
        "Paris is the capital of France. It is large.",
        "As an AI, I don't have personal experiences. paris is nice.",          # both defects
        "the capital is Rome.",                                                  # lower-case start
        "Berlin, i think.",                                                      # lone i only: no start
    ]
    rates = defect_rates(answers)
    assert rates == {"boilerplate_rate": 0.25, "lowercase_rate": 0.5, "n": 4}
    assert defect_rates([]) == {"boilerplate_rate": 0.0, "lowercase_rate": 0.0, "n": 0}


# ---------------------------------------------------------------------------- raw UltraChat

def test_raw_conversion_roundtrip():
    row = {"id": "7", "data": ["Hi?", "Hello.", "Bye?", "Bye."]}
    m = from_raw_ultrachat(row, "x")
    assert [t["role"] for t in m] == ["user", "assistant", "user", "assistant"]
    assert to_raw_ultrachat("7", m) == row
    with pytest.raises(DataError, match=r"row 3: field 'data\[1\]' should be str"):
        from_raw_ultrachat({"id": "1", "data": ["Hi", 5]}, "row 3")
    with pytest.raises(DataError, match=r"row 4: missing field 'data'"):
        from_raw_ultrachat({"id": "1"}, "row 4")


def test_load_raw_fixture_and_errors(tmp_path):
    rows = list(load_raw_ultrachat(RAW))
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert all(set(r) == {"id", "data"} and all(isinstance(t, str) for t in r["data"]) for r in rows)
    assert len(list(load_raw_ultrachat(RAW, limit=2))) == 2
    with pytest.raises(DataError, match=r"ultrachat_raw_bad\.jsonl:2: missing field 'data'"):
        list(load_raw_ultrachat(FIX / "ultrachat_raw_bad.jsonl"))
    with pytest.raises(DataError, match=r"ultrachat_raw_badjson\.jsonl:3: not valid JSON"):
        list(load_raw_ultrachat(FIX / "ultrachat_raw_badjson.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 3, "data": ["a", "b"]}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'id' should be str"):
        list(load_raw_ultrachat(bad))
    with pytest.raises(DataError, match="no such file"):
        list(load_raw_ultrachat(tmp_path / "missing.jsonl"))


# ---------------------------------------------------------------------------- curate

def test_curate_fixture():
    kept, rep = curate(load_raw_ultrachat(RAW))
    assert (rep["n_in"], rep["n_out"], rep["n_trimmed"]) == (5, 3, 1)
    assert rep["dropped"] == {"malformed": 0, "too_short": 0, "empty_turn": 0, "non_alternating": 0,
                              "boilerplate": 1, "duplicate": 1}
    assert rep["dropped_by_phrase"]["I don't have personal experiences"] == 1
    assert rep["dropped_by_phrase"]["as an AI language model"] == 1
    assert rep["dropped_by_phrase"]["I do not have emotions"] == 0
    assert set(rep["dropped_by_phrase"]) == set(DEFAULT_PHRASES)
    prompts = [k[0]["content"] for k in kept]
    assert prompts == ["What is the capital of France? I need it for a quiz.",
                       "Can you summarize the state of AI research in Europe?",      # legit "AI": kept
                       "Write a Python function that squares a number."]
    assert all(k[-1]["role"] == "assistant" for k in kept)
    assert len(kept[2]) == 2                                # trailing unanswered user turn trimmed
    assert "```python\ndef square(x):\n    return x * x  # works for int. and float\n```" in kept[2][1]["content"]
    assert kept[0][1]["content"].startswith("The capital of France is Paris. It has been")
    assert "e.g. it had 8.9 million" in kept[0][3]["content"]
    assert "See https://ellis.eu/units. Most publish" in kept[1][3]["content"]
    assert "```\n\nYou can call it as `square(3)`. It returns 9." in kept[2][1]["content"]  # after a code block
    assert rep["n_truecased"] == 3 and rep["truecase_fixes"] == 9
    ex = rep["truecase_examples"][0]
    assert ex == {"where": "id=0", "role": "user", "before": "What is the capital of France? i need it for a quiz.",
                  "after": "What is the capital of France? I need it for a quiz."}
    json.dumps(rep)                                         # the report is JSON-serialisable


def test_curate_drop_reasons():
    good = msgs("How tall is Everest?", "Mount Everest is 8,849 m tall.")
    items = [
        good,
        msgs("Hi", "   "),                                                   # whitespace-only turn
        msgs("", "Hello there."),                                            # empty turn
        msgs("Hello?", "Hi.") + [{"role": "assistant", "content": "Again."}],
        [{"role": "user", "content": "A"}, {"role": "user", "content": "B"}, {"role": "assistant", "content": "C"}],
        [{"role": "user", "content": "Only a question?"}],                  # trimmed to nothing
        [{"role": "assistant", "content": "Only an answer."}],
        [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}],
        [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}],
        {"id": "r9", "data": ["Hi", None]},
        "not a dialogue",
        msgs("Describe your feelings about rain.", "I do not have emotions, but rain is water falling from clouds."),
        msgs("I don't have opinions on tea. Do you?", "Green tea has less caffeine than black tea."),
        [dict(m) for m in good],                                              # duplicate of the first
        [{"role": "system", "content": "Be brief."}] + msgs("What is 2+2?", "4."),
    ]
    kept, rep = curate(items)
    assert rep["dropped"] == {"malformed": 4, "too_short": 2, "empty_turn": 2, "non_alternating": 2,
                              "boilerplate": 1, "duplicate": 1}
    assert rep["dropped_by_phrase"]["I do not have emotions"] == 1
    assert rep["n_in"] == len(items) == rep["n_out"] + sum(rep["dropped"].values())
    assert [k[-1]["content"] for k in kept] == ["Mount Everest is 8,849 m tall.",
                                                "Green tea has less caffeine than black tea.", "4."]
    assert kept[2][0] == {"role": "system", "content": "Be brief."}
    assert any("item 7: messages[0].role should be one of" in e for e in rep["errors"])
    assert any("item 8: messages[0]: field 'content' should be str" in e for e in rep["errors"])
    assert any("id=r9: field 'data[1]' should be str" in e for e in rep["errors"])


def test_curate_switches_and_scope():
    d1 = msgs("how do i start? tell me.", "As an AI, I can help. first, plan. then act.")
    d2 = msgs("How do I start? Tell me.", "As an AI, I can help. First, plan. Then act.")
    alpha, rep = curate([d1, d2, d1], truecase=False, filter_boilerplate=False, dedup=False)
    assert alpha == [d1, d2, d1] and rep["n_truecased"] == 0 and sum(rep["dropped"].values()) == 0
    kept, rep = curate([d1, d2], filter_boilerplate=False)     # casing variants collapse after truecasing
    assert kept == [d2] and rep["dropped"]["duplicate"] == 1 and rep["n_truecased"] == 1
    kept, _ = curate([d1], filter_boilerplate=False, truecase_scope="assistant")
    assert kept[0][0]["content"] == "how do i start? tell me." and kept[0][1]["content"] == d2[1]["content"]
    kept, rep = curate([d1], phrases=["first, plan"], allow_empty=True)
    assert kept == [] and rep["dropped_by_phrase"] == {"first, plan": 1}
    with pytest.raises(ValueError, match="truecase_scope"):
        curate([d1], truecase_scope="user")


def test_curate_keeps_first_duplicate():
    a = msgs("Q?", "A.")
    b = msgs("Q?", "A.")
    kept, _ = curate([a, msgs("Other?", "Yes."), b])
    assert kept[0] == a and len(kept) == 2


# ---------------------------------------------------------------------------- ultrachat_200k schema

def test_200k_row_and_prompt_id():
    # H4's convention, checked on HuggingFaceH4/ultrafeedback_binarized train_prefs row 0.
    assert prompt_id("how can i develop a habit of drawing daily") == \
        "086b3e24f29b8956a01059f79c56db35d118a06fb6b844b095737d042795cd43"
    m = [{"role": "system", "content": "Be brief."}] + msgs("Hi?", "Hello.")
    row = to_ultrachat_200k_row(m)
    assert list(row) == ["prompt", "prompt_id", "messages"]
    assert row["prompt"] == "Hi?" and row["prompt_id"] == hashlib.sha256(b"Hi?").hexdigest()
    assert all(list(x) == ["content", "role"] for x in row["messages"])
    assert validate_200k_row(row, "r") is row
    for line in H4_JSONL.read_text().splitlines():
        r = json.loads(line)
        assert r == to_ultrachat_200k_row([{"role": x["role"], "content": x["content"]} for x in r["messages"]])


@pytest.mark.parametrize("mutate, kind, error", [
    (lambda r: r.pop("prompt"), "sft", r"row 5: missing field 'prompt'"),
    (lambda r: r.update(prompt_id="0" * 64), "sft", r"row 5: field 'prompt_id' is not sha256\(prompt\)"),
    (lambda r: r.update(prompt_id="XYZ"), "sft", r"row 5: field 'prompt_id' should be 64 lower-case hex"),
    (lambda r: r.update(extra=1), "sft", r"row 5: unexpected field\(s\) \['extra'\]"),
    (lambda r: r["messages"][1].update(role="bot"), "sft", r"row 5: field 'messages\[1\].role' should be one of"),
    (lambda r: r["messages"][1].update(content=""), "sft", r"row 5: field 'messages\[1\].content' is empty"),
    (lambda r: r["messages"][1].pop("role"), "sft", r"row 5: field 'messages\[1\]' should have exactly"),
    (lambda r: r["messages"].insert(0, r["messages"][1]), "sft", r"row 5: field 'messages' roles should alternate"),
    (lambda r: r["messages"].pop(), "sft", r"row 5: field 'messages' should end with an assistant turn"),
    (lambda r: None, "gen", r"row 5: field 'messages' should end with the user turn"),
    (lambda r: r.update(messages=[]), "sft", r"row 5: field 'messages' has no user turn"),
])
def test_validate_200k_row_errors(mutate, kind, error):
    row = to_ultrachat_200k_row(msgs("Hi?", "Hello."))
    mutate(row)
    with pytest.raises(DataError, match=error):
        validate_200k_row(row, "row 5", kind=kind)


def test_validate_prompt_must_match_first_user_turn():
    row = to_ultrachat_200k_row(msgs("Hi?", "Hello."))
    row["prompt"] = "Hey?"
    row["prompt_id"] = prompt_id("Hey?")
    with pytest.raises(DataError, match="field 'prompt' differs from the first user message"):
        validate_200k_row(row, "row 0")


def test_load_200k_files(tmp_path):
    ds = load_ultrachat_200k(H4_JSONL, split="test_sft")
    assert len(ds) == 3 and ds.column_names == ["prompt", "prompt_id", "messages"]
    assert ds[1]["messages"][3] == {"content": "Coffee Break Spanish and Duolingo Spanish Podcast are popular "
                                               "with beginners.", "role": "assistant"}
    rows = [json.loads(line) for line in H4_JSONL.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    assert load_ultrachat_200k(tmp_path / "x.parquet").to_list() == ds.to_list()
    # the hub layout: data/<split>-NNNNN-of-NNNNN.parquet
    (tmp_path / "hub" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hub" / "data" / "test_sft-00000-of-00001.parquet")
    dd = load_ultrachat_200k(tmp_path / "hub")
    assert list(dd) == ["test_sft"] and dd["test_sft"].to_list() == ds.to_list()
    with pytest.raises(DataError, match="no split 'train_sft'"):
        load_ultrachat_200k(tmp_path / "hub", split="train_sft")
    with pytest.raises(DataError, match=r"ultrachat_200k_bad_prompt_id\.jsonl:2: field 'prompt_id' is not sha256"):
        load_ultrachat_200k(FIX / "ultrachat_200k_bad_prompt_id.jsonl")
    bad = [dict(r) for r in rows]
    bad[2] = {**bad[2], "messages": bad[2]["messages"][:1]}
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet row 2: field 'messages' should end with an assistant"):
        load_ultrachat_200k(tmp_path / "bad.parquet", split="train_sft")
    with pytest.raises(DataError, match="no such file or folder"):
        load_ultrachat_200k(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------- splits

def _rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        out.append(to_ultrachat_200k_row(msgs(f"Question {i}?", f"Answer {i}.", f"Follow-up {i}?", f"More {i}.")))
        if i % 5 == 0:   # a second dialogue with the same prompt: must land on the same side
            out.append(to_ultrachat_200k_row(msgs(f"Question {i}?", f"Other answer {i}.")))
    return out


def test_split_dataset_schema_and_rules():
    rows = _rows(40)
    dd = split_dataset(rows, test_frac=0.1, seed=0)
    assert list(dd) == list(SPLITS)
    n_prompts = len({r["prompt_id"] for r in rows})
    test_ids = set(dd["test_sft"]["prompt_id"])
    assert len(test_ids) == round(0.1 * n_prompts)
    assert not test_ids & set(dd["train_sft"]["prompt_id"])
    assert len(dd["train_sft"]) + len(dd["test_sft"]) == len(rows)
    for side in ("train", "test"):
        sft, gen = dd[f"{side}_sft"], dd[f"{side}_gen"]
        assert sft["prompt_id"] == gen["prompt_id"] and sft["prompt"] == gen["prompt"]
        for i, (s, g) in enumerate(zip(sft, gen)):
            validate_200k_row(s, f"{side}_sft {i}", kind="sft")
            validate_200k_row(g, f"{side}_gen {i}", kind="gen")
            assert g["messages"] == s["messages"][:-1]
    published = datasets.Features._from_yaml_list([     # dataset_info of the ultrachat_200k card
        {"name": "prompt", "dtype": "string"}, {"name": "prompt_id", "dtype": "string"},
        {"name": "messages", "list": [{"name": "content", "dtype": "string"}, {"name": "role", "dtype": "string"}]}])
    assert all(dd[s].features == published for s in SPLITS)
    # the split depends on the prompts and seed, not on the row order
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert set(split_dataset(shuffled, test_frac=0.1, seed=0)["test_sft"]["prompt_id"]) == test_ids
    assert set(split_dataset(rows, test_frac=0.1, seed=1)["test_sft"]["prompt_id"]) != test_ids
    tiny = split_dataset([rows[0], rows[2]], test_frac=0.01, seed=0)   # >= 1 test prompt when test_frac > 0
    assert (len(tiny["train_sft"]), len(tiny["test_sft"])) == (1, 1)
    one_prompt = split_dataset(rows[:2], test_frac=0.5, seed=0)         # a prompt is never split up
    assert (len(one_prompt["train_sft"]), len(one_prompt["test_sft"])) == (2, 0)
    none = split_dataset(rows[:3], test_frac=0.0, seed=0)
    assert len(none["test_sft"]) == 0 and len(none["test_gen"]) == 0
    with pytest.raises(DataError, match=r"rows\[1\]: field 'prompt_id'"):
        split_dataset([rows[0], {**rows[1], "prompt_id": "0" * 64}], test_frac=0.1, seed=0)


def test_split_is_byte_identical_when_saved_twice(tmp_path):
    rows = _rows(30)
    a = save_dataset(split_dataset(rows, test_frac=0.2, seed=3), tmp_path / "a")
    b = save_dataset(split_dataset(rows, test_frac=0.2, seed=3), tmp_path / "b")
    for split in SPLITS:
        fa = sorted((a / split).glob("*.arrow"))
        fb = sorted((b / split).glob("*.arrow"))
        assert fa and [f.name for f in fa] == [f.name for f in fb]
        assert [f.read_bytes() for f in fa] == [f.read_bytes() for f in fb]
    assert (a / "dataset_dict.json").read_bytes() == (b / "dataset_dict.json").read_bytes()
    # save_to_disk output loads back through the validating loader; overwriting is atomic
    dd = load_ultrachat_200k(a)
    assert {s: len(dd[s]) for s in SPLITS} == {s: len(load_ultrachat_200k(a, split=s)) for s in SPLITS}
    save_dataset(split_dataset(rows[:4], test_frac=0.5, seed=3), a)
    assert len(load_ultrachat_200k(a, split="train_sft")) + len(load_ultrachat_200k(a, split="test_sft")) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_cli_end_to_end(tmp_path, capsys):
    assert main(["--raw", str(RAW), "--out", str(tmp_path), "--test-frac", "0.34", "--seed", "0"]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["n_out"] == 3 and rep["splits"] == {"train_sft": 2, "test_sft": 1, "train_gen": 2, "test_gen": 1}
    dd = load_ultrachat_200k(tmp_path / "beta")
    assert sum(len(dd[s]) for s in ("train_sft", "test_sft")) == 3
    assert main(["--raw", str(RAW), "--out", str(tmp_path), "--alpha"]) == 0
    alpha = load_ultrachat_200k(tmp_path / "alpha")
    assert sum(len(alpha[s]) for s in ("train_sft", "test_sft")) == 5        # α: duplicates and boilerplate stay
    assert set(DROP_REASONS) == set(json.loads((tmp_path / "report.json").read_text())["dropped"])
    assert main(["--raw", str(FIX / "ultrachat_raw_bad.jsonl"), "--out", str(tmp_path / "bad")]) == 2
    assert "ultrachat_raw_bad.jsonl:2: missing field 'data'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------- degenerate data

def test_an_emptied_corpus_is_an_error_naming_the_source_and_the_filter(tmp_path):
    from zephyr_lib.curate import EmptyDataError

    bp = [msgs(f"Question {i}?", "As an AI, I cannot say.") for i in range(3)]
    with pytest.raises(EmptyDataError) as e:
        curate(bp + [msgs("Only a question?")], source="raw.jsonl")
    msg = str(e.value)
    assert "source 'raw.jsonl'" in msg and "all 4 dialogue(s) were dropped" in msg
    assert "boilerplate 3 (switch: filter_boilerplate=false keeps them)" in msg and "too_short 1" in msg
    with pytest.raises(EmptyDataError, match="gave no dialogues at all"):
        curate([], source="toy")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(EmptyDataError, match="empty.jsonl: the raw UltraChat file has no rows"):
        list(load_raw_ultrachat(empty))
    with pytest.raises(EmptyDataError, match="no rows to split"):
        split_dataset([], test_frac=0.1, seed=0)
    dd = split_dataset(_rows(4), test_frac=0.1, seed=0)
    dd["train_sft"] = dd["train_sft"].select([])
    with pytest.raises(EmptyDataError, match="training split is empty"):
        save_dataset(dd, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    assert main(["--raw", str(empty), "--out", str(tmp_path / "cli")]) == 2


def test_a_zero_test_fraction_gives_empty_test_splits_that_load_back(tmp_path):
    rows = _rows(6)
    dd = split_dataset(rows, test_frac=0.0, seed=0)
    path = save_dataset(dd, tmp_path / "beta")
    back = datasets.load_from_disk(str(path))
    n = len(rows)
    assert {s: len(back[s]) for s in SPLITS} == {"train_sft": n, "test_sft": 0, "train_gen": n, "test_gen": 0}
    assert back["test_sft"].features == back["train_sft"].features
    assert {s: len(d) for s, d in load_ultrachat_200k(path).items()} == {s: len(back[s]) for s in SPLITS}
    assert main(["--raw", str(RAW), "--out", str(tmp_path / "cli"), "--test-frac", "0"]) == 0
    assert len(datasets.load_from_disk(str(tmp_path / "cli" / "beta"))["test_sft"]) == 0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"test_frac must be in \[0, 1\)"):
            split_dataset(_rows(6), test_frac=bad, seed=0)


@pytest.mark.parametrize("before, after", [
    ("Here it is:\n```python\nx = 1\n```\nthe function now works.",
     "Here it is:\n```python\nx = 1\n```\nThe function now works."),            # after a code block
    ("Docs: https://example.com/guide\nthe guide covers it.",
     "Docs: https://example.com/guide\nThe guide covers it."),                  # after a URL ending its line
    ("Write to help@example.org\nthey answer fast.", "Write to help@example.org\nThey answer fast."),
    ("First paragraph\n\nsecond paragraph starts here.", "First paragraph\n\nSecond paragraph starts here."),
    ("One.\n \t\nnext after a whitespace-only line.", "One.\n \t\nNext after a whitespace-only line."),
])
def test_truecase_after_code_blocks_urls_and_blank_lines(before, after):
    assert truecase(before) == (after, 1)
    assert lowercase_sentence_starts(before) == 1                # the defect metric counts them
    assert defect_rates([before])["lowercase_rate"] == 1.0
    assert truecase(after) == (after, 0)


@pytest.mark.parametrize("text", [
    "Run `ls`\nthe output follows.",                             # inline code: a wrapped line goes on
    "See https://example.com for the rest\nof the story.",        # the URL does not end its line
    "Code:\n\n    x = 1\n",                                      # an indented code line is no sentence
    "Steps:\n\n1. open it\n2. save it",                          # list items stay as they are
    "Done.\n\n```\nx\n```\n\n- the item",
])
def test_truecase_still_leaves_alone_after_blocks(text):
    assert truecase(text) == (text, 0)
