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
