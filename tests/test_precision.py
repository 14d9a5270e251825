"""Training precision: `precision: auto` picks bf16 mixed precision where the processor multiplies
bf16 natively and fp32 elsewhere; attention stays fp32 on a CPU; a bf16 run trains, is recorded
as such, and lands where the fp32 run does within bf16's rounding. These run on any CPU (bf16 is
emulated, slower, where it is not native), so an AVX2 machine tests the same code."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from zephyr_lib import modeling, sft
from zephyr_lib.stages.sft import SFTConfig


def test_auto_is_bf16_on_a_bf16_gpu_and_fp32_on_any_cpu(monkeypatch):
    monkeypatch.setattr(modeling, "native_bf16", lambda device="cpu": True)
    assert modeling.resolve_precision("auto", device="cuda") == "bf16"
    assert modeling.resolve_precision("auto", device="cpu") == "fp32"  # measured no faster on the toy model, AMX or not
    monkeypatch.setattr(modeling, "native_bf16", lambda device="cpu": False)
    assert modeling.resolve_precision("auto", device="cuda") == "fp32"  # a GPU without bf16 (e.g. a V100)
    assert modeling.resolve_precision("bf16") == "bf16" and modeling.resolve_precision("FP32") == "fp32"
    with pytest.raises(ValueError, match=r"sft\.precision='half'"):
        modeling.resolve_precision("half", "sft.precision")
    assert SFTConfig(precision="fp32").bf16 is False and SFTConfig(precision="bf16").bf16 is True


def test_native_bf16_reads_the_cpus_matrix_units():
    has = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert modeling.native_bf16("cpu") is has


def test_document_attention_runs_in_fp32_under_cpu_bf16_autocast():
    """Under autocast the projections hand attention bf16 tensors; attention itself runs on their
    fp32 values (the same numbers the fp32 kernel gives those inputs) and returns bf16."""
    gen = torch.Generator().manual_seed(0)
    sizes = [7, 12, 5]
    cu = torch.tensor([0, 7, 19, 24], dtype=torch.int32)
    q, k, v = (torch.randn(1, h, sum(sizes), 8, generator=gen).to(torch.bfloat16) for h in (4, 2, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = modeling.document_sdpa(SimpleNamespace(training=False), q, k, v, None, cu_seq_lens_q=cu)
    ref, _ = modeling.document_sdpa(SimpleNamespace(training=False), q.float(), k.float(), v.float(), None,
                                    cu_seq_lens_q=cu)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref.to(torch.bfloat16))
    # Mistral's rotary embedding hands over q and k in fp32 under autocast, v in bf16: still fp32 inside
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = modeling.document_sdpa(SimpleNamespace(training=False), q.float(), k.float(), v, None,
                                          cu_seq_lens_q=cu)
    assert mixed.dtype == torch.bfloat16 and torch.equal(mixed, ref.to(torch.bfloat16))


def test_fp32_attention_wrapper_matches_transformers_sdpa_outside_bf16():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(1)
    module = SimpleNamespace(training=False, is_causal=True, num_key_value_groups=2)
    q, k, v = (torch.randn(2, h, 10, 8, generator=gen) for h in (4, 2, 2))
    a, _ = modeling.sdpa_fp32(module, q, k, v, None, is_causal=True)
    b, _ = sdpa_attention_forward(module, q, k, v, None, is_causal=True)
    assert torch.equal(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c, _ = modeling.sdpa_fp32(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), None, is_causal=True)
    d, _ = sdpa_attention_forward(module, q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), None,
                                  is_causal=True)
    assert c.dtype == torch.bfloat16 and torch.equal(c, d.to(torch.bfloat16))


def test_a_bf16_dsft_run_trains_records_it_and_lands_near_fp32(tiny_base, tiny_chat_data, tmp_path):
    """Same seed, same data: the bf16 run's losses follow the fp32 run's within bf16 rounding, the
    saved weights stay fp32 (the master copy), and metrics.json says which precision trained."""
    base = dict(learning_rate=3e-3, num_train_epochs=2, per_device_train_batch_size=16, max_length=96,
                logging_steps=2, eval_steps=10, save_steps=100, warmup_ratio=0.1)
    runs = {p: sft.train(SFTConfig(**base, precision=p), tiny_base, tiny_chat_data, tmp_path / p)
            for p in ("fp32", "bf16")}
    assert runs["fp32"].metrics["precision"] == "fp32" and runs["bf16"].metrics["precision"] == "bf16"
    losses = {p: [e["loss"] for e in r.log_history if "loss" in e] for p, r in runs.items()}
    assert losses["bf16"][-1] < 0.8 * losses["bf16"][0]  # it trains
    first, last = runs["fp32"].metrics["eval_loss"], runs["bf16"].metrics["eval_loss"]
    assert abs(first - last) < 0.05 * first, (first, last)
    assert losses["bf16"] != losses["fp32"]  # a real difference: bf16 matmuls ran
    from safetensors.torch import load_file
    weights = load_file(tmp_path / "bf16" / "model" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_a_run_hash_holds_the_precision_the_machine_resolves(monkeypatch):
    """auto hashes as what it resolves to, in the encoding runs had before the setting (``bf16``
    flag): on a machine without native bf16, auto and fp32 are one run, and that run kept its hash."""
    from zephyr_lib.config import config_hash, hashed_config
    from zephyr_lib.stages.base import BaseConfig

    monkeypatch.setattr(modeling, "native_bf16", lambda device="cpu": False)
    auto, fp32, bf16 = (hashed_config(SFTConfig(precision=p)) for p in ("auto", "fp32", "bf16"))
    assert auto == fp32 and fp32["bf16"] is False and "precision" not in fp32 and bf16["bf16"] is True
    assert hashed_config(BaseConfig(precision="auto")) == hashed_config(BaseConfig(precision="fp32"))
    assert "precision" not in hashed_config(BaseConfig())
    monkeypatch.setattr(modeling, "native_bf16", lambda device="cpu": True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a bf16 GPU: auto resolves to bf16
    assert config_hash(hashed_config(SFTConfig())) == config_hash(bf16) != config_hash(fp32)
    assert hashed_config(BaseConfig())["precision"] == "bf16"
    assert "precision" not in hashed_config(BaseConfig(pretrained="mistralai/Mistral-7B-v0.1"))  # nothing trains
