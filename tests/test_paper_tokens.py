"""Packing and BOS as the paper had them: Mistral's <s> once per sequence through the paths the
project tokenizes with, and TRL 1.16's "wrapped" packing keeping every token (as TRL 0.7's
ConstantLengthDataset did) where the default "bfd" truncates long dialogues."""
from __future__ import annotations

from pathlib import Path

import pytest

from zephyr_lib import modeling

FIX = Path(__file__).resolve().parent / "fixtures" / "curate" / "ultrachat_200k_test_sft.jsonl"


@pytest.fixture()
def mistral_like(tiny_base):
    """The tiny tokenizer, made to add <s> on its own like Mistral's (a TemplateProcessing
    post-processor "<s> $A"), with no pad token, as Mistral-7B-v0.1's tokenizer ships."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    tok.pad_token = None
    assert tok("Hello")["input_ids"][0] == bos  # adds its own BOS by default
    return tok


def test_paper_template_gives_exactly_one_bos(mistral_like):
    tok = modeling.prepare_hub_tokenizer(mistral_like, "tiny-mistral")
    assert tok.pad_token == tok.unk_token != tok.eos_token
    assert tok.chat_template == modeling.CHAT_TEMPLATE_BOS
    counts = modeling.check_single_bos(tok)
    # TRL and generation: one; the tokenizer's own special tokens on top would make it two
    assert counts == {"train": 1, "generate": 1, "encode_default": 2}
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=True, add_generation_prompt=True,
                                  return_dict=True)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids[:2]) == "<s><|system|>"
    # the toy template has no BOS at all: at paper scale that is refused
    tok.chat_template = modeling.chat_template(bos=False)
    with pytest.raises(ValueError, match=r"tiny-mistral: expected exactly one BOS \('<s>'\) per sequence, got "
                                         r"\{'train': 0, 'generate': 0\}"):
        modeling.check_single_bos(tok, "tiny-mistral")
    # a template that adds BOS twice is refused too
    tok.chat_template = "{{ bos_token }}" + modeling.CHAT_TEMPLATE_BOS
    with pytest.raises(ValueError, match=r"got \{'train': 2, 'generate': 2\}"):
        modeling.check_single_bos(tok)


def test_toy_tokenizer_unchanged(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    assert tok.chat_template == modeling.CHAT_TEMPLATE == modeling.chat_template()
    assert modeling.bos_counts(tok) == {"train": 0, "generate": 0, "encode_default": 0}


def test_wrapped_packing_keeps_every_token_bfd_truncates(mistral_like):
    """TRL 1.16 pack_dataset: "wrapped" concatenates and cuts into max_length blocks with no token
    lost (TRL 0.7's packing, which the paper used); "bfd" (the default) truncates each dialogue
    longer than max_length."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    from zephyr_lib.curate import load_ultrachat_200k

    tok = modeling.prepare_hub_tokenizer(mistral_like, "tiny-mistral")
    rows = load_ultrachat_200k(FIX, split="test_sft")
    ids = [tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"] for r in rows]
    lengths = [len(x) for x in ids]
    assert all(x[0] == tok.bos_token_id for x in ids) and sum(x.count(tok.bos_token_id) for x in ids) == len(ids)
    block = 32
    assert max(lengths) > block  # some dialogues are longer than a block
    ds = Dataset.from_dict({"input_ids": ids})
    wrapped = pack_dataset(ds, block, strategy="wrapped")["input_ids"]
    assert [t for b in wrapped for t in b] == [t for x in ids for t in x]  # every token, in order
    assert all(len(b) == block for b in wrapped[:-1]) and 0 < len(wrapped[-1]) <= block
    assert len(wrapped) == -(-sum(lengths) // block)
    bfd = pack_dataset(ds, block, strategy="bfd")["input_ids"]
    kept = sum(len(b) for b in bfd)
    assert kept == sum(min(n, block) for n in lengths) < sum(lengths)  # truncation loses the overflow
