"""Robustness of inputs the stages read back: checkpoints cut short by a kill, and raw
UltraFeedback files whose own errors must not be mistaken for "this is a binarized dataset"."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from zephyr_lib.feedback import NotRawUltraFeedbackError, load_feedback_source, load_raw_ultrafeedback
from zephyr_lib.io import DataError
from zephyr_lib.modeling import checkpoint_problem, last_checkpoint

FIX = Path(__file__).parent / "fixtures" / "feedback"
RAW = FIX / "ultrafeedback_raw.jsonl"
BINARIZED = FIX / "ultrafeedback_binarized"


def _checkpoint(folder: Path, step: int, state: str | None = '{"global_step": 0}', weights: bool = True) -> Path:
    p = folder / f"checkpoint-{step}"
    p.mkdir(parents=True)
    if state is not None:
        (p / "trainer_state.json").write_text(state)
    if weights:
        (p / "model.safetensors").write_bytes(b"weights")
    return p


def test_only_complete_checkpoints_are_resumed_and_the_newest_incomplete_is_skipped_with_a_message(tmp_path):
    logged = []
    good = _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 20, state='{"global_step": 20, "log_hi')   # killed while writing trainer_state.json
    _checkpoint(tmp_path, 30, weights=False)                        # killed before the weights were written
    _checkpoint(tmp_path, 40, state=None)
    assert last_checkpoint(tmp_path, log=logged.append) == str(good)
    assert [m.split(" (")[0] for m in logged] == [f"skipping incomplete checkpoint {tmp_path / f'checkpoint-{n}'}"
                                                    for n in (40, 30, 20)] + [f"resuming from {good}"]
    assert "half-written" in logged[2] and "no weights file" in logged[1]
    shutil.rmtree(good)
    assert last_checkpoint(tmp_path, log=logged.append) is None  # nothing usable: training starts over
    assert last_checkpoint(tmp_path / "missing") is None


def test_sharded_and_adapter_checkpoints_count_as_complete(tmp_path):
    sharded = _checkpoint(tmp_path, 5, weights=False)
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (sharded / "model-00001-of-00002.safetensors").write_bytes(b"1")
    assert "missing weight shard" in checkpoint_problem(sharded)
    (sharded / "model-00002-of-00002.safetensors").write_bytes(b"2")
    assert checkpoint_problem(sharded) is None
    adapter = _checkpoint(tmp_path, 6, weights=False)
    (adapter / "adapter_model.safetensors").write_bytes(b"lora")
    assert checkpoint_problem(adapter) is None


def test_a_half_written_trainer_state_never_breaks_a_training_rerun(tmp_path, tiny_base, tiny_chat_data):
    """Kill-during-save, simulated: the newest checkpoint's trainer_state.json is cut in half."""
    from zephyr_lib import sft
    from zephyr_lib.stages.sft import SFTConfig

    cfg = SFTConfig(num_train_epochs=1, per_device_train_batch_size=16, max_length=64, save_steps=4,
                    eval_steps=1000, logging_steps=2, learning_rate=1e-3, max_train_samples=96)
    out = tmp_path / "run"
    sft.train(cfg, tiny_base, tiny_chat_data, out)
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    newest = ckpts[-1] / "trainer_state.json"
    newest.write_text(newest.read_text()[: len(newest.read_text()) // 2])
    res = sft.train(cfg, tiny_base, tiny_chat_data, out)  # resumes from the older one, or starts over
    assert res["steps"] >= int(ckpts[-1].name.split("-")[1])


def test_a_malformed_raw_ultrafeedback_file_reports_its_own_error(tmp_path):
    lines = RAW.read_text().splitlines()
    broken = tmp_path / "raw.jsonl"
    broken.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(DataError) as e:
        load_feedback_source(broken)
    assert not isinstance(e.value, NotRawUltraFeedbackError)
    assert "raw.jsonl:2: not valid JSON" in str(e.value) and "split name" not in str(e.value)
    row = json.loads(lines[1])
    del row["completions"][0]["annotations"]
    missing = tmp_path / "uf.jsonl"
    missing.write_text(lines[0] + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"uf\.jsonl row 1: completions\[0\]: missing field 'annotations'"):
        load_feedback_source(missing)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: no rows"):
        load_feedback_source(empty)


def test_a_binarized_source_is_told_apart_from_a_raw_one(tmp_path):
    with pytest.raises(NotRawUltraFeedbackError):
        load_raw_ultrafeedback(BINARIZED)
    kind, dsd = load_feedback_source(BINARIZED)
    assert kind == "binarized" and "train_prefs" in dsd
    kind, rows = load_feedback_source(RAW)
    assert kind == "raw" and rows == load_raw_ultrafeedback(RAW)
    # binarized rows in a file without a split name: recognised by their fields
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dsd["train_prefs"]))
    with pytest.raises(NotRawUltraFeedbackError, match="chosen"):
        load_raw_ultrafeedback(tmp_path / "pairs.jsonl")
