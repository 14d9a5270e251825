"""The shared generation helper: batched, left-padded chat generation that stops at eos.

Used by the sft page (samples), the aif stage (pool members that are trained models) and the
eval stage (MT-Bench and AlpacaEval answers). Conversations are sorted by length so batches
waste little padding; results come back in input order.

    texts = chat_generate(model, tok, [[{"role": "user", "content": "Hi"}]], max_new_tokens=64)
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from .modeling import load_model


@torch.no_grad()
def chat_generate(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 128,
                  temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 32, seed: int = 0,
                  desc: str | bool | None = None, temperatures: list[float] | None = None,
                  return_stopped: bool = False):
    """Answer each conversation (its last turn is the user's). Greedy when temperature == 0.

    `temperatures` gives one temperature per conversation (MT-Bench's per-category values);
    conversations are then batched by temperature. With `return_stopped`, also returns for each
    answer whether the model emitted eos (stopped by itself) within `max_new_tokens`.
    """
    temps = temperatures or [temperature] * len(conversations)
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (temps[i], lengths[i]))
    out: list[str | None] = [None] * len(prompts)
    stopped = [False] * len(prompts)
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    try:
        batches = []
        for i in order:
            if batches and len(batches[-1]) < batch_size and temps[batches[-1][0]] == temps[i]:
                batches[-1].append(i)
            else:
                batches.append([i])
        for b, idx in enumerate(tqdm(batches, desc=desc or "generate", disable=desc is False)):
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            t = temps[idx[0]]
            torch.manual_seed(seed + b)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=t > 0,
                                 temperature=t if t > 0 else None, top_p=top_p if t > 0 else None,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            for row, i in enumerate(idx):
                new = gen[row, enc["input_ids"].shape[1]:]
                out[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
                stopped[i] = bool((new == tokenizer.eos_token_id).any())
    finally:
        tokenizer.padding_side = pad_side
    return (out, stopped) if return_stopped else out


class ModelAgent:
    """A trained model (transformers generation) as an :class:`zephyr_lib.agent.Agent`."""

    def __init__(self, path: str | Path, name: str | None = None, batch_size: int = 32, seed: int = 0,
                 device: str = "auto", attn_implementation: str = "auto"):
        self.path, self.name = Path(path), name or Path(path).name
        # auto: the GPU when there is one; flash_attention_2 where installed, else sdpa
        self.model, self.tokenizer = load_model(path, device=device, attn_implementation=attn_implementation)
        self.attn_implementation = self.model.config._attn_implementation  # the kernel actually used
        self.batch_size, self.seed = batch_size, seed

    def respond_many(self, conversations, *, max_new_tokens: int = 128, temperature: float = 0.0,
                     temperatures: list[float] | None = None, top_p: float = 1.0, desc: str | bool | None = None,
                     return_stopped: bool = False):
        if self.model is None:
            raise RuntimeError(f"{self.name}: the model was released (vllm_backend.release); make a new agent")
        return chat_generate(self.model, self.tokenizer, conversations, max_new_tokens=max_new_tokens,
                             temperature=temperature, temperatures=temperatures, top_p=top_p, batch_size=self.batch_size,
                             seed=self.seed, desc=desc or f"generate ({self.name})", return_stopped=return_stopped)
