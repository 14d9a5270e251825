"""dDPO stage: the loss against TRL's, the TRL arguments, data preparation, a short real
training on a tiny model (epoch folders, logged rewards, learning) and resuming after a kill."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import pytest
import torch

from zephyr_lib import dpo, modeling
from zephyr_lib.config import ConfigError
from zephyr_lib.stages.base import BaseConfig
from zephyr_lib.stages.dpo import DPOConfig
from zephyr_lib.feedback import prompt_id, save_binarized, to_dataset_dict
from zephyr_lib.io import DataError

NAMES = ["Ada", "Bram", "Cleo", "Dov", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea",
         "Milo", "Nia", "Oto", "Pia", "Quin", "Rhea", "Sol", "Tia"]
TINY = BaseConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, seed=0)


def _pair(prompt: str, chosen: str, rejected: str, sc: float = 8.0, sr: float = 3.0) -> dict:
    c = [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}]
    r = [{"role": "user", "content": prompt}, {"role": "assistant", "content": rejected}]
    return {"prompt": prompt, "prompt_id": prompt_id(prompt), "chosen": c, "rejected": r,
            "messages": [dict(m) for m in c], "score_chosen": sc, "score_rejected": sr}


def _pairs(n: int) -> list[dict]:
    out = []
    for i in range(n):
        a, b = NAMES[i % len(NAMES)], NAMES[(3 * i + 1) % len(NAMES)]
        prompt = f"Who is the friend of {a} in the town of {b}?"
        out.append(_pair(prompt, f"The friend of {a} is {b}. Glad to help!",
                         "no idea, go away now, I will not say anything."))
    return out


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny tokenizer + model (saved together, like a dSFT run's model folder) and a tiny
    ultrafeedback_binarized DatasetDict (24 train_prefs, 8 test_prefs)."""
    root = tmp_path_factory.mktemp("dpo")
    pairs = _pairs(32)
    texts = [m["content"] for p in pairs for m in p["chosen"] + p["rejected"]] * 3
    tok = modeling.train_tokenizer(texts, 300, root / "init")
    model = modeling.build_model(tok, TINY)
    model.save_pretrained(root / "init")
    dsd = to_dataset_dict(pairs, test_size=8, seed=0)
    save_binarized(dsd, root / "prefs")
    return {"root": root, "init": root / "init", "data": root / "prefs", "tok": tok, "dsd": dsd}


def _cfg(**kw) -> DPOConfig:
    base = dict(beta=0.1, learning_rate=1e-3, lr_scheduler_type="linear", warmup_ratio=0.0, num_train_epochs=2,
                per_device_train_batch_size=4, gradient_accumulation_steps=1, max_length=64,
                max_prompt_length=40, logging_steps=1, eval_steps=3, seed=0, precision="fp32")
    base.update(kw)
    return DPOConfig(**base)


# ---- the loss ---------------------------------------------------------------------------------

def test_dpo_loss_hand_values():
    z = torch.zeros(3)
    losses, rc, rr = dpo.dpo_loss(z, z, z, z, beta=0.1)
    assert torch.allclose(losses, torch.full((3,), math.log(2)))
    assert torch.equal(rc, z) and torch.equal(rr, z)
    # policy gains 2 nats on the chosen answer and loses 3 on the rejected one, relative to the reference
    losses, rc, rr = dpo.dpo_loss(torch.tensor([-8.0]), torch.tensor([-13.0]), torch.tensor([-10.0]),
                                  torch.tensor([-10.0]), beta=0.5)
    assert rc.item() == pytest.approx(1.0) and rr.item() == pytest.approx(-1.5)
    assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.5))))
    # the gradient pushes the chosen log-prob up and the rejected one down
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    dpo.dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1)[0].sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()


def test_dpo_loss_matches_trl(assets):
    """Our tokenization + log-probs + loss against TRL's DPOTrainer.compute_loss on one batch,
    with a reference that differs from the policy (else every loss is log 2)."""
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    tok = assets["tok"]
    policy = AutoModelForCausalLM.from_pretrained(assets["init"])
    ref = modeling.build_model(tok, dataclasses.replace(TINY, seed=1))
    cfg = _cfg(beta=0.3)
    rows = dpo.to_dpo_rows(assets["dsd"]["train_prefs"], "train_prefs", tok, cfg.max_prompt_length)
    args = dpo.trl_args(cfg, assets["root"] / "parity", use_cpu=True, precompute_ref_log_probs=False,
                        eval_strategy="no")
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=rows, processing_class=tok)
    idx = [0, 1, 2, 3]
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")  # what TRL tokenized, batched by its collator
    batch = trainer.data_collator([{k: trainer.train_dataset[i][k] for k in keys} for i in idx])
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, batch).item()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    policy.eval()
    lp = {(who, side): torch.stack([dpo.sequence_logps(m, tok, rows[i]["prompt"], rows[i][side][0], cfg.max_length)
                                    for i in idx])
          for who, m in (("policy", policy), ("ref", ref)) for side in ("chosen", "rejected")}
    losses, rc, rr = dpo.dpo_loss(lp["policy", "chosen"], lp["policy", "rejected"], lp["ref", "chosen"],
                                  lp["ref", "rejected"], beta=cfg.beta)
    assert abs(losses.mean().item() - trl_loss) < 1e-5
    assert abs(losses.mean().item() - math.log(2)) > 1e-3  # a real test: policy != reference
    assert rc.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-5)
    assert rr.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=1e-5)
    assert (rc - rr).mean().item() == pytest.approx(metrics["rewards/margins"], abs=1e-5)
    assert (rc > rr).float().mean().item() == pytest.approx(metrics["rewards/accuracies"])
    assert lp["policy", "chosen"].mean().item() == pytest.approx(metrics["logps/chosen"], abs=1e-4)

    # What `train` does: no ref_model + precompute_ref_log_probs -> the reference log-probs are the
    # untrained policy's (= init weights), computed once before training and stored as columns.
    fresh = AutoModelForCausalLM.from_pretrained(assets["init"])
    pre = DPOTrainer(model=fresh, args=dpo.trl_args(cfg, assets["root"] / "pre", use_cpu=True, eval_strategy="no"),
                     train_dataset=rows, processing_class=tok)
    assert pre.ref_model is None
    for side in ("chosen", "rejected"):
        stored = torch.tensor([pre.train_dataset[i][f"ref_{side}_logps"] for i in idx])
        assert torch.allclose(stored, lp["policy", side], atol=1e-4)


def test_unpadded_backbone_gives_trls_padded_loss_gradients_and_reference(assets, lm_head_rows):
    """``padding_free``: TRL's DPO loss, its gradients and its precomputed reference log-probs are
    those of the padded batch within float rounding, the backbone sees only the real tokens and
    the LM head scores only the labelled ones (``modeling.labelled_positions_only``). Attention leaking
    across the sequences of the row would change the loss."""
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer
    from trl.trainer import utils as trl_utils

    tok = assets["tok"]
    cfg = _cfg(beta=0.3)
    rows = dpo.to_dpo_rows(assets["dsd"]["train_prefs"], "train_prefs", tok, cfg.max_prompt_length)
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    results = {}
    for name in ("padded", "unpadded"):
        policy = AutoModelForCausalLM.from_pretrained(assets["init"])
        seen = []
        policy.get_input_embeddings().register_forward_pre_hook(lambda m, a: seen.append(a[0].numel()))
        with (modeling.UnpaddedBackbone(policy) if name == "unpadded" else contextlib.nullcontext()), \
                (modeling.labelled_positions_only() if name == "unpadded" else contextlib.nullcontext()):
            args = dpo.trl_args(cfg, assets["root"] / f"pf-{name}", use_cpu=True, eval_strategy="no")
            trainer = DPOTrainer(model=policy, args=args, train_dataset=rows, processing_class=tok)
            batch = trainer.data_collator([{k: trainer.train_dataset[i][k] for k in keys + ("ref_chosen_logps", "ref_rejected_logps")}
                                           for i in range(8)])
            gen = torch.Generator().manual_seed(1)  # move the policy off the reference (else every loss is log 2)
            with torch.no_grad():
                for p in policy.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))
            trainer.model.train()
            policy.zero_grad()
            loss = trainer.compute_loss(trainer.model, batch)
            loss.backward()
        grad = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        refs = torch.tensor([trainer.train_dataset[i]["ref_chosen_logps"] for i in range(len(rows))])
        labelled = int((batch["completion_mask"][:, 1:] * batch["attention_mask"][:, 1:]).sum())
        results[name] = (loss.item(), grad, refs, seen[-1], int(batch["attention_mask"].sum()), batch["input_ids"].numel(),
                         lm_head_rows[-1], labelled)
        assert policy.config._attn_implementation == "sdpa" and "forward" not in vars(policy.get_decoder())
    assert trl_utils._use_triton(torch.device("cpu")) is False  # restored on exit
    (l_pad, g_pad, r_pad, n_pad, real, padded, h_pad, _), (l_free, g_free, r_free, n_free, _, _, h_free, labelled) = \
        results["padded"], results["unpadded"]
    assert real < padded and n_pad == padded and n_free == real  # the backbone ran the real tokens only
    b, n = batch["input_ids"].shape
    assert h_pad == b * (n - 1) and h_free == labelled < real  # the head scored the completions' tokens only
    assert abs(l_pad - l_free) < 1e-5 * abs(l_pad) and abs(l_pad - math.log(2)) > 1e-4
    assert torch.allclose(g_pad, g_free, rtol=1e-4, atol=1e-6)
    assert torch.allclose(r_pad, r_free, atol=1e-4)
    # a padded batch of several rows through document attention without the unpadding is refused
    policy = AutoModelForCausalLM.from_pretrained(assets["init"])
    policy.set_attn_implementation(modeling.register_document_attention())
    with pytest.raises(RuntimeError, match="padding-free batch"):
        policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with modeling.UnpaddedBackbone(policy), pytest.raises(RuntimeError, match="right padding"):
        policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].flip(1))


def test_runs_with_the_same_reference_and_pairs_share_one_reference_pass(assets, tmp_path):
    """The stage's reference cache: a second trainer with the same init weights and pairs reads the
    stored log-probs (exactly the computed ones, no forward pass); other weights are computed anew."""
    from transformers import AutoModelForCausalLM

    tok, cache = assets["tok"], tmp_path / "ref_cache"
    cfg = _cfg()
    rows = dpo.to_dpo_rows(assets["dsd"]["train_prefs"], "train_prefs", tok, cfg.max_prompt_length)

    def precompute(model):
        calls = []
        model.get_input_embeddings().register_forward_pre_hook(lambda m, a: calls.append(1))
        trainer = dpo.dpo_trainer_class(cache, unpadded=False)(
            model=model, args=dpo.trl_args(cfg, tmp_path / "t", use_cpu=True, eval_strategy="no"),
            train_dataset=rows, processing_class=tok)
        return [trainer.train_dataset[i]["ref_chosen_logps"] for i in range(len(rows))], len(calls)

    first, n_first = precompute(AutoModelForCausalLM.from_pretrained(assets["init"]))
    second, n_second = precompute(AutoModelForCausalLM.from_pretrained(assets["init"]))
    assert n_first > 0 and n_second == 0 and first == second
    assert len(list(cache.glob("*.json"))) == 1
    other = AutoModelForCausalLM.from_pretrained(assets["init"])
    with torch.no_grad():
        other.get_input_embeddings().weight.mul_(1.5)
    third, n_third = precompute(other)
    assert n_third > 0 and third != first and len(list(cache.glob("*.json"))) == 2
    next(cache.glob("*.json")).write_text("{")  # a damaged file is computed again
    again, n_again = precompute(AutoModelForCausalLM.from_pretrained(assets["init"]))
    assert again == first


def test_the_reference_cache_keeps_bf16_passes_apart_from_fp32(assets, tmp_path):
    """A bf16 run's reference log-probs (autocast) are other numbers: it never reads an fp32 run's,
    and an fp32 rerun still finds its own."""
    cache = tmp_path / "ref_cache"
    for i, precision in enumerate(("fp32", "bf16", "fp32")):
        res = dpo.train(_cfg(num_train_epochs=1, precision=precision), assets["init"], assets["data"],
                        tmp_path / f"run{i}", ref_cache=cache)
        assert res.metrics["precision"] == precision
        assert len(list(cache.glob("*.json"))) == (2 if i == 0 else 4)  # a train and a test pass per precision


# ---- arguments and data -------------------------------------------------------------------------


def test_trl_args_paper_values(tmp_path):
    cfg = DPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_processes=4,
                    max_length=1024, max_prompt_length=512)
    a = dpo.trl_args(cfg, tmp_path, use_cpu=True)
    assert (a.beta, a.learning_rate, a.lr_scheduler_type, a.warmup_steps, a.num_train_epochs) == \
        (0.1, 5e-7, "linear", 0.1, 3.0)
    assert a.get_warmup_steps(1000) == 100  # a fraction of the steps, not 0.1 steps
    assert (a.per_device_train_batch_size, a.gradient_accumulation_steps) == (4, 2)
    assert cfg.global_batch_size == 32
    assert a.loss_type == ["sigmoid"] and a.optim == "adamw_torch"
    assert a.max_length == 1024 and a.truncation_mode == "keep_start"
    assert a.precompute_ref_log_probs is True
    assert a.eval_strategy == "steps" and a.eval_steps == cfg.eval_steps and a.logging_steps == cfg.logging_steps
    assert a.save_strategy == "epoch"
    assert a.bf16 is (modeling.resolve_precision("auto") == "bf16")  # precision: auto, resolved on this machine
    assert a.use_cpu is True and a.activation_checkpointing is False
    assert a.report_to == [] and a.seed == 0
    b = dpo.trl_args(DPOConfig(save_per_epoch=False, beta=0.01, lr_scheduler_type="cosine", eval_steps=7),
                     tmp_path, use_cpu=True)
    assert (b.save_strategy, b.save_steps, b.beta, b.lr_scheduler_type) == ("steps", 7, 0.01, "cosine")
    with pytest.raises(ConfigError):
        DPOConfig(max_length=128, max_prompt_length=128)


def test_to_dpo_rows_format_validation_and_truncation(assets):
    tok = assets["tok"]
    ds = dpo.to_dpo_rows(assets["dsd"]["test_prefs"], "test_prefs")
    r = ds[0]
    src = assets["dsd"]["test_prefs"][0]
    assert r["prompt"] == [{"role": "user", "content": src["prompt"]}]
    assert r["chosen"] == [src["chosen"][1]] and r["rejected"] == [src["rejected"][1]]

    bad = dict(src, rejected=[src["rejected"][0]])
    with pytest.raises(DataError, match=r"test_prefs row 1: field 'rejected'"):
        dpo.to_dpo_rows([src, bad], "test_prefs")
    bad = dict(src, chosen=[src["chosen"][0], {"role": "user", "content": "x"}])
    with pytest.raises(DataError, match=r"train_prefs row 0: field 'chosen\[-1\]'"):
        dpo.to_dpo_rows([bad])
    bad = dict(src, rejected=[{"role": "user", "content": "another prompt"}, src["rejected"][1]])
    with pytest.raises(DataError, match="same prompt turns"):
        dpo.to_dpo_rows([bad])

    long_prompt = " ".join(f"{n} met {m}." for n, m in zip(NAMES, reversed(NAMES))) + " Who is the friend of Ada?"
    row = _pair(long_prompt, "Bram.", "no.")
    assert dpo.prompt_length(tok, [row["chosen"][0]]) > 30
    out = dpo.to_dpo_rows([row, src], "x", tok, max_prompt_length=30)
    cut = out[0]["prompt"][0]["content"]
    assert dpo.prompt_length(tok, out[0]["prompt"]) <= 30
    assert long_prompt.endswith(cut) and cut.endswith("Who is the friend of Ada?")
    assert out[1]["prompt"] == ds[0]["prompt"]  # short prompts untouched


# ---- training -----------------------------------------------------------------------------------

def _scalar_logs(log, key):
    return [e[key] for e in log if key in e]


def test_train_two_epochs(assets):
    from transformers import AutoModelForCausalLM

    out = assets["root"] / "run"
    t0 = time.time()
    res = dpo.train(_cfg(), assets["init"], assets["data"], out)
    elapsed = time.time() - t0
    assert res.metrics["n_train"] == 24 and res.metrics["n_test"] == 8 and res.metrics["global_batch_size"] == 4
    assert res.metrics["steps"] == 12  # 24 pairs / 4 per step × 2 epochs
    # the attention setting's kernel (auto = sdpa on CPU), per-sequence during padding-free training
    assert res.metrics["attn_implementation"] == "sdpa" and res.metrics["train_attention"] == modeling.DOCUMENT_ATTENTION
    for name in ("epoch-1", "epoch-2", "model"):
        m = AutoModelForCausalLM.from_pretrained(out / name)
        assert m.config.hidden_size == 32
        assert (out / name / "tokenizer.json").is_file()
    assert not (out / "epoch-3").exists()
    log = res.log_history
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected"):
        assert _scalar_logs(log, key), key
        assert _scalar_logs(log, f"eval_{key}"), f"eval_{key}"
    acc = _scalar_logs(log, "rewards/accuracies")
    assert acc[0] == 0.0  # step 1: policy = reference, every reward is 0
    assert max(acc[-4:]) > 0.5 and res.metrics["eval_rewards/accuracies"] > 0.5
    assert res.metrics["eval_rewards/margins"] > 0
    finals = [e for e in log if "eval_loss" in e and e["step"] == res.metrics["steps"]]
    assert len(finals) == 1 and finals[0]["eval_rewards/accuracies"] == res.metrics["eval_rewards/accuracies"]  # evaluated once
    # epoch-2 is the final model
    w2 = AutoModelForCausalLM.from_pretrained(out / "epoch-2").state_dict()
    wf = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert all(torch.equal(w2[k], wf[k]) for k in wf)
    w1 = AutoModelForCausalLM.from_pretrained(out / "epoch-1").state_dict()
    assert not all(torch.equal(w1[k], wf[k]) for k in wf)
    # the reference log-probs it returns (the on-policy diagnostic's input) are the init policy's,
    # in train_prefs order, with the prompt cut as DPO sees it
    init = AutoModelForCausalLM.from_pretrained(assets["init"]).eval()
    rows = dpo.to_dpo_rows(assets["dsd"]["train_prefs"], "train_prefs", assets["tok"], _cfg().max_prompt_length)
    assert len(res.ref_logps["chosen"]) == len(res.ref_logps["rejected"]) == 24
    for i in (0, 7, 23):
        for side in ("chosen", "rejected"):
            direct = dpo.sequence_logps(init, assets["tok"], rows[i]["prompt"], rows[i][side][0], _cfg().max_length)
            assert res.ref_logps[side][i] == pytest.approx(float(direct), abs=1e-3)
    print(f"2-epoch tiny DPO run: {elapsed:.1f}s")


class Kill(Exception):
    pass


def test_resume_after_kill(assets):
    """Killed right after the checkpoint at the end of epoch 1 (before epoch-1 was written):
    the re-run resumes at step 6, writes the missing epoch-1 folder from the restored weights,
    and finishes."""
    from transformers import AutoModelForCausalLM, TrainerCallback

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step >= 6:
                raise Kill(state.global_step)

    class FirstStep(TrainerCallback):
        start = None

        def on_train_begin(self, args, state, control, **kw):
            FirstStep.start = state.global_step

    out = assets["root"] / "resume"
    cfg = _cfg()
    over = {"save_strategy": "steps", "save_steps": 2}
    with pytest.raises(Kill):
        dpo.train(cfg, assets["init"], assets["data"], out, callbacks=[KillAfterSave()], trl_overrides=over)
    assert modeling.last_checkpoint(out / "checkpoints").endswith("checkpoint-6")
    assert not (out / "epoch-1").exists() and not (out / "model").exists()
    ckpt6 = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "checkpoint-6").state_dict()

    res = dpo.train(cfg, assets["init"], assets["data"], out, callbacks=[FirstStep()], trl_overrides=over)
    assert FirstStep.start == 6 and res.metrics["steps"] == 12
    steps_logged = [e["step"] for e in res.log_history if "loss" in e]
    assert steps_logged == list(range(1, 13))  # history carried over from the killed run
    for name in ("epoch-1", "epoch-2", "model"):
        assert (out / name / "config.json").is_file()
    w1 = AutoModelForCausalLM.from_pretrained(out / "epoch-1").state_dict()
    assert all(torch.equal(w1[k], ckpt6[k]) for k in w1)
    # a later re-run keeps the existing epoch folders
    mtime = (out / "epoch-1" / "config.json").stat().st_mtime_ns
    dpo.EpochSaver(out).save(type("S", (), {"is_world_process_zero": True})(), 1)
    assert (out / "epoch-1" / "config.json").stat().st_mtime_ns == mtime
