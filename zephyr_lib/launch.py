"""Run a training stage (dSFT or dDPO) in this process or on several processes through accelerate.

What: :func:`train_stage` is the one entry point the pipeline uses for ``sft`` and ``dpo``. A stage
config with ``num_processes == 1`` and no ``accelerate_config`` (the toy and smoke profiles) is
trained in-process by ``sft.train`` / ``dpo.train``. Otherwise (the paper: 16 GPUs under DeepSpeed
ZeRO-3) the stage runs as a child job of ``accelerate launch``; both ways return the same dict
(``log_history``, ``steps``, final eval metrics, ...).

How, for a launched stage, inside the run's output folder ``out``:

1. the resolved stage config is written to ``out/stage_config.json``;
2. :func:`launch_command` builds ``python -m accelerate.commands.launch [--config_file F]
   --num_processes N [--multi_gpu] [--main_process_port P] --module zephyr_lib.launch <stage>
   --config out/stage_config.json --init I --data D --out O``. Without a config file and with
   N > 1 it asks for plain DDP (``--multi_gpu``: torchrun); on a machine without GPUs the same
   command trains N CPU processes that talk through gloo (Trainer's ``use_cpu``). N is the total
   over all machines. On several machines (:class:`Cluster`) the command adds ``--num_machines M
   --machine_rank R --main_process_ip A --main_process_port P``: the stage config gives M
   (``num_machines``), the environment gives the rest, because the rank differs per node and must
   not enter the run's hash (``ZEPHYR_MACHINE_RANK`` / ``ZEPHYR_MAIN_PROCESS_IP`` /
   ``ZEPHYR_MAIN_PROCESS_PORT``, else SLURM's ``SLURM_NODEID`` and the first host of
   ``SLURM_JOB_NODELIST``, else ``MASTER_ADDR`` / ``MASTER_PORT``). Rank 0's node runs the
   pipeline; every other node runs :func:`follow` (``python -m zephyr_lib.launch node``, which
   does either, is the one command ``tools/slurm_example.sh`` starts on every node). Further
   launcher flags can still come from the environment variable ``ZEPHYR_ACCELERATE_ARGS``;
3. the child's output is streamed to ``out/launch.log`` and to stdout; a non-zero exit raises
   :class:`LaunchError` naming the stage, the exit code and the log, with the log's last lines;
4. each child process (:func:`main`) rebuilds the frozen config from the JSON, calls
   ``sft.train`` / ``dpo.train`` (which save ``out/model`` collectively, as ZeRO-3 needs), and the
   main process writes the result atomically to ``out/train_result.json``, which the parent reads
   back. Non-finite floats (a NaN loss) become ``null`` there, as JSON has no NaN.

The accelerate config files are in ``configs/accelerate/`` (``zero3.yaml``, ``ddp.yaml``,
``fsdp.yaml``); their ``num_processes`` is only a default, ``--num_processes`` comes from the stage
config. :func:`for_gpus` re-derives ``gradient_accumulation_steps`` (and, if needed, the per-device
batch) for another GPU count so the profile's global batch is kept.

:func:`dry_run` prints, for every run of a profile, the resolved data, models, judge and decoding
settings and, for the training stages, the exact launch command of every node and the global
ranks it starts, without training (``python -m zephyr_lib run --profile paper --dry-run
--gpus-per-node 8 --num-machines 2``).

Command lines::

    python -m zephyr_lib.launch sft --config out/stage_config.json --init <model> --data <data> --out <out>
    python -m zephyr_lib.launch node --profile paper --stages sft     # on every node of a cluster job
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from .config import REPO, ConfigError, build
from .io import read_json, write_json

CONFIG_FILE = "stage_config.json"
RESULT_FILE = "train_result.json"
LOG_FILE = "launch.log"
EXTRA_ARGS_ENV = "ZEPHYR_ACCELERATE_ARGS"
RANK_ENV = "ZEPHYR_MACHINE_RANK"
IP_ENV = "ZEPHYR_MAIN_PROCESS_IP"
PORT_ENV = "ZEPHYR_MAIN_PROCESS_PORT"
DEFAULT_PORT = 29500  # torchrun's default rendezvous port


class LaunchError(RuntimeError):
    """A launched training stage failed; the message names the stage, exit code and log file."""


def trainer_stages() -> tuple[str, ...]:
    """The stages that train through this module (``Stage.trainer`` in the registry)."""
    from .stages import STAGES
    return tuple(name for name, s in STAGES.items() if s.trainer)


def _check_stage(stage: str) -> None:
    if stage not in trainer_stages():
        raise ValueError(f"unknown training stage {stage!r}; expected one of {trainer_stages()}")


def needs_launcher(cfg: Any) -> bool:
    """True when the stage must run under ``accelerate launch`` (several processes or a config file)."""
    return cfg.num_processes > 1 or bool(cfg.accelerate_config)


def accelerate_config_path(cfg: Any) -> str:
    """The stage's accelerate config file as an absolute path ('' when unset); a relative path
    is taken from the current directory if it exists there, else from the repository root."""
    if not cfg.accelerate_config:
        return ""
    p = Path(cfg.accelerate_config)
    if not p.is_absolute():
        p = p.resolve() if p.exists() else REPO / p
    if not p.is_file():
        raise ConfigError(f"accelerate_config: no such file {cfg.accelerate_config!r} (looked for {p})")
    return str(p)


def _arg_path(x: str | Path) -> str:
    """Local paths become absolute (the child may run elsewhere); hub ids stay as they are."""
    p = Path(x)
    return str(p.resolve()) if p.exists() or isinstance(x, Path) else str(x)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where the processes of one launched stage run: ``num_machines`` nodes, this node's rank and
    the rendezvous address of node 0. Resolved per node at launch time (:func:`cluster_for`), never
    part of a run's hash."""

    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str = ""
    main_process_port: int | None = None

    @property
    def multi_node(self) -> bool:
        return self.num_machines > 1


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[003-004,007],cpu01`` -> ``gpu003``."""
    text = nodelist.strip()
    if not text:
        raise ValueError("empty SLURM node list")
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", text)
    if not m:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",", 1)[0].split("-", 1)[0]
    return prefix + first


def _env_int(env: dict, name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def cluster_for(cfg: Any, env: dict | None = None, *, num_machines: int | None = None,
                machine_rank: int | None = None, main_process_ip: str | None = None,
                main_process_port: int | None = None) -> Cluster:
    """This node's :class:`Cluster` for a stage config.

    ``num_machines``: the argument, else ``cfg.num_machines`` (1 when the config has no such
    field). The rank, address and port: the arguments, else the environment
    (``ZEPHYR_MACHINE_RANK``, ``ZEPHYR_MAIN_PROCESS_IP``, ``ZEPHYR_MAIN_PROCESS_PORT``; then SLURM's
    ``SLURM_NODEID`` and the first host of ``SLURM_JOB_NODELIST``; then ``MASTER_ADDR`` /
    ``MASTER_PORT``); the port falls back to ``cfg.main_process_port`` and then 29500. Raises
    ConfigError when several machines are asked for without a rank or an address, or when the
    processes do not divide evenly over the machines."""
    env = dict(os.environ if env is None else env)
    n = int(num_machines if num_machines is not None else getattr(cfg, "num_machines", 1) or 1)
    if n < 1:
        raise ConfigError(f"num_machines must be >= 1, got {n}")
    if cfg.num_processes % n:
        raise ConfigError(f"num_processes={cfg.num_processes} does not divide over num_machines={n} "
                          "(num_processes is the total over all machines)")
    if n == 1:
        port = main_process_port if main_process_port is not None else (getattr(cfg, "main_process_port", 0) or None)
        return Cluster(1, 0, "", port)
    rank = machine_rank
    if rank is None:
        rank = _env_int(env, RANK_ENV)
    if rank is None:
        rank = _env_int(env, "SLURM_NODEID")
    if rank is None:
        raise ConfigError(f"num_machines={n}: this node's rank is unknown: set {RANK_ENV} (0 on the main node) "
                          "or run under SLURM (SLURM_NODEID), e.g. with tools/slurm_example.sh")
    if not 0 <= rank < n:
        raise ConfigError(f"machine rank {rank} is outside 0..{n - 1} (num_machines={n})")
    ip = main_process_ip or env.get(IP_ENV, "").strip()
    if not ip and env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "")).strip():
        ip = first_host(env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"])
    ip = ip or env.get("MASTER_ADDR", "").strip()
    if not ip:
        raise ConfigError(f"num_machines={n}: the main node's address is unknown: set {IP_ENV} "
                          "or run under SLURM (SLURM_JOB_NODELIST)")
    port = main_process_port
    for name in (PORT_ENV, "MASTER_PORT"):
        if port is None:
            port = _env_int(env, name)
    if port is None:
        port = getattr(cfg, "main_process_port", 0) or DEFAULT_PORT
    return Cluster(n, rank, ip, int(port))


def check_topology(stage: str, cfg: Any, gpus_per_node: int, num_machines: int | None = None) -> None:
    """Raise ConfigError when the stage would start more processes on one machine than it has GPUs
    (``gpus_per_node`` = 0: a CPU-only machine, where CPU processes are allowed without an
    accelerate config file)."""
    n = int(num_machines if num_machines is not None else getattr(cfg, "num_machines", 1) or 1)
    if cfg.num_processes % n:
        raise ConfigError(f"{stage}.num_processes={cfg.num_processes} does not divide over num_machines={n}")
    per_node = cfg.num_processes // n
    if gpus_per_node <= 0:
        if cfg.accelerate_config:
            raise ConfigError(f"{stage}: accelerate_config {cfg.accelerate_config!r} needs GPUs, and this machine has none")
        return
    if per_node > gpus_per_node:
        need = -(-cfg.num_processes // gpus_per_node)
        raise ConfigError(
            f"{stage}: num_processes={cfg.num_processes} on num_machines={n} starts {per_node} processes per machine, "
            f"but a machine has {gpus_per_node} GPUs: set {stage}.num_machines={need} and start one launcher per node "
            f"(tools/slurm_example.sh), or lower {stage}.num_processes and raise gradient_accumulation_steps "
            "to keep the global batch (launch.for_gpus)")


def launch_command(stage: str, cfg: Any, init: str | Path, data: str | Path, out: str | Path, *,
                   main_process_port: int | None = None, extra_args: list[str] | tuple = (),
                   cluster: Cluster | None = None) -> list[str]:
    """The ``accelerate launch`` command that trains ``stage`` with ``cfg`` (an argv list).

    Needs no GPU to build. ``extra_args`` are inserted before ``--module`` (launcher flags).
    ``cluster`` (several machines) adds ``--num_machines --machine_rank --main_process_ip
    --main_process_port``; every node runs the same command except for its rank."""
    _check_stage(stage)
    out = Path(out)
    cluster = cluster or Cluster()
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    config_file = accelerate_config_path(cfg)
    if config_file:
        cmd += ["--config_file", config_file]
    cmd += ["--num_processes", str(cfg.num_processes)]
    if not config_file and cfg.num_processes > 1:
        cmd += ["--multi_gpu"]  # plain DDP through torchrun; CPU-only machines get gloo
    if cluster.multi_node:
        if cfg.num_processes % cluster.num_machines:
            raise ConfigError(f"{stage}.num_processes={cfg.num_processes} does not divide over "
                              f"num_machines={cluster.num_machines}")
        if not cluster.main_process_ip:
            raise ConfigError(f"{stage}: {cluster.num_machines} machines need the main node's address")
        cmd += ["--num_machines", str(cluster.num_machines), "--machine_rank", str(cluster.machine_rank),
                "--main_process_ip", cluster.main_process_ip]
        main_process_port = main_process_port or cluster.main_process_port or DEFAULT_PORT
    elif main_process_port is None:
        main_process_port = cluster.main_process_port
    if main_process_port is not None:
        cmd += ["--main_process_port", str(main_process_port)]
    cmd += list(extra_args)
    cmd += ["--module", "zephyr_lib.launch", stage,
            "--config", _arg_path(out / CONFIG_FILE),
            "--init", _arg_path(init), "--data", _arg_path(data), "--out", _arg_path(out)]
    return cmd


def global_ranks(cfg: Any, cluster: Cluster) -> range:
    """The global process ranks node ``cluster.machine_rank`` starts (local rank i has global rank
    machine_rank × per-node + i, as torchrun numbers them)."""
    per_node = cfg.num_processes // cluster.num_machines
    return range(cluster.machine_rank * per_node, (cluster.machine_rank + 1) * per_node)


def _gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no torch / broken driver: no GPU
        return 0


def _stage_train(stage: str):
    """A trainer stage's wrapper: by convention ``zephyr_lib/<stage>.py`` with ``train(cfg, init, data, out)``."""
    import importlib

    _check_stage(stage)
    return importlib.import_module(f"{__package__}.{stage}").train


def _tail(path: Path, n: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=n))
    except OSError:
        return ""


def _run_logged(stage: str, cmd: list[str], log_path: Path, what: str) -> None:
    """Run ``cmd`` from the repository root, streaming its output to ``log_path`` and stdout; a
    non-zero exit raises LaunchError with the log's last lines. An interrupt stops the whole job."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as logf:
        logf.write("$ " + shlex.join(cmd) + "\n")
        logf.flush()
        print(f"[{stage}] launching {what}: {shlex.join(cmd)}", flush=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                text=True, errors="replace", bufsize=1, start_new_session=True)
        try:
            for line in proc.stdout:
                logf.write(line)
                logf.flush()
                sys.stdout.write(line)
                sys.stdout.flush()
            rc = proc.wait()
        except BaseException:  # KeyboardInterrupt, a notebook timeout: stop the whole job we started
            import signal
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise
    if rc != 0:
        raise LaunchError(f"stage {stage}: `accelerate launch` with {what} failed with "
                          f"exit code {rc}; full log: {log_path}\n--- last lines ---\n{_tail(log_path)}")


def train_stage(stage: str, cfg: Any, init: str | Path, data: str | Path, out: str | Path,
                log: str | Path | None = None, cluster: Cluster | None = None, **in_process: Any) -> dict:
    """Train ``stage`` ('sft' or 'dpo'): in-process, or under ``accelerate launch`` when
    ``cfg.num_processes > 1`` or ``cfg.accelerate_config`` is set. Returns the stage's result
    dict either way. ``log`` is the launcher's log file (default ``out/launch.log``). ``cluster``
    defaults to :func:`cluster_for` (the config and this node's environment); this function is the
    main node's part, the other nodes run :func:`follow`. ``in_process`` are extra keyword
    arguments of the stage's ``train`` for the in-process path (the launched one does without)."""
    _check_stage(stage)
    out = Path(out)
    if not needs_launcher(cfg):
        return _stage_train(stage)(cfg, init, data, out, **in_process)

    cluster = cluster or cluster_for(cfg)
    check_topology(stage, cfg, _gpu_count(), cluster.num_machines)
    if cluster.machine_rank != 0:
        raise ConfigError(f"stage {stage}: train_stage runs on the main node (rank 0); node {cluster.machine_rank} "
                          "joins with `python -m zephyr_lib.launch node` (see tools/slurm_example.sh)")
    out.mkdir(parents=True, exist_ok=True)
    log_path = Path(log) if log else out / LOG_FILE
    (out / RESULT_FILE).unlink(missing_ok=True)  # never read a previous attempt's result
    write_json(out / CONFIG_FILE, dataclasses.asdict(cfg))  # the other nodes wait for this file
    extra = shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))
    # A fresh port for our own single-node DDP, so concurrent runs do not collide; with a config
    # file, several machines or extra flags, the port is theirs to set (all nodes must agree).
    port = (free_port() if not cfg.accelerate_config and not extra and cfg.num_processes > 1
            and not cluster.multi_node and cluster.main_process_port is None else None)
    cmd = launch_command(stage, cfg, init, data, out, main_process_port=port, extra_args=extra, cluster=cluster)
    _run_logged(stage, cmd, log_path, f"{cfg.num_processes} process(es)")
    result = out / RESULT_FILE
    if not result.is_file():
        raise LaunchError(f"stage {stage}: the launched job exited with 0 but wrote no {result}; log: {log_path}")
    return read_json(result)


def json_safe(obj: Any) -> Any:
    """Make a result JSON-writable: NaN/inf -> None, tuples -> lists, numpy/torch scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalar
        return json_safe(obj.item())
    return str(obj)


def for_gpus(cfg: Any, n_gpus: int) -> Any:
    """``cfg`` for ``n_gpus`` processes with the same global batch: keeps the per-device batch when
    it can (lowering it only if it does not divide the per-process share), and sets
    ``gradient_accumulation_steps`` = global / (per-device × n_gpus). Raises ConfigError when the
    global batch does not divide by ``n_gpus``."""
    if n_gpus < 1:
        raise ConfigError(f"for_gpus: n_gpus must be >= 1, got {n_gpus}")
    total = cfg.global_batch_size
    if total % n_gpus:
        raise ConfigError(f"for_gpus: global batch {total} does not divide by {n_gpus} GPUs")
    share = total // n_gpus
    per_device = min(cfg.per_device_train_batch_size, share)
    while share % per_device:
        per_device -= 1
    return dataclasses.replace(cfg, num_processes=n_gpus, per_device_train_batch_size=per_device,
                               gradient_accumulation_steps=share // per_device)


# --------------------------------------------------------------------------------------------
# Several nodes: the other nodes' part, and the one command every node runs
# --------------------------------------------------------------------------------------------

def node_rank(env: dict | None = None) -> int:
    """This node's rank in a cluster job: ``ZEPHYR_MACHINE_RANK``, else ``SLURM_NODEID``, else 0."""
    env = os.environ if env is None else env
    for name in (RANK_ENV, "SLURM_NODEID"):
        value = _env_int(dict(env), name)
        if value is not None:
            return value
    return 0


def _planned(profile: Any, ref: str, root: Path | None = None) -> Path:
    """Where run reference ``ref`` ('sft', 'curate/beta', 'dpo@2') lives in the store, whether or not
    it has been built yet (RunContext.resolve without the existence checks)."""
    from .store import RUNS_DIR, artifact_path

    return artifact_path(profile, ref, root or RUNS_DIR)


def follow(profile: Any, run_name: str, *, cluster: Cluster | None = None, root: Path | None = None,
           poll_s: float = 10.0, timeout_s: float = 48 * 3600) -> str:
    """A non-main node's part of a launched run: wait until the main node's pipeline has written the
    run's ``stage_config.json`` (its upstream runs are then complete), check it is the same config,
    and start this node's processes with the same ``accelerate launch`` command and this node's
    rank. Returns 'done', or 'complete' when the run was already in the store. ``profile`` is a
    loaded Profile (the same profile and overrides as the main node, so the same run hash)."""
    from .store import RUNS_DIR, context

    ctx = context(profile, run_name, root or RUNS_DIR)
    stage, cfg = ctx.run.stage, ctx.cfg
    _check_stage(stage)
    cluster = cluster or cluster_for(cfg)
    if cluster.machine_rank == 0:
        raise ConfigError(f"run {run_name!r}: node 0 runs the pipeline (python -m zephyr_lib run), not follow()")
    check_topology(stage, cfg, _gpu_count(), cluster.num_machines)
    out = ctx.partial_dir
    deadline = time.monotonic() + timeout_s
    print(f"[{run_name}] node {cluster.machine_rank}: waiting for {out / CONFIG_FILE}", flush=True)
    while not (out / CONFIG_FILE).is_file():
        if ctx.complete:
            return "complete"
        if time.monotonic() > deadline:
            raise LaunchError(f"run {run_name!r}: node {cluster.machine_rank} waited {timeout_s:.0f} s for the main "
                              f"node to write {out / CONFIG_FILE}; is node 0 running the same profile and overrides?")
        time.sleep(poll_s)
    written = read_json(out / CONFIG_FILE)
    if written != json_safe(dataclasses.asdict(cfg)):
        raise LaunchError(f"run {run_name!r}: {out / CONFIG_FILE} differs from this node's config: start every "
                          "node with the same profile and --set overrides")
    init, data = ctx.resolve(cfg.init), ctx.resolve(cfg.data)
    cmd = launch_command(stage, cfg, init, data, out, extra_args=shlex.split(os.environ.get(EXTRA_ARGS_ENV, "")),
                         cluster=cluster)
    _run_logged(stage, cmd, out / f"launch-node{cluster.machine_rank}.log",
                f"{cfg.num_processes // cluster.num_machines} of {cfg.num_processes} process(es)")
    return "done"


def node_main(argv: list[str] | None = None) -> int:
    """``python -m zephyr_lib.launch node --profile P [--stages S] [--set run.key=value]``: the one
    command every node of a cluster job runs. Node 0 runs the pipeline; every other node follows
    each multi-machine training run of the plan (the others run on node 0 alone)."""
    from .config import load_profile

    p = argparse.ArgumentParser(prog="python -m zephyr_lib.launch node",
                                description="Run on every node: node 0 runs the pipeline, the others join its launches.")
    p.add_argument("--profile", default="paper")
    p.add_argument("--stages", default="", help="comma-separated runs or stages (and what they need)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="RUN.KEY=VALUE")
    p.add_argument("--force", action="store_true", help="node 0: rerun even if a complete run exists")
    a = p.parse_args(argv)
    stages = [x.strip() for x in a.stages.split(",") if x.strip()] or None
    rank = node_rank()
    if rank == 0:
        from .runner import run_pipeline
        return run_pipeline(a.profile, stages, a.sets, a.force)
    prof = load_profile(a.profile, a.sets)
    for run in prof.order(stages):
        if run.stage in trainer_stages() and needs_launcher(run.config) and cluster_for(run.config).multi_node:
            follow(prof, run.name)
    return 0


# --------------------------------------------------------------------------------------------
# Dry run: what a profile would do on a cluster, without training
# --------------------------------------------------------------------------------------------

#: alpaca_eval's ``results/text_davinci_003/model_outputs.json``: a later davinci generation, not
#: the AlpacaEval 1 baseline GPT-4 judged (see evals.alpaca_eval.check_baseline).
_NOT_THE_BASELINE = "results/text_davinci_003/model_outputs.json"


def _stage_machines(cfg: Any, gpus_per_node: int) -> tuple[int, bool]:
    """(machines a training stage uses, whether that number was derived because the stage config
    has no ``num_machines`` field yet)."""
    n = getattr(cfg, "num_machines", None)
    if n is not None:
        return int(n), False
    return max(1, -(-cfg.num_processes // max(1, gpus_per_node))), True


def _judge_settings(stage: str, cfg: Any, prof) -> dict:
    """The call settings a stage's judge uses (its endpoint, and the same constants the stage code sends)."""
    ep = prof.endpoints[cfg.judge]
    endpoint = {"endpoint": cfg.judge, "kind": ep.kind, "model": ep.model, "base_url": ep.url, "api_key_env": ep.api_key_env}
    if stage == "aif":
        from . import feedback as fb
        calls = getattr(fb, "ORIGINAL_CALL_SETTINGS", None)
        return {**endpoint,
                "templates": getattr(cfg, "templates", "") or "paraphrase (feedback.build_aspect_messages)",
                **({"calls": calls} if calls else {})}
    from .evals import alpaca_eval as ae
    from .evals import mt_bench as mt
    return {**endpoint,
            "mt_bench": {"temperature": 0.0, "max_tokens": mt.JUDGE_MAX_TOKENS},
            "alpaca_eval": {k: ae.ANNOTATOR_CONFIG[k] for k in ("temperature", "max_tokens")}}


def _decoding(cfg: Any) -> dict:
    from .evals import alpaca_eval as ae
    from .evals import mt_bench as mt
    return {"mt_bench": {"temperature_by_category": dict(mt.TEMPERATURE), "default_temperature": mt.DEFAULT_TEMPERATURE,
                         "max_new_tokens": cfg.max_new_tokens},
            "alpaca_eval": ae.decoding_settings(cfg)}


def dry_run(profile: str | Any, gpus_per_node: int = 8, num_machines: int = 2, *, sets: list[str] | None = None,
            stages: list[str] | None = None, main_process_ip: str = "", main_process_port: int | None = None,
            root: Path | None = None, echo=print, preflight: bool = True) -> dict:
    """Print, for every run of ``profile``'s plan (or of ``stages`` and what they need), its resolved
    config (datasets and revisions, models, judge and decoding settings) and, for the training
    stages, global batch = per-device × accumulation × processes and the exact ``accelerate
    launch`` command of every node with the global ranks it starts, on a cluster of
    ``num_machines`` × ``gpus_per_node`` GPUs. Trains nothing and needs no GPU or network.

    With ``preflight`` it first runs :mod:`zephyr_lib.preflight` (endpoints, retired models, hub
    access and revisions, disk): a failed check is an error, so a plan that would fail hours in
    fails here in seconds.

    Returns ``{"runs": {name: {...}}, "errors": [...], "warnings": [...], "preflight": [...]}``; an
    error (a stage that cannot start on this cluster, a failed check) is printed and returned, not raised."""
    from .config import load_profile

    prof = load_profile(profile, sets) if isinstance(profile, str) else profile
    ip = main_process_ip or os.environ.get(IP_ENV, "") or "<main-node-address>"
    errors: list[str] = []
    warnings: list[str] = []
    runs: dict[str, dict] = {}
    echo(f"# dry run: profile {prof.name} ({prof.path}) on {num_machines} machine(s) x {gpus_per_node} GPU(s)")
    checks = []
    if preflight:
        from . import preflight as pf
        from .store import RUNS_DIR

        echo("# preflight (zephyr check)")
        checks = pf.run_checks(prof, prof.order(stages), root=root or RUNS_DIR)
        pf.report(checks, echo)
        for c in checks:  # this machine's disk and GPUs are not the cluster's: a warning, not an error
            if c.status == "fail":
                (warnings if pf.is_resource(c) else errors).append(f"preflight: {c.what}: {c.detail}")
    for run in prof.order(stages):
        cfg, stage = run.config, run.stage
        info: dict = {"stage": stage, "hash": prof.run_hash(run.name), "upstream": list(run.upstream),
                      "config": json_safe(dataclasses.asdict(cfg))}
        if stage == "base" and cfg.pretrained and not cfg.revision:
            warnings.append(f"{run.name}: base model {cfg.pretrained} has no revision (the hub's default branch)")
        if stage in ("curate", "aif") and cfg.source not in ("toy", "api") and not Path(cfg.source).exists() \
                and not getattr(cfg, "revision", ""):
            warnings.append(f"{run.name}: dataset {cfg.source} has no revision (the hub's default branch)")
        if stage in ("aif", "eval") and cfg.judge != "toy":
            info["judge"] = _judge_settings(stage, cfg, prof)
        if stage == "eval":
            info["decoding"] = _decoding(cfg)
            from .preflight import hub_refs
            for ref in hub_refs(prof, [run]):
                if not ref.revision:
                    warnings.append(f"{run.name}: {ref.setting} {ref.repo} has no revision (the hub's default branch; "
                                    "`zephyr check` prints the commit to pin)")
            if cfg.alpaca_eval_set.rstrip("/").endswith(_NOT_THE_BASELINE):
                warnings.append(f"{run.name}: eval.alpaca_eval_set is alpaca_eval's {_NOT_THE_BASELINE}, whose outputs "
                                "differ from the AlpacaEval 1 baseline GPT-4 judged in 785 of 805 rows; use the hub "
                                "dataset tatsu-lab/alpaca_eval, config alpaca_eval (evals.alpaca_eval.BASELINE_SOURCE)")
        if stage in trainer_stages():
            info["init"] = str(_planned(prof, cfg.init, root))
            info["data"] = str(_planned(prof, cfg.data, root))
            info["global_batch_size"] = {"per_device": cfg.per_device_train_batch_size,
                                         "accumulation": cfg.gradient_accumulation_steps,
                                         "processes": cfg.num_processes, "total": cfg.global_batch_size}
            if needs_launcher(cfg):
                machines, derived = _stage_machines(cfg, gpus_per_node)
                info["num_machines"] = machines
                try:
                    check_topology(run.name, cfg, gpus_per_node, machines)
                    if machines > num_machines:
                        raise ConfigError(f"{run.name}: needs {machines} machines, the cluster has {num_machines}")
                except ConfigError as e:
                    errors.append(str(e))
                    info["error"] = str(e)
                else:
                    out = _planned(prof, run.name, root).parent.parent / f".partial-{info['hash']}"
                    nodes = []
                    for rank in range(machines):
                        cl = Cluster(machines, rank, ip if machines > 1 else "",
                                     (main_process_port or getattr(cfg, "main_process_port", 0) or DEFAULT_PORT)
                                     if machines > 1 else None)
                        cmd = launch_command(stage, cfg, info["init"], info["data"], out, cluster=cl)
                        ranks = global_ranks(cfg, cl)
                        nodes.append({"machine_rank": rank, "global_ranks": [ranks.start, ranks.stop - 1],
                                      "local_gpus": list(range(len(ranks))), "command": cmd})
                    info["launch"] = nodes
                    if derived and machines > 1:
                        warnings.append(f"{run.name}: {cfg.num_processes} processes need {machines} machines of "
                                        f"{gpus_per_node} GPUs; the stage config has no num_machines field yet, "
                                        "so a real run would start them all on one machine")
        runs[run.name] = info
        _echo_run(run.name, info, echo)
    for w in warnings:
        echo(f"WARNING: {w}")
    for e in errors:
        echo(f"ERROR: {e}")
    return {"runs": runs, "errors": errors, "warnings": warnings, "preflight": [dataclasses.asdict(c) for c in checks]}


def _echo_run(name: str, info: dict, echo) -> None:
    import json

    echo(f"\n## {name} (stage {info['stage']} @ {info['hash']}; needs {', '.join(info['upstream']) or 'nothing'})")
    for key, value in sorted(info["config"].items()):
        echo(f"  {key} = {json.dumps(value)}")
    for key in ("init", "data", "judge", "decoding", "global_batch_size"):
        if key in info:
            echo(f"{key}: {json.dumps(info[key], sort_keys=True)}")
    for node in info.get("launch", []):
        lo, hi = node["global_ranks"]
        echo(f"node {node['machine_rank']} (global ranks {lo}-{hi}, local GPUs 0-{len(node['local_gpus']) - 1}):")
        echo("  " + shlex.join(node["command"]))



def main(argv: list[str] | None = None) -> int:
    """Child entry point under ``accelerate launch``: train one stage, main process writes the result."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["node"]:
        return node_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m zephyr_lib.launch",
                                description="Train one stage (sft or dpo); run by `accelerate launch`.")
    p.add_argument("stage", choices=trainer_stages())
    p.add_argument("--config", required=True, help="JSON of the resolved stage config (stage_config.json).")
    p.add_argument("--init", required=True, help="Model to start from (local folder or hub id).")
    p.add_argument("--data", required=True, help="Dataset folder (or hub id for dpo).")
    p.add_argument("--out", required=True, help="The run's output folder.")
    a = p.parse_args(argv)
    from .stages import STAGES
    cfg = build(STAGES[a.stage].config, read_json(a.config), f"{a.config} (stage {a.stage})")
    init = Path(a.init) if Path(a.init).exists() else a.init
    data = Path(a.data) if Path(a.data).exists() else a.data
    res = _stage_train(a.stage)(cfg, init, data, Path(a.out))
    from accelerate import PartialState  # initialized by the Trainer by now: same process group

    if PartialState().is_main_process:
        write_json(Path(a.out) / RESULT_FILE, json_safe(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
