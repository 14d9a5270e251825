"""Tokenizer, chat template, assistant-only masking, learning to stop, and resume for dSFT."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, TrainerCallback

from zephyr_lib import sft
from zephyr_lib.stages.sft import SFTConfig
from zephyr_lib.generate import ModelAgent
from zephyr_lib.toyworld import World

ZEPHYR = "<|system|>\n</s>\n<|user|>\n{u}</s>\n<|assistant|>\n{a}</s>\n"


def test_chat_template_is_zephyrs_byte_for_byte(tiny_base):
    tok = AutoTokenizer.from_pretrained(tiny_base)  # loads back from save_pretrained
    msgs = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "2 plus 3 is 5."}]
    assert tok.apply_chat_template(msgs, tokenize=False) == ZEPHYR.format(u="What is 2 plus 3?", a="2 plus 3 is 5.")
    gen = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert gen == "<|system|>\n</s>\n<|user|>\nWhat is 2 plus 3?</s>\n<|assistant|>\n"
    with_sys = [{"role": "system", "content": "Be brief."}, *msgs]
    assert tok.apply_chat_template(with_sys, tokenize=False).startswith("<|system|>\nBe brief.</s>\n<|user|>")
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id and tok.eos_token == "</s>"
    ids = tok(gen, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|system|>") and tok.bos_token_id not in ids  # no (double) BOS
    assert tok.decode(ids) == gen


def _cfg(**kw):
    base = dict(learning_rate=3e-3, num_train_epochs=6, per_device_train_batch_size=16, max_length=96,
                logging_steps=5, eval_steps=20, save_steps=20, warmup_ratio=0.1)
    return SFTConfig(**{**base, **kw})


def test_assistant_only_loss_masks_everything_but_answers_and_their_eos(tiny_base, tiny_chat_data, tmp_path):
    from trl import SFTTrainer
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_base)
    train, test = sft.load_sft_data(tiny_chat_data)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_base), args=sft.trl_args(_cfg(), tmp_path),
                         train_dataset=train, eval_dataset=test, processing_class=tok)
    for i in range(5):
        row = trainer.train_dataset[i]
        trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
        answer = train[i]["messages"][-1]["content"]
        assert tok.decode(trained) == answer + "</s>"


class FirstStep(TrainerCallback):
    first = None

    def on_step_begin(self, args, state, control, **kw):
        if self.first is None:
            self.first = state.global_step


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"simulated kill at step {state.global_step}")


@pytest.mark.slow
def test_dsft_learns_to_stop_and_resumes_after_a_kill(tiny_base, tiny_chat_data, tmp_path):
    cfg = _cfg()
    with pytest.raises(KeyboardInterrupt):
        sft.train(cfg, tiny_base, tiny_chat_data, tmp_path, callbacks=[StopAt(25)])
    ckpts = sorted((tmp_path / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-20"]
    first = FirstStep()
    res = sft.train(cfg, tiny_base, tiny_chat_data, tmp_path, callbacks=[first])
    assert first.first == 20, "the rerun resumes from checkpoint-20 instead of starting over"
    steps = [e["step"] for e in res["log_history"] if "loss" in e]
    assert len(steps) == len(set(steps)) and max(steps) <= res["steps"]
    finals = [e for e in res["log_history"] if "eval_loss" in e and e["step"] == res["steps"]]
    assert len(finals) == 1 and finals[0]["eval_loss"] == res["eval_loss"]  # the final evaluation ran once
    state = json.loads((sorted((tmp_path / "checkpoints").glob("checkpoint-*"))[-1] / "trainer_state.json").read_text())
    assert state["global_step"] == res["steps"]
    # the model now answers held-out prompts in the chat format and stops by itself at </s>
    w = World()
    prompts = [[{"role": "user", "content": t.turns[0]}]
               for t in w.tasks(32, seed=99, followups=0, categories=("math", "humanities", "stem"))]
    before = ModelAgent(tiny_base).respond_many(prompts, max_new_tokens=48, return_stopped=True)[1]
    answers, stopped = ModelAgent(tmp_path / "model").respond_many(prompts, max_new_tokens=48, return_stopped=True)
    assert sum(stopped) / len(stopped) >= 0.9 > sum(before) / len(before)
    assert not any("<|user|>" in a or "<|assistant|>" in a for a in answers)


def test_a_paper_scale_base_run_points_at_hub_weights_and_keeps_its_own_tokenizer(tiny_base, tmp_path):
    """The paper profile's base run stores only the tokenizer (Zephyr template, pad != eos) and a
    pointer to the hub weights; training and generation load the weights through the pointer."""
    import shutil

    from zephyr_lib import modeling
    from zephyr_lib.io import write_json

    folder = tmp_path / "base" / "model"
    folder.mkdir(parents=True)
    for f in tiny_base.iterdir():  # the tokenizer files only: stands in for the hub model's tokenizer
        if "token" in f.name or f.suffix == ".jinja":
            shutil.copy(f, folder / f.name)
    write_json(folder / modeling.POINTER, {"pretrained": str(tiny_base), "revision": ""})  # tiny_base plays the hub id
    assert not (folder / "config.json").exists()
    assert modeling.weights_source(folder) == (str(tiny_base), {})
    model, tok = modeling.load_model(folder)
    assert model.config.hidden_size == 64 and tok.chat_template == modeling.CHAT_TEMPLATE


class _Grouping:
    """A stage config with the ``group_by_length`` field set (the field the stage configs carry)."""

    def __init__(self, cfg, on: bool):
        self._cfg = cfg
        self.group_by_length = on

    def __getattr__(self, name):
        return getattr(self._cfg, name)


def test_batches_grouped_by_length_cover_the_epoch_with_far_less_padding(tiny_base, tiny_chat_data, tmp_path):
    """group_by_length (off by default) changes only the order within an epoch: every example
    once, the same number of batches, and much less padding than uniformly random batches."""
    from transformers import AutoModelForCausalLM
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    train, test = sft.load_sft_data(tiny_chat_data)
    stats = {}
    assert sft.trl_args(_cfg(), tmp_path / "default").train_sampling_strategy == "random"
    for name, cfg in (("grouped", _Grouping(_cfg(), True)), ("random", _Grouping(_cfg(), False))):
        trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_base), args=sft.trl_args(cfg, tmp_path / name),
                             train_dataset=train, eval_dataset=test, processing_class=tok)
        sampler = trainer._get_train_sampler()
        order = list(iter(sampler))
        assert sorted(order) == list(range(len(trainer.train_dataset)))  # each example exactly once per epoch
        assert isinstance(sampler, LengthGroupedSampler) == (name == "grouped")
        real = padded = n_batches = 0
        for batch in trainer.get_train_dataloader():
            real += int(batch["attention_mask"].sum())
            padded += batch["attention_mask"].numel()
            n_batches += 1
        stats[name] = (n_batches, real, padded)
    assert stats["grouped"][:2] == stats["random"][:2]  # same batches count, same real tokens
    waste = {k: 1 - real / padded for k, (_, real, padded) in stats.items()}
    assert waste["grouped"] < 0.1 < waste["random"], waste
