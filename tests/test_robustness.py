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


def _safetensors(path: Path, n: int = 4) -> Path:
    """A minimal valid safetensors file: one float32 tensor of ``n`` values."""
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * (4 * n))
    return path


def _checkpoint(folder: Path, step: int, state: str | None = "", weights: bool = True) -> Path:
    p = folder / f"checkpoint-{step}"
    p.mkdir(parents=True)
    if state is not None:
        (p / "trainer_state.json").write_text(state or json.dumps({"global_step": step}))
    if weights:
        _safetensors(p / "model.safetensors")
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-checkpoint-20", "bad-checkpoint-30",
                                                           "bad-checkpoint-40", "checkpoint-10"]  # set aside
    shutil.rmtree(good)
    assert last_checkpoint(tmp_path, log=logged.append) is None  # nothing usable: training starts over
    assert last_checkpoint(tmp_path / "missing") is None


def test_sharded_and_adapter_checkpoints_count_as_complete(tmp_path):
    sharded = _checkpoint(tmp_path, 5, weights=False)
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    _safetensors(sharded / "model-00001-of-00002.safetensors")
    assert "missing weight shard" in checkpoint_problem(sharded)
    (sharded / "model-00002-of-00002.safetensors").write_bytes(b"2")
    assert "model-00002-of-00002.safetensors is truncated" in checkpoint_problem(sharded)
    _safetensors(sharded / "model-00002-of-00002.safetensors")
    assert checkpoint_problem(sharded) is None
    adapter = _checkpoint(tmp_path, 6, weights=False)
    _safetensors(adapter / "adapter_model.safetensors")
    assert checkpoint_problem(adapter) is None


def test_weights_that_do_not_load_or_a_step_that_does_not_match_are_refused(tmp_path):
    ck = _checkpoint(tmp_path, 8)
    assert checkpoint_problem(ck) is None
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[:-3])  # cut short: same header, fewer bytes
    assert checkpoint_problem(ck) == f"model.safetensors is truncated or damaged ({len(data) - 3} bytes; " \
                                     f"its header describes {len(data)})"
    (ck / "model.safetensors").write_bytes(data[:5])
    assert "shorter than its header" in checkpoint_problem(ck)
    (ck / "model.safetensors").write_bytes(b"x" * 8 + b"{}")
    assert "model.safetensors" in checkpoint_problem(ck)
    _safetensors(ck / "model.safetensors")
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert checkpoint_problem(ck) == "trainer_state.json says global_step 4, the folder is step 8"


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
    assert res.metrics["steps"] >= int(ckpts[-1].name.split("-")[1])


def test_a_truncated_checkpoint_weight_file_is_set_aside_and_training_resumes(tmp_path, tiny_base, tiny_chat_data):
    """A checkpoint whose trainer_state.json is intact but whose model.safetensors was cut short
    (a kill or a full disk while saving) is set aside with a message naming it, and the rerun
    resumes from the previous good checkpoint instead of failing on every attempt."""
    from zephyr_lib import modeling, sft
    from zephyr_lib.stages.sft import SFTConfig

    cfg = SFTConfig(num_train_epochs=1, per_device_train_batch_size=16, max_length=64, save_steps=2,
                    eval_steps=1000, logging_steps=2, learning_rate=1e-3, max_train_samples=96)
    out = tmp_path / "run"
    first = sft.train(cfg, tiny_base, tiny_chat_data, out)
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(ckpts) == 2
    older, newest = ckpts
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    logged: list[str] = []
    assert modeling.last_checkpoint(out / "checkpoints", log=logged.append) == str(older)
    assert logged[0].startswith(f"skipping incomplete checkpoint {newest} (model.safetensors is truncated")
    assert f"set aside as bad-{newest.name}" in logged[0] and logged[1] == f"resuming from {older}"
    assert not newest.exists() and (newest.parent / f"bad-{newest.name}").is_dir()
    res = sft.train(cfg, tiny_base, tiny_chat_data, out)  # resumes from the older one and finishes
    assert res.metrics["steps"] == first.metrics["steps"]
    assert modeling.checkpoint_problem(out / "checkpoints" / newest.name) is None  # saved again, whole


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
