"""Stage `base`: the toy base model, and the model/tokenizer plumbing shared by later stages.

In the toy profile nothing can be downloaded, so the base model is made here, honestly:
a byte-level BPE tokenizer trained with `tokenizers` on the toy world's text, and a small
``MistralForCausalLM`` (Mistral-7B's architecture family: RoPE, RMSNorm, SwiGLU, grouped-query
attention) pretrained with causal-LM loss on plain, non-chat text. It knows the world's facts
but not the chat format; dSFT teaches that. In the paper profile the stage only records the
hub model (``mistralai/Mistral-7B-v0.1``) and gives its tokenizer the Zephyr chat template.

Tokenizer conventions (see PAPER.md §2 and §6): eos ``</s>`` closes every turn, the pad token
``<pad>`` is distinct from eos (pad = eos would mask the eos label and the model would never
learn to stop), no BOS is added (so there is no double BOS), and the role markers are single
tokens.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

EOS, PAD, UNK, BOS = "</s>", "<pad>", "<unk>", "<s>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# The Zephyr template (PAPER.md §2); {% generation %} marks what assistant-only loss trains on,
# with the eos inside so the model learns to stop.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|system|>\n' + eos_token + '\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def set_threads() -> None:
    """Use every core for intra-op parallelism (the machines here have 2)."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    """Byte-level BPE on `texts`, wrapped as a transformers fast tokenizer and saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, BOS, UNK],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=BOS,
                                   unk_token=UNK, padding_side="right", clean_up_tokenization_spaces=False)
    fast.add_tokens(list(ROLE_TOKENS))  # single tokens, but not "special": decoding keeps them visible
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    fast.save_pretrained(out_dir)
    return fast


def build_model(tokenizer, cfg):
    """A small MistralForCausalLM sized by the profile's BaseConfig."""
    from transformers import MistralConfig, MistralForCausalLM

    mc = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        sliding_window=None, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = MistralForCausalLM(mc)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def pack_blocks(tokenizer, docs: list[str], seq_len: int) -> list[list[int]]:
    """Concatenate documents (each closed by eos) and cut into blocks of `seq_len` tokens."""
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc + [tokenizer.eos_token_id])
    return [ids[i: i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]


def pretrain(model, tokenizer, train_blocks, eval_blocks, cfg, out_dir: Path, log=print,
             callbacks: list | None = None) -> dict:
    """Causal-LM pretraining with transformers' Trainer (checkpoints in out_dir/checkpoints).
    ``callbacks`` are extra TrainerCallbacks (the bench times the training loop with one)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    def ds(blocks):
        return Dataset.from_dict({"input_ids": blocks, "labels": blocks,
                                  "attention_mask": [[1] * len(b) for b in blocks]})

    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, num_train_epochs=cfg.num_train_epochs,
        learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio,  # v5: a float < 1 is a ratio
        weight_decay=0.01, logging_steps=5, eval_strategy="steps",
        eval_steps=max(5, int(len(train_blocks) * cfg.num_train_epochs / cfg.batch_size / 6)),
        save_strategy="steps", save_steps=50, save_total_limit=1, report_to=[], use_cpu=True,
        seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=0, disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds(train_blocks), eval_dataset=ds(eval_blocks),
                      data_collator=default_data_collator, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=last_checkpoint(out_dir / "checkpoints"))
    final = trainer.evaluate()
    return {"log_history": trainer.state.log_history, "eval_loss": final["eval_loss"],
            "eval_perplexity": math.exp(final["eval_loss"]), "steps": trainer.state.global_step}


def last_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint-N in `folder` whose trainer state was fully written, if any."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


POINTER = "zephyr_pretrained.json"  # in a base run's model folder when the weights live on the hub


def weights_source(path: str | Path) -> tuple[str, dict]:
    """(where the weights are, from_pretrained kwargs). A paper-scale base run saves only the
    tokenizer (with the Zephyr template and a pad token) plus a pointer to the hub weights."""
    pointer = Path(path) / POINTER
    if pointer.is_file():
        ref = json.loads(pointer.read_text())
        return ref["pretrained"], ({"revision": ref["revision"]} if ref.get("revision") else {})
    return str(path), {}


def load_model(path: str | Path, dtype=torch.float32):
    """A causal LM and its tokenizer from a local folder or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    source, kwargs = weights_source(path)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    model.eval()
    return model, tok
