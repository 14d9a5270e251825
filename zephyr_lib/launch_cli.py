"""The command-line halves of the training launcher (:mod:`zephyr_lib.launch`), which need the
plan: the child entry point every ``accelerate launch`` process runs, the other nodes' part of a
cluster job, and the dry run.

* :func:`main` (``python -m zephyr_lib.launch_cli <stage> --config ... --init ... --data ... --out
  ...``): what ``launch.launch_command`` starts in every process. It rebuilds the frozen stage
  config from ``stage_config.json`` (the stage's config class from the registry), calls the TRL
  wrapper the stage's record names, and the main process writes ``train_result.json``.
* :func:`node_main` (``python -m zephyr_lib.launch_cli node --profile paper``): the one command
  every node of a cluster job runs (``tools/slurm_example.sh``); node 0 runs the pipeline, every
  other node runs :func:`follow` for each multi-machine training run.
* :func:`dry_run` prints, for every run of a profile, the resolved data, models, judge and decoding
  settings and, for the training stages, the exact launch command of every node and the global
  ranks it starts, without training (``python -m zephyr_lib run --profile paper --dry-run
  --gpus-per-node 8 --num-machines 2``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .config import ConfigError, Overrides, build, parse_overrides
from .io import read_json, write_json
from .launch import (CONFIG_FILE, DEFAULT_PORT, EXTRA_ARGS_ENV, IP_ENV, RESULT_FILE, Cluster, LaunchError,
                     check_stage, check_topology, cluster_for, global_ranks, gpu_count, json_safe, launch_command,
                     needs_launcher, node_rank, run_logged, stage_train)
from .plan import load_profile
from .stages import STAGES
from .store import RUNS_DIR, artifact_path, context


def trainer_stages() -> tuple[str, ...]:
    """The stages that train through a TRL wrapper (``Stage.trainer`` in the registry)."""
    return tuple(name for name, s in STAGES.items() if s.trainer)


def _planned(profile: Any, ref: str, root: Path | None = None) -> Path:
    """Where run reference ``ref`` ('sft', 'curate/beta', 'dpo@2') lives in the store, whether or not
    it has been built yet (RunContext.resolve without the existence checks)."""
    return artifact_path(profile, ref, root or RUNS_DIR)


def follow(profile: Any, run_name: str, *, cluster: Cluster | None = None, root: Path | None = None,
           poll_s: float = 10.0, timeout_s: float = 48 * 3600) -> str:
    """A non-main node's part of a launched run: wait until the main node's pipeline has written the
    run's ``stage_config.json`` (its upstream runs are then complete), check it is the same config,
    and start this node's processes with the same ``accelerate launch`` command and this node's
    rank. Returns 'done', or 'complete' when the run was already in the store. ``profile`` is a
    loaded Profile (the same profile and overrides as the main node, so the same run hash)."""
    ctx = context(profile, run_name, root or RUNS_DIR)
    cfg = ctx.cfg
    stage = check_stage(ctx.run.spec)
    cluster = cluster or cluster_for(cfg)
    if cluster.machine_rank == 0:
        raise ConfigError(f"run {run_name!r}: node 0 runs the pipeline (python -m zephyr_lib run), not follow()")
    check_topology(stage, cfg, gpu_count(), cluster.num_machines)
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
    cmd = launch_command(ctx.run.spec, cfg, init, data, out, extra_args=shlex.split(os.environ.get(EXTRA_ARGS_ENV, "")),
                         cluster=cluster)
    run_logged(stage, cmd, out / f"launch-node{cluster.machine_rank}.log",
                f"{cfg.num_processes // cluster.num_machines} of {cfg.num_processes} process(es)")
    return "done"


def node_main(argv: list[str] | None = None) -> int:
    """``python -m zephyr_lib.launch_cli node --profile P [--stages S] [--set run.key=value]``: the one
    command every node of a cluster job runs. Node 0 runs the pipeline; every other node follows
    each multi-machine training run of the plan (the others run on node 0 alone)."""
    p = argparse.ArgumentParser(prog="python -m zephyr_lib.launch_cli node",
                                description="Run on every node: node 0 runs the pipeline, the others join its launches.")
    p.add_argument("--profile", default="paper")
    p.add_argument("--stages", default="", help="comma-separated runs or stages (and what they need)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="RUN.KEY=VALUE")
    p.add_argument("--force", action="store_true", help="node 0: rerun even if a complete run exists")
    a = p.parse_args(argv)
    stages = [x.strip() for x in a.stages.split(",") if x.strip()] or None
    sets = parse_overrides(a.sets)  # {run: {key: value}}
    rank = node_rank()
    if rank == 0:
        from .runner import run_pipeline
        return run_pipeline(a.profile, stages, sets, a.force)
    prof = load_profile(a.profile, sets)
    for run in prof.order(stages):
        if run.spec.trainer and needs_launcher(run.config) and cluster_for(run.config).multi_node:
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


def dry_run(profile: str | Any, gpus_per_node: int = 8, num_machines: int = 2, *,
            sets: Overrides | list[str] | None = None, stages: list[str] | None = None, main_process_ip: str = "",
            main_process_port: int | None = None, root: Path | None = None, echo=print, preflight: bool = True) -> dict:
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
        if run.spec.trainer:
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
                        cmd = launch_command(run.spec, cfg, info["init"], info["data"], out, cluster=cl)
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
    p = argparse.ArgumentParser(prog="python -m zephyr_lib.launch_cli",
                                description="Train one stage (sft or dpo); run by `accelerate launch`.")
    p.add_argument("stage", choices=trainer_stages())
    p.add_argument("--config", required=True, help="JSON of the resolved stage config (stage_config.json).")
    p.add_argument("--init", required=True, help="Model to start from (local folder or hub id).")
    p.add_argument("--data", required=True, help="Dataset folder (or hub id for dpo).")
    p.add_argument("--out", required=True, help="The run's output folder.")
    a = p.parse_args(argv)
    cfg = build(STAGES[a.stage].config, read_json(a.config), f"{a.config} (stage {a.stage})")
    init = Path(a.init) if Path(a.init).exists() else a.init
    data = Path(a.data) if Path(a.data).exists() else a.data
    res = stage_train(STAGES[a.stage])(cfg, init, data, Path(a.out))
    from accelerate import PartialState  # initialized by the Trainer by now: same process group

    if PartialState().is_main_process:
        write_json(Path(a.out) / RESULT_FILE, json_safe(dataclasses.asdict(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
