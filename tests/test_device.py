"""Device placement wherever a model runs (generation, held-out probes, lm-eval) and the GPU
memory plan between vLLM and lm-eval, checked on CPU with a tiny real model."""
from __future__ import annotations

import pytest
import torch

from zephyr_lib import modeling, vllm_backend
from zephyr_lib.generate import ModelAgent, chat_generate


def test_resolve_device_and_dtype(monkeypatch):
    assert modeling.resolve_device("cpu") == "cpu"
    assert modeling.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert modeling.default_dtype("cuda:1") is torch.bfloat16 and modeling.default_dtype("cpu") is torch.float32
    with pytest.raises(ValueError, match=r"eval.device='tpu': expected one of \('auto', 'cpu', 'cuda'\)"):
        modeling.resolve_device("tpu", "eval.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert modeling.resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match=r"eval.device='cuda': no CUDA device is visible on this machine .* "
                                         r"set eval.device to 'auto' or 'cpu'"):
        modeling.resolve_device("cuda", "eval.device")


def test_load_model_moves_the_model_to_the_configured_device(tiny_base, monkeypatch):
    model, tok = modeling.load_model(tiny_base, device="cpu")
    assert next(model.parameters()).device == torch.device("cpu")
    assert next(model.parameters()).dtype is torch.float32 and not model.training
    # the model really is moved: .to() gets the resolved device
    moved = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or real_to(self, *a, **k))
    modeling.load_model(tiny_base, device="auto")
    assert moved and moved[-1] == (("cuda" if torch.cuda.is_available() else "cpu"),)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"sft.probe_device='cuda': no CUDA device"):
        modeling.load_model(tiny_base, device="cuda", setting="sft.probe_device")


def _flash_attn_installed(monkeypatch, installed: bool) -> None:
    """Make the flash_attn package look installed (or not) to modeling.resolve_attn_implementation."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: (object() if installed else None) if name == "flash_attn" else real(name, *a, **k))


def test_attention_setting_is_sdpa_here_and_flash_attention_2_only_where_installed(tiny_base, monkeypatch):
    import importlib.util

    here = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
    assert modeling.resolve_attn_implementation("auto") == ("flash_attention_2" if here else "sdpa")
    model, _ = modeling.load_model(tiny_base, device="cpu")  # the default: auto
    assert model.config._attn_implementation == ("flash_attention_2" if here else "sdpa")
    agent = ModelAgent(tiny_base, device="cpu", attn_implementation="eager")
    assert agent.attn_implementation == agent.model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match=r"^eval.attn_implementation='flash': expected one of \('auto', 'sdpa', "):
        modeling.resolve_attn_implementation("flash", "eval.attn_implementation")
    # auto: flash_attention_2 only with the package AND a GPU
    _flash_attn_installed(monkeypatch, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert modeling.resolve_attn_implementation("auto") == "flash_attention_2"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert modeling.resolve_attn_implementation("auto") == "sdpa"
    with pytest.raises(ValueError, match=r"^dpo.attn_implementation='flash_attention_2': no CUDA device is visible"):
        modeling.resolve_attn_implementation("flash_attention_2", "dpo.attn_implementation")
    # asked for explicitly without the package: one line naming the setting, never a fall-back
    _flash_attn_installed(monkeypatch, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert modeling.resolve_attn_implementation("auto") == "sdpa"
    with pytest.raises(ValueError) as err:
        modeling.resolve_attn_implementation("flash_attention_2", "sft.attn_implementation")
    assert str(err.value).startswith("sft.attn_implementation='flash_attention_2': the flash_attn package is not "
                                     "importable here") and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^attn_implementation='flash_attention_2': the flash_attn package"):
        ModelAgent(tiny_base, device="cpu", attn_implementation="flash_attention_2")


def test_training_refuses_flash_attention_2_without_the_package_before_loading_anything(tiny_base, tmp_path, monkeypatch):
    from zephyr_lib import dpo, sft
    from zephyr_lib.config import ConfigError, build, hashed_config
    from zephyr_lib.stages.dpo import DPOConfig
    from zephyr_lib.stages.sft import SFTConfig

    _flash_attn_installed(monkeypatch, False)
    missing = tmp_path / "no-data"  # never read: the setting is checked first
    with pytest.raises(ValueError, match=r"^sft.attn_implementation='flash_attention_2': the flash_attn package"):
        sft.train(SFTConfig(attn_implementation="flash_attention_2"), tiny_base, missing, tmp_path / "sft")
    with pytest.raises(ValueError, match=r"^dpo.attn_implementation='flash_attention_2': the flash_attn package"):
        dpo.train(DPOConfig(attn_implementation="flash_attention_2"), tiny_base, missing, tmp_path / "dpo")
    with pytest.raises(ConfigError, match=r"^sft: attn_implementation must be one of auto, sdpa, flash_attention_2, eager"):
        build(SFTConfig, {"attn_implementation": "flash2"}, "sft")
    # the default keeps every earlier run's hash; another value is part of the hash
    assert "attn_implementation" not in hashed_config(SFTConfig())
    assert hashed_config(SFTConfig(attn_implementation="sdpa"))["attn_implementation"] == "sdpa"


def test_generation_inputs_follow_the_models_device(tiny_base):
    """chat_generate moves the tokenized batch to model.device (here a meta-free CPU model whose
    .device is checked on every generate call)."""
    agent = ModelAgent(tiny_base, name="tiny", device="cpu", batch_size=2)
    seen = []
    real = agent.model.generate

    def spy(**kw):
        seen.append({k: v.device for k, v in kw.items() if isinstance(v, torch.Tensor)})
        return real(**kw)

    agent.model.generate = spy
    out = agent.respond_many([[{"role": "user", "content": "Hi"}]] * 3, max_new_tokens=4)
    assert len(out) == 3 and len(seen) == 2
    assert all(d == agent.model.device for call in seen for d in call.values())
    assert set(seen[0]) == {"input_ids", "attention_mask"}
    assert chat_generate(agent.model, agent.tokenizer, [[{"role": "user", "content": "Hi"}]], max_new_tokens=4,
                         desc=False) == out[:1]


def test_lm_eval_runner_gets_the_device_and_dtype(tiny_base, tmp_path, monkeypatch):
    import lm_eval

    from zephyr_lib.evals import leaderboard as lb

    rows = [{"question": "Is the sky blue?", "choices": ["yes", "no"], "answer": 0}]
    lb.write_mc_task(tmp_path, "toy_arc", rows, "arc")
    calls = []
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: calls.append(kw) or {"results": {}, "n-samples": {}})
    lb.run_lm_eval(tiny_base, tmp_path, ["toy_arc"], device="cpu")
    assert calls[-1]["device"] == "cpu" and ",dtype=float32" in calls[-1]["model_args"]
    lb.run_lm_eval(tiny_base, tmp_path, ["toy_arc"])  # auto
    assert calls[-1]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"eval.device='cuda': no CUDA device"):
        lb.run_lm_eval(tiny_base, tmp_path, ["toy_arc"], device="cuda")
    with pytest.raises(ValueError, match=r"eval.device='cuda': no CUDA device"):
        lb.run_paper_leaderboard(tiny_base, device="cuda")
    assert len(calls) == 2


def test_memory_plan_never_holds_vllm_and_lm_eval_together():
    plan = vllm_backend.memory_plan(["mt_bench", "alpaca_eval", "leaderboard"], use_vllm=True, gpu_memory_utilization=0.85)
    assert plan == {"steps": ["mt_bench", "alpaca_eval", "release", "leaderboard"], "gpu_memory_utilization": 0.85}
    # the config's order does not matter: generation first, then the release, then lm-eval
    assert vllm_backend.memory_plan(["leaderboard", "mt_bench"], use_vllm=False)["steps"] == \
        ["mt_bench", "release", "leaderboard"]
    assert vllm_backend.memory_plan(["leaderboard"], use_vllm=True) == {"steps": ["leaderboard"],
                                                                         "gpu_memory_utilization": None}
    assert vllm_backend.memory_plan(["alpaca_eval"], use_vllm=True)["steps"] == ["alpaca_eval"]
    # a 7B model in bf16 is ~14.5 GB of weights: 0.9 of an 80 GB A100 holds it, 0.15 does not
    vllm_backend.memory_plan(["mt_bench"], use_vllm=True, gpu_memory_utilization=0.9, gpu_gib=80, model_gib=14.5)
    with pytest.raises(ValueError, match=r"eval.vllm_gpu_memory_utilization=0.15: vLLM would get 12.0 GiB"):
        vllm_backend.memory_plan(["mt_bench"], use_vllm=True, gpu_memory_utilization=0.15, gpu_gib=80, model_gib=14.5)
    with pytest.raises(ValueError, match=r"eval.vllm_gpu_memory_utilization=1.5: must be in \(0, 1\]"):
        vllm_backend.memory_plan(["mt_bench"], use_vllm=True, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="unknown benchmark"):
        vllm_backend.memory_plan(["mmlu"], use_vllm=True)


def test_release_frees_the_agents_model(tiny_base):
    import gc
    import weakref

    agent = ModelAgent(tiny_base, name="tiny", device="cpu")
    ref = weakref.ref(agent.model)
    vllm_backend.release(agent)
    gc.collect()
    assert agent.model is None and ref() is None  # nothing holds the weights any more
    with pytest.raises(RuntimeError, match="tiny: the model was released"):
        agent.respond_many([[{"role": "user", "content": "Hi"}]])


def test_generation_agent_places_the_transformers_model(tiny_base, monkeypatch):
    agent = vllm_backend.generation_agent(tiny_base, name="tiny", backend="transformers", device="cpu")
    assert next(agent.model.parameters()).device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda': no CUDA device"):
        vllm_backend.generation_agent(tiny_base, name="tiny", backend="auto", device="cuda")
