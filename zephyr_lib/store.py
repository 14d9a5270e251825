"""The run store: ``runs/<profile>/<stage>/<hash>/``, written atomically, with provenance.

A stage builds into ``runs/<profile>/<stage>/.partial-<hash>/`` and, when it succeeds, writes
``manifest.json`` there and renames the folder to ``<hash>/``: a folder named by its hash is
always complete, and a stage killed midway leaves only a ``.partial-*`` folder (which a
resumable stage, e.g. training with checkpoints, picks up again on the next run).

Notebooks open their run with ``page.open_stage``, which does::

    ctx = open_run("sft", profile="toy", run="sft", overrides={})
    if not ctx.complete:
        with ctx.build(resumable=STAGES["sft"].resumable) as out:   # out: the partial folder
            STAGES["sft"].build(ctx, out)                           # artifacts and metrics.json
    metrics = ctx.metrics()
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import importlib.metadata
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from .config import REPO, ConfigError, Profile, Run, TOY_AGENTS, load_profile, ref_run
from .io import read_json, write_json

RUNS_DIR = Path(os.environ.get("ZEPHYR_RUNS_DIR", REPO / "runs"))
PACKAGES = ("torch", "transformers", "trl", "datasets", "accelerate", "tokenizers", "papermill",
            "jupyter-book", "lm_eval", "numpy", "matplotlib")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


@dataclasses.dataclass
class RunContext:
    """A resolved run: its config, hash, folder and upstream folders."""

    profile: Profile
    run: Run
    hash: str
    root: Path = RUNS_DIR
    force: bool = False

    @property
    def cfg(self) -> Any:
        return self.run.config

    @property
    def world(self):
        return self.profile.world

    @property
    def dir(self) -> Path:
        return self.root / self.profile.name / self.run.stage / self.hash

    @property
    def partial_dir(self) -> Path:
        return self.dir.parent / f".partial-{self.hash}"

    @property
    def complete(self) -> bool:
        return (self.dir / "manifest.json").is_file() and not self.force

    def upstream(self, name: str) -> "RunContext":
        """The context of an upstream run (must be complete)."""
        name = ref_run(name)
        ctx = context(self.profile, name, self.root)
        if not (ctx.dir / "manifest.json").is_file():
            raise FileNotFoundError(
                f"run {self.run.name!r} needs run {name!r} ({ctx.run.stage} @ {ctx.hash}), which has not "
                f"been run yet: python -m zephyr_lib run --profile {self.profile.name} --stages {name}")
        return ctx

    def resolve(self, ref: str) -> Path:
        """'curate/alpha' -> its folder; 'dpo@2' -> the epoch-2 model; 'sft' -> the default artifact."""
        if ref in TOY_AGENTS:
            raise ValueError(f"{ref!r} is a toy-world agent, not a stored artifact")
        up = self.upstream(ref)
        path = artifact_path(self.profile, ref, self.root)
        if not path.exists():
            raise FileNotFoundError(f"run {up.run.name!r} has no artifact {path.name!r} (looked in {path})")
        return path

    def metrics(self) -> dict:
        return read_json(self.dir / "metrics.json")

    def manifest(self) -> dict:
        return read_json(self.dir / "manifest.json")

    @contextlib.contextmanager
    def build(self, resumable: bool = False) -> Iterator[Path]:
        """Build the run in a partial folder; on success write the manifest and rename it.

        A resumable stage keeps what an interrupted attempt left (its checkpoints); any other
        stage starts from an empty folder. A lock stops two processes building the same run.
        """
        self.partial_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.partial_dir.parent / f".lock-{self.hash}"
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"run {self.run.name!r} is being built by another process ({lock_path})") from None
            if self.partial_dir.exists() and not resumable:
                shutil.rmtree(self.partial_dir)
            self.partial_dir.mkdir(exist_ok=True)
            start = time.time()
            yield self.partial_dir
            end = time.time()
            manifest = {
                "profile": self.profile.name,
                "run": self.run.name,
                "stage": self.run.stage,
                "config_hash": self.hash,
                "config": dataclasses.asdict(self.cfg),
                "world": dataclasses.asdict(self.world),
                "upstream": {u: self.profile.run_hash(u) for u in self.run.upstream},
                "seed": getattr(self.cfg, "seed", None),
                "git": git_state(),
                "packages": package_versions(),
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                "start": dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat(timespec="seconds"),
                "end": dt.datetime.fromtimestamp(end, dt.timezone.utc).isoformat(timespec="seconds"),
                "wall_time_s": round(end - start, 2),
            }
            write_json(self.partial_dir / "manifest.json", manifest)
            if self.dir.exists():  # --force: swap the old complete run out only now
                old = self.dir.parent / f".old-{self.hash}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.dir, old)
                os.replace(self.partial_dir, self.dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.partial_dir, self.dir)
        lock_path.unlink(missing_ok=True)


def artifact_path(profile: Profile, ref: str, root: Path = RUNS_DIR) -> Path:
    """Where a run reference ('sft', 'curate/beta', 'dpo@2') lives in the store, built or not:
    'run@k' is its epoch-k model, 'run/x' its folder x, a bare run its stage's default artifact."""
    from .stages import STAGES

    up = context(profile, ref_run(ref), root)
    if "@" in ref:
        return up.dir / f"epoch-{ref.split('@', 1)[1]}"
    if "/" in ref:
        return up.dir / ref.split("/", 1)[1]
    return up.dir / STAGES[up.run.stage].artifact  # what a bare run name means for its stage


def context(profile: Profile, run: str, root: Path = RUNS_DIR, force: bool = False) -> RunContext:
    if run not in profile.runs:
        raise ConfigError(f"profile {profile.name!r} has no run {run!r}; runs: {', '.join(profile.runs)}")
    return RunContext(profile, profile.runs[run], profile.run_hash(run), Path(root), force)


def open_run(stage: str, profile: str = "toy", run: str | None = None, overrides: dict | None = None,
             force: bool = False) -> RunContext:
    """The run a stage notebook renders (see ``page.open_stage``, which also builds it if needed).

    `overrides` holds this run's config overrides ({"key": value}) and, as {"run.key": value}, those
    of other runs of the plan, so that a notebook resolves the same upstream hashes as the runner
    that launched it. They are validated like ``--set`` (unknown keys and bad values are errors).
    """
    run = run or stage
    plan: dict[str, dict] = {}
    for key, value in dict(overrides or {}).items():
        other, field_name = key.split(".", 1) if "." in key else (run, key)
        plan.setdefault(other, {})[field_name] = value
    prof = load_profile(profile, plan or None)
    ctx = context(prof, run, force=force)
    if ctx.run.stage != stage:
        raise ConfigError(f"run {run!r} is a {ctx.run.stage!r} run, not a {stage!r} run")
    return ctx


def status(profile: Profile) -> list[dict]:
    rows = []
    for r in profile.order():
        ctx = context(profile, r.name)
        rows.append({"run": r.name, "stage": r.stage, "hash": ctx.hash,
                     "complete": ctx.complete, "partial": ctx.partial_dir.exists()})
    return rows
