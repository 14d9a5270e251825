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
