"""The paper's dSFT data as published (HuggingFaceH4/ultrachat_200k), loaded from a local copy in
the hub's layout and saved as the curate run's `beta` folder that sft reads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from zephyr_lib import curate
from zephyr_lib.io import DataError, read_jsonl

FIX = Path(__file__).resolve().parent / "fixtures" / "curate" / "ultrachat_200k_test_sft.jsonl"


def _hub_layout(root: Path, splits=curate.SPLITS) -> Path:
    """data/<split>.jsonl as the hub stores ultrachat_200k (parquet there; the same rows)."""
    rows = read_jsonl(FIX)
    (root / "data").mkdir(parents=True)
    for split in splits:
        out = rows if split.endswith("_sft") else [{**r, "messages": r["messages"][:-1]} for r in rows]
        if split.startswith("train"):
            out = out[:2]
        (root / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    return root


def test_save_ultrachat_200k_keeps_the_published_splits(tmp_path):
    src = _hub_layout(tmp_path / "ultrachat_200k")
    res = curate.save_ultrachat_200k(src, tmp_path / "run", revision=None)
    assert res["splits"] == {"train_sft": 2, "test_sft": 3, "train_gen": 2, "test_gen": 3}
    dsd = curate.load_ultrachat_200k(tmp_path / "run" / "beta")
    assert list(dsd) == list(curate.SPLITS)
    assert dsd["test_sft"].to_list() == read_jsonl(FIX)  # H4's rows unchanged: prompt, prompt_id, messages
    assert dsd["test_gen"][0]["messages"][-1]["role"] == "user"
    from zephyr_lib.sft import load_sft_data
    train, test = load_sft_data(tmp_path / "run" / "beta")
    assert (len(train), len(test)) == (2, 3)


def test_save_ultrachat_200k_errors(tmp_path):
    src = _hub_layout(tmp_path / "partial", splits=("train_sft", "test_sft"))
    with pytest.raises(DataError, match=r"partial: no split\(s\) \['train_gen', 'test_gen'\]"):
        curate.save_ultrachat_200k(src, tmp_path / "run")
    with pytest.raises(DataError, match="one file is one split"):
        curate.save_ultrachat_200k(FIX, tmp_path / "run")
    bad = _hub_layout(tmp_path / "bad")
    rows = read_jsonl(bad / "data" / "test_sft.jsonl")
    rows[1]["prompt_id"] = "0" * 64
    (bad / "data" / "test_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"test_sft.jsonl:2: field 'prompt_id' is not sha256\(prompt\)"):
        curate.save_ultrachat_200k(bad, tmp_path / "run")
    assert not (tmp_path / "run" / "beta").exists()


def _ten_rows_two_bad(root: Path) -> Path:
    """The hub layout with a test_sft of 10 rows in the published schema (the fixture's 3 and 7
    re-worded ones, prompt_id = sha256(prompt)), of which line 3 has a wrong prompt_id and line 8
    a turn whose role is neither user, assistant nor system."""
    src = _hub_layout(root)
    rows = read_jsonl(FIX)
    rows += [curate.to_ultrachat_200k_row([{**m, "content": m["content"] + f" ({k})"} for m in rows[k % 3]["messages"]])
             for k in range(7)]
    rows[2]["prompt_id"] = "0" * 64
    rows[7]["messages"][1]["role"] = "bot"
    (src / "data" / "test_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def test_a_few_malformed_rows_are_dropped_and_counted_by_kind(tmp_path):
    src = _ten_rows_two_bad(tmp_path / "ultrachat_200k")
    res = curate.save_ultrachat_200k(src, tmp_path / "run", max_bad_row_fraction=0.25)
    assert res["splits"]["test_sft"] == 8
    bad = res["bad_rows"]["test_sft"]
    f = src / "data" / "test_sft.jsonl"
    assert (bad["n_rows"], bad["n_dropped"], bad["max_bad_row_fraction"]) == (10, 2, 0.25)
    assert bad["kinds"] == {
        "field 'prompt_id' is not sha256(prompt)": {"count": 1, "rows": [f"{f}:3"]},
        f"field 'messages[].role' should be one of {curate.ROLES}": {"count": 1, "rows": [f"{f}:8"]}}
    assert res["bad_rows"]["train_sft"] == {"n_rows": 2, "n_dropped": 0, "max_bad_row_fraction": 0.25, "kinds": {}}
    kept = curate.load_ultrachat_200k(tmp_path / "run" / "beta", split="test_sft")
    assert len(kept) == 8 and "0" * 64 not in kept["prompt_id"]
    assert not any(m["role"] == "bot" for msgs in kept["messages"] for m in msgs)


def test_too_many_malformed_rows_stop_the_run_naming_file_row_field_and_setting(tmp_path):
    src = _ten_rows_two_bad(tmp_path / "ultrachat_200k")
    f = src / "data" / "test_sft.jsonl"
    with pytest.raises(DataError) as err:
        curate.save_ultrachat_200k(src, tmp_path / "run", max_bad_row_fraction=0.1)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{f}: 2 of 10 rows malformed (20.000%, over max_bad_row_fraction=0.1); "
                                              f"first: {f}:3: field 'prompt_id' is not sha256(prompt); by kind: ")
    assert "field 'messages[].role' should be one of" in msg
    assert not (tmp_path / "run" / "beta").exists()
    # the curate stage's setting: 0.1% of a split by default, outside the run hash while it is
    from zephyr_lib.config import hashed_config
    from zephyr_lib.stages.curate import CurateConfig
    assert CurateConfig().max_bad_row_fraction == 0.001
    assert "max_bad_row_fraction" not in hashed_config(CurateConfig())
