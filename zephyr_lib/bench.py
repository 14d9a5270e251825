"""Side-by-side speed benchmark: this project's training and generation paths against the
library defaults, on the profile's model sizes and toy data, in one run.

What it measures (each repeat runs everything; the report keeps the median of the repeats):

* **dSFT**: ``sft.train`` (exactly as the stages call it, with the profile's ``sft`` run config)
  against ``trl.SFTTrainer`` with TRL's defaults. Both get the same base model, the same
  training dialogues, the same loss definition (assistant tokens only, eos included), the same
  learning rate / schedule / batch / ``max_length`` / seed, and so the same number of optimizer
  steps; the baseline adds only what a CPU needs (``use_cpu=True, bf16=False``). Throughput is
  *useful* tokens per second: tokens that carry loss (:func:`loss_tokens`) over the training
  loop's time (from ``on_train_begin`` to ``on_train_end``, in-training evaluations and
  checkpoints included). Both report their final eval loss on the same test dialogues.
* **dDPO**: ``dpo.train`` against ``trl.DPOTrainer`` with TRL's defaults (``ref_model=None``:
  TRL loads a frozen copy of the init weights and runs it at every step), same preference
  pairs, β, schedule, batch, lengths and seed. Pairs per second (pairs × epochs over the
  training loop's time), and the final test reward accuracy of both.
* **generation**: the shared batched helper (``generate.chat_generate``, as
  ``ModelAgent.respond_many`` calls it) against a per-prompt ``model.generate`` loop, greedy, on
  the same prompts, with the briefly pretrained base model (it has not learned to stop, so every
  answer decodes up to ``max_new_tokens``: the comparison measures decoding); one warm-up call
  first. The speed ratio and every prompt whose text differs.
* **base pretraining**: ``modeling.pretrain`` tokens/s, and model FLOP/s as a fraction of this
  machine's fp32 matmul rate measured in the same run (:func:`matmul_rate`). Model FLOPs per
  trained token = 6·N + 12·L·d·T (PaLM, appendix B: N parameters, tied embeddings counted once
  as the LM head's matmul; L layers, d hidden size, T sequence length; the attention term is the
  non-causal count).
* **rerun**: a second ``python -m zephyr_lib run --profile P`` when every run of the profile is
  complete in the store: wall time, training steps run, judge calls made (from the runner's
  output and the re-executed runs' metrics). Otherwise "not measured" with the reason.

The data is built here, cheaply, from the toy world (no pipeline stage runs): a tokenizer and a
base model (briefly pretrained: that is the pretraining measurement), teacher dialogues for
dSFT, and preference pairs *teacher (chosen) vs teacher_sloppy (rejected)* for dDPO — a cheap
stand-in for the judged pool, enough for a throughput benchmark. Sizes are cut so every
measurement takes seconds (:data:`SIZES`), the step counts are equal on both sides.

Run it (timings are noisy on a shared machine; serialize heavy jobs)::

    python -m zephyr_lib bench --profile toy --repeats 3 --out bench.json
    make bench

It prints a table, writes ``bench.json`` atomically, and :func:`write_performance_page` renders
``book/generated/performance.md`` (+ a PNG of the ratios) for the book's Performance page.
"""
from __future__ import annotations

import dataclasses
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .io import atomic_write_bytes, atomic_write_text, read_json, write_json

GENERATED_PAGE = "performance.md"
GENERATED_PNG = "performance_ratios.png"


@dataclass(frozen=True)
class BenchSizes:
    """How much work each measurement does (equal on both sides of every comparison)."""

    pretrain_steps: int = 30  # optimizer steps of base pretraining (profile batch and seq_len)
    sft_steps: int = 30  # dSFT optimizer steps (training dialogues = steps × batch / epochs)
    sft_test: int = 64  # test dialogues for the final eval loss
    dpo_steps: int = 24  # dDPO optimizer steps (pairs = steps × batch / epochs)
    dpo_test: int = 32  # test pairs for the final reward accuracy
    n_generate: int = 32  # prompts for the generation comparison
    max_new_tokens: int = 0  # generation length (0 = the profile's eval.max_new_tokens)


SIZES = {"toy": BenchSizes(pretrain_steps=12, sft_steps=24, dpo_steps=18), "smoke": BenchSizes(pretrain_steps=10, sft_steps=8, sft_test=16, dpo_steps=8,
                                                  dpo_test=16, n_generate=16)}


# ---- hardware and model FLOPs -------------------------------------------------------------

def matmul_rate(n: int = 2048, seconds: float = 2.0) -> float:
    """fp32 FLOP/s of an n×n matmul loop on this machine (``modeling.matmul_rate``)."""
    from .modeling import matmul_rate as rate

    return rate(n=n, seconds=seconds)


UNSTEADY = 0.25  # a run whose matmul rate at its end differs from its start by more than this shared the machine


def run_rate(manifest: dict, precision: str) -> tuple[float | None, bool]:
    """(FLOP/s, steady) of one training run, from the matmul rates its manifest recorded at the
    start and end of the run, in the precision it trained in: the mean of the two, and whether they
    agree within :data:`UNSTEADY` (if not, load changed during the run and a floor against it is
    unreliable). ``(None, False)`` for a run stored before the rates were recorded."""
    rec = (manifest.get("machine") or {}).get("matmul_gflops") or {}
    pair = [(rec.get(k) or {}).get(precision) for k in ("start", "end")]
    if None in pair:
        return None, False
    a, b = pair
    return (a + b) / 2 * 1e9, abs(a - b) <= UNSTEADY * max(a, b)


def flops_per_token(model_config, seq_len: int, n_params: int) -> float:
    """Training FLOPs per token: 6·N + 12·L·d·T (see the module docstring)."""
    return 6.0 * n_params + 12.0 * model_config.num_hidden_layers * model_config.hidden_size * seq_len


def loss_tokens(tokenizer, conversations: list[list[dict]], max_length: int) -> int:
    """Tokens that carry loss under assistant-only loss: the chat template's ``{% generation %}``
    spans (answers and their eos) inside the first ``max_length`` tokens, as TRL tokenizes."""
    n = 0
    for msgs in conversations:
        enc = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        n += sum(enc["assistant_masks"][:max_length])
    return n


class LoopTimer:
    """A TrainerCallback timing the training loop: ``seconds`` from on_train_begin to
    on_train_end (in-training evaluations, logging and checkpoints included), ``step_seconds``
    the sum of the optimizer steps alone (on_step_begin → on_step_end)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                timer.t0 = time.perf_counter()

            def on_step_begin(self, args, state, control, **kw):
                timer.s0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.step_seconds += time.perf_counter() - timer.s0

            def on_train_end(self, args, state, control, **kw):
                timer.seconds = time.perf_counter() - timer.t0
                timer.steps = state.global_step

        self.t0 = self.s0 = self.seconds = self.step_seconds = 0.0
        self.steps = 0
        self.callback = _CB()


# ---- data ---------------------------------------------------------------------------------

def configs(profile: str, sizes: BenchSizes) -> dict:
    """The profile's base/sft/dpo run configs with the data cut to the bench's step counts."""
    from .plan import load_profile

    prof = load_profile(profile)
    base = dataclasses.replace(prof.runs["base"].config, num_train_epochs=1.0)
    sft = prof.runs["sft"].config
    n_sft = max(1, round(sizes.sft_steps * sft.global_batch_size / sft.num_train_epochs))
    sft = dataclasses.replace(sft, max_train_samples=n_sft)
    dpo = prof.runs["dpo"].config
    ev = prof.runs["eval"].config if "eval" in prof.runs else None
    return {"profile": prof, "base": base, "sft": sft, "dpo": dpo, "n_sft_train": n_sft,
            "n_dpo_train": max(1, round(sizes.dpo_steps * dpo.global_batch_size / dpo.num_train_epochs)),
            "max_new_tokens": sizes.max_new_tokens or (ev.max_new_tokens if ev else 96),
            "gen_batch_size": ev.batch_size if ev else 32}


def build_inputs(cfgs: dict, sizes: BenchSizes, work: Path) -> dict:
    """Tokenizer + untrained base model, dSFT data, dDPO data and generation prompts, in `work`."""
    from . import curate, feedback, modeling
    from .toyworld import World, toy_agent, write_dialogues

    prof, base = cfgs["profile"], cfgs["base"]
    world = World(prof.world)
    docs = world.pretraining_docs(max(base.n_docs // 4, 500), base.seed)
    tok = modeling.train_tokenizer(docs, base.vocab_size, work / "init")
    blocks = modeling.pack_blocks(tok, docs, base.seq_len)
    need = (sizes.pretrain_steps + 2) * base.batch_size
    blocks = (blocks * (need // max(1, len(blocks)) + 1))[:need]  # repeat the corpus if it is short
    teacher = toy_agent(world, "teacher", seed=0)
    n_sft_test = sizes.sft_test
    tasks = world.tasks(cfgs["n_sft_train"] + 2 * n_sft_test, seed=1, followups=prof.runs["curate"].config.max_followups,
                        prefix="bench-sft")
    rows = [curate.to_ultrachat_200k_row(d) for d in write_dialogues(world, teacher, tasks)]
    test_frac = 2 * n_sft_test / len(rows)  # split_dataset keeps half the test part as test_sft
    curate.save_dataset(curate.split_dataset(rows, test_frac=test_frac, seed=0), work / "sft_data")
    sloppy = toy_agent(world, "teacher_sloppy", seed=0)
    n_pairs = cfgs["n_dpo_train"] + sizes.dpo_test
    pairs = []
    for t in world.tasks(n_pairs * 2, seed=2, followups=0, prefix="bench-dpo"):
        conv = [{"role": "user", "content": t.turns[0]}]
        good, bad = teacher.respond(conv), sloppy.respond(conv)
        if good == bad:
            continue
        pairs.append({"prompt": t.turns[0], "prompt_id": feedback.prompt_id(t.turns[0]),
                      "chosen": conv + [{"role": "assistant", "content": good}],
                      "rejected": conv + [{"role": "assistant", "content": bad}],
                      "messages": conv + [{"role": "assistant", "content": good}],
                      "score_chosen": 8.0, "score_rejected": 4.0})
        if len(pairs) == n_pairs:
            break
    if len(pairs) < n_pairs:
        raise RuntimeError(f"bench: only {len(pairs)} teacher/sloppy pairs differ, {n_pairs} needed")
    feedback.save_binarized(feedback.to_dataset_dict(pairs, test_size=sizes.dpo_test, seed=0), work / "dpo_data")
    prompts = [[{"role": "user", "content": t.turns[0]}]
               for t in world.tasks(sizes.n_generate, seed=3, followups=0, prefix="bench-gen")]
    write_json(work / "blocks.json", blocks)
    write_json(work / "prompts.json", prompts)
    return load_inputs(work)


def load_inputs(work: Path) -> dict:
    """The inputs :func:`build_inputs` wrote to `work`, for a measurement process."""
    from transformers import AutoTokenizer

    work = Path(work)
    return {"tok": AutoTokenizer.from_pretrained(work / "init"), "blocks": read_json(work / "blocks.json"),
            "prompts": read_json(work / "prompts.json"), "init": work / "init",
            "sft_data": work / "sft_data", "dpo_data": work / "dpo_data"}


# ---- the measurements ---------------------------------------------------------------------

def bench_pretrain(cfgs: dict, inputs: dict, rate: float, out: Path) -> dict:
    """``modeling.pretrain`` on the profile's base config; writes the model to inputs['init']."""
    from . import modeling

    base, tok = cfgs["base"], inputs["tok"]
    blocks = inputs["blocks"]
    train, held = blocks[2 * base.batch_size:], blocks[:2 * base.batch_size]
    model = modeling.build_model(tok, base)
    timer = LoopTimer()
    res = modeling.pretrain(model, tok, train, held, base, out, log=lambda *a: None, callbacks=[timer.callback])
    model.save_pretrained(inputs["init"])
    n_params = sum(p.numel() for p in model.parameters())
    tokens = len(train) * base.seq_len
    flops = flops_per_token(model.config, base.seq_len, n_params) * tokens / timer.step_seconds
    return {"steps": res["steps"], "tokens": tokens, "train_s": timer.seconds, "step_s": timer.step_seconds,
            "tokens_per_s": tokens / timer.seconds,
            "n_params": n_params, "model_flops_per_s": flops, "fraction_of_matmul": flops / rate,
            "eval_loss": res["eval_loss"]}


def bench_sft_ours(cfgs: dict, inputs: dict, out: Path) -> dict:
    from . import sft

    timer = LoopTimer()
    t0 = time.perf_counter()
    res = sft.train(cfgs["sft"], inputs["init"], inputs["sft_data"], out, callbacks=[timer.callback])
    return {"steps": res.metrics["steps"], "train_s": timer.seconds, "step_s": timer.step_seconds,
            "wall_s": time.perf_counter() - t0, "eval_loss": res.metrics["eval_loss"]}


def bench_sft_trl(cfgs: dict, inputs: dict, out: Path) -> dict:
    """trl.SFTTrainer with its defaults; only the experiment's definition and CPU needs are set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from .sft import load_sft_data

    c = cfgs["sft"]
    timer = LoopTimer()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(inputs["init"])
    args = SFTConfig(output_dir=str(out / "checkpoints"), use_cpu=True, bf16=False, report_to=[],
                     learning_rate=c.learning_rate, lr_scheduler_type=c.lr_scheduler_type, warmup_steps=c.warmup_ratio,
                     num_train_epochs=c.num_train_epochs, per_device_train_batch_size=c.per_device_train_batch_size,
                     gradient_accumulation_steps=c.gradient_accumulation_steps, max_length=c.max_length,
                     assistant_only_loss=c.assistant_only_loss, seed=c.seed)
    train, test = load_sft_data(inputs["sft_data"], c.max_train_samples)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(inputs["init"]), args=args, train_dataset=train,
                         eval_dataset=test, processing_class=tok, callbacks=[timer.callback])
    trainer.train()
    final = trainer.evaluate()
    trainer.save_model(str(out / "model"))
    return {"steps": trainer.state.global_step, "train_s": timer.seconds, "step_s": timer.step_seconds,
            "wall_s": time.perf_counter() - t0, "eval_loss": final["eval_loss"]}


def bench_dpo_ours(cfgs: dict, inputs: dict, out: Path) -> dict:
    from . import dpo

    timer = LoopTimer()
    t0 = time.perf_counter()
    res = dpo.train(cfgs["dpo"], inputs["init"], inputs["dpo_data"], out, callbacks=[timer.callback])
    return {"steps": res.metrics["steps"], "train_s": timer.seconds, "step_s": timer.step_seconds,
            "wall_s": time.perf_counter() - t0, "n_train": res.metrics["n_train"],
            "reward_accuracy": res.metrics["eval_rewards/accuracies"], "eval_loss": res.metrics["eval_loss"]}


def bench_dpo_trl(cfgs: dict, inputs: dict, out: Path) -> dict:
    """trl.DPOTrainer with its defaults (reference model run at every step)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from .dpo import load_prefs

    c = cfgs["dpo"]
    timer = LoopTimer()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(inputs["init"])
    prefs = load_prefs(inputs["dpo_data"], tok, c.max_prompt_length)  # the same pairs, same prompt cut
    args = DPOConfig(output_dir=str(out / "checkpoints"), use_cpu=True, bf16=False, report_to=[], beta=c.beta,
                     loss_type=[c.loss_type], learning_rate=c.learning_rate, lr_scheduler_type=c.lr_scheduler_type,
                     warmup_steps=c.warmup_ratio, num_train_epochs=c.num_train_epochs,
                     per_device_train_batch_size=c.per_device_train_batch_size,
                     gradient_accumulation_steps=c.gradient_accumulation_steps, max_length=c.max_length, seed=c.seed)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(inputs["init"]), ref_model=None, args=args,
                         train_dataset=prefs["train"], eval_dataset=prefs["test"], processing_class=tok,
                         callbacks=[timer.callback])
    trainer.train()
    final = trainer.evaluate()
    trainer.save_model(str(out / "model"))
    return {"steps": trainer.state.global_step, "train_s": timer.seconds, "step_s": timer.step_seconds,
            "wall_s": time.perf_counter() - t0, "n_train": len(trainer.train_dataset), "reward_accuracy": final["eval_rewards/accuracies"],
            "eval_loss": final["eval_loss"]}


def generate_loop(model, tokenizer, conversations, max_new_tokens: int) -> list[str]:
    """The naive baseline: one ``model.generate`` call per prompt, greedy."""
    import torch

    out = []
    with torch.no_grad():
        for conv in conversations:
            prompt = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def bench_generate(model_dir: Path, prompts, max_new_tokens: int, batch_size: int) -> dict:
    from .agent import Agent
    from .generate import ModelAgent

    agent: Agent = ModelAgent(model_dir, name="bench", batch_size=batch_size)
    generate_loop(agent.model, agent.tokenizer, prompts[:1], 2)  # warm-up: neither side pays first-call costs
    t0 = time.perf_counter()
    batched = agent.respond_many(prompts, max_new_tokens=max_new_tokens, desc=False)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    looped = generate_loop(agent.model, agent.tokenizer, prompts, max_new_tokens)
    t_loop = time.perf_counter() - t0
    mismatches = [{"prompt": p[-1]["content"], "batched": a, "loop": b}
                  for p, a, b in zip(prompts, batched, looped) if a != b]
    n_tokens = [len(agent.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in looped]
    return {"n_prompts": len(prompts), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "mean_answer_tokens": sum(n_tokens) / len(n_tokens),
            "batched_s": t_batched, "loop_s": t_loop, "ratio": t_loop / t_batched,
            "n_identical": len(prompts) - len(mismatches), "mismatches": mismatches}


RUN_LINE = re.compile(r"^\[\d+/\d+\] (\S+) \((\w+) @ (\w+)\): "
                      r"(cached|done in ([\d.]+) s|page rendered in ([\d.]+) s \(run cached\))")


def parse_runner_output(text: str) -> dict:
    """The runner's per-run lines -> {"cached": [runs], "executed": {run: seconds} (runs built),
    "rendered": {run: seconds} (complete runs whose page alone was executed again)}."""
    cached, executed, rendered = [], {}, {}
    for line in text.splitlines():
        m = RUN_LINE.match(line.strip())
        if m:
            if m.group(4) == "cached":
                cached.append(m.group(1))
            elif m.group(5) is not None:
                executed[m.group(1)] = float(m.group(5))
            else:
                rendered[m.group(1)] = float(m.group(6))
    return {"cached": cached, "executed": executed, "rendered": rendered}


def bench_rerun(profile: str) -> dict:
    """A second, unchanged ``zephyr run`` of the profile, if every run of it is complete."""
    from .plan import load_profile
    from .store import REPO, context, status

    prof = load_profile(profile)
    missing = [r["run"] for r in status(prof) if not r["complete"]]
    if missing:
        return {"measured": False, "reason": f"the store has no complete run for {len(missing)} of the profile's "
                                             f"runs ({', '.join(missing[:6])}{', …' if len(missing) > 6 else ''}): "
                                             f"run `python -m zephyr_lib run --profile {profile}` first"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "zephyr_lib", "run", "--profile", profile], cwd=REPO,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"measured": False, "reason": f"the rerun failed with exit code {proc.returncode}: "
                                             f"{(proc.stderr or proc.stdout)[-400:]}"}
    parsed = parse_runner_output(proc.stdout)
    steps = calls = 0
    for run in parsed["executed"]:  # only runs this rerun built did their work here; a re-rendered page did none
        ctx = context(prof, run)
        m = ctx.metrics() if ctx.complete else {}
        steps += int(m.get("steps", 0) or 0)
        calls += int((m.get("judge_stats") or {}).get("calls", 0) or 0)
    return {"measured": True, "wall_s": wall, "runs_cached": len(parsed["cached"]),
            "runs_executed": sorted(parsed["executed"]), "pages_rendered": sorted(parsed["rendered"]),
            "training_steps": steps, "judge_calls": calls}


def plan_floor(profile: str, rate: float) -> dict:
    """The profile's training compute, counted from the stored runs, and the time it needs at the
    machine's matmul rate: a lower bound on any implementation's time for the plan on this machine,
    whatever it does about padding, caching or threads.

    Each run's rate is the one recorded beside it (its manifest: the matmul rate at the start and
    end of the run, in the precision it trained in, :func:`run_rate`), so load on the machine
    lowers the rate and the work alike; a run whose two rates disagree is marked unsteady. ``rate``
    (fp32, measured now) stands in only for runs stored before rates were recorded.

    Counted, per trained run: every training token (6·N + 12·L·d·T model FLOPs, as the pretraining
    measurement; T = the run's mean sequence length), the in-training evaluations (forward only:
    a third of that), and dDPO's reference pass (forward, once per reference and pairs: runs that
    share them share it). Not counted (so the bound is low): generation (AI-feedback pool, held-out
    probes, benchmark answers), lm-eval's log-likelihoods, tokenization, judging and start-up.
    Needs every base/sft/dpo run of the profile complete in the store; otherwise "measured": False.
    """
    from transformers import AutoConfig, AutoTokenizer

    from . import dpo as D
    from .config import ref_run
    from .plan import load_profile
    from .io import read_jsonl
    from .sft import load_sft_data
    from .store import context

    prof = load_profile(profile)
    runs = [r for r in prof.order() if r.stage in ("base", "sft", "dpo")]
    missing = [r.name for r in runs if not context(prof, r.name).complete]
    if missing:
        return {"measured": False, "reason": f"runs not complete in the store: {', '.join(missing)}"}
    lengths_cache: dict = {}
    ref_passes: set = set()
    rows, total = [], 0.0

    def per_token(cfg_dir, mean_len: float) -> float:
        mc = AutoConfig.from_pretrained(cfg_dir)
        n = (mc.vocab_size * mc.hidden_size + mc.num_hidden_layers * (
            2 * mc.hidden_size * mc.hidden_size
            + 2 * mc.hidden_size * mc.num_key_value_heads * (mc.hidden_size // mc.num_attention_heads)
            + 3 * mc.hidden_size * mc.intermediate_size))
        return flops_per_token(mc, mean_len, n)

    for run in runs:
        ctx = context(prof, run.name)
        cfg, m = ctx.cfg, ctx.metrics()
        man = ctx.manifest()
        precision = m.get("precision", "fp32")
        r_rate, steady = run_rate(man, precision)
        timing = {"wall_s": man.get("wall_time_s"), "precision": precision, "rate": r_rate or rate,
                  "rate_recorded": r_rate is not None, "steady": steady, "bf16_rate": run_rate(man, "bf16")[0]}
        if run.stage == "base":
            if getattr(cfg, "pretrained", ""):
                continue
            tokens = m["n_train_tokens"] * cfg.num_train_epochs
            flops = per_token(ctx.dir / "model", cfg.seq_len) * tokens
            rows.append({"run": run.name, "stage": "base", "train_tokens": tokens, "mean_length": cfg.seq_len,
                         "flops": flops, **timing})
            total += flops
            continue
        init, data = ctx.resolve(cfg.init), ctx.resolve(cfg.data)
        tok = AutoTokenizer.from_pretrained(init)
        key = (run.stage, str(data), str(init), cfg.max_length, getattr(cfg, "max_prompt_length", None),
               getattr(cfg, "max_train_samples", 0))
        if key not in lengths_cache:
            if run.stage == "sft":
                train, test = load_sft_data(data, cfg.max_train_samples)
                tl = lambda msgs: min(cfg.max_length, len(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]))  # noqa: E731
                lengths_cache[key] = ([tl(x) for x in train["messages"]], [tl(x) for x in test["messages"]])
            else:
                prefs = D.load_prefs(data, tok, cfg.max_prompt_length)

                def pair(r):
                    return [min(cfg.max_length, sum(map(len, D.completion_ids(tok, r["prompt"], r[s][0])))) for s in ("chosen", "rejected")]
                lengths_cache[key] = ([x for r in prefs["train"] for x in pair(r)], [x for r in prefs["test"] for x in pair(r)])
        train_lens, test_lens = lengths_cache[key]
        mean_len = sum(train_lens) / max(1, len(train_lens))
        f_tok = per_token(init, mean_len)
        n_evals = sum(1 for e in read_jsonl(ctx.dir / "log_history.jsonl") if "eval_loss" in e)
        train_tokens = sum(train_lens) * cfg.num_train_epochs
        flops = f_tok * train_tokens + f_tok / 3 * sum(test_lens) * n_evals
        if run.stage == "dpo":
            ref_key = (prof.run_hash(ref_run(cfg.init)), key)
            if ref_key not in ref_passes:  # one reference pass per reference and pairs (the stage's cache)
                ref_passes.add(ref_key)
                flops += f_tok / 3 * (sum(train_lens) + sum(test_lens))
        rows.append({"run": run.name, "stage": run.stage, "train_tokens": train_tokens, "evals": n_evals,
                     "mean_length": mean_len, "flops": flops, **timing})
        total += flops
    for r in rows:
        r["floor_s"] = r["flops"] / r["rate"]
    every = [context(prof, r.name) for r in prof.order()]
    build_s = sum(c.manifest().get("wall_time_s") or 0 for c in every if c.complete)
    floor_s = sum(r["floor_s"] for r in rows)
    bf16_floor_s = (sum(r["flops"] / r["bf16_rate"] for r in rows)
                    if rows and all(r["bf16_rate"] for r in rows) else None)  # where every run recorded a bf16 rate
    return {"measured": True, "rate": rate, "flops": total, "floor_s": floor_s, "runs": rows,
            "bf16_floor_s": bf16_floor_s,
            "precisions": sorted({r["precision"] for r in rows}),
            "unsteady": [r["run"] for r in rows if r["rate_recorded"] and not r["steady"]],
            "rates_not_recorded": [r["run"] for r in rows if not r["rate_recorded"]],
            "build_s": build_s, "build_ratio": build_s / floor_s if floor_s else None,
            "not_counted": "generation, lm-eval log-likelihoods, tokenization, judging, start-up"}


# ---- one measurement in its own process ----------------------------------------------------

MEASUREMENTS = ("pretrain", "sft_ours", "sft_trl", "dpo_ours", "dpo_trl", "generate")


def measure(kind: str, profile: str, sizes: BenchSizes, inputs_dir: Path, out: Path, rate: float = 0.0,
            model: Path | None = None) -> dict:
    """Run one measurement (in this process) and return its result."""
    from . import modeling

    modeling.set_threads()
    cfgs, inputs = configs(profile, sizes), load_inputs(inputs_dir)
    if kind == "pretrain":
        return bench_pretrain(cfgs, inputs, rate, out)
    if kind == "generate":
        return bench_generate(Path(model), inputs["prompts"], cfgs["max_new_tokens"], cfgs["gen_batch_size"])
    fns = {"sft_ours": bench_sft_ours, "sft_trl": bench_sft_trl, "dpo_ours": bench_dpo_ours, "dpo_trl": bench_dpo_trl}
    if kind not in fns:
        raise ValueError(f"bench: unknown measurement {kind!r}; expected one of {MEASUREMENTS}")
    return fns[kind](cfgs, inputs, out)


def in_child(kind: str, *, profile: str, sizes: BenchSizes, inputs: Path, out: Path, rate: float = 0.0,
             model: Path | None = None, isolate: bool = True) -> dict:
    """:func:`measure` in a fresh Python process (its output goes to ``out/bench.log``); with
    ``isolate=False`` in this process (the test suite's tiny bench: no process start-up cost)."""
    from .config import REPO

    if not isolate:
        return measure(kind, profile, sizes, inputs, out, rate, model)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"kind": kind, "profile": profile, "sizes": dataclasses.asdict(sizes), "inputs": str(inputs),
            "out": str(out), "rate": rate, "model": str(model) if model else None}
    write_json(out / "spec.json", spec)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with open(out / "bench.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "zephyr_lib.bench", str(out / "spec.json")], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=str(REPO)).returncode
    if rc != 0 or not (out / "result.json").is_file():
        tail = (out / "bench.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"bench: measurement {kind!r} failed (exit code {rc}); log {out / 'bench.log'}:\n{tail}")
    return read_json(out / "result.json")


def _child_main(spec_path: str) -> int:
    spec = read_json(spec_path)
    res = measure(spec["kind"], spec["profile"], BenchSizes(**spec["sizes"]), Path(spec["inputs"]), Path(spec["out"]),
                  spec["rate"], Path(spec["model"]) if spec["model"] else None)
    write_json(Path(spec["out"]) / "result.json", res)
    return 0


# ---- one run ------------------------------------------------------------------------------

def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def run_bench(profile: str = "toy", repeats: int = 3, out: str | Path = "bench.json", sizes: BenchSizes | None = None,
              rerun: bool = True, work: str | Path | None = None, isolate: bool = True, echo=print) -> dict:
    """Run every measurement `repeats` times; write `out` (JSON) atomically; return the result.
    Each measurement runs in a fresh process unless ``isolate=False`` (tests)."""
    import torch
    import transformers
    import trl

    from . import modeling

    if repeats < 1:
        raise ValueError(f"bench: --repeats must be >= 1, got {repeats}")
    sizes = sizes or SIZES.get(profile, BenchSizes())
    modeling.set_threads()
    cfgs = configs(profile, sizes)
    tmp = tempfile.TemporaryDirectory(prefix="zephyr-bench-") if work is None else None
    root = Path(tmp.name if tmp else work)
    try:
        echo(f"bench: profile {profile}, {repeats} repeat(s), {torch.get_num_threads()} torch threads")
        rate = matmul_rate()
        echo(f"bench: fp32 matmul {rate / 1e9:.1f} GFLOP/s")
        reps: dict[str, list[dict]] = {k: [] for k in ("pretrain", "sft_ours", "sft_trl", "dpo_ours", "dpo_trl", "generate")}
        inputs = build_inputs(cfgs, sizes, root / "inputs")
        for i in range(repeats):
            r = root / f"rep{i}"
            echo(f"bench: repeat {i + 1}/{repeats}")
            child = dict(profile=profile, sizes=sizes, inputs=root / "inputs", isolate=isolate)
            reps["pretrain"].append(in_child("pretrain", out=r / "pretrain", rate=rate, **child))
            # Alternate which side goes first (the machine's load drifts), each in a fresh process
            # as the stages run (a second run in the same process finds warm kernel caches).
            for stage in ("sft", "dpo"):
                for side in (("ours", "trl") if i % 2 == 0 else ("trl", "ours")):
                    reps[f"{stage}_{side}"].append(in_child(f"{stage}_{side}", out=r / f"{stage}_{side}", **child))
            # The pretrained base model: it answers until max_new_tokens (it has not learned to stop), so
            # the comparison measures decoding, not a model that stops after a token or two.
            reps["generate"].append(in_child("generate", out=r / "generate", model=root / "inputs" / "init", **child))
        result = summarize(profile, repeats, sizes, cfgs, inputs, reps, rate)
        result["machine"].update({"torch": torch.__version__, "transformers": transformers.__version__,
                                  "trl": trl.__version__})
        result["rerun"] = bench_rerun(profile) if rerun else {"measured": False, "reason": "skipped (--no-rerun)"}
        result["floor"] = plan_floor(profile, rate)
    finally:
        if tmp:
            tmp.cleanup()
    write_json(out, result)
    echo(format_table(result))
    return result


def summarize(profile, repeats, sizes, cfgs, inputs, reps, rate) -> dict:
    import torch

    from .store import cpu_name

    tok = inputs["tok"]
    from .sft import load_sft_data

    train, _ = load_sft_data(inputs["sft_data"], cfgs["sft"].max_train_samples)
    useful = loss_tokens(tok, train["messages"], cfgs["sft"].max_length) * cfgs["sft"].num_train_epochs
    sft = {}
    for side in ("ours", "trl"):
        rows = reps[f"sft_{side}"]
        for row in rows:
            row["useful_tokens_per_s"] = useful / row["train_s"]
        sft[side] = {"useful_tokens_per_s": _median(rows, "useful_tokens_per_s"), "eval_loss": _median(rows, "eval_loss"),
                     "steps": rows[0]["steps"], "train_s": _median(rows, "train_s"), "wall_s": _median(rows, "wall_s"),
                     "repeats": rows}
    dpo = {}
    for side in ("ours", "trl"):
        rows = reps[f"dpo_{side}"]
        for row in rows:
            row["pairs_per_s"] = row["n_train"] * cfgs["dpo"].num_train_epochs / row["train_s"]
        dpo[side] = {"pairs_per_s": _median(rows, "pairs_per_s"), "reward_accuracy": _median(rows, "reward_accuracy"),
                     "eval_loss": _median(rows, "eval_loss"), "steps": rows[0]["steps"], "train_s": _median(rows, "train_s"),
                     "wall_s": _median(rows, "wall_s"), "repeats": rows}
    gen_rows, pre_rows = reps["generate"], reps["pretrain"]
    gen = {"batched_s": _median(gen_rows, "batched_s"), "loop_s": _median(gen_rows, "loop_s"),
           "ratio": _median(gen_rows, "ratio"), "n_prompts": gen_rows[0]["n_prompts"],
           "max_new_tokens": gen_rows[0]["max_new_tokens"], "batch_size": gen_rows[0]["batch_size"],
           "mean_answer_tokens": _median(gen_rows, "mean_answer_tokens"),
           "identical": all(not r["mismatches"] for r in gen_rows),
           "n_identical_min": min(r["n_identical"] for r in gen_rows), "repeats": gen_rows}
    pre = {k: _median(pre_rows, k) for k in ("tokens_per_s", "model_flops_per_s", "fraction_of_matmul", "train_s")}
    pre.update({"n_params": pre_rows[0]["n_params"], "steps": pre_rows[0]["steps"], "tokens": pre_rows[0]["tokens"],
                "flops_formula": "6*N + 12*L*d*T per trained token (PaLM appendix B; N all parameters, tied "
                                 "embeddings once; attention non-causal)", "repeats": pre_rows})
    # A ratio is the median of the per-repeat ratios (both sides of a repeat ran back to back,
    # under the same machine load), not a ratio of medians.
    # Same useful tokens (pairs) on both sides, so the throughput ratio is the time ratio.
    sft["ratio"] = statistics.median(t["train_s"] / o["train_s"] for o, t in zip(reps["sft_ours"], reps["sft_trl"]))
    dpo["ratio"] = statistics.median(t["train_s"] / o["train_s"] for o, t in zip(reps["dpo_ours"], reps["dpo_trl"]))
    ratios = {"dSFT useful tokens/s (ours / TRL default)": sft["ratio"],
              "dDPO pairs/s (ours / TRL default)": dpo["ratio"],
              "generation (batched / per-prompt loop)": gen["ratio"],
              "pretraining (model FLOP/s / matmul rate)": pre["fraction_of_matmul"]}
    targets = {"dSFT useful tokens/s (ours / TRL default)": 1.5, "dDPO pairs/s (ours / TRL default)": 1.3,
               "generation (batched / per-prompt loop)": 10.0, "pretraining (model FLOP/s / matmul rate)": 0.4}
    return {"profile": profile, "repeats": repeats, "sizes": dataclasses.asdict(sizes),
            "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "matmul_flops_per_s": rate},
            "sft": {**sft, "useful_tokens": useful, "n_train": len(train)}, "dpo": dpo, "generate": gen, "pretrain": pre,
            "ratios": ratios, "targets": targets}


# ---- presentation -------------------------------------------------------------------------

def table_rows(result: dict) -> list[tuple[str, str, str, str]]:
    """(measurement, this project, baseline, ratio) rows of the summary table."""
    s, d, g, p = result["sft"], result["dpo"], result["generate"], result["pretrain"]
    rows = [
        ("dSFT useful tokens/s", f"{s['ours']['useful_tokens_per_s']:.0f}", f"{s['trl']['useful_tokens_per_s']:.0f}",
         f"{s['ratio']:.2f}×"),
        ("dSFT final eval loss", f"{s['ours']['eval_loss']:.4f}", f"{s['trl']['eval_loss']:.4f}", ""),
        ("dDPO pairs/s", f"{d['ours']['pairs_per_s']:.1f}", f"{d['trl']['pairs_per_s']:.1f}",
         f"{d['ratio']:.2f}×"),
        ("dDPO final test reward accuracy", f"{d['ours']['reward_accuracy']:.3f}", f"{d['trl']['reward_accuracy']:.3f}", ""),
        (f"generation, {g['n_prompts']} prompts × ≤{g['max_new_tokens']} tokens (s)", f"{g['batched_s']:.2f}",
         f"{g['loop_s']:.2f}", f"{g['ratio']:.1f}×"),
        ("generation: identical greedy text", f"{g['n_identical_min']}/{g['n_prompts']}", "", ""),
        ("base pretraining tokens/s", f"{p['tokens_per_s']:.0f}", "", ""),
        ("base pretraining model GFLOP/s (of matmul rate)", f"{p['model_flops_per_s'] / 1e9:.1f}",
         f"{result['machine']['matmul_flops_per_s'] / 1e9:.1f}", f"{p['fraction_of_matmul']:.0%}"),
    ]
    r = result.get("rerun", {})
    if r.get("measured"):
        rows.append(("unchanged rerun: wall s / runs built / training steps / judge calls / pages re-rendered",
                     f"{r['wall_s']:.1f} / {len(r['runs_executed'])} / {r['training_steps']} / {r['judge_calls']} / "
                     f"{len(r.get('pages_rendered', []))}", "", ""))
    else:
        rows.append(("unchanged rerun", "not measured", "", ""))
    return rows


def format_table(result: dict) -> str:
    head = ("measurement", "this project", "baseline", "ratio")
    rows = [head, *table_rows(result)]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    m = result["machine"]
    lines.append(f"({result['profile']} profile, median of {result['repeats']}; {m['cpu_count']} cores of {m.get('cpu', '?')}, "
                 f"{m['torch_threads']} torch threads; baselines: TRL defaults / per-prompt generate loop)")
    if not result.get("rerun", {}).get("measured"):
        lines.append(f"unchanged rerun not measured: {result.get('rerun', {}).get('reason', '')}")
    f = result.get("floor") or {}
    if f.get("measured"):
        lines.append(floor_summary(f))
    return "\n".join(lines)


def floor_summary(f: dict) -> str:
    """One paragraph: the plan's compute floor, its training runs' share of it, the whole build's
    ratio to it, and what makes a figure unreliable (rates that moved during a run, or not recorded)."""
    wall = sum(r["wall_s"] or 0 for r in f["runs"])
    text = (f"training compute of the plan: {f['flops'] / 1e12:.1f} TFLOP = {f['floor_s'] / 60:.1f} min at the matmul rate "
            f"each run had ({'/'.join(f.get('precisions', ['fp32']))}); its training runs took {wall / 60:.1f} min "
            f"({f['floor_s'] / wall:.0%} of the rate)")
    if f.get("build_ratio"):
        text += f"; all the plan's runs took {f['build_s'] / 60:.1f} min = {f['build_ratio']:.1f}× the floor"
    if f.get("bf16_floor_s") and "bf16" not in f.get("precisions", []):
        text += (f" (at this processor's bf16 matmul rate, recorded beside each run, the same FLOPs would take "
                 f"{f['bf16_floor_s'] / 60:.1f} min)")
    if f.get("unsteady"):
        text += (f". Unreliable: the matmul rate moved by more than {UNSTEADY:.0%} during {', '.join(f['unsteady'])} "
                 f"(another process shared the cores)")
    if f.get("rates_not_recorded"):
        text += (f". {len(f['rates_not_recorded'])} run(s) were stored before rates were recorded beside them; "
                 f"for those the rate measured now stands in (it reads low on a busy machine)")
    return text


def floor_lines(f: dict) -> list[str]:
    """The Performance page's section on the plan's compute floor (markdown lines)."""
    import pandas as pd

    from .tables import markdown
    if not f.get("measured"):
        return ["", "### The plan's compute floor", "", f"Not measured: {f.get('reason', 'no store')}."]
    summary = floor_summary(f)  # one sentence, shared with the bench's printed table
    lines = ["", "### The plan's compute floor", "",
             f"The training runs of this profile's plan, counted from the store: every training token at "
             f"6·N + 12·L·d·T model FLOPs, the in-training evaluations and dDPO's reference passes (forward, a "
             f"third of that), each run's FLOPs at the matmul rate recorded beside it (at its start and end, in "
             f"the precision it trained in): no implementation of these runs can be faster on this machine. "
             f"Not counted, so the floor is low: {f['not_counted']}.", "",
             summary[:1].upper() + summary[1:] + ".", "",
             markdown(pd.DataFrame([{
                 "run": r["run"], "stage": r["stage"], "precision": r.get("precision", "fp32"),
                 "rate (GFLOP/s)": r.get("rate", f["rate"]) / 1e9, "training tokens": r["train_tokens"],
                 "floor (s)": r["floor_s"], "took (s)": r.get("wall_s") or 0,
                 "share of the rate": f"{(r['floor_s'] / r['wall_s'] if r.get('wall_s') else 0):.0%}"
                                      + ("" if r.get("steady", True) else " (unsteady)")}
                 for r in f["runs"]]), {"rate (GFLOP/s)": 0, "training tokens": 0, "took (s)": 0})]
    return lines


def ratio_chart_png(result: dict) -> bytes:
    """A horizontal bar chart of the ratios against their targets, as PNG bytes."""
    import io

    from matplotlib.figure import Figure

    names = list(result["ratios"])
    vals = [result["ratios"][n] for n in names]
    targets = [result["targets"][n] for n in names]
    fig = Figure(figsize=(7.5, 3.2), dpi=110)
    ax = fig.subplots()
    ys = range(len(names))[::-1]
    ax.barh(list(ys), vals, color=["#2b7bb9" if v >= t else "#d9822b" for v, t in zip(vals, targets)])
    for y, v, t in zip(ys, vals, targets):
        ax.plot([t, t], [y - 0.4, y + 0.4], color="black", lw=1.5)
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ratio (log scale); black tick = target")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def this_build_lines(profile: str) -> list[str]:
    """The Performance page's measurements of the build itself, with or without `make bench`:
    each run's wall time from its manifest, and the plan's compute floor counted from the store at
    the matmul rates recorded beside each run (:func:`plan_floor`)."""
    import pandas as pd

    from .plan import load_profile
    from .store import context
    from .tables import markdown

    prof = load_profile(profile)
    rows = []
    for run in prof.order():
        ctx = context(prof, run.name)
        if ctx.complete:
            man = ctx.manifest()
            rows.append({"run": run.name, "stage": run.stage, "wall time (s)": man["wall_time_s"],
                         "finished (UTC)": man["end"]})
    if not rows:
        return ["### Stage times", "", f"No run of the `{profile}` profile is in the store yet.", ""]
    cpu = context(prof, rows[0]["run"]).manifest().get("machine", {}).get("cpu", "an unrecorded processor")
    total = sum(r["wall time (s)"] for r in rows)
    lines = ["### Stage times", "",
             f"The wall time of each run of the `{profile}` profile, from its manifest ({len(rows)} runs, "
             f"{total / 60:.1f} min in all, on {cpu}):", "",
             markdown(pd.DataFrame(rows), {"wall time (s)": 1}), ""]
    floor = plan_floor(profile, matmul_rate(seconds=0.5))  # the runs' own rates; this one only for older runs
    return lines + floor_lines(floor) + [""]


def write_performance_page(bench_json: str | Path, out_dir: str | Path, profile: str | None = None) -> Path:
    """Always write ``out_dir/performance.md`` for the book (and the ratio chart PNG when a bench
    has run). With ``profile``, the page starts with the build's own stage times and compute
    floor (:func:`this_build_lines`), bench or no bench. Without ``bench_json`` it says plainly that
    no side-by-side benchmark has run and how to run one. Returns the page's path."""
    out_dir, bench_json = Path(out_dir), Path(bench_json)
    result = read_json(bench_json) if bench_json.is_file() else None
    own = this_build_lines(profile) if profile else []
    if result is None:
        text = "\n".join(own + [
            "### Side by side with the libraries' defaults", "",
            f"No benchmark has run for this build (no `{bench_json.name}` found). Run one with\n\n"
            "```\npython -m zephyr_lib bench --profile toy --repeats 3 --out bench.json\n"
            "```\n\n(or `make bench`), then rebuild the book.\n"])
        (out_dir / GENERATED_PNG).unlink(missing_ok=True)
        return atomic_write_text(out_dir / GENERATED_PAGE, text)
    m = result["machine"]
    lines = own + ["### Side by side with the libraries' defaults", "",
                   f"Measured on {m['cpu_count']} cores of {m.get('cpu', 'an unrecorded CPU')} ({m['torch_threads']} torch threads); fp32 matmul rate "
                   f"{m['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s (2048² matmul loop, same run). Profile "
                   f"`{result['profile']}`, median of {result['repeats']} repeat(s); torch {m.get('torch', '?')}, "
                   f"transformers {m.get('transformers', '?')}, TRL {m.get('trl', '?')}.", "",
                   "| measurement | this project | baseline | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table_rows(result)]
    r = result.get("rerun", {})
    if not r.get("measured"):
        lines += ["", f"The unchanged rerun was not measured: {r.get('reason', 'no reason recorded')}."]
    g = result["generate"]
    if not g["identical"]:
        n = sum(len(x["mismatches"]) for x in g["repeats"])
        lines += ["", f"Batched and per-prompt greedy generation differed on {n} answer(s) over all repeats "
                      "(float rounding under padding flips a near-tie argmax); see `bench.json`."]
    atomic_write_bytes(out_dir / GENERATED_PNG, ratio_chart_png(result))
    lines += ["", f"![Speed ratios against their targets]({GENERATED_PNG})"]
    if not profile:
        lines += floor_lines(result.get("floor") or {"reason": "this bench.json predates the floor measurement"})
    return atomic_write_text(out_dir / GENERATED_PAGE, "\n".join(lines + [""]))


if __name__ == "__main__":  # the measurement processes of run_bench: python -m zephyr_lib.bench <spec.json>
    sys.exit(_child_main(sys.argv[1]))
