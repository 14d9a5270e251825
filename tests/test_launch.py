"""Multi-process launching: the paper and handbook profiles' exact TRL arguments, the GPU-count
helper, the accelerate config files, the `accelerate launch` command, LoRA options, and real
end-to-end dSFT / dDPO runs through `accelerate launch` with 2 CPU processes (gloo)."""
from __future__ import annotations

import dataclasses
import json
import sys
import time

import pytest

from zephyr_lib import dpo, launch, launch_cli, sft
from zephyr_lib.config import REPO, ConfigError
from zephyr_lib.plan import load_profile
from zephyr_lib.stages import STAGES
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
    cmd = launch.launch_command(STAGES["sft"], cfg, "mistralai/Mistral-7B-v0.1", tmp_path / "data", out)
    zero3 = str(REPO / "configs" / "accelerate" / "zero3.yaml")
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", zero3,
                   "--num_processes", "16", "--module", "zephyr_lib.launch_cli", "sft",
                   "--config", str(out / "stage_config.json"), "--init", "mistralai/Mistral-7B-v0.1",
                   "--data", str(tmp_path / "data"), "--out", str(out)]
    # accelerate's own parser reads it as a DeepSpeed ZeRO-3 launch of our module (no GPU needed)
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))
    assert args.use_deepspeed and args.zero_stage == 3 and args.num_processes == 16
    assert args.module and args.training_script == "zephyr_lib.launch_cli"
    assert args.training_script_args == cmd[cmd.index("sft"):]
    # plain DDP without a config file; extra (multi-node) flags go before --module
    ddp = launch.launch_command(STAGES["dpo"], dataclasses.replace(DPOConfig(), num_processes=2), "i", "d", out,
                                main_process_port=29555, extra_args=["--num_machines", "1"])
    assert ddp[3:10] == ["--num_processes", "2", "--multi_gpu", "--main_process_port", "29555",
                         "--num_machines", "1"]
    assert ddp[ddp.index("--module"):ddp.index("--config")] == ["--module", "zephyr_lib.launch_cli", "dpo"]
    with pytest.raises(ValueError, match="does not train"):
        launch.launch_command(STAGES["aif"], cfg, "i", "d", out)
    with pytest.raises(ConfigError, match="no such file"):
        launch.launch_command(STAGES["sft"], dataclasses.replace(cfg, accelerate_config="configs/accelerate/nope.yaml"),
                              "i", "d", out)


def test_child_main_rebuilds_the_config_strictly(tmp_path):
    cfg = SFTConfig(num_processes=2, max_length=96)
    (tmp_path / "c.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    from zephyr_lib.config import build
    from zephyr_lib.io import read_json

    assert build(STAGES["sft"].config, read_json(tmp_path / "c.json"), "x") == cfg
    bad = dict(dataclasses.asdict(cfg), nonsense=1)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="nonsense"):
        launch_cli.main(["sft", "--config", str(tmp_path / "bad.json"), "--init", "i", "--data", "d",
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
    from zephyr_lib.trl_shared import TrainResult
    monkeypatch.setattr(sft, "train", lambda *a, **k: calls.append(a) or TrainResult([], {"steps": 0}))
    monkeypatch.setattr(launch.subprocess, "Popen", lambda *a, **k: pytest.fail("must not launch"))
    res = launch.train_stage(STAGES["sft"], SFTConfig(), "init", "data", tmp_path)
    assert res == TrainResult([], {"steps": 0}) and len(calls) == 1
    assert not (tmp_path / "stage_config.json").exists()


def test_failed_launch_names_stage_exit_code_and_log(monkeypatch, tmp_path):
    def fake_command(stage, cfg, init, data, out, **kw):
        return [sys.executable, "-c", "import sys; print('boom from child'); sys.exit(3)"]

    monkeypatch.setattr(launch, "launch_command", fake_command)
    with pytest.raises(launch.LaunchError, match=r"(?s)stage dpo: .*exit code 3.*launch\.log.*boom from child"):
        launch.train_stage(STAGES["dpo"], DPOConfig(num_processes=2), "i", "d", tmp_path)
    assert json.loads((tmp_path / "stage_config.json").read_text())["num_processes"] == 2
    assert "boom from child" in (tmp_path / "launch.log").read_text()


# ---- end to end through accelerate, 2 CPU processes -------------------------------------------

def _check_run(out, res, hidden_size):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(out / "model")
    assert m.config.hidden_size == hidden_size
    AutoTokenizer.from_pretrained(out / "model")
    assert json.loads((out / "train_result.json").read_text()) == dataclasses.asdict(res)
    losses = [e["loss"] for e in res.log_history if "loss" in e]
    assert losses and all(isinstance(x, float) for x in losses)
    log = (out / "launch.log").read_text()
    assert "accelerate.commands.launch" in log and "--multi_gpu" in log


@pytest.mark.slow
def test_sft_two_cpu_processes_end_to_end(tiny_base, tiny_chat_data, tmp_path):
    cfg = SFTConfig(num_processes=2, num_train_epochs=1, max_length=96, per_device_train_batch_size=8,
                    learning_rate=3e-3, logging_steps=2, eval_steps=1000, save_steps=1000)
    out = tmp_path / "sft"
    t0 = time.time()
    res = launch.train_stage(STAGES["sft"], cfg, tiny_base, tiny_chat_data, out)
    print(f"sft, 2 processes: {time.time() - t0:.1f} s")
    _check_run(out, res, hidden_size=64)
    # one epoch = ceil(n_train / (8 per process × 2 processes)) steps: both processes ran and split the data
    # (a single process would take twice as many)
    m = res.metrics
    assert m["global_batch_size"] == 16 and m["n_train"] > 100
    assert m["steps"] == -(-m["n_train"] // 16)
    assert "eval_loss" in m


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
    res = launch.train_stage(STAGES["dpo"], cfg, tiny_base, prefs, out)
    print(f"dpo, 2 processes: {time.time() - t0:.1f} s")
    _check_run(out, res, hidden_size=64)
    assert (res.metrics["n_train"], res.metrics["steps"], res.metrics["global_batch_size"]) == (32, 2, 16)  # 32 / (8 × 2)
    assert (out / "epoch-1" / "config.json").is_file()
    assert not (out / "prefs_cache").exists()  # the shared on-disk copy of the data is removed after training
    assert any("rewards/accuracies" in e for e in res.log_history) and "eval_rewards/accuracies" in res.metrics
    assert len(res.ref_logps["chosen"]) == 32


# ---- several machines: cluster resolution, commands per node, topology, dry run ----------------

def test_first_host_of_slurm_nodelists():
    assert launch.first_host("gpu[003-004,007],cpu01") == "gpu003"
    assert launch.first_host("node17") == "node17"
    assert launch.first_host("a100-[12,15]") == "a100-12"
    with pytest.raises(ValueError, match="empty SLURM node list"):
        launch.first_host(" ")


def test_cluster_from_slurm_and_zephyr_environment():
    (run,) = _runs("paper", "sft")
    cfg = run.config  # 16 processes
    slurm = {"SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[003-004]", "MASTER_PORT": "29611"}
    assert launch.cluster_for(cfg, slurm, num_machines=2) == launch.Cluster(2, 1, "gpu003", 29611)
    mine = {**slurm, "ZEPHYR_MACHINE_RANK": "0", "ZEPHYR_MAIN_PROCESS_IP": "10.1.2.3", "ZEPHYR_MAIN_PROCESS_PORT": "30001"}
    assert launch.cluster_for(cfg, mine, num_machines=2) == launch.Cluster(2, 0, "10.1.2.3", 30001)
    assert launch.cluster_for(cfg, {"SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n1,n2"}, num_machines=2).main_process_port == 29500
    # one machine: nothing from the environment matters (and nothing enters the run hash)
    assert launch.cluster_for(dataclasses.replace(cfg, num_machines=1), slurm) == launch.Cluster(1, 0, "", None)
    with pytest.raises(ConfigError, match="rank is unknown: set ZEPHYR_MACHINE_RANK"):
        launch.cluster_for(cfg, {"SLURM_JOB_NODELIST": "n1,n2"}, num_machines=2)
    with pytest.raises(ConfigError, match="address is unknown: set ZEPHYR_MAIN_PROCESS_IP"):
        launch.cluster_for(cfg, {"ZEPHYR_MACHINE_RANK": "1"}, num_machines=2)
    with pytest.raises(ConfigError, match="machine rank 2 is outside 0..1"):
        launch.cluster_for(cfg, {**slurm, "SLURM_NODEID": "2"}, num_machines=2)
    with pytest.raises(ConfigError, match="num_processes=16 does not divide over num_machines=3"):
        launch.cluster_for(cfg, slurm, num_machines=3)
    with pytest.raises(ConfigError, match="ZEPHYR_MACHINE_RANK='one' is not an integer"):
        launch.cluster_for(cfg, {"ZEPHYR_MACHINE_RANK": "one"}, num_machines=2)


def test_two_node_zero3_commands_as_accelerate_reads_them(tmp_path):
    """Both nodes run the same command but for --machine_rank; accelerate turns each into 8 local
    processes of a 16-process job (torchrun: nproc_per_node 8, nnodes 2, this node's rank)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    (run,) = _runs("paper", "sft")
    cfg, out = run.config, tmp_path / "sft"
    cmds = [launch.launch_command(STAGES["sft"], cfg, "m", tmp_path / "d", out, cluster=launch.Cluster(2, r, "10.0.0.1", 29500))
            for r in (0, 1)]
    i = cmds[0].index("--num_processes")
    assert cmds[0][i:i + 10] == ["--num_processes", "16", "--num_machines", "2", "--machine_rank", "0",
                                 "--main_process_ip", "10.0.0.1", "--main_process_port", "29500"]
    assert [a for a in cmds[0] if a != "0"] == [a for a in cmds[1] if a != "1"]  # only the rank differs
    for rank, cmd in enumerate(cmds):
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))
        args.deepspeed_fields_from_accelerate_config = ""  # set by accelerate's launch_command before this call
        assert args.use_deepspeed and args.deepspeed_multinode_launcher == "standard"
        ds_cmd, _ = prepare_deepspeed_cmd_env(args)
        assert ds_cmd is None  # "standard": torchrun on every node, no pdsh/ssh
        assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("8", "2", rank)
        assert args.rdzv_endpoint == "10.0.0.1:29500"
        assert list(launch.global_ranks(cfg, launch.Cluster(2, rank, "10.0.0.1", 29500))) == list(range(8 * rank, 8 * rank + 8))


def test_topology_refuses_16_processes_on_one_8_gpu_machine():
    (run,) = _runs("paper", "sft")
    cfg = run.config
    with pytest.raises(ConfigError, match=r"sft: num_processes=16 on num_machines=1 starts 16 processes per machine, "
                                          r"but a machine has 8 GPUs: set sft.num_machines=2"):
        launch.check_topology("sft", cfg, 8, 1)
    launch.check_topology("sft", cfg, 8, 2)
    launch.check_topology("sft", cfg, 16, 1)
    with pytest.raises(ConfigError, match="needs GPUs, and this machine has none"):
        launch.check_topology("sft", cfg, 0, 2)
    launch.check_topology("dpo", dataclasses.replace(DPOConfig(), num_processes=2), 0)  # CPU processes (gloo)


def test_train_stage_is_the_main_nodes_part(tmp_path):
    cfg = dataclasses.replace(DPOConfig(), num_processes=2)
    with pytest.raises(ConfigError, match="node 1 joins with `python -m zephyr_lib.launch_cli node`"):
        launch.train_stage(STAGES["dpo"], cfg, "i", "d", tmp_path, cluster=launch.Cluster(2, 1, "10.0.0.1", 29500))
    assert not (tmp_path / "stage_config.json").exists()


def test_follow_waits_for_the_main_node_and_joins_with_its_rank(tmp_path, monkeypatch):
    from zephyr_lib.store import context

    prof = load_profile("toy", ["sft.num_processes=2"])
    ctx = context(prof, "sft", tmp_path)
    for name in ("base", "curate"):  # the upstream runs, as the main node's pipeline left them
        up = context(prof, name, tmp_path)
        (up.dir / ("model" if name == "base" else "beta")).mkdir(parents=True)
        (up.dir / "manifest.json").write_text("{}")
    cluster = launch.Cluster(2, 1, "10.0.0.1", 29500)
    seen = []
    monkeypatch.setattr(launch_cli, "run_logged", lambda stage, cmd, log, what: seen.append((stage, cmd, log, what)))
    monkeypatch.setattr(launch_cli.time, "sleep", lambda s: (_ for _ in ()).throw(AssertionError("waited")))
    with pytest.raises(AssertionError, match="waited"):  # no stage_config.json yet: it waits
        launch_cli.follow(prof, "sft", cluster=cluster, root=tmp_path)
    ctx.partial_dir.mkdir(parents=True)
    (ctx.partial_dir / "stage_config.json").write_text(json.dumps({**dataclasses.asdict(ctx.cfg), "learning_rate": 1.0}))
    with pytest.raises(launch.LaunchError, match="differs from this node's config"):
        launch_cli.follow(prof, "sft", cluster=cluster, root=tmp_path)
    (ctx.partial_dir / "stage_config.json").write_text(json.dumps(dataclasses.asdict(ctx.cfg)))
    assert launch_cli.follow(prof, "sft", cluster=cluster, root=tmp_path) == "done"
    ((stage, cmd, log, what),) = seen
    assert stage == "sft" and log == ctx.partial_dir / "launch-node1.log" and what == "1 of 2 process(es)"
    assert cmd[cmd.index("--machine_rank") + 1] == "1" and cmd[cmd.index("--out") + 1] == str(ctx.partial_dir)
    assert cmd[cmd.index("--init") + 1] == str(context(prof, "base", tmp_path).dir / "model")
    with pytest.raises(ConfigError, match="node 0 runs the pipeline"):
        launch_cli.follow(prof, "sft", cluster=launch.Cluster(2, 0, "10.0.0.1", 29500), root=tmp_path)


def test_dry_run_paper_on_two_nodes_of_eight(tmp_path, capsys):
    lines: list[str] = []
    plan = launch_cli.dry_run("paper", gpus_per_node=8, num_machines=2, main_process_ip="10.0.0.1",
                              root=tmp_path, echo=lines.append, preflight=False)  # preflight: tests/test_preflight.py
    assert plan["errors"] == []
    runs = plan["runs"]
    assert list(runs) == ["base", "curate", "sft", "aif", "dpo", "eval", "results"]
    assert runs["base"]["config"]["pretrained"] == "mistralai/Mistral-7B-v0.1"
    sft_cfg, dpo_cfg = runs["sft"]["config"], runs["dpo"]["config"]
    # PAPER.md section 2: dSFT global batch 512, lr 2e-5, cosine, warmup 0.1, 1 epoch, sequence length 2048
    assert runs["sft"]["global_batch_size"]["total"] == 512
    assert (sft_cfg["learning_rate"], sft_cfg["lr_scheduler_type"], sft_cfg["warmup_ratio"],
            sft_cfg["num_train_epochs"], sft_cfg["max_length"], sft_cfg["packing"]) == (2e-5, "cosine", 0.1, 1.0, 2048, True)
    # dDPO: global batch 32, lr 5e-7, linear, beta 0.1, 3 epochs
    assert runs["dpo"]["global_batch_size"]["total"] == 32
    assert (dpo_cfg["learning_rate"], dpo_cfg["lr_scheduler_type"], dpo_cfg["beta"], dpo_cfg["num_train_epochs"]) == \
        (5e-7, "linear", 0.1, 3.0)
    for name in ("sft", "dpo"):
        nodes = runs[name]["launch"]
        assert [n["global_ranks"] for n in nodes] == [[0, 7], [8, 15]]
        for rank, node in enumerate(nodes):
            cmd = node["command"]
            assert cmd[cmd.index("--machine_rank") + 1] == str(rank)
            assert cmd[cmd.index("--num_processes") + 1] == "16" and cmd[cmd.index("--num_machines") + 1] == "2"
            assert cmd[cmd.index("--main_process_ip") + 1] == "10.0.0.1"
            assert cmd[cmd.index("--config_file") + 1] == str(REPO / "configs" / "accelerate" / "zero3.yaml")
            assert f"node {rank} (global ranks {8 * rank}-{8 * rank + 7}, local GPUs 0-7):" in lines
    assert runs["sft"]["init"] == str(tmp_path / "paper" / "base" / runs["base"]["hash"] / "model")
    assert runs["dpo"]["init"] == str(tmp_path / "paper" / "sft" / runs["sft"]["hash"] / "model")
    assert runs["dpo"]["data"] == str(tmp_path / "paper" / "aif" / runs["aif"]["hash"] / "binarized")
    judge = runs["eval"]["judge"]
    assert judge["model"] == "gpt-6.1-sol" and judge["alpaca_eval"] == {"temperature": 0, "max_tokens": 100}
    assert judge["mt_bench"] == {"temperature": 0.0, "max_tokens": 2048}
    assert runs["eval"]["decoding"]["mt_bench"]["temperature_by_category"]["writing"] == 0.7
    assert runs["aif"]["config"]["source"] == "HuggingFaceH4/ultrafeedback_binarized"
    # nothing was built
    assert not any(tmp_path.iterdir())


def test_dry_run_reports_a_cluster_too_small_and_the_cli_exit_code(tmp_path, capsys):
    from zephyr_lib.__main__ import main

    plan = launch_cli.dry_run("paper", gpus_per_node=8, num_machines=1, root=tmp_path, echo=lambda *a: None, preflight=False)
    assert plan["errors"] == ["sft: needs 2 machines, the cluster has 1", "dpo: needs 2 machines, the cluster has 1"]
    assert "launch" not in plan["runs"]["sft"]
    assert main(["run", "--profile", "paper", "--dry-run", "--gpus-per-node", "8", "--num-machines", "2",
                 "--stages", "sft", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "node 1 (global ranks 8-15, local GPUs 0-7):" in out and "--machine_rank 1" in out
    assert "## dpo" not in out  # only sft and what it needs
    assert main(["run", "--profile", "paper", "--dry-run", "--num-machines", "1", "--stages", "sft", "--no-check"]) == 1
    assert "ERROR: sft: needs 2 machines, the cluster has 1" in capsys.readouterr().out
