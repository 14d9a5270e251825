"""Multi-process launching: the paper and handbook profiles' exact TRL arguments, the GPU-count
helper, the accelerate config files, the `accelerate launch` command, LoRA options, and real
end-to-end dSFT / dDPO runs through `accelerate launch` with 2 CPU processes (gloo)."""
from __future__ import annotations

import dataclasses
import json
import sys
import time

import pytest

from zephyr_lib import dpo, launch, sft
from zephyr_lib.config import REPO, ConfigError, load_profile
from zephyr_lib.stages.dpo import DPOConfig
from zephyr_lib.stages.sft import SFTConfig


def _runs(profile, stage, overrides=None):
    prof = load_profile(profile, overrides)
    runs = [r for r in prof.runs.values() if r.stage == stage]
    assert runs, f"{profile} has no {stage} run"
    return runs


def _global(args, cfg):
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * cfg.num_processes


# ---- the profiles resolve to the published hyperparameters --------------------------------------

SFT_EXPECTED = {  # lr, schedule, warmup, epochs, global batch, packing, max_length, processes
    "paper": (2e-5, "cosine", 0.1, 1.0, 512, True, 2048, 16),
    "handbook": (2e-5, "cosine", 0.1, 1.0, 128, True, 2048, 8),
}
DPO_EXPECTED = {  # lr, schedule, warmup, beta, epochs, global batch, max_length, max_prompt_length, optim, processes
    "paper": (5e-7, "linear", 0.1, 0.1, 3.0, 32, 1024, 512, "adamw_torch", 16),
    "handbook": (5e-7, "cosine", 0.1, 0.01, 1.0, 128, 1024, 512, "adamw_torch", 8),
}


@pytest.mark.parametrize("profile", ["paper", "handbook"])
def test_profile_sft_trl_args(profile, tmp_path):
    lr, sched, warm, epochs, gbs, packing, max_len, nproc = SFT_EXPECTED[profile]
    for run in _runs(profile, "sft"):
        cfg = run.config
        a = sft.trl_args(cfg, tmp_path, use_cpu=True)
        assert (a.learning_rate, a.lr_scheduler_type, a.warmup_steps, a.num_train_epochs) == (lr, sched, warm, epochs)
        assert a.get_warmup_steps(1000) == 100  # transformers 5: a fraction of the steps
        assert _global(a, cfg) == cfg.global_batch_size == gbs and cfg.num_processes == nproc
        assert a.packing is packing and a.max_length == max_len and a.assistant_only_loss is False
        assert a.weight_decay == 0.0 and a.bf16 is True and a.activation_checkpointing is True
        assert launch.needs_launcher(cfg)
        assert launch.accelerate_config_path(cfg) == str(REPO / "configs" / "accelerate" / "zero3.yaml")


@pytest.mark.parametrize("profile", ["paper", "handbook"])
def test_profile_dpo_trl_args(profile, tmp_path):
    lr, sched, warm, beta, epochs, gbs, max_len, max_prompt, optim, nproc = DPO_EXPECTED[profile]
    for run in _runs(profile, "dpo"):
        cfg = run.config
        a = dpo.trl_args(cfg, tmp_path, use_cpu=True)
        assert (a.learning_rate, a.lr_scheduler_type, a.warmup_steps, a.beta, a.num_train_epochs) == \
            (lr, sched, warm, beta, epochs)
        assert _global(a, cfg) == cfg.global_batch_size == gbs and cfg.num_processes == nproc
        assert a.max_length == max_len and cfg.max_prompt_length == max_prompt  # TRL 1.16 has no max_prompt_length
        assert a.optim == optim and a.loss_type == ["sigmoid"] and a.bf16 is True
        assert launch.needs_launcher(cfg)


def test_gpu_count_changes_the_global_batch_unless_accumulation_follows(tmp_path):
    (paper,) = _runs("paper", "sft")
    (eight,) = _runs("paper", "sft", ["sft.num_processes=8"])
    assert eight.config.global_batch_size == 256  # 8 × 4 × 8: half the paper's batch
    fixed = launch.for_gpus(paper.config, 8)
    assert (fixed.num_processes, fixed.per_device_train_batch_size, fixed.gradient_accumulation_steps) == (8, 8, 8)
    a = sft.trl_args(fixed, tmp_path, use_cpu=True)
    assert _global(a, fixed) == 512
    # the same through --set
    (manual,) = _runs("paper", "sft", ["sft.num_processes=8", "sft.gradient_accumulation_steps=8"])
    assert manual.config == fixed
    # 1 GPU: all 512 by accumulation; 64 GPUs: per-device batch 8, no accumulation; 128: per-device 4
    assert launch.for_gpus(paper.config, 1).gradient_accumulation_steps == 64
    assert (launch.for_gpus(paper.config, 64).per_device_train_batch_size,
            launch.for_gpus(paper.config, 64).gradient_accumulation_steps) == (8, 1)
    assert launch.for_gpus(paper.config, 128).per_device_train_batch_size == 4
    (hb_dpo,) = _runs("handbook", "dpo")
    for n in (1, 2, 4, 8, 16, 32):
        assert launch.for_gpus(hb_dpo.config, n).global_batch_size == 128
    assert launch.for_gpus(hb_dpo.config, 16).gradient_accumulation_steps == 1
    with pytest.raises(ConfigError, match="does not divide"):
        launch.for_gpus(paper.config, 3)


# ---- accelerate configs and the command ---------------------------------------------------------

def test_accelerate_config_files_load_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    d = REPO / "configs" / "accelerate"
    z3 = load_config_from_file(str(d / "zero3.yaml"))
    assert z3.distributed_type == DistributedType.DEEPSPEED and z3.mixed_precision == "bf16"
    assert z3.deepspeed_config == {"deepspeed_multinode_launcher": "standard", "offload_optimizer_device": "none",
                                   "offload_param_device": "none", "zero3_init_flag": True,
                                   "zero3_save_16bit_model": True, "zero_stage": 3}
    ddp = load_config_from_file(str(d / "ddp.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU and ddp.gpu_ids == "all"
    fsdp = load_config_from_file(str(d / "fsdp.yaml"))
    assert fsdp.distributed_type == DistributedType.FSDP
    assert fsdp.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "MistralDecoderLayer"
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # else Trainer.save_model writes no model


def test_launch_command_zero3_16_processes(tmp_path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    (run,) = _runs("paper", "sft")
    cfg = run.config
    out = tmp_path / "sft"
    cmd = launch.launch_command("sft", cfg, "mistralai/Mistral-7B-v0.1", tmp_path / "data", out)
    zero3 = str(REPO / "configs" / "accelerate" / "zero3.yaml")
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", zero3,
                   "--num_processes", "16", "--module", "zephyr_lib.launch", "sft",
                   "--config", str(out / "stage_config.json"), "--init", "mistralai/Mistral-7B-v0.1",
                   "--data", str(tmp_path / "data"), "--out", str(out)]
    # accelerate's own parser reads it as a DeepSpeed ZeRO-3 launch of our module (no GPU needed)
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))
    assert args.use_deepspeed and args.zero_stage == 3 and args.num_processes == 16
    assert args.module and args.training_script == "zephyr_lib.launch"
    assert args.training_script_args == cmd[cmd.index("sft"):]
    # plain DDP without a config file; extra (multi-node) flags go before --module
    ddp = launch.launch_command("dpo", dataclasses.replace(DPOConfig(), num_processes=2), "i", "d", out,
                                main_process_port=29555, extra_args=["--num_machines", "1"])
    assert ddp[3:10] == ["--num_processes", "2", "--multi_gpu", "--main_process_port", "29555",
                         "--num_machines", "1"]
    assert ddp[ddp.index("--module"):ddp.index("--config")] == ["--module", "zephyr_lib.launch", "dpo"]
    with pytest.raises(ValueError, match="unknown training stage"):
        launch.launch_command("aif", cfg, "i", "d", out)
    with pytest.raises(ConfigError, match="no such file"):
        launch.launch_command("sft", dataclasses.replace(cfg, accelerate_config="configs/accelerate/nope.yaml"),
                              "i", "d", out)


def test_child_main_rebuilds_the_config_strictly(tmp_path):
    cfg = SFTConfig(num_processes=2, max_length=96)
    (tmp_path / "c.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    from zephyr_lib.config import build
    from zephyr_lib.stages import STAGES
    from zephyr_lib.io import read_json

    assert build(STAGES["sft"].config, read_json(tmp_path / "c.json"), "x") == cfg
    bad = dict(dataclasses.asdict(cfg), nonsense=1)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="nonsense"):
        launch.main(["sft", "--config", str(tmp_path / "bad.json"), "--init", "i", "--data", "d",
                     "--out", str(tmp_path / "o")])


def test_json_safe():
    assert launch.json_safe({"a": (1, float("nan")), "b": [float("inf"), 2.5], 3: True}) == \
        {"a": [1, None], "b": [None, 2.5], "3": True}


# ---- LoRA / QLoRA options -----------------------------------------------------------------------

def test_lora_options(monkeypatch):
    assert sft.lora_setup(SFTConfig()) == (None, {})
    assert sft.lora_setup(DPOConfig()) == (None, {})
    with pytest.raises(ValueError, match="use_peft"):
        sft.lora_setup(SFTConfig(load_in_4bit=True))
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed (it is not here)
    for cfg in (SFTConfig(use_peft=True), DPOConfig(use_peft=True)):
        with pytest.raises(ImportError, match="pip install peft"):
            sft.lora_setup(cfg)
    # the new fields leave existing run hashes alone while at their defaults
    a, b = load_profile("smoke"), load_profile("smoke", ["sft.lora_r=16", "dpo.use_peft=false"])
    assert a.run_hash("sft") == b.run_hash("sft") and a.run_hash("dpo") == b.run_hash("dpo")
    assert load_profile("smoke", ["sft.use_peft=true"]).run_hash("sft") != a.run_hash("sft")


def test_single_process_trains_in_process(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(sft, "train", lambda *a, **k: calls.append(a) or {"log_history": [], "steps": 0})
    monkeypatch.setattr(launch.subprocess, "Popen", lambda *a, **k: pytest.fail("must not launch"))
    res = launch.train_stage("sft", SFTConfig(), "init", "data", tmp_path)
    assert res == {"log_history": [], "steps": 0} and len(calls) == 1
    assert not (tmp_path / "stage_config.json").exists()


def test_failed_launch_names_stage_exit_code_and_log(monkeypatch, tmp_path):
    def fake_command(stage, cfg, init, data, out, **kw):
        return [sys.executable, "-c", "import sys; print('boom from child'); sys.exit(3)"]

    monkeypatch.setattr(launch, "launch_command", fake_command)
    with pytest.raises(launch.LaunchError, match=r"(?s)stage dpo: .*exit code 3.*launch\.log.*boom from child"):
        launch.train_stage("dpo", DPOConfig(num_processes=2), "i", "d", tmp_path)
    assert json.loads((tmp_path / "stage_config.json").read_text())["num_processes"] == 2
    assert "boom from child" in (tmp_path / "launch.log").read_text()


# ---- end to end through accelerate, 2 CPU processes -------------------------------------------

def _check_run(out, res, hidden_size):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(out / "model")
    assert m.config.hidden_size == hidden_size
    AutoTokenizer.from_pretrained(out / "model")
    assert json.loads((out / "train_result.json").read_text()) == res
    losses = [e["loss"] for e in res["log_history"] if "loss" in e]
    assert losses and all(isinstance(x, float) for x in losses)
    log = (out / "launch.log").read_text()
    assert "accelerate.commands.launch" in log and "--multi_gpu" in log


@pytest.mark.slow
def test_sft_two_cpu_processes_end_to_end(tiny_base, tiny_chat_data, tmp_path):
    cfg = SFTConfig(num_processes=2, num_train_epochs=1, max_length=96, per_device_train_batch_size=8,
                    learning_rate=3e-3, logging_steps=2, eval_steps=1000, save_steps=1000)
    out = tmp_path / "sft"
    t0 = time.time()
    res = launch.train_stage("sft", cfg, tiny_base, tiny_chat_data, out)
    print(f"sft, 2 processes: {time.time() - t0:.1f} s")
    _check_run(out, res, hidden_size=64)
    # one epoch = ceil(n_train / (8 per process × 2 processes)) steps: both processes ran and split the data
    # (a single process would take twice as many)
    assert res["global_batch_size"] == 16 and res["n_train"] > 100
    assert res["steps"] == -(-res["n_train"] // 16)
    assert "eval_loss" in res


@pytest.fixture(scope="module")
def prefs(tmp_path_factory, tiny_base):
    """A tiny ultrafeedback_binarized DatasetDict (as tests/test_dpo.py builds one)."""
    from zephyr_lib.feedback import prompt_id, save_binarized, to_dataset_dict

    names = ["Ada", "Bram", "Cleo", "Dov", "Eli", "Fay", "Gus", "Hana"]
    pairs = []
    for i in range(40):
        a, b = names[i % 8], names[(3 * i + 1) % 8]
        p = f"Who is the friend of {a} in the town of {b}?"
        c = [{"role": "user", "content": p}, {"role": "assistant", "content": f"The friend of {a} is {b}."}]
        r = [{"role": "user", "content": p}, {"role": "assistant", "content": "no idea, go away."}]
        pairs.append({"prompt": p, "prompt_id": prompt_id(p), "chosen": c, "rejected": r,
                      "messages": [dict(m) for m in c], "score_chosen": 8.0, "score_rejected": 3.0})
    return save_binarized(to_dataset_dict(pairs, test_size=8, seed=0), tmp_path_factory.mktemp("prefs") / "prefs")


@pytest.mark.slow
def test_dpo_two_cpu_processes_end_to_end(tiny_base, prefs, tmp_path):
    cfg = DPOConfig(num_processes=2, num_train_epochs=1, max_length=96, max_prompt_length=48,
                    per_device_train_batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, logging_steps=1,
                    eval_steps=1000)
    out = tmp_path / "dpo"
    t0 = time.time()
    res = launch.train_stage("dpo", cfg, tiny_base, prefs, out)
    print(f"dpo, 2 processes: {time.time() - t0:.1f} s")
    _check_run(out, res, hidden_size=64)
    assert res["n_train"] == 32 and res["steps"] == 2 and res["global_batch_size"] == 16  # 32 / (8 × 2)
    assert (out / "epoch-1" / "config.json").is_file()
    assert not (out / "prefs_cache").exists()  # the shared on-disk copy of the data is removed after training
    assert any("rewards/accuracies" in e for e in res["log_history"]) and "eval_rewards/accuracies" in res
