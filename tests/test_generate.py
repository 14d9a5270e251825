"""The shared batched generation helper against a per-prompt loop: the same greedy text, in the
caller's order, whatever the batch size and the prompts' lengths."""
from __future__ import annotations

from zephyr_lib.bench import generate_loop
from zephyr_lib.generate import ModelAgent, chat_generate
from zephyr_lib.toyworld import World


def test_batched_greedy_generation_equals_the_per_prompt_loop(tiny_base):
    agent = ModelAgent(tiny_base, batch_size=5)
    w = World()
    convs = [[{"role": "user", "content": t.turns[0]}] for t in w.tasks(12, seed=7, followups=0)]
    convs.append([{"role": "user", "content": "Hi"}])  # a much shorter prompt: heavy left padding in its batch
    lengths = {len(agent.tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in convs}
    assert len(lengths) > 3  # the batches really mix lengths
    looped = generate_loop(agent.model, agent.tokenizer, convs, max_new_tokens=12)
    batched, stopped = agent.respond_many(convs, max_new_tokens=12, return_stopped=True)
    assert batched == looped
    assert len(stopped) == len(convs)
    assert chat_generate(agent.model, agent.tokenizer, convs[::-1], max_new_tokens=12, batch_size=32, desc=False) == looped[::-1]
    assert agent.tokenizer.padding_side == "right"  # restored after generating
