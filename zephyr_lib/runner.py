"""The stage runner: executes the stage notebooks in dependency order with papermill.

    python -m zephyr_lib run --profile toy                      # the whole plan
    python -m zephyr_lib run --profile toy --stages sft         # sft and what it needs
    python -m zephyr_lib run --profile toy --set sft.learning_rate=1e-3 --force

Every run of the plan is one papermill execution of its stage's notebook (in a subprocess, repo
root as working directory, kernel ``python3``, a per-stage time limit, a log per stage). A run
whose config and upstream hashes already have a complete folder is skipped ("cached"). The
executed notebook of a stage's main run (the run named like the stage) goes into
``book/stages/``; other runs' executed notebooks go to ``runs/<profile>/executed/``. A failed
notebook never reaches the book: the error names the run, the failing cell and the log.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml

from .config import REPO, Profile, load_profile, parse_override
from .stages import STAGES
from .store import RUNS_DIR, context

NOTEBOOKS = REPO / "notebooks"
BOOK_STAGES = Path(os.environ.get("ZEPHYR_BOOK_STAGES", REPO / "book" / "stages"))
DEFAULT_TIMEOUT_S = {"smoke": 900, "toy": 3600}


class StageFailed(RuntimeError):
    pass


def _failing_cell(nb_path: Path) -> str:
    """Describe the cell papermill marked as failed in an executed notebook."""
    try:
        nb = nbformat.read(nb_path, as_version=4)
    except Exception:  # noqa: BLE001 - a notebook killed mid-write may be unreadable
        return "unknown cell (the executed notebook could not be read)"
    code_idx = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code_idx += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                return (f"code cell {code_idx} (`{first[:70]}`): {out.get('ename')}: "
                        f"{str(out.get('evalue'))[:500]}")
    return "unknown cell (no error output recorded; see the log)"


def _finish_notebook(path: Path, run_name: str, run_hash: str) -> None:
    """Hide the parameter cells' input in the book and record which run the page shows."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "parameters" in tags:
            cell.metadata["tags"] = sorted(set(tags) | {"remove-input"})
    nb.metadata["zephyr"] = {"run": run_name, "hash": run_hash}
    tmp = path.with_suffix(".tmp.ipynb")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def executed_path(profile: Profile, run_name: str) -> Path:
    run = profile.runs[run_name]
    if run_name == run.stage:
        return BOOK_STAGES / f"{STAGES[run.stage].notebook}.ipynb"
    return RUNS_DIR / profile.name / "executed" / f"{run_name}.ipynb"


def _executed_hash(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["metadata"]["zephyr"]["hash"]
    except (OSError, KeyError, ValueError):
        return None


def execute_run(profile: Profile, run_name: str, overrides: dict, force: bool, timeout_s: float,
                log_dir: Path) -> str:
    """Execute one run's notebook; returns 'cached' or 'done'. Raises StageFailed."""
    ctx = context(profile, run_name)
    dest = executed_path(profile, run_name)
    if ctx.complete and not force and _executed_hash(dest) == ctx.hash:
        return "cached"
    nb_in = NOTEBOOKS / f"{STAGES[ctx.run.stage].notebook}.ipynb"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{run_name}.log"
    params = {"profile": profile.name if profile.path.parent == REPO / "configs" else str(profile.path),
              "run": run_name, "overrides": overrides, "force": force}
    with tempfile.TemporaryDirectory(prefix=f"zephyr-{run_name}-") as tmp:
        out = Path(tmp) / nb_in.name
        cmd = [sys.executable, "-m", "papermill", str(nb_in), str(out), "-y", yaml.safe_dump(params),
               "-k", "python3", "--cwd", str(REPO), "--log-output", "--no-progress-bar"]
        with open(log, "w") as logf:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise StageFailed(f"run {run_name!r} ({ctx.run.stage}) exceeded its time limit of "
                                  f"{timeout_s:.0f} s and was stopped; log: {log}") from None
        if rc != 0:
            failed = RUNS_DIR / profile.name / "failed" / f"{run_name}.ipynb"
            where = _failing_cell(out) if out.exists() else "before the first cell (see the log)"
            if out.exists():
                failed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(out, failed)
            raise StageFailed(f"run {run_name!r} (stage {ctx.run.stage}, notebook {nb_in.name}) failed in {where}\n"
                              f"  log: {log}" + (f"\n  executed notebook with the error: {failed}" if out.exists() else ""))
        _finish_notebook(out, run_name, ctx.hash)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp_dest = dest.with_suffix(".partial.ipynb")
        shutil.copy(out, tmp_dest)
        os.replace(tmp_dest, dest)
    return "done"


def run_pipeline(profile_name: str, stages: list[str] | None = None, sets: list[str] | None = None,
                 force: bool = False, timeout_s: float | None = None, echo=print) -> int:
    """Validate everything first, then execute the plan in dependency order."""
    profile = load_profile(profile_name, sets)  # raises ConfigError before any work
    overrides: dict[str, dict] = {}
    for text in sets or []:
        run, key, value = parse_override(text)
        overrides.setdefault(run, {})[key] = value
    plan = profile.order(stages)
    if not force:
        forced: set[str] = set()
    elif stages:  # --force with --stages reruns the named runs, not what they need
        forced = {r.name for r in plan if r.name in stages or r.stage in stages}
    else:
        forced = set(profile.runs)
    timeout_s = timeout_s or DEFAULT_TIMEOUT_S.get(profile.name, 48 * 3600)
    log_dir = RUNS_DIR / profile.name / "logs"
    t_all = time.time()
    for i, run in enumerate(plan, 1):
        tag = f"[{i}/{len(plan)}] {run.name} ({run.stage} @ {profile.run_hash(run.name)})"
        echo(f"{tag}: started", flush=True)
        t0 = time.time()
        mine = {**{f"{r}.{k}": v for r, kv in overrides.items() if r != run.name for k, v in kv.items()},
                **overrides.get(run.name, {})}
        state = execute_run(profile, run.name, mine, run.name in forced, timeout_s, log_dir)
        echo(f"{tag}: {'cached' if state == 'cached' else f'done in {time.time() - t0:.1f} s'}", flush=True)
    echo(f"profile {profile.name}: {len(plan)} runs in {time.time() - t_all:.1f} s", flush=True)
    return 0
