"""Stage `base`: the toy base model, and the model/tokenizer plumbing shared by later stages.

In the toy profile nothing can be downloaded, so the base model is made here, honestly:
a byte-level BPE tokenizer trained with `tokenizers` on the toy world's text, and a small
``MistralForCausalLM`` (Mistral-7B's architecture family: RoPE, RMSNorm, SwiGLU, grouped-query
attention) pretrained with causal-LM loss on plain, non-chat text. It knows the world's facts
but not the chat format; dSFT teaches that. In the paper profile the stage only records the
hub model (``mistralai/Mistral-7B-v0.1``) and gives its tokenizer the Zephyr chat template.

Tokenizer conventions (see PAPER.md §2 and §6): eos ``</s>`` closes every turn, the pad token
``<pad>`` is distinct from eos (pad = eos would mask the eos label and the model would never
learn to stop), the toy template adds no BOS (so there is no double BOS), and the role markers
are single tokens. At paper scale (:func:`prepare_hub_tokenizer`) the template starts with
Mistral's ``<s>`` (:data:`CHAT_TEMPLATE_BOS`), as the original SFT and FastChat's generation had
it; TRL, ``generate.chat_generate`` and the vLLM agent tokenize the rendered template without
adding special tokens, so every sequence gets exactly one BOS (:func:`check_single_bos`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
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

# Paper scale: Mistral's BOS first, once per sequence (the tokenizer itself must not add another).
CHAT_TEMPLATE_BOS = "{{ bos_token }}" + CHAT_TEMPLATE


def chat_template(bos: bool = False) -> str:
    """The Zephyr chat template; with ``bos`` it starts with the tokenizer's BOS token."""
    return CHAT_TEMPLATE_BOS if bos else CHAT_TEMPLATE


_PROBE = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."},
          {"role": "user", "content": "Bye."}]


def bos_counts(tok, messages: list[dict] | None = None) -> dict:
    """How many BOS tokens each tokenization path of the project puts in front of a conversation:
    ``train`` (TRL: ``apply_chat_template(tokenize=True)``), ``generate`` (chat_generate and the vLLM
    agent: the rendered prompt tokenized with ``add_special_tokens=False``) and ``encode_default``
    (the rendered text through ``tok(text)`` with the tokenizer's own special tokens: the path to
    avoid, shown for comparison)."""
    msgs = messages or _PROBE
    bos = tok.bos_token_id
    if bos is None:
        return {"train": 0, "generate": 0, "encode_default": 0}
    train = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    gen = tok(text, add_special_tokens=False)["input_ids"]
    default = tok(text)["input_ids"]
    return {k: sum(1 for t in ids if t == bos) for k, ids in
            (("train", train), ("generate", gen), ("encode_default", default))}


def check_single_bos(tok, name: str = "tokenizer") -> dict:
    """Raise ValueError unless training and generation both see exactly one BOS per sequence
    (for a tokenizer that has a BOS token); returns :func:`bos_counts`."""
    counts = bos_counts(tok)
    if tok.bos_token_id is not None:
        bad = {k: v for k, v in counts.items() if k != "encode_default" and v != 1}
        if bad:
            raise ValueError(f"{name}: expected exactly one BOS ({tok.bos_token!r}) per sequence, got {bad} "
                             "(two: the tokenizer adds one and the template another; none: the template lacks "
                             "{{ bos_token }})")
    return counts


def prepare_hub_tokenizer(tok, name: str, *, bos: bool = True):
    """A pretrained hub tokenizer (Mistral-7B-v0.1's) made ready for the pipeline: a pad token
    distinct from eos (``<unk>``, which Mistral's tokenizer never produces, so the vocabulary and
    embeddings keep their size), the Zephyr chat template, starting with BOS when ``bos`` (the
    paper), checked to give exactly one BOS per sequence. ``name`` is for error messages."""
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        # pad = eos would mask the eos labels
        if tok.unk_token is None or tok.unk_token == tok.eos_token:
            raise ValueError(f"{name}: no pad token distinct from eos, and no <unk> to use as one")
        tok.pad_token = tok.unk_token
    tok.chat_template = chat_template(bos=bos and tok.bos_token is not None)
    check_single_bos(tok, name)
    return tok


def set_threads() -> None:
    """Use every core for intra-op parallelism (the machines here have 2), or the share the runner
    gave this stage when several run at once (``ZEPHYR_THREADS``)."""
    from .config import THREADS_ENV

    share = os.environ.get(THREADS_ENV, "").strip()
    torch.set_num_threads(int(share) if share.isdigit() and int(share) > 0 else max(1, os.cpu_count() or 1))


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

    bf16 = resolve_precision(cfg.precision, "base.precision") == "bf16"
    attention = model.config._attn_implementation
    if bf16 and attention == "sdpa":
        model.set_attn_implementation(register_fp32_attention())
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=cfg.batch_size, bf16=bf16,
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
    model.set_attn_implementation(attention)  # the saved model decodes with the standard kernel
    return {"log_history": trainer.state.log_history, "eval_loss": final["eval_loss"],
            "eval_perplexity": math.exp(final["eval_loss"]), "steps": trainer.state.global_step,
            "precision": "bf16" if bf16 else "fp32"}


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weights_file_problem(path: Path) -> str | None:
    """Why a weights file cannot be loaded, checked cheaply (no tensor is read), or None: a
    ``.safetensors`` file must hold its whole header and exactly the bytes the header describes
    (a file cut short by a kill or a full disk is caught); a ``.bin`` must be a readable zip."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"{path.name} is unreadable ({e.strerror})"
    if size == 0:
        return f"{path.name} is empty"
    if path.suffix == ".safetensors":
        import struct

        try:
            with open(path, "rb") as f:
                head = f.read(8)
                n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
                if n is None or 8 + n > size:
                    return f"{path.name} is truncated ({size} bytes, shorter than its header)"
                header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            return f"{path.name} has an unreadable header ({type(e).__name__})"
        expected = 8 + n + max(ends, default=0)
        if size != expected:
            return f"{path.name} is truncated or damaged ({size} bytes; its header describes {expected})"
        return None
    if path.suffix == ".bin":
        import zipfile

        if not zipfile.is_zipfile(path):
            return f"{path.name} is truncated or damaged (not a readable torch archive)"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from, or None if it is complete:
    ``trainer_state.json`` parses as a JSON object whose ``global_step`` is the folder's step,
    and the weights are there and load (one weights file, or a shard index whose every shard
    exists; each checked by :func:`weights_file_problem`; a DeepSpeed ``global_step*`` folder
    also counts)."""
    state = path / "trainer_state.json"
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"trainer_state.json is unreadable or half-written ({type(e).__name__})"
    if not isinstance(data, dict) or "global_step" not in data:
        return "trainer_state.json has no global_step"
    step = path.name.rsplit("-", 1)[-1]
    if step.isdigit() and data["global_step"] != int(step):
        return f"trainer_state.json says global_step {data['global_step']!r}, the folder is step {step}"
    present = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
    if present:
        return next((p for p in map(weights_file_problem, present) if p), None)
    for name in WEIGHT_INDEXES:
        if (path / name).is_file():
            try:
                shards = set(json.loads((path / name).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return f"{name} is unreadable"
            missing = sorted(s for s in shards if not (path / s).is_file())
            if missing:
                return f"missing weight shard(s) {missing[:3]}"
            return next((p for p in (weights_file_problem(path / s) for s in sorted(shards)) if p), None)
    if any(p.is_dir() for p in path.glob("global_step*")):  # DeepSpeed ZeRO: weights in its own folder
        return None
    return f"no weights file ({' / '.join(WEIGHT_FILES[:2])})"


def set_aside(path: Path) -> Path | None:
    """Rename a checkpoint that cannot be resumed to ``bad-checkpoint-N`` beside it (out of the
    Trainer's ``checkpoint-*`` rotation, kept for a look). Only the main process renames."""
    if os.environ.get("RANK", "0") != "0":
        return None
    target = path.with_name(f"bad-{path.name}")
    k = 1
    while target.exists():
        k += 1
        target = path.with_name(f"bad-{path.name}.{k}")
    try:
        os.replace(path, target)
    except OSError:
        return None
    return target


def last_checkpoint(folder: Path, log=print) -> str | None:
    """The newest checkpoint-N in `folder` that is complete (see :func:`checkpoint_problem`), if any.

    A checkpoint cut short by a kill (the Trainer writes its files one by one, not atomically) or
    whose weights do not load is set aside (renamed ``bad-checkpoint-N``) with a message naming it,
    and the next older complete one is used."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for p in folder.glob("checkpoint-*"):
        step = p.name.split("-", 1)[1]
        if p.is_dir() and step.isdigit():
            found.append((int(step), p))
    for _, p in sorted(found, reverse=True):
        problem = checkpoint_problem(p)
        if problem is None:
            log(f"resuming from {p}")
            return str(p)
        moved = set_aside(p)
        log(f"skipping incomplete checkpoint {p} ({problem}); "
            + (f"set aside as {moved.name}; " if moved else "") + "resuming from an older one if there is one")
    return None


POINTER = "zephyr_pretrained.json"  # in a base run's model folder when the weights live on the hub


def weights_source(path: str | Path) -> tuple[str, dict]:
    """(where the weights are, from_pretrained kwargs). A paper-scale base run saves only the
    tokenizer (with the Zephyr template and a pad token) plus a pointer to the hub weights."""
    pointer = Path(path) / POINTER
    if pointer.is_file():
        ref = json.loads(pointer.read_text())
        return ref["pretrained"], ({"revision": ref["revision"]} if ref.get("revision") else {})
    return str(path), {}


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto", setting: str = "device") -> str:
    """'auto' -> 'cuda' when a CUDA device is visible, else 'cpu'; 'cpu', 'cuda' and 'cuda:N' as
    given. Asking for CUDA where there is none is a ValueError naming ``setting`` (the config key
    the value came from), never a silent fall-back to CPU."""
    dev = str(device or "auto").strip().lower()
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return "cpu"
    if dev == "cuda" or dev.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"{setting}={device!r}: no CUDA device is visible on this machine "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}); "
                             f"set {setting} to 'auto' or 'cpu'")
        if ":" in dev:
            index = dev.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise ValueError(f"{setting}={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise ValueError(f"{setting}={device!r}: expected one of {DEVICES} or 'cuda:N'")


def resolve_attn_implementation(value: str = "auto", setting: str = "attn_implementation") -> str:
    """The attention kernel a model is loaded with (transformers' ``attn_implementation``).

    'auto' -> 'flash_attention_2' where the ``flash_attn`` package is importable and a CUDA device
    is visible (requirements-flash.txt), else 'sdpa' (PyTorch's scaled_dot_product_attention, what
    transformers picks by itself; every run before this setting existed used it). 'sdpa', 'eager'
    as given; 'flash_attention_2' without the package or without CUDA is a ValueError naming
    ``setting`` (the config key), never a silent fall-back."""
    import importlib.util

    from .config import ATTN_IMPLEMENTATIONS

    impl = str(value or "auto").strip().lower()
    if impl not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"{setting}={value!r}: expected one of {ATTN_IMPLEMENTATIONS}")
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if impl == "auto":
        return "flash_attention_2" if has_flash and torch.cuda.is_available() else "sdpa"
    if impl == "flash_attention_2" and not has_flash:
        raise ValueError(f"{setting}='flash_attention_2': the flash_attn package is not importable here "
                         f"(pip install -r requirements-flash.txt on a CUDA machine); set {setting} to 'auto' or 'sdpa'")
    if impl == "flash_attention_2" and not torch.cuda.is_available():
        raise ValueError(f"{setting}='flash_attention_2': no CUDA device is visible on this machine "
                         f"(flash-attn runs on GPUs only); set {setting} to 'auto' or 'sdpa'")
    return impl


def native_bf16(device: str = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices natively: a CUDA GPU with bf16 support, or a CPU
    with AMX or AVX-512 BF16 (measured here: bf16 matmuls at 6.6x the fp32 rate on a 2-core
    AMX Xeon). An AVX2 CPU only emulates bf16, slower than fp32."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(p() for p in probes if p is not None)  # private torch helpers: missing ones count as "no"


def matmul_rate(dtype=torch.float32, n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of an n×n matmul loop in ``dtype`` on this machine, with torch's current thread setting."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up
    iters, t0 = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        iters += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return 2.0 * n ** 3 * iters / dt


def matmul_rates(seconds: float = 0.2) -> dict:
    """This machine's matmul rate now, in GFLOP/s: fp32, and bf16 where it is native
    (:func:`native_bf16`). The store records it at the start and end of every training run, so a
    compute floor is compared with the rate the run itself had (a busy machine reads low)."""
    set_threads()
    rates = {"fp32": round(matmul_rate(torch.float32, seconds=seconds) / 1e9, 1)}
    if native_bf16("cpu"):
        rates["bf16"] = round(matmul_rate(torch.bfloat16, seconds=seconds) / 1e9, 1)
    return rates


def resolve_precision(value: str = "auto", setting: str = "precision", device: str | None = None) -> str:
    """The precision training runs in: 'bf16' (mixed precision: fp32 master weights, bf16 autocast
    matmuls) or 'fp32'. 'auto' is bf16 on a GPU with native bf16 (the paper trained in bf16) and
    fp32 on a CPU, even one with bf16 matrix units: on the toy model (2.5M parameters) bf16 autocast
    measured no faster for dSFT and 1.13× for dDPO on a 2-core AMX Xeon, its casts costing about what
    the faster matmuls save (the Performance page), so a toy build stays in fp32 unless asked.
    The device is the GPU when one is visible, else the CPU. Stages record the resolved value."""
    from .config import PRECISIONS

    v = str(value).strip().lower()
    if v not in PRECISIONS:
        raise ValueError(f"{setting}={value!r}: expected one of {PRECISIONS}")
    if v != "auto":
        return v
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if dev.startswith("cuda") and native_bf16(dev) else "fp32"


def default_dtype(device: str):
    """bfloat16 on a GPU (what the paper trained and evaluated in), float32 on CPU (no fast bf16 path)."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def load_model(path: str | Path, dtype=None, device: str = "auto", setting: str = "device",
               attn_implementation: str = "auto", attn_setting: str = "attn_implementation"):
    """A causal LM and its tokenizer from a local folder or hub id, in eval mode on ``device``
    (:func:`resolve_device`; ``setting`` names the config key in errors), in ``dtype`` (default:
    :func:`default_dtype` of the device) and with the attention kernel
    :func:`resolve_attn_implementation` picks (``model.config._attn_implementation`` says which)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device, setting)
    attn = resolve_attn_implementation(attn_implementation, attn_setting)
    tok = AutoTokenizer.from_pretrained(path)
    source, kwargs = weights_source(path)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype if dtype is not None else default_dtype(dev),
                                                 attn_implementation=attn, **kwargs)
    model.to(dev)
    model.eval()
    return model, tok


# ---- per-document attention for padding-free batches -----------------------------------------

DOCUMENT_ATTENTION = "zephyr_document_sdpa"


def document_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention inside each document of a padding-free batch, never across documents.

    A padding-free batch is one row holding the batch's examples back to back, with their
    boundaries in ``cu_seq_lens_q`` (TRL's ``DataCollatorForLanguageModeling(padding_free=True)``).
    Each document gets its own causal ``scaled_dot_product_attention``, so the work is that of the
    real tokens only: no padding (as in a padded batch) and no cross-document block of a dense
    T×T mask (as transformers' packed-sequence mask for sdpa, which costs what padding saved).
    The result equals the padded batch's within float rounding (tests/test_sft.py)."""
    import torch.nn.functional as F

    if query.shape[2] != key.shape[2]:
        raise RuntimeError(f"{DOCUMENT_ATTENTION} is for training on padding-free batches, not for decoding with a cache")
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        if query.shape[0] != 1:
            raise RuntimeError(f"{DOCUMENT_ATTENTION} needs a padding-free batch (one row with cu_seq_lens_q); "
                               f"got {query.shape[0]} rows and no document boundaries")
        sizes = [query.shape[2]]
    else:
        c = cu.tolist()
        sizes = [e - s for s, e in zip(c[:-1], c[1:])]
    # One split per tensor, not a slice per document: a slice's backward writes its gradient into a
    # zero tensor of the whole row and the slices' gradients are summed (work ∝ documents × tokens);
    # a split's backward is one concatenation. The values and gradients are the same, bit for bit.
    upcast = _bf16_on_cpu(query, key, value)
    dtype = value.dtype if upcast else query.dtype  # under autocast: bf16 (RoPE hands over q and k in fp32)
    with torch.autocast("cpu", enabled=False) if upcast else contextlib.nullcontext():
        if upcast:  # CPU bf16 training: attention in fp32 (its bf16 backward measured 4x slower here)
            query, key, value = query.float(), key.float(), value.float()
        qs, ks, vs = (t.split(sizes, dim=2) for t in (query, key, value))
        outs = [F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout if module.training else 0.0,
                                               scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
                for q, k, v, n in zip(qs, ks, vs, sizes) if n > 0]
        return torch.cat(outs, dim=2).transpose(1, 2).contiguous().to(dtype), None


FP32_ATTENTION = "zephyr_sdpa_fp32"


def _bf16_on_cpu(query, key, value) -> bool:
    """Whether attention is about to run in bf16 on a CPU: under CPU autocast (which casts sdpa's
    inputs to bf16), or with bf16 tensors (Mistral's rotary embedding returns q and k in fp32 under
    autocast, so the query's dtype alone does not tell)."""
    return query.device.type == "cpu" and (torch.is_autocast_enabled("cpu") or torch.bfloat16 in (
        query.dtype, key.dtype, value.dtype))


def sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention, computed in fp32 when a CPU trains in bf16 autocast (the
    matmuls around it stay bf16): CPU attention's bf16 backward measured 4x slower than fp32 here.
    Elsewhere exactly transformers' ``sdpa_attention_forward``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _bf16_on_cpu(query, key, value):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    dtype = value.dtype
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(dtype), weights


def register_fp32_attention() -> str:
    """Register :func:`sdpa_fp32` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(FP32_ATTENTION, sdpa_fp32)
    return FP32_ATTENTION


def register_document_attention() -> str:
    """Register :func:`document_sdpa` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(DOCUMENT_ATTENTION, document_sdpa)
    return DOCUMENT_ATTENTION


class UnpaddedBackbone:
    """Run a causal LM's backbone on right-padded batches without computing their padding.

    ``with UnpaddedBackbone(model): ...`` patches the backbone (``model.get_decoder()``) so that a
    batch ``[B, L]`` with a right-padding ``attention_mask`` is run as one padding-free row of its
    real tokens (positions restarting at 0 per sequence, attention kept inside each sequence by
    :func:`document_sdpa`), and its hidden states are scattered back to ``[B, L, H]`` (zeros at the
    padding). Everything above the backbone (the LM head, TRL's log-probs and loss) sees the
    padded shapes it expects, so this wraps TRL's DPOTrainer without touching it: the same
    sequence log-probs within float rounding (tests/test_dpo.py), for the work of the real
    tokens only. TRL 1.16 disables DPO's own ``padding_free``; this is the same idea one level
    down. A model loaded with ``flash_attention_2`` keeps it: its varlen kernel takes the same
    boundaries (``cu_seq_lens_q``). On exit the backbone's forward and the attention implementation are restored (the
    saved model decodes with the standard kernel). Left padding, a cache or ``inputs_embeds``
    are refused: the patch is for training and scoring, not for generation.
    """

    def __init__(self, model):
        self.model = model
        self.backbone = model.get_decoder()

    def __enter__(self):
        import types

        original = self.backbone.forward
        self._restore = ("forward" in vars(self.backbone), original, self.model.config._attn_implementation)

        def forward(backbone, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
            if input_ids is None or kwargs.get("inputs_embeds") is not None or kwargs.get("past_key_values") is not None:
                raise RuntimeError("UnpaddedBackbone runs token batches for training and scoring, "
                                   "not inputs_embeds or decoding with a cache")
            b, n = input_ids.shape
            mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                    else attention_mask.to(torch.bool))
            lengths = mask.sum(dim=1)
            if not torch.equal(mask, torch.arange(n, device=mask.device)[None, :] < lengths[:, None]):
                raise RuntimeError("UnpaddedBackbone needs right padding (each row's mask: ones, then zeros)")
            cu = torch.zeros(b + 1, dtype=torch.int32, device=input_ids.device)
            cu[1:] = lengths.cumsum(0)
            pos = torch.cat([torch.arange(int(k), device=input_ids.device) for k in lengths])[None, :]
            out = original(input_ids=input_ids[mask][None, :], position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                           max_length_q=int(lengths.max()), max_length_k=int(lengths.max()), **kwargs)
            h = out.last_hidden_state[0]
            out.last_hidden_state = h.new_zeros(b, n, h.shape[-1]).masked_scatter(mask[..., None], h)
            return out

        self.backbone.forward = types.MethodType(forward, self.backbone)
        if self.model.config._attn_implementation != "flash_attention_2":  # flash-attn's varlen kernel reads cu_seq_lens itself
            self.model.set_attn_implementation(register_document_attention())
        return self.model

    def __exit__(self, *exc):
        patched_before, original, attention = self._restore
        if patched_before:
            self.backbone.forward = original
        else:
            del self.backbone.forward
        self.model.set_attn_implementation(attention)
        return False


@contextlib.contextmanager
def labelled_positions_only():
    """Let TRL score only the positions that carry a label (the completions' tokens), on any device.

    TRL 1.16's fused LM head (``trl.trainer.utils``) projects hidden states to the vocabulary in
    chunks and takes each token's log-probability; on Triton devices (GPUs) it does that for the
    labelled positions only, elsewhere for every position of the padded batch, prompt and padding
    included, and masks the result. The values at the labelled positions are the same either way
    (within float rounding; tests/test_sft.py, tests/test_dpo.py); on a CPU the other positions are much of the
    head's work. dSFT and dDPO use it with their ``padding_free`` batches. If TRL no longer has
    the switch, nothing changes but the speed."""
    import warnings

    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        warnings.warn("trl.trainer.utils._use_triton is gone: TRL scores every position (slower, same values)")
        yield
        return
    trl_utils._use_triton = lambda device: True  # read only by the fused head's choice of positions
    try:
        yield
    finally:
        trl_utils._use_triton = original
