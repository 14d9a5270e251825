"""The speed benchmark: it runs end to end at tiny sizes and writes bench.json and the book page;
its pieces (loss-token count, FLOP formula, runner-output parser) are checked on real inputs.
No timing is asserted: timings belong to `python -m zephyr_lib bench`, not to pass/fail."""
from __future__ import annotations

import json
import math

import pytest

from zephyr_lib import bench, sft
from zephyr_lib.stages.sft import SFTConfig

TINY = bench.BenchSizes(pretrain_steps=2, sft_steps=2, sft_test=8, dpo_steps=2, dpo_test=8, n_generate=4,
                        max_new_tokens=8)


def test_loss_tokens_counts_exactly_what_trl_trains_on(tiny_base, tiny_chat_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    train, test = sft.load_sft_data(tiny_chat_data, max_train_samples=40)
    cfg = SFTConfig(max_length=48, max_train_samples=40)  # short: some answers are cut by max_length
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_base), args=sft.trl_args(cfg, tmp_path),
                         train_dataset=train, eval_dataset=test, processing_class=tok)
    prepared = sft.truncate_prepared(trainer.train_dataset, cfg.max_length)  # as sft.train does (padding-free batches)
    collate = trainer.data_collator
    labels = collate([prepared[i] for i in range(len(prepared))])["labels"]
    # the causal shift: position 0 is never predicted (padding-free: every example's first label is -100 already)
    trained = int((labels[:, 1:] != -100).sum())
    assert bench.loss_tokens(tok, train["messages"], 48) == trained
    assert bench.loss_tokens(tok, train["messages"], 4096) > trained  # the cut really removed loss tokens


def test_flops_per_token_is_palms_formula():
    from transformers import MistralConfig

    c = MistralConfig(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100)
    assert bench.flops_per_token(c, seq_len=32, n_params=1000) == 6 * 1000 + 12 * 2 * 64 * 32


def test_parse_runner_output_reads_the_runner_lines():
    text = ("[1/3] base (base @ 1a2b3c4d5e6f): started\n[1/3] base (base @ 1a2b3c4d5e6f): cached\n"
            "[2/3] sft (sft @ 0a1b2c3d4e5f): started\n[2/3] sft (sft @ 0a1b2c3d4e5f): done in 12.5 s\n"
            "[3/3] eval (eval @ ffeeddccbbaa): cached\n"
            "[4/4] results (results @ 0123456789ab): page rendered in 3.5 s (run cached)\nprofile toy: 4 runs in 16.5 s\n")
    assert bench.parse_runner_output(text) == {"cached": ["base", "eval"], "executed": {"sft": 12.5},
                                               "rendered": {"results": 3.5}}


def test_performance_page_without_a_bench_says_so(tmp_path):
    page = bench.write_performance_page(tmp_path / "bench.json", tmp_path / "gen")
    text = page.read_text()
    assert "No benchmark has run" in text and "python -m zephyr_lib bench" in text
    assert not (tmp_path / "gen" / bench.GENERATED_PNG).exists()


def test_matmul_rate_is_a_positive_finite_rate():
    rate = bench.matmul_rate(n=128, seconds=0.05)
    assert math.isfinite(rate) and rate > 0


def test_a_runs_rate_is_the_one_recorded_beside_it_in_its_precision():
    man = {"machine": {"matmul_gflops": {"start": {"fp32": 400.0, "bf16": 2500.0}, "end": {"fp32": 380.0, "bf16": 2400.0}}}}
    assert bench.run_rate(man, "fp32") == (390e9, True)
    assert bench.run_rate(man, "bf16") == (2450e9, True)
    busy = {"machine": {"matmul_gflops": {"start": {"fp32": 400.0}, "end": {"fp32": 100.0}}}}
    assert bench.run_rate(busy, "fp32") == (250e9, False)  # load came or went during the run: unsteady
    assert bench.run_rate(busy, "bf16") == (None, False)  # not measured in that precision
    assert bench.run_rate({"machine": {}}, "fp32") == (None, False)  # stored before rates were recorded


def test_floor_summary_names_unsteady_runs_and_the_whole_builds_ratio():
    f = {"flops": 3e14, "floor_s": 600.0, "precisions": ["bf16"], "build_s": 1500.0, "build_ratio": 2.5,
         "unsteady": ["sft"], "rates_not_recorded": [],
         "runs": [{"wall_s": 700.0}, {"wall_s": 500.0}]}
    text = bench.floor_summary(f)
    assert "10.0 min" in text and "(bf16)" in text and "20.0 min (50% of the rate)" in text
    assert "25.0 min = 2.5× the floor" in text and "Unreliable" in text and "sft" in text
    assert "bf16 matmul rate" not in text
    f.update(precisions=["fp32"], bf16_floor_s=90.0)
    assert "bf16 matmul rate, recorded beside each run, the same FLOPs would take 1.5 min" in bench.floor_summary(f)


def test_a_measurement_in_its_own_process_reports_a_clear_error(tmp_path):
    (tmp_path / "inputs").mkdir()
    with pytest.raises(RuntimeError, match="measurement 'sft_ours' failed"):
        bench.in_child("sft_ours", profile="smoke", sizes=TINY, inputs=tmp_path / "inputs", out=tmp_path / "out")


def test_bench_repeats_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="--repeats"):
        bench.run_bench("smoke", repeats=0, out=tmp_path / "b.json", sizes=TINY, rerun=False)


@pytest.mark.slow
def test_tiny_bench_runs_end_to_end_and_writes_json_table_and_page(tmp_path, capsys):
    out = tmp_path / "bench.json"
    res = bench.run_bench("smoke", repeats=1, out=out, sizes=TINY, rerun=False, work=tmp_path / "work", isolate=False)
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res))
    assert set(data) >= {"profile", "repeats", "sizes", "machine", "sft", "dpo", "generate", "pretrain", "rerun",
                         "ratios", "targets"}
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["matmul_flops_per_s"] > 0
    # both sides of each comparison ran the same number of optimizer steps
    assert data["sft"]["ours"]["steps"] == data["sft"]["trl"]["steps"] == 2
    assert data["dpo"]["ours"]["steps"] == data["dpo"]["trl"]["steps"] == 2
    assert data["pretrain"]["steps"] == 2 and data["pretrain"]["tokens"] == 2 * 32 * 64  # smoke: batch 32, seq 64
    for side in ("ours", "trl"):
        assert math.isfinite(data["sft"][side]["eval_loss"]) and data["sft"][side]["useful_tokens_per_s"] > 0
        assert 0 <= data["dpo"][side]["reward_accuracy"] <= 1 and data["dpo"][side]["pairs_per_s"] > 0
    # the frozen reference precomputed once is the same computation as TRL's per-step reference
    assert data["dpo"]["ours"]["eval_loss"] == pytest.approx(data["dpo"]["trl"]["eval_loss"], abs=1e-4)
    assert data["generate"]["n_prompts"] == 4 and data["generate"]["ratio"] > 0
    assert data["rerun"] == {"measured": False, "reason": "skipped (--no-rerun)"}
    assert set(data["ratios"]) == set(data["targets"]) and len(data["ratios"]) == 4
    printed = capsys.readouterr().out
    for row in ("dSFT useful tokens/s", "dDPO pairs/s", "generation", "base pretraining tokens/s", "unchanged rerun"):
        assert row in printed
    page = bench.write_performance_page(out, tmp_path / "gen")
    text = page.read_text()
    assert data["machine"]["cpu"] and data["machine"]["cpu"] in text  # the processor is named beside the numbers
    assert "| dSFT useful tokens/s |" in text and "GFLOP/s" in text and "not measured" in text
    png = (tmp_path / "gen" / bench.GENERATED_PNG).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
