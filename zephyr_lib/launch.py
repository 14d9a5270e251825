"""Run a training stage (dSFT or dDPO) in this process or on several processes through accelerate.

What: :func:`train_stage` is the one entry point the pipeline uses for ``sft`` and ``dpo``; it takes
the stage's record (:class:`~zephyr_lib.stage.Stage`), whose ``trainer`` names the TRL wrapper. A
stage config with ``num_processes == 1`` and no ``accelerate_config`` (the toy and smoke profiles)
is trained in-process by the wrapper's ``train`` (``sft.train`` / ``dpo.train``). Otherwise (the paper: 16 GPUs under DeepSpeed
ZeRO-3) the stage runs as a child job of ``accelerate launch``; both ways return the same
:class:`~zephyr_lib.trl_shared.TrainResult` (the log, the metrics: ``steps``, final eval, ...).

How, for a launched stage, inside the run's output folder ``out``:

1. the resolved stage config is written to ``out/stage_config.json``;
2. :func:`launch_command` builds ``python -m accelerate.commands.launch [--config_file F]
   --num_processes N [--multi_gpu] [--main_process_port P] --module zephyr_lib.launch_cli <stage>
   --config out/stage_config.json --init I --data D --out O``. Without a config file and with
   N > 1 it asks for plain DDP (``--multi_gpu``: torchrun); on a machine without GPUs the same
   command trains N CPU processes that talk through gloo (Trainer's ``use_cpu``). N is the total
   over all machines. On several machines (:class:`Cluster`) the command adds ``--num_machines M
   --machine_rank R --main_process_ip A --main_process_port P``: the stage config gives M
   (``num_machines``), the environment gives the rest, because the rank differs per node and must
   not enter the run's hash (``ZEPHYR_MACHINE_RANK`` / ``ZEPHYR_MAIN_PROCESS_IP`` /
   ``ZEPHYR_MAIN_PROCESS_PORT``, else SLURM's ``SLURM_NODEID`` and the first host of
   ``SLURM_JOB_NODELIST``, else ``MASTER_ADDR`` / ``MASTER_PORT``). Rank 0's node runs the
   pipeline; every other node runs ``launch_cli.follow`` (``python -m zephyr_lib.launch_cli node``, which
   does either, is the one command ``tools/slurm_example.sh`` starts on every node). Further
   launcher flags can still come from the environment variable ``ZEPHYR_ACCELERATE_ARGS``;
3. the child's output is streamed to ``out/launch.log`` and to stdout; a non-zero exit raises
   :class:`LaunchError` naming the stage, the exit code and the log, with the log's last lines;
4. each child process (``launch_cli.main``) rebuilds the frozen config from the JSON, calls
   the wrapper's ``train`` (which saves ``out/model`` collectively, as ZeRO-3 needs), and the
   main process writes the result atomically to ``out/train_result.json``, which the parent reads
   back. Non-finite floats (a NaN loss) become ``null`` there, as JSON has no NaN.

The accelerate config files are in ``configs/accelerate/`` (``zero3.yaml``, ``ddp.yaml``,
``fsdp.yaml``); their ``num_processes`` is only a default, ``--num_processes`` comes from the stage
config. :func:`for_gpus` re-derives ``gradient_accumulation_steps`` (and, if needed, the per-device
batch) for another GPU count so the profile's global batch is kept.

The command-line halves (the child entry point, the other nodes' part and the dry run) need the
plan and the stage registry, so they live one floor up, in :mod:`zephyr_lib.launch_cli`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from .config import REPO, ConfigError
from .io import read_json, write_json
from .stage import Stage
from .trl_shared import TrainResult

CHILD_MODULE = "zephyr_lib.launch_cli"  # what `accelerate launch --module` runs in every process
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


def check_stage(spec: Stage) -> str:
    """The stage's name, if it trains through a TRL wrapper (``Stage.trainer``); else ValueError."""
    if not spec.trainer:
        raise ValueError(f"stage {spec.name!r} does not train (its Stage record names no TRL wrapper)")
    return spec.name


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


def launch_command(spec: Stage, cfg: Any, init: str | Path, data: str | Path, out: str | Path, *,
                   main_process_port: int | None = None, extra_args: list[str] | tuple = (),
                   cluster: Cluster | None = None) -> list[str]:
    """The ``accelerate launch`` command that trains stage ``spec`` with ``cfg`` (an argv list).

    Needs no GPU to build. ``extra_args`` are inserted before ``--module`` (launcher flags).
    ``cluster`` (several machines) adds ``--num_machines --machine_rank --main_process_ip
    --main_process_port``; every node runs the same command except for its rank."""
    stage = check_stage(spec)
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
    cmd += ["--module", CHILD_MODULE, stage,
            "--config", _arg_path(out / CONFIG_FILE),
            "--init", _arg_path(init), "--data", _arg_path(data), "--out", _arg_path(out)]
    return cmd


def global_ranks(cfg: Any, cluster: Cluster) -> range:
    """The global process ranks node ``cluster.machine_rank`` starts (local rank i has global rank
    machine_rank × per-node + i, as torchrun numbers them)."""
    per_node = cfg.num_processes // cluster.num_machines
    return range(cluster.machine_rank * per_node, (cluster.machine_rank + 1) * per_node)


def gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no torch / broken driver: no GPU
        return 0


def stage_train(spec: Stage):
    """A trainer stage's ``train(cfg, init, data, out)``: from the TRL wrapper its record names."""
    import importlib

    check_stage(spec)
    return importlib.import_module(spec.trainer).train


def _tail(path: Path, n: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=n))
    except OSError:
        return ""


def run_logged(stage: str, cmd: list[str], log_path: Path, what: str) -> None:
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


def train_stage(spec: Stage, cfg: Any, init: str | Path, data: str | Path, out: str | Path,
                log: str | Path | None = None, cluster: Cluster | None = None, **in_process: Any) -> TrainResult:
    """Train stage ``spec`` (its Stage record: sft, dpo): in-process, or under ``accelerate launch`` when
    ``cfg.num_processes > 1`` or ``cfg.accelerate_config`` is set. Returns the wrapper's
    :class:`~zephyr_lib.trl_shared.TrainResult` either way (read back from JSON when launched). ``log`` is the launcher's log file (default ``out/launch.log``). ``cluster``
    defaults to :func:`cluster_for` (the config and this node's environment); this function is the
    main node's part, the other nodes run :func:`follow`. ``in_process`` are extra keyword
    arguments of the stage's ``train`` for the in-process path (the launched one does without)."""
    stage = check_stage(spec)
    out = Path(out)
    if not needs_launcher(cfg):
        return stage_train(spec)(cfg, init, data, out, **in_process)

    cluster = cluster or cluster_for(cfg)
    check_topology(stage, cfg, gpu_count(), cluster.num_machines)
    if cluster.machine_rank != 0:
        raise ConfigError(f"stage {stage}: train_stage runs on the main node (rank 0); node {cluster.machine_rank} "
                          "joins with `python -m zephyr_lib.launch_cli node` (see tools/slurm_example.sh)")
    out.mkdir(parents=True, exist_ok=True)
    log_path = Path(log) if log else out / LOG_FILE
    (out / RESULT_FILE).unlink(missing_ok=True)  # never read a previous attempt's result
    write_json(out / CONFIG_FILE, dataclasses.asdict(cfg))  # the other nodes wait for this file
    extra = shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))
    # A fresh port for our own single-node DDP, so concurrent runs do not collide; with a config
    # file, several machines or extra flags, the port is theirs to set (all nodes must agree).
    port = (free_port() if not cfg.accelerate_config and not extra and cfg.num_processes > 1
            and not cluster.multi_node and cluster.main_process_port is None else None)
    cmd = launch_command(spec, cfg, init, data, out, main_process_port=port, extra_args=extra, cluster=cluster)
    run_logged(stage, cmd, log_path, f"{cfg.num_processes} process(es)")
    result = out / RESULT_FILE
    if not result.is_file():
        raise LaunchError(f"stage {stage}: the launched job exited with 0 but wrote no {result}; log: {log_path}")
    return TrainResult(**read_json(result))


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
