"""The agents' one protocol: every kind the one factory (``agents.make_agent``) returns satisfies
:class:`zephyr_lib.agent.Agent` (runtime-checked), and answers ``return_stopped=True`` as declared."""
from __future__ import annotations

import sys
import types

import pytest

from zephyr_lib import agents, store, vllm_backend
from zephyr_lib.agent import Agent
from zephyr_lib.plan import load_profile
from zephyr_lib.toyworld import ToyAgent, agent_profiles, shared_world


@pytest.fixture
def ctx(tmp_path, tiny_base, monkeypatch):
    c = store.context(load_profile("smoke"), "eval", tmp_path)
    monkeypatch.setattr(type(c), "resolve", lambda self, ref: tiny_base)  # every run reference: the tiny model
    return c


def _convs(ctx, n=3):
    tasks = shared_world(ctx.world).tasks(n, seed=0, followups=0, prefix="agents-test")
    return [[{"role": "user", "content": t.turns[0]}] for t in tasks]


def test_protocol_is_the_one_agents_reexports():
    assert agents.Agent is Agent
    assert not hasattr(sys.modules["zephyr_lib.toyworld.agents"], "make_agent")  # one factory
    assert not hasattr(sys.modules["zephyr_lib.toyworld.agents"], "Agent")  # one Agent (the protocol)


def test_every_toy_agent_satisfies_the_protocol(ctx):
    convs = _convs(ctx)
    for name in agent_profiles(ctx.world):
        agent = agents.make_agent(ctx, name, seed=0)
        assert isinstance(agent, ToyAgent) and isinstance(agent, Agent) and agent.path is None
        texts = agent.respond_many(convs, max_new_tokens=8, temperature=0.7, desc=False)
        texts2, stopped = agent.respond_many(convs, return_stopped=True)
        assert texts == texts2 and len(texts) == len(convs) and stopped == [True] * len(convs)


def test_an_endpoint_agent_satisfies_the_protocol(ctx):
    agent = agents.make_agent(ctx, "endpoint:toy")
    assert isinstance(agent, agents.OpenAIAgent) and isinstance(agent, Agent) and agent.path is None
    with pytest.raises(NotImplementedError, match="stopped"):  # declared, and it cannot know
        agent.respond_many(_convs(ctx, 1), return_stopped=True)
    with pytest.raises(NotImplementedError, match="top_p"):
        agent.respond_many(_convs(ctx, 1), top_p=0.9)


def test_a_trained_model_agent_satisfies_the_protocol(ctx, tiny_base):
    from zephyr_lib.generate import ModelAgent

    agent = agents.make_agent(ctx, "sft", batch_size=2, device="cpu")
    assert isinstance(agent, ModelAgent) and isinstance(agent, Agent) and agent.path == tiny_base
    convs = _convs(ctx, 2)
    texts, stopped = agent.respond_many(convs, max_new_tokens=3, return_stopped=True, desc=False)
    assert texts == agent.respond_many(convs, max_new_tokens=3, desc=False) and len(stopped) == 2
    assert all(isinstance(s, bool) for s in stopped)


def test_a_vllm_agent_satisfies_the_protocol(ctx, tiny_base, monkeypatch):
    """Not vLLM itself: a stand-in module (as in test_teacher_loops)."""
    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, **kw):
            pass

        def generate(self, prompts, params, use_tqdm=True):
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="x", finish_reason="stop")])
                    for _ in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    monkeypatch.setattr(vllm_backend, "_vllm_installed", lambda: True)
    monkeypatch.setattr(vllm_backend, "_cuda", lambda: True)
    agent = agents.make_agent(ctx, "dpo")
    assert isinstance(agent, vllm_backend.VLLMAgent) and isinstance(agent, Agent)
    assert agent.respond_many(_convs(ctx, 2), return_stopped=True) == (["x", "x"], [True, True])


def test_weights_only_names_weights_and_answers_nothing(tiny_base):
    w = agents.WeightsOnly("sft", tiny_base)
    assert isinstance(w, Agent) and w.path == tiny_base
    with pytest.raises(TypeError, match="answers no prompts"):
        w.respond_many([[{"role": "user", "content": "hi"}]])
