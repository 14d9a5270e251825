"""Stage `dpo`: distilled direct preference optimization (dDPO) through TRL's DPOTrainer.

What it does (PAPER.md §1 step 3): start from the dSFT model at ``init``, keep a frozen copy of
the same weights as the reference π_ref, and minimize on every preference triple (x, y_w, y_l)

    L = −log σ( β·[ (log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x)) ] )

(:func:`dpo_loss` is that formula in a few lines of PyTorch; TRL's ``loss_type="sigmoid"`` is
the same loss, checked in ``tests/test_dpo.py``). The data is an ultrafeedback_binarized
DatasetDict (train_prefs / test_prefs); :func:`to_dpo_rows` turns its rows into TRL's
conversational preference format ``{"prompt": [user], "chosen": [assistant], "rejected":
[assistant]}``, validating each row.

Choices made here, on TRL 1.16 / transformers 5:

* **Reference model.** ``ref_model=None`` and ``precompute_ref_log_probs=True``: before the
  first step TRL runs the (still untrained) policy, i.e. the ``init`` weights, once over
  train_prefs and test_prefs and stores log π_ref(y|x) as dataset columns; no second model is
  kept in memory and no reference forward runs during training or evaluation. The reference is
  frozen and dropout is off (TRL's ``disable_dropout=True``), so this is the same computation as
  a reference forward at every step, done once instead of once per epoch (and per eval): the
  fastest correct choice on CPU, and half the memory on GPUs. The trainer is always built from
  the ``init`` weights, so a resumed run precomputes the same reference before loading its
  checkpoint. (Without precomputing, ``ref_model=None`` makes TRL reload the reference from the
  model's ``name_or_path``, i.e. ``init`` again.)
* **Lengths.** TRL 1.16 has no ``max_prompt_length``: it truncates prompt + completion to
  ``max_length`` keeping the start ("keep_start"; "keep_end" is deprecated and would cut the
  prompt's beginning and the template markers with it), and drops pairs whose prompt alone
  fills ``max_length``. Our ``max_prompt_length`` is honoured in data preparation instead
  (:func:`truncate_prompt`): a prompt whose chat-templated tokens (with the generation prompt)
  exceed ``max_prompt_length`` loses tokens from the start of its earliest turn, keeping the
  end (the question's last words and ``<|assistant|>``), like the handbook-era TRL's
  truncation_mode="keep_end" for prompts. TRL's keep_start then cuts the completion so prompt +
  completion fits ``max_length``; no pair is dropped because max_prompt_length < max_length.
* **Checkpoints.** ``out/checkpoints`` (a checkpoint per epoch when ``save_per_epoch``, else
  every ``eval_steps``); a killed run resumes from the newest complete one when re-run.
  :class:`EpochSaver` writes a full model + tokenizer to ``out/epoch-<k>`` after every whole
  epoch (Figure 3: MT-Bench vs DPO epochs); existing epoch folders are kept on resume, and one
  missed because the run was killed between the epoch's last checkpoint and the epoch end is
  written when training resumes at that boundary. The final model goes to ``out/model``.
* **No padding** (``padding_free``, on by default in the toy profile): TRL pads each batch's
  chosen and rejected sequences to the longest; :class:`~zephyr_lib.modeling.UnpaddedBackbone`
  runs the model on the real tokens only (one row, attention inside each sequence) and hands
  TRL the padded shapes back: the same log-probs within float rounding, for less work. TRL
  1.16's own ``padding_free`` for DPO is disabled upstream. With it, TRL's LM head scores only
  the completions' tokens (:func:`~zephyr_lib.modeling.labelled_positions_only`, what TRL does on GPUs).
* **Several processes** (``zephyr_lib.launch``: DDP, ZeRO-3, FSDP): the in-memory preference data
  is written once to ``out/prefs_cache`` so every rank finds TRL's cached reference log-probs
  (:func:`shared_on_disk`; removed after training). ``use_peft`` trains LoRA adapters instead
  (``trl_shared.lora_setup``; the merged model still goes to ``out/model``).
* **Logs.** TRL logs, for train (every ``logging_steps``) and eval (``eval_`` prefix, every
  ``eval_steps`` and once at the end): loss, rewards/chosen, rewards/rejected, rewards/margins,
  rewards/accuracies, logps/chosen, logps/rejected, logits/*, entropy, mean_token_accuracy.
  A reward is β·(log π_θ(y|x) − log π_ref(y|x)), summed over the completion's tokens.

Run it through the runner (``python -m zephyr_lib run --profile toy --stages dpo``) or open
``notebooks/04_dpo.ipynb``; from Python: ``dpo.train(cfg, init_dir, data_dir, out_dir)``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from .stages.dpo import DPOConfig
from .io import DataError
from .modeling import (UnpaddedBackbone, labelled_positions_only, last_checkpoint, resolve_attn_implementation,
                       weights_source)
from .trl_shared import TrainResult, final_eval, lora_setup, save_final

ROLES = ("system", "user", "assistant")


# --------------------------------------------------------------------------------------------
# The loss, for the book
# --------------------------------------------------------------------------------------------

def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float):
    r"""The DPO loss of each pair, and the implicit rewards.

    .. math::

        r_\theta(x, y) = \beta \,\bigl(\log \pi_\theta(y|x) - \log \pi_{ref}(y|x)\bigr)

        L = -\log \sigma\bigl(r_\theta(x, y_w) - r_\theta(x, y_l)\bigr)
          = -\log \sigma\Bigl(\beta\,\bigl[(\log \pi_\theta(y_w|x) - \log \pi_{ref}(y_w|x))
                                     - (\log \pi_\theta(y_l|x) - \log \pi_{ref}(y_l|x))\bigr]\Bigr)

    Every argument is a tensor of sequence log-probabilities (the sum over the completion's
    tokens), one per pair. Returns ``(losses, chosen_rewards, rejected_rewards)``; the loss to
    minimize is ``losses.mean()``. The rewards are detached (they are for logging): a reward
    accuracy is ``(chosen_rewards > rejected_rewards).float().mean()``. With all log-probs
    equal (policy = reference, before training) every loss is log 2 ≈ 0.693.
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def completion_ids(tokenizer, prompt_msgs: Sequence[dict], completion_msg: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) exactly as TRL 1.16 tokenizes a conversational pair: the
    prompt with the generation prompt, the whole conversation, and the completion = what follows
    their common prefix (with our template: ``answer</s>\\n``)."""
    kw = dict(tokenize=True, return_dict=True)
    prompt = list(tokenizer.apply_chat_template(list(prompt_msgs), add_generation_prompt=True, **kw)["input_ids"])
    full = list(tokenizer.apply_chat_template(list(prompt_msgs) + [completion_msg], **kw)["input_ids"])
    n = 0
    while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
        n += 1
    return full[:n], full[n:]


@torch.no_grad()
def sequence_logps(model, tokenizer, prompt_msgs: Sequence[dict], completion_msg: dict,
                   max_length: int | None = None) -> torch.Tensor:
    """log π(y|x): the summed log-probability of the completion's tokens given the prompt,
    tokenized as TRL does (prompt + completion truncated to ``max_length`` keeping the start)."""
    p, c = completion_ids(tokenizer, prompt_msgs, completion_msg)
    ids = (p + c)[:max_length] if max_length else p + c
    n_prompt = len(p)
    x = torch.tensor([ids], device=model.device)
    logits = model(input_ids=x).logits.float()
    logp = torch.log_softmax(logits[0, :-1], dim=-1)          # position t predicts token t+1
    targets = x[0, 1:]
    token_logp = logp.gather(-1, targets[:, None])[:, 0]
    return token_logp[n_prompt - 1:].sum()                    # only the completion's tokens


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def _check_messages(value: Any, where: str, field: str) -> list[dict]:
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise DataError(f"{where}: field '{field}' should be a list of at least 2 messages (prompt turns, then "
                        f"the assistant's answer), got "
                        f"{len(value) if isinstance(value, (list, tuple)) else type(value).__name__}")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field '{field}[{k}]' should be a message with a role in {ROLES} and "
                            f"string content, got {m!r}"[:400])
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise DataError(f"{where}: field '{field}[-1]' should be the assistant's answer, got role {out[-1]['role']!r}")
    if out[-2]["role"] != "user":
        raise DataError(f"{where}: field '{field}[-2]' should be the user's turn, got role {out[-2]['role']!r}")
    return out


def dpo_row(row: Any, where: str) -> dict:
    """One ultrafeedback_binarized row -> ``{"prompt": [...], "chosen": [assistant], "rejected":
    [assistant]}``; raise DataError naming ``where`` and the field when it does not fit."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a row (dict), got {type(row).__name__}")
    for field in ("chosen", "rejected"):
        if field not in row:
            raise DataError(f"{where}: missing field '{field}'")
    chosen = _check_messages(row["chosen"], where, "chosen")
    rejected = _check_messages(row["rejected"], where, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' should share the same prompt turns "
                        "(all messages but the last)")
    first_user = next(m["content"] for m in chosen if m["role"] == "user")
    if isinstance(row.get("prompt"), str) and row["prompt"] != first_user:
        raise DataError(f"{where}: field 'prompt' differs from the first user turn of 'chosen'")
    return {"prompt": chosen[:-1], "chosen": [chosen[-1]], "rejected": [rejected[-1]]}


def prompt_length(tokenizer, prompt_msgs: Sequence[dict]) -> int:
    """Tokens of the chat-templated prompt, generation prompt (``<|assistant|>\\n``) included."""
    return len(tokenizer.apply_chat_template(list(prompt_msgs), add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"])


def truncate_prompt(prompt_msgs: Sequence[dict], tokenizer, max_prompt_length: int) -> tuple[list[dict], bool]:
    """Cut a prompt to at most ``max_prompt_length`` chat-templated tokens, keeping its end.

    Tokens are removed from the start of the earliest turn's content (a turn emptied entirely is
    dropped, unless it is the last); the template's role markers and the generation prompt stay.
    Returns ``(messages, truncated)``. Raises ValueError if even an empty last turn does not fit.
    """
    msgs = [dict(m) for m in prompt_msgs]
    n = prompt_length(tokenizer, msgs)
    if n <= max_prompt_length:
        return msgs, False
    while n > max_prompt_length:
        ids = tokenizer(msgs[0]["content"], add_special_tokens=False)["input_ids"]
        cut = n - max_prompt_length
        if cut >= len(ids):
            if len(msgs) > 1:
                msgs.pop(0)
            elif msgs[0]["content"]:
                msgs[0]["content"] = ""
            else:
                raise ValueError(f"max_prompt_length={max_prompt_length} is shorter than the chat template's "
                                 f"own tokens around one turn ({n})")
        else:
            # A cut inside a multi-byte character decodes to U+FFFD: drop it, so the text shrinks.
            msgs[0]["content"] = tokenizer.decode(ids[cut:]).lstrip("\ufffd")
        n = prompt_length(tokenizer, msgs)
    return msgs, True


def _dpo_rows(dataset: Iterable[dict], split: str, tokenizer=None,
              max_prompt_length: int | None = None) -> tuple[list[dict], int]:
    rows, n_cut = [], 0
    for i, row in enumerate(dataset):
        r = dpo_row(row, f"{split} row {i}")
        if max_prompt_length:
            r["prompt"], cut = truncate_prompt(r["prompt"], tokenizer, max_prompt_length)
            n_cut += cut
        rows.append(r)
    return rows, n_cut


def to_dpo_rows(dataset: Iterable[dict], split: str = "train_prefs", tokenizer=None,
                max_prompt_length: int | None = None):
    """ultrafeedback_binarized rows -> a ``datasets.Dataset`` in TRL's conversational preference
    format: ``{"prompt": [user msg], "chosen": [assistant msg], "rejected": [assistant msg]}``.

    Each row is validated (DataError naming the split, the row index and the field). With a
    ``tokenizer`` and ``max_prompt_length``, prompts longer than that many chat-templated tokens
    are cut keeping their end (:func:`truncate_prompt`). The result lives in memory, so nothing
    (TRL's tokenization, the precomputed reference log-probs) is cached into the data folder.
    """
    import datasets

    if max_prompt_length and tokenizer is None:
        raise ValueError("to_dpo_rows: max_prompt_length needs the tokenizer")
    rows, _ = _dpo_rows(dataset, split, tokenizer, max_prompt_length)
    if not rows:
        raise DataError(f"{split}: no rows")
    return datasets.Dataset.from_list(rows)


def load_prefs(data: str | Path, tokenizer=None, max_prompt_length: int | None = None) -> dict:
    """train_prefs / test_prefs of an ultrafeedback_binarized dataset (local folder or hub id) as
    TRL rows; returns {"train", "test", "n_prompts_truncated": {split: n}}."""
    import datasets

    from .feedback import load_binarized

    dsd = load_binarized(data, validate=False)  # to_dpo_rows validates the two splits it uses
    out: dict[str, Any] = {"n_prompts_truncated": {}}
    for split, key in (("train_prefs", "train"), ("test_prefs", "test")):
        if split not in dsd:
            raise DataError(f"{data}: dataset has no split {split!r} (splits: {list(dsd)})")
        rows, n_cut = _dpo_rows(dsd[split], split, tokenizer, max_prompt_length)
        if not rows:
            raise DataError(f"{data}: split {split!r} is empty")
        out[key] = datasets.Dataset.from_list(rows)
        out["n_prompts_truncated"][split] = n_cut
    return out


# --------------------------------------------------------------------------------------------
# TRL arguments and training
# --------------------------------------------------------------------------------------------

def trl_args(cfg: DPOConfig, output_dir: str | Path, use_cpu: bool | None = None, **overrides: Any):
    """The exact ``trl.DPOConfig`` a stage config resolves to; ``overrides`` replace any of the
    arguments (tests use them for tiny checkpoint intervals)."""
    from trl import DPOConfig as TRLDPOConfig

    kwargs: dict[str, Any] = dict(
        **cfg.trl_kwargs(output_dir, use_cpu),  # the settings every trainer stage shares
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        optim=cfg.optim,
        max_length=cfg.max_length,
        truncation_mode="keep_start",  # max_prompt_length is applied to the data (truncate_prompt)
        precompute_ref_log_probs=True,  # frozen reference: its log-probs once, before training
        save_strategy="epoch" if cfg.save_per_epoch else "steps",
        save_steps=cfg.eval_steps,  # used only by the "steps" strategy
    )
    kwargs.update(overrides)
    return TRLDPOConfig(**kwargs)


def shared_on_disk(splits: dict, folder: Path, args) -> dict:
    """In-memory datasets -> the same datasets saved under ``folder`` and loaded back, for
    multi-process runs. TRL caches the precomputed reference log-probs next to a dataset's own
    files; an in-memory dataset has none, so every process would use its own temporary folder and
    the other ranks could not find the file the main process wrote. The main process writes (the
    others wait), then every process loads the same files. Removed after training."""
    import datasets

    with args.main_process_first(local=False, desc="preference data on disk"):
        if args.process_index == 0:
            shutil.rmtree(folder, ignore_errors=True)
            for name, ds in splits.items():
                ds.save_to_disk(str(folder / name))
        return {name: datasets.load_from_disk(str(folder / name)) for name in splits}


def _whole_epoch(epoch: float | None) -> int | None:
    if epoch is None or epoch < 1:
        return None
    k = round(epoch)
    return k if abs(epoch - k) < 1e-6 else None


class EpochSaver(TrainerCallback):
    """A TrainerCallback writing the model + tokenizer to ``out/epoch-<k>`` after every whole
    epoch (written to a temporary folder, then renamed). An existing epoch-<k> folder is kept. A
    run resumed exactly at an epoch boundary (killed between that step's checkpoint and the
    epoch's end) writes the missing folder from the restored weights when training begins."""

    def __init__(self, out: Path, trainer=None):
        self.out = Path(out)
        self.trainer = trainer
        self.saved: list[int] = []

    def save(self, state, k: int) -> None:
        target = self.out / f"epoch-{k}"
        if (target / "config.json").is_file():
            return
        tmp = self.out / f".epoch-{k}.tmp"
        if state.is_world_process_zero:
            shutil.rmtree(tmp, ignore_errors=True)
        self.trainer.save_model(str(tmp))  # every process: ZeRO-3 / FSDP gather the weights here
        if state.is_world_process_zero:
            for junk in ("training_args.bin", "README.md"):
                (tmp / junk).unlink(missing_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        self.saved.append(k)

    def on_train_begin(self, args, state, control, **kwargs):
        k = _whole_epoch(state.epoch) if state.global_step > 0 else None
        if k is not None:
            self.save(state, k)

    def on_epoch_end(self, args, state, control, **kwargs):
        k = _whole_epoch(state.epoch)
        if k is not None:
            self.save(state, k)


REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def ref_logps_key(model_hash: str, dataset, **settings: Any) -> str:
    """Content address of a precomputed reference pass: the reference weights' hash, every pair's
    token ids as TRL tokenized them, and the settings that shape the computation (batch size,
    lengths, padding)."""
    import hashlib
    import json

    ids = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_dict()
    h = hashlib.sha256(json.dumps([model_hash, sorted(settings.items()), ids], separators=(",", ":")).encode())
    return h.hexdigest()[:24]


def dpo_trainer_class(ref_cache: Path | None = None, **settings: Any):
    """TRL's DPOTrainer, or (with ``ref_cache``) a subclass whose precomputed reference log-probs
    are looked up by content (:func:`ref_logps_key`) in ``ref_cache`` before being computed.

    The runs of a sweep that share a reference and pairs (the main run, its seeds, the 1-epoch
    ablation) then run the reference pass once: the stored values are the computed ones exactly
    (float32 through JSON), written atomically; a file that does not match the dataset is
    recomputed. Only for a single process (several processes use TRL's own per-dataset cache)."""
    from trl import DPOTrainer

    if ref_cache is None:
        return DPOTrainer

    class CachedReferenceDPOTrainer(DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            import datasets

            from .io import DataError, read_json, write_json

            if self.accelerator.num_processes > 1:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            key = ref_logps_key(self._precompute_model_hash, dataset, batch_size=batch_size,
                                max_length=self.args.max_length, truncation_mode=self.args.truncation_mode,
                                ld_alpha=self.ld_alpha, **settings)
            file = Path(ref_cache) / f"{key}.json"
            try:
                cached = read_json(file) if file.is_file() else None
            except (DataError, OSError):
                cached = None  # unreadable: computed again and rewritten
            if not (isinstance(cached, dict) and all(len(cached.get(c) or []) == len(dataset) for c in REF_COLUMNS)):
                done = super()._precompute_ref_logps(dataset, name, batch_size)
                write_json(file, {c: [float(x) for x in done[c]] for c in REF_COLUMNS})
                return done
            features = datasets.Features({c: datasets.Value("float32") for c in REF_COLUMNS})
            stored = datasets.Dataset.from_dict({c: cached[c] for c in REF_COLUMNS}, features=features)
            return datasets.concatenate_datasets([dataset, stored], axis=1)

    return CachedReferenceDPOTrainer


def train(cfg: DPOConfig, init: Path | str, data: Path | str, out: Path, *, callbacks: Sequence = (),
          trl_overrides: dict | None = None, ref_cache: Path | None = None) -> TrainResult:
    """DPO-train the model at `init` on the preference data at `data`; write out/checkpoints,
    out/epoch-<k> (when ``save_per_epoch``) and out/model.

    Returns a :class:`~zephyr_lib.trl_shared.TrainResult`: the log, ``ref_logps`` (the precomputed
    reference log-probs of every training pair, in train_prefs order: {"chosen": [...], "rejected":
    [...]}) and the metrics "steps", "n_train", "n_test", "global_batch_size", "n_prompts_truncated"
    and the final eval metrics ("eval_loss", "eval_rewards/accuracies", ...). ``callbacks`` / ``trl_overrides`` are for tests and experiments; ``ref_cache`` is a
    folder of precomputed reference log-probs shared between runs (:func:`dpo_trainer_class`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(init)  # the tokenizer always lives in the local init folder
    source, source_kwargs = weights_source(init)  # the weights may be a hub model (paper-scale base run)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        raise ValueError(f"{init}: the tokenizer's pad token must exist and differ from eos "
                         "(pad = eos masks the eos label, so the model would never learn to stop)")
    attn = resolve_attn_implementation(cfg.attn_implementation, "dpo.attn_implementation")
    prefs = load_prefs(data, tok, cfg.max_prompt_length)
    # The arguments first: under DeepSpeed ZeRO-3 they must exist before the model is loaded
    # (zero3_init_flag: the weights are sharded while loading).
    args = trl_args(cfg, out / "checkpoints", **(trl_overrides or {}))
    if args.world_size > 1:
        prefs.update(shared_on_disk({"train": prefs["train"], "test": prefs["test"]}, out / "prefs_cache", args))
    peft_config, model_kwargs = lora_setup(cfg)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", attn_implementation=attn,
                                                 **model_kwargs, **source_kwargs)
    attention = model.config._attn_implementation
    saver = EpochSaver(out)
    # The reference log-probs are precomputed while the trainer is built: unpadded from there on.
    with (UnpaddedBackbone(model) if cfg.padding_free else contextlib.nullcontext()), \
            (labelled_positions_only() if cfg.padding_free else contextlib.nullcontext()):
        # the precision is part of the content (bf16 autocast gives other log-probs); fp32 keys stay as before
        trainer_class = dpo_trainer_class(ref_cache, unpadded=cfg.padding_free, **({"precision": "bf16"} if args.bf16 else {}))
        trainer = trainer_class(model=model, ref_model=None, args=args, train_dataset=prefs["train"],
                             eval_dataset=prefs["test"], processing_class=tok,
                             callbacks=([saver] if cfg.save_per_epoch else []) + list(callbacks),
                             **({"peft_config": peft_config} if peft_config is not None else {}))
        saver.trainer = trainer
        train_attention = model.config._attn_implementation
        trainer.train(resume_from_checkpoint=last_checkpoint(out / "checkpoints"))
        final = final_eval(trainer)  # the Trainer's own evaluation after the last step, not a second one
    save_final(trainer, cfg, tok, init, out)
    if args.world_size > 1:
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            shutil.rmtree(out / "prefs_cache", ignore_errors=True)
    ref = trainer.train_dataset  # with the reference log-probs TRL precomputed (the init policy's)
    return TrainResult(
        log_history=trainer.state.log_history,
        metrics={"steps": trainer.state.global_step, "n_train": len(trainer.train_dataset),
                 "n_test": len(trainer.eval_dataset), "global_batch_size": cfg.global_batch_size,
                 "n_prompts_truncated": prefs["n_prompts_truncated"],
                 "attn_implementation": attention, "train_attention": train_attention, "precision": "bf16" if args.bf16 else "fp32",
                 **{k: v for k, v in final.items() if k.startswith("eval_")}},
        ref_logps={side: [float(x) for x in ref[f"ref_{side}_logps"]] for side in ("chosen", "rejected")})
