"""Command line: ``python -m zephyr_lib`` (also installed as ``zephyr``).

    zephyr run --profile toy [--stages base,curate] [--set run.key=value ...] [--force]
    zephyr run --profile paper --dry-run [--gpus-per-node 8 --num-machines 2]   # commands, configs; no training
    zephyr check --profile paper [--stages eval] # preflight: endpoints, retired models, hub access, disk, GPUs
    zephyr fetch --profile paper                # login node: every hub repo and file of the plan, pinned
    zephyr config --profile toy [--run sft]     # resolved configs and hashes
    zephyr status --profile toy                 # which runs are complete
    zephyr verify --profile toy [--run sft]     # check stored runs' files against their manifests
    zephyr book --profile toy                   # check the book's pages, write provenance
    zephyr describe sft                         # a stage's config keys, types, defaults
    zephyr bench --profile toy [--repeats 3] [--out bench.json]  # speed, side by side with TRL defaults
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .config import ConfigError, parse_overrides
from .plan import describe, load_profile
from .stages import STAGES
from .store import CorruptRunError, StoreError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="zephyr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute the plan's stage notebooks with papermill")
    c = sub.add_parser("config", help="print the resolved configs and hashes")
    s = sub.add_parser("status", help="which runs are complete")
    for q in (r, c, s):
        q.add_argument("--profile", default="toy", help="configs/<profile>.yaml (default: toy)")
        q.add_argument("--set", dest="sets", action="append", default=[], metavar="RUN.KEY=VALUE")
    r.add_argument("--stages", default="", help="comma-separated runs or stages (and what they need)")
    r.add_argument("--force", action="store_true", help="rerun even if a complete run exists")
    r.add_argument("--retry-failed", action="store_true",
                   help="ask the judge again for requests whose replies never parsed, past the limit of attempts")
    r.add_argument("--timeout", type=float, default=None, help="time limit per stage, seconds")
    r.add_argument("--jobs", type=int, default=None,
                   help="runs executed at once, each with its share of the CPU threads (default 1; for "
                        "machines with more cores than one small-model run can use)")
    r.add_argument("--dry-run", action="store_true",
                   help="print every run's resolved config and the exact launch commands per node; train nothing")
    r.add_argument("--gpus-per-node", type=int, default=8, help="--dry-run: GPUs per machine (default 8)")
    r.add_argument("--num-machines", type=int, default=2, help="--dry-run: machines in the cluster (default 2)")
    r.add_argument("--no-check", action="store_true", help="--dry-run: skip the preflight checks (zephyr check)")
    ck = sub.add_parser("check", help="preflight: endpoints answer, no retired model, hub access, disk and GPU memory")
    ck.add_argument("--profile", default="toy")
    ck.add_argument("--stages", default="", help="comma-separated runs or stages (and what they need)")
    ck.add_argument("--set", dest="sets", action="append", default=[], metavar="RUN.KEY=VALUE")
    fe = sub.add_parser("fetch", help="download every hub model/dataset and file of the plan (then HF_HUB_OFFLINE=1 works)")
    fe.add_argument("--profile", default="toy")
    fe.add_argument("--stages", default="", help="comma-separated runs or stages (and what they need)")
    fe.add_argument("--set", dest="sets", action="append", default=[], metavar="RUN.KEY=VALUE")
    c.add_argument("--run", default=None)
    v = sub.add_parser("verify", help="check the stored runs' files (sizes and sha256) against their manifests")
    v.add_argument("--profile", default="toy")
    v.add_argument("--run", action="append", default=[], help="only this run (repeatable)")
    b = sub.add_parser("book", help="check the executed pages and write provenance for the book")
    b.add_argument("--profile", default="toy")
    d = sub.add_parser("describe", help="a stage's config keys")
    d.add_argument("stage", choices=[*STAGES, "world", "endpoint"])
    k = sub.add_parser("bench", help="speed of training and generation, side by side with TRL defaults")
    k.add_argument("--profile", default="toy", help="model sizes and configs of configs/<profile>.yaml (default: toy)")
    k.add_argument("--repeats", type=int, default=3, help="repeats; the report keeps the median (default: 3)")
    k.add_argument("--out", default="bench.json", help="where to write the results (default: bench.json)")
    k.add_argument("--no-rerun", action="store_true", help="skip the unchanged-rerun measurement")
    a = p.parse_args(argv)
    try:
        if hasattr(a, "sets"):  # --set strings -> {run: {key: value}}, the shape every layer below takes
            a.sets = parse_overrides(a.sets)
        if a.cmd == "describe":
            print(describe(a.stage))
            return 0
        if a.cmd == "bench":
            from .bench import run_bench
            try:
                run_bench(a.profile, a.repeats, a.out, rerun=not a.no_rerun)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            return 0
        if a.cmd == "book":
            from .book import prepare
            problems = prepare(a.profile)
            for msg in problems:
                print(f"error: {msg}", file=sys.stderr)
            return 1 if problems else 0
        if a.cmd == "check":  # zephyr check: 0 when every check passed, 1 otherwise
            from .preflight import report, run_checks
            prof = load_profile(a.profile, a.sets)
            print(f"# preflight: profile {prof.name} ({prof.path})")
            return 0 if report(run_checks(prof, prof.order([x.strip() for x in a.stages.split(",") if x.strip()] or None))) else 1
        if a.cmd == "fetch":
            from .fetch import main_fetch
            return main_fetch(a.profile, a.sets, [x.strip() for x in a.stages.split(",") if x.strip()] or None)
        if a.cmd == "run" and a.dry_run:
            from .launch_cli import dry_run
            stages = [x.strip() for x in a.stages.split(",") if x.strip()] or None
            plan = dry_run(a.profile, a.gpus_per_node, a.num_machines, sets=a.sets, stages=stages,
                           preflight=not a.no_check)
            return 1 if plan["errors"] else 0
        if a.cmd == "run":
            from .runner import StageFailed, run_pipeline
            stages = [x.strip() for x in a.stages.split(",") if x.strip()] or None
            try:
                return run_pipeline(a.profile, stages, a.sets, a.force, a.timeout, jobs=a.jobs,
                                    retry_failed=a.retry_failed)
            except (StageFailed, StoreError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        if a.cmd == "verify":
            from .store import verify_runs
            rows = verify_runs(load_profile(a.profile), a.run or None)
            for row in rows:
                print(f"{row['run']:<14} {row['stage']:<8} {row['hash']}  {row['state']}")
                for rel in row["extra"]:
                    print(f"  note: {rel} is not in the manifest (written after the run completed)")
                if row["message"]:
                    print(f"  {'error' if row['state'] == 'damaged' else 'note'}: {row['message']}", file=sys.stderr)
            return 1 if any(r["state"] == "damaged" for r in rows) else 0
        prof = load_profile(a.profile, a.sets)
        if a.cmd == "config":
            out = {n: {"stage": r.stage, "hash": prof.run_hash(n), "upstream": list(r.upstream),
                       "config": dataclasses.asdict(r.config)}
                   for n, r in prof.runs.items() if a.run in (None, n)}
            print(json.dumps(out, indent=2))
        else:
            from .store import status
            for row in status(prof):
                state = ("complete" if row["complete"] else "damaged" if row["corrupt"]
                         else "partial" if row["partial"] else "-")
                print(f"{row['run']:<14} {row['stage']:<8} {row['hash']}  {state}")
                for msg in row["problems"]:
                    print(f"  {msg}", file=sys.stderr)
        return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (CorruptRunError, StoreError) as e:  # a damaged run, an unwritable store: one line, the fix
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
