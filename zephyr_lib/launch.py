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
   command trains N CPU processes that talk through gloo (Trainer's ``use_cpu``). Extra launcher
   flags, e.g. for several nodes (``--num_machines 2 --machine_rank 0 --main_process_ip …``), come
   from the environment variable ``ZEPHYR_ACCELERATE_ARGS``;
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

Command line (what ``accelerate launch`` runs in each process)::

    python -m zephyr_lib.launch sft --config out/stage_config.json --init <model> --data <data> --out <out>
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from .config import REPO, ConfigError, build
from .io import read_json, write_json

CONFIG_FILE = "stage_config.json"
RESULT_FILE = "train_result.json"
LOG_FILE = "launch.log"
EXTRA_ARGS_ENV = "ZEPHYR_ACCELERATE_ARGS"


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


def launch_command(stage: str, cfg: Any, init: str | Path, data: str | Path, out: str | Path, *,
                   main_process_port: int | None = None, extra_args: list[str] | tuple = ()) -> list[str]:
    """The ``accelerate launch`` command that trains ``stage`` with ``cfg`` (an argv list).

    Needs no GPU to build. ``extra_args`` are inserted before ``--module`` (launcher flags)."""
    _check_stage(stage)
    out = Path(out)
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    config_file = accelerate_config_path(cfg)
    if config_file:
        cmd += ["--config_file", config_file]
    cmd += ["--num_processes", str(cfg.num_processes)]
    if not config_file and cfg.num_processes > 1:
        cmd += ["--multi_gpu"]  # plain DDP through torchrun; CPU-only machines get gloo
    if main_process_port is not None:
        cmd += ["--main_process_port", str(main_process_port)]
    cmd += list(extra_args)
    cmd += ["--module", "zephyr_lib.launch", stage,
            "--config", _arg_path(out / CONFIG_FILE),
            "--init", _arg_path(init), "--data", _arg_path(data), "--out", _arg_path(out)]
    return cmd


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


def train_stage(stage: str, cfg: Any, init: str | Path, data: str | Path, out: str | Path,
                log: str | Path | None = None) -> dict:
    """Train ``stage`` ('sft' or 'dpo'): in-process, or under ``accelerate launch`` when
    ``cfg.num_processes > 1`` or ``cfg.accelerate_config`` is set. Returns the stage's result
    dict either way. ``log`` is the launcher's log file (default ``out/launch.log``)."""
    _check_stage(stage)
    out = Path(out)
    if not needs_launcher(cfg):
        return _stage_train(stage)(cfg, init, data, out)

    out.mkdir(parents=True, exist_ok=True)
    log_path = Path(log) if log else out / LOG_FILE
    write_json(out / CONFIG_FILE, dataclasses.asdict(cfg))
    (out / RESULT_FILE).unlink(missing_ok=True)  # never read a previous attempt's result
    extra = shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))
    # A fresh port for our own single-node DDP, so concurrent runs do not collide; with a config
    # file or extra (multi-node) flags, the port is theirs to set (all nodes must agree).
    port = free_port() if not cfg.accelerate_config and not extra and cfg.num_processes > 1 else None
    cmd = launch_command(stage, cfg, init, data, out, main_process_port=port, extra_args=extra)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as logf:
        logf.write("$ " + shlex.join(cmd) + "\n")
        logf.flush()
        print(f"[{stage}] launching {cfg.num_processes} process(es): {shlex.join(cmd)}", flush=True)
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
        raise LaunchError(f"stage {stage}: `accelerate launch` with {cfg.num_processes} process(es) failed with "
                          f"exit code {rc}; full log: {log_path}\n--- last lines ---\n{_tail(log_path)}")
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


def main(argv: list[str] | None = None) -> int:
    """Child entry point under ``accelerate launch``: train one stage, main process writes the result."""
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
