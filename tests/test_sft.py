"""Tokenizer, chat template, assistant-only masking, learning to stop, and resume for dSFT."""
from __future__ import annotations

import contextlib
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
                logging_steps=5, eval_steps=20, save_steps=20, warmup_ratio=0.1, precision="fp32")
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
    steps = [e["step"] for e in res.log_history if "loss" in e]
    assert len(steps) == len(set(steps)) and max(steps) <= res.metrics["steps"]
    finals = [e for e in res.log_history if "eval_loss" in e and e["step"] == res.metrics["steps"]]
    assert len(finals) == 1 and finals[0]["eval_loss"] == res.metrics["eval_loss"]  # the final evaluation ran once
    state = json.loads((sorted((tmp_path / "checkpoints").glob("checkpoint-*"))[-1] / "trainer_state.json").read_text())
    assert state["global_step"] == res.metrics["steps"]
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


def test_padding_free_batches_give_the_padded_loss_and_gradients_without_the_padding(tiny_base, tiny_chat_data, tmp_path):
    """The default batches are padding-free (one row, examples back to back, attention inside each
    example): the same examples, the same loss and the same gradients as the padded batch within
    float tolerance, over fewer positions. Attention leaking across examples would change both."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from zephyr_lib import modeling

    tok = AutoTokenizer.from_pretrained(tiny_base)
    train, test = sft.load_sft_data(tiny_chat_data)
    results = {}
    for name, cfg in (("padded", _cfg(padding_free=False)), ("padding_free", _cfg())):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_base)
        if name == "padding_free":
            model.set_attn_implementation(modeling.register_document_attention())
        trainer = SFTTrainer(model=model, args=sft.trl_args(cfg, tmp_path / name), train_dataset=train,
                             eval_dataset=test, processing_class=tok)
        batch = next(iter(trainer.get_train_dataloader()))
        model.train()
        loss = model(**{k: v for k, v in batch.items() if k != "attention_mask" or name == "padded"}).loss
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[name] = (loss.item(), grad, batch["input_ids"].numel(), int((batch["labels"] != -100).sum()))
    (l_pad, g_pad, n_pad, k_pad), (l_free, g_free, n_free, k_free) = results["padded"], results["padding_free"]
    assert k_pad == k_free  # the same tokens carry loss
    assert n_free < n_pad  # ...in fewer positions: no padding
    assert abs(l_pad - l_free) < 1e-5 * abs(l_pad)
    assert torch.allclose(g_pad, g_free, rtol=1e-4, atol=1e-6)
    # and the same thing with attention across examples (the dense sdpa path on the same packed row) differs
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    flat = {k: batch[k] for k in ("input_ids", "labels")}
    assert abs(model(**flat).loss.item() - l_free) > 1e-3


def test_trls_head_scores_only_the_tokens_that_carry_loss(tiny_base, tiny_chat_data, tmp_path, lm_head_rows):
    """modeling.labelled_positions_only: SFTTrainer's own loss and gradients on a padding-free batch
    are those TRL computes over every position, within float rounding, while its LM head scores
    only the positions with a label (assistant tokens); the switch is restored on exit."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer
    from trl.trainer import utils as trl_utils

    from zephyr_lib import modeling

    tok = AutoTokenizer.from_pretrained(tiny_base)
    train, test = sft.load_sft_data(tiny_chat_data)
    results = {}
    for name in ("every position", "labelled only"):
        model = AutoModelForCausalLM.from_pretrained(tiny_base)
        model.set_attn_implementation(modeling.register_document_attention())
        trainer = SFTTrainer(model=model, args=sft.trl_args(_cfg(), tmp_path / name.replace(" ", "_")),
                             train_dataset=train, eval_dataset=test, processing_class=tok)
        torch.manual_seed(0)
        batch = next(iter(trainer.get_train_dataloader()))
        model.train()
        with modeling.labelled_positions_only() if name == "labelled only" else contextlib.nullcontext():
            loss = trainer.compute_loss(model, batch)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[name] = (loss.item(), grad, lm_head_rows[-1])
    assert trl_utils._use_triton(torch.device("cpu")) is False
    (l_all, g_all, n_all), (l_lab, g_lab, n_lab) = results["every position"], results["labelled only"]
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert n_all == batch["input_ids"].shape[1] - 1 and n_lab == labelled < n_all
    assert abs(l_all - l_lab) < 1e-5 * abs(l_all)
    assert torch.allclose(g_all, g_lab, rtol=1e-4, atol=1e-6)


def test_document_attention_is_each_documents_own_attention_bit_for_bit():
    """document_sdpa on a row of documents gives, bit for bit, the outputs and the gradients of
    causal attention run on each document as its own tensor (grouped-query heads, as the toy model)."""
    from types import SimpleNamespace

    import torch
    import torch.nn.functional as F

    from zephyr_lib import modeling

    gen = torch.Generator().manual_seed(0)
    sizes = [5, 1, 17, 9, 30]
    cu = torch.tensor([0] + list(torch.tensor(sizes).cumsum(0)), dtype=torch.int32)
    q0, k0, v0 = (torch.randn(1, h, sum(sizes), 8, generator=gen) for h in (6, 2, 2))
    up = torch.randn(1, sum(sizes), 6, 8, generator=gen)
    q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
    out, _ = modeling.document_sdpa(SimpleNamespace(training=True), q, k, v, None, cu_seq_lens_q=cu)
    (out * up).sum().backward()
    start = 0
    for n in sizes:
        qd, kd, vd = (t[:, :, start:start + n].clone().requires_grad_() for t in (q0, k0, v0))
        od = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=True).transpose(1, 2)
        (od * up[:, start:start + n]).sum().backward()
        assert torch.equal(out[:, start:start + n], od)
        for whole, part in ((q, qd), (k, kd), (v, vd)):
            assert torch.equal(whole.grad[:, :, start:start + n], part.grad)
        start += n


def test_document_attention_refuses_what_it_cannot_do_right(tiny_base):
    """Several padded rows, or decoding with a cache, would silently attend wrongly: both raise."""
    import torch
    from transformers import AutoModelForCausalLM

    from zephyr_lib import modeling

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    model.set_attn_implementation(modeling.register_document_attention())
    with pytest.raises(RuntimeError, match="padding-free batch"):
        model(input_ids=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(RuntimeError, match="not for decoding"):
        model.generate(input_ids=torch.ones(1, 5, dtype=torch.long), max_new_tokens=3, min_new_tokens=3)


def test_padding_free_truncates_to_max_length_as_trl_would(tiny_base, tiny_chat_data, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    train, test = sft.load_sft_data(tiny_chat_data)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_base), args=sft.trl_args(_cfg(), tmp_path),
                         train_dataset=train, eval_dataset=test, processing_class=tok)
    longest = max(len(r) for r in trainer.train_dataset["input_ids"])
    cut = sft.truncate_prepared(trainer.train_dataset, longest - 3)
    assert max(len(r) for r in cut["input_ids"]) == longest - 3
    assert all(len(r["input_ids"]) == len(r[c]) for r in cut for c in cut.column_names if c != "messages" and isinstance(r[c], list))
    assert sft.truncate_prepared(trainer.train_dataset, longest) is trainer.train_dataset  # nothing to cut: unchanged
