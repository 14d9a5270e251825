"""The run store: ``runs/<profile>/<stage>/<hash>/``, written atomically, with provenance.

A stage builds into ``runs/<profile>/<stage>/.partial-<hash>/`` and, when it succeeds, writes
``manifest.json`` there and renames the folder to ``<hash>/``: a folder named by its hash is
always complete, and a stage killed midway leaves only a ``.partial-*`` folder (which a
resumable stage, e.g. training with checkpoints, picks up again on the next run).

Notebooks open their run with ``page.open_stage``, which does::

    ctx = plan.open_run("sft", profile="toy", run="sft", overrides={})
    if not ctx.complete:
        with ctx.build(resumable=ctx.run.spec.resumable) as out:   # out: the partial folder
            ctx.run.spec.build(ctx, out)                            # artifacts and metrics.json
    metrics = ctx.metrics()

What the store guarantees (each is tested; see book/reproducibility.md):

* atomicity: a folder named by its hash is complete; a kill leaves only ``.partial-*``;
* integrity: the manifest lists every file of the run with its size and sha256; reading a run
  (``complete``, ``upstream``) checks the sizes, ``python -m zephyr_lib verify`` the hashes, and
  a damaged run is an error naming the file and the fix (``--force`` the run);
* one builder: a lock (``.lock-<hash>``, recording its owner's pid) stops two processes building
  the same run; a lock whose owner is dead is taken over with a message;
* clean failures: an OS error of the store (read-only, disk full) is one line naming the path;
  debris of failed attempts is removed by :func:`clean_debris` on the next run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

from .config import REPO, THREADS_ENV, ConfigError, Profile, Run, TOY_AGENTS, ref_run
from .io import DataError, read_json, sha256_file, write_json

RUNS_DIR = Path(os.environ.get("ZEPHYR_RUNS_DIR", REPO / "runs"))
MANIFEST = "manifest.json"
BUILD_INFO = ".zephyr-build.json"  # in a partial folder while it is built: resumable or not


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


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else platform.processor(): stage times
    and matmul rates are only comparable on the same kind of processor."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info if ln.startswith("flags")), []))
    vector = next((label for flag, label in (("amx_tile", "AVX-512, AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
                   if flag in flags), "")  # virtual machines often report a generic name: the vector unit tells more
    return f"{name} ({vector})" if vector else name


def _matmul_rates() -> dict:
    """The machine's matmul rates now (``modeling.matmul_rates``: a fraction of a second)."""
    from .modeling import matmul_rates

    return matmul_rates()


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


class StoreError(RuntimeError):
    """The store could not be written or read (read-only, disk full, ...): one line naming the path."""


class CorruptRunError(RuntimeError):
    """A complete run's files differ from its manifest; the message names the file and the fix."""


class RunLockedError(RuntimeError):
    """Another live process is building the run."""


def echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def os_error_line(e: OSError, action: str = "write") -> str:
    """'cannot write /path: No space left on device' -- the path and the reason, nothing else."""
    where = e.filename if e.filename is not None else "the run store"
    reason = e.strerror or str(e)
    hint = {errno.ENOSPC: " (the disk is full: free space, then rerun; finished runs are kept)",
            errno.EROFS: " (a read-only file system: point ZEPHYR_RUNS_DIR at a writable folder)",
            errno.EACCES: " (no permission: point ZEPHYR_RUNS_DIR at a writable folder)",
            errno.EDQUOT: " (the disk quota is exhausted)"}.get(e.errno, "")
    return f"cannot {action} {where}: {reason}{hint}"


DISK_FULL_WORDS = ("No space left on device", "StorageFull", "[Errno 28]", "os error 28", "Disk quota exceeded")
# what torch's zip writer says when a write came up short (it names no errno and no path)
SHORT_WRITE_WORDS = ("PytorchStreamWriter failed writing", "unexpected pos", "file write failed")


def free_bytes(path: Path) -> int | None:
    """Bytes free for this user on the file system of ``path`` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_full_line(e: BaseException, folder: Path) -> str | None:
    """The one-line message for an artifact write that ran out of space while building into
    ``folder``, or None if ``e`` is not that. Libraries say it in many ways: an OSError with
    ENOSPC (naming its file, or not), a Rust IoError ("StorageFull", safetensors), or torch's
    "unexpected pos" from a short write, which is taken as a full disk only when the disk is."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return os_error_line(OSError(e.errno, e.strerror or "No space left on device", e.filename or str(folder)))
    text = str(e)
    full = any(w in text for w in DISK_FULL_WORDS)
    if not full and any(w in text for w in SHORT_WRITE_WORDS):
        free = free_bytes(folder)
        full = free is not None and free < 64 << 20
    if not full:
        return None
    return os_error_line(OSError(errno.ENOSPC, "No space left on device", str(folder)))


@contextlib.contextmanager
def store_op(action: str = "write") -> Iterator[None]:
    """Turn an OSError of the store's own file operations into a one-line StoreError."""
    try:
        yield
    except OSError as e:
        raise StoreError(os_error_line(e, action)) from e


def file_records(folder: Path, hashes: bool = True) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} for every file under ``folder`` except the manifest
    (symbolic links are recorded by their target, not followed)."""
    out: dict[str, dict] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel in (MANIFEST, BUILD_INFO):
            continue
        if p.is_symlink():
            out[rel] = {"symlink": os.readlink(p)}
        elif p.is_file():
            st = p.stat()
            out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **({"sha256": sha256_file(p)} if hashes else {})}
    return out


TEXT_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl", ".txt", ".cfg", ".toml", ".ini", ".sh")


def files_naming(folder: Path, needle: str, max_bytes: int = 4 << 20) -> list[str]:
    """Small text files under ``folder`` that contain ``needle`` (e.g. the partial folder's path,
    which no longer exists once the run is renamed into place)."""
    hits = []
    raw = needle.encode()
    for p in sorted(folder.rglob("*")):
        if p.suffix in TEXT_SUFFIXES and p.is_file() and not p.is_symlink() and p.stat().st_size <= max_bytes:
            try:
                if raw in p.read_bytes():
                    hits.append(p.relative_to(folder).as_posix())
            except OSError:
                pass
    return hits


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` running (a zombie counts as dead)?"""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lock_owner(path: Path) -> dict | None:
    """What a lock file records about its owner ({"pid", "host", "run", "since"}), if readable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def owner_dead(owner: dict | None) -> bool:
    """The recorded owner is certainly gone: same machine, pid not running."""
    return bool(owner) and owner.get("host") == socket.gethostname() and not pid_alive(owner["pid"])


def lock_held(path: Path) -> bool:
    """Does some process hold the flock on ``path`` right now?"""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases a lock we just took
    return False


def acquire_lock(path: Path, who: dict, log: Callable[[str], None] = echo) -> int:
    """Take the exclusive build lock at ``path``; returns its file descriptor.

    The lock file records its owner (pid, host, run, since). If the lock is held but its recorded
    owner is dead -- a process the owner started (a forked worker) inherited the lock and outlived
    it -- the lock is taken over with a message. A lock held by a live owner raises RunLockedError.
    """
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = lock_owner(path)
            if owner_dead(owner):
                log(f"taking over the lock {path}: its owner, process {owner['pid']}, is no longer running "
                    "(a process it started still held the lock)")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # the holder keeps a lock on the old, unlinked file
                continue
            since = f", since {owner.get('since')}" if owner and owner.get("since") else ""
            pid = f" (pid {owner['pid']} on {owner.get('host')}{since})" if owner else ""
            raise RunLockedError(f"run {who.get('run')!r} is being built by another process{pid} ({path}); "
                                 "wait for it to finish or stop it") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the file was replaced between open and flock: lock the current one
            os.close(fd)
            continue
        previous = lock_owner(path)
        if previous and previous.get("pid") != os.getpid() and owner_dead(previous):
            log(f"run {who.get('run')!r}: the previous attempt (process {previous['pid']}, since "
                f"{previous.get('since')}) ended without finishing; its lock is taken over")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({**who, "pid": os.getpid(), "host": socket.gethostname(),
                                 "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}).encode())
        os.fsync(fd)
        return fd
    raise RunLockedError(f"run {who.get('run')!r}: could not take the lock {path} (it kept changing)")


def release_lock(path: Path, fd: int) -> None:
    """Remove our lock file (while still holding it) and release the lock."""
    try:
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    def lock_path(self) -> Path:
        return self.dir.parent / f".lock-{self.hash}"

    @property
    def complete(self) -> bool:
        """The run's folder exists with its manifest (and is not being forced). The files' sizes
        are checked against the manifest, and a file whose modification time changed since the
        manifest was written is re-hashed (cheap when nothing changed): a damaged run raises
        CorruptRunError naming the file, so a silent corruption is never reused."""
        if self.force or not (self.dir / MANIFEST).is_file():
            return False
        self.check(hashes="changed")
        return True

    def verify(self, hashes: "bool | str" = False) -> list[str]:
        """Problems of a complete run's files against its manifest ([] = intact): missing files,
        other sizes, and with ``hashes`` other sha256 digests. ``hashes="changed"`` re-hashes only
        the files whose mtime differs from the manifest's record (manifests without one: files
        modified after the manifest was written). A manifest without a file list (written before
        the store recorded one) cannot be checked and gives []."""
        files = self.manifest().get("files")
        if not isinstance(files, dict):
            return []
        try:
            written = (self.dir / MANIFEST).stat().st_mtime_ns
        except OSError:
            written = 0
        problems = []
        for rel, rec in files.items():
            path = self.dir / rel
            if "symlink" in rec:
                if not path.is_symlink() or os.readlink(path) != rec["symlink"]:
                    problems.append(f"{rel}: the symbolic link is missing or changed")
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                problems.append(f"{rel}: missing")
                continue
            except OSError as e:
                problems.append(f"{rel}: unreadable ({e.strerror})")
                continue
            size = st.st_size
            if hashes == "changed":
                rehash = st.st_mtime_ns != rec["mtime_ns"] if "mtime_ns" in rec else st.st_mtime_ns > written
            else:
                rehash = bool(hashes)
            if size != rec["size"]:
                problems.append(f"{rel}: {size} bytes, the manifest says {rec['size']}")
            elif rehash and rec.get("sha256") and sha256_file(path) != rec["sha256"]:
                problems.append(f"{rel}: its sha256 differs from the manifest (modified or corrupted)")
        return problems

    def extra_files(self) -> list[str]:
        """Files in the run's folder that its manifest does not list (written after it completed)."""
        files = self.manifest().get("files")
        if not isinstance(files, dict):
            return []
        return sorted(rel for rel in file_records(self.dir, hashes=False) if rel not in files)

    def corrupt_message(self, problems: list[str]) -> str:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        return (f"run {self.run.name!r} ({self.run.stage} @ {self.hash}) is damaged: {shown} (in {self.dir}). "
                f"Fix: rebuild it with python -m zephyr_lib run --profile {self.profile.name} "
                f"--stages {self.run.name} --force")

    def check(self, hashes: "bool | str" = False) -> None:
        """Raise CorruptRunError if :meth:`verify` finds a problem."""
        try:
            problems = self.verify(hashes)
        except DataError as e:  # the manifest itself is damaged
            problems = [f"{MANIFEST}: {e}"]
        if problems:
            raise CorruptRunError(self.corrupt_message(problems))

    def upstream(self, name: str) -> "RunContext":
        """The context of an upstream run (must be complete and intact: sizes are checked)."""
        name = ref_run(name)
        ctx = context(self.profile, name, self.root)
        if not (ctx.dir / MANIFEST).is_file():
            raise FileNotFoundError(
                f"run {self.run.name!r} needs run {name!r} ({ctx.run.stage} @ {ctx.hash}), which has not "
                f"been run yet: python -m zephyr_lib run --profile {self.profile.name} --stages {name}")
        ctx.check(hashes="changed")
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
        stage starts from an empty folder. A lock stops two processes building the same run
        (a lock left by a dead owner is taken over). The manifest lists every file with its size
        and sha256. The store's own OS errors become a one-line StoreError naming the path; the
        stage's own errors pass through untouched. Interrupted or failed, the partial folder
        stays (a resumable stage picks it up; :func:`clean_debris` removes the others).
        """
        with store_op():
            self.partial_dir.parent.mkdir(parents=True, exist_ok=True)
            fd = acquire_lock(self.lock_path, {"run": self.run.name, "stage": self.run.stage,
                                               "runner_pid": _int_env("ZEPHYR_RUNNER_PID")})
        ok = False
        try:
            with store_op():
                if self.partial_dir.exists() and not resumable:
                    shutil.rmtree(self.partial_dir)
                self.partial_dir.mkdir(exist_ok=True)
                write_json(self.partial_dir / BUILD_INFO, {"resumable": resumable, "run": self.run.name,
                                                           "stage": self.run.stage})
            rates = {"start": _matmul_rates()} if self.run.spec.trains else None
            start = time.time()
            try:
                yield self.partial_dir
            except Exception as e:  # noqa: BLE001
                # a library's artifact write that ran out of disk (torch's "unexpected pos", a Rust
                # "StorageFull") becomes one line naming the run's folder; the stage's own errors,
                # OSErrors included (the runner reads their errno and path), pass through untouched
                line = None if isinstance(e, OSError) else disk_full_line(e, self.partial_dir)
                if line is None:
                    raise
                raise StoreError(line) from e
            end = time.time()
            if rates is not None:
                rates["end"] = _matmul_rates()
            with store_op():
                (self.partial_dir / BUILD_INFO).unlink(missing_ok=True)
                dangling = files_naming(self.partial_dir, str(self.partial_dir))
                if dangling:
                    echo(f"note: run {self.run.name!r}: {len(dangling)} stored file(s) name the partial folder, "
                         f"which is renamed to {self.dir.name}/ now, so those paths will not exist: "
                         f"{', '.join(dangling[:5])} (store paths relative to the run folder)")
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
                    "machine": {"platform": platform.platform(), "cpu": cpu_name(), "cpus": os.cpu_count(),
                                "threads": _int_env(THREADS_ENV) or os.cpu_count(),  # less: ran beside another run
                                **({"matmul_gflops": rates} if rates is not None else {})},
                    "start": dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat(timespec="seconds"),
                    "end": dt.datetime.fromtimestamp(end, dt.timezone.utc).isoformat(timespec="seconds"),
                    "wall_time_s": round(end - start, 2),
                    "files": file_records(self.partial_dir),
                }
                write_json(self.partial_dir / MANIFEST, manifest)
                if self.dir.exists():  # --force: swap the old complete run out only now
                    old = self.dir.parent / f".old-{self.hash}"
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(self.dir, old)
                    os.replace(self.partial_dir, self.dir)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(self.partial_dir, self.dir)
            ok = True
        finally:
            release_lock(self.lock_path, fd)
            if not ok and self.partial_dir.exists():
                kept = "kept for the next attempt to resume" if resumable else "removed on the next run"
                echo(f"run {self.run.name!r} ({self.run.stage} @ {self.hash}) did not finish: "
                     f"its partial folder {self.partial_dir} is {kept}")


def _int_env(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def artifact_path(profile: Profile, ref: str, root: Path = RUNS_DIR) -> Path:
    """Where a run reference ('sft', 'curate/beta', 'dpo@2') lives in the store, built or not:
    'run@k' is its epoch-k model, 'run/x' its folder x, a bare run its stage's default artifact."""
    up = context(profile, ref_run(ref), root)
    if "@" in ref:
        return up.dir / f"epoch-{ref.split('@', 1)[1]}"
    if "/" in ref:
        return up.dir / ref.split("/", 1)[1]
    return up.dir / up.run.spec.artifact  # what a bare run name means for its stage


def context(profile: Profile, run: str, root: Path = RUNS_DIR, force: bool = False) -> RunContext:
    if run not in profile.runs:
        raise ConfigError(f"profile {profile.name!r} has no run {run!r}; runs: {', '.join(profile.runs)}")
    return RunContext(profile, profile.runs[run], profile.run_hash(run), Path(root), force)


def status(profile: Profile) -> list[dict]:
    """Per run: complete (and intact by size), damaged (with the problems), partial."""
    rows = []
    for r in profile.order():
        ctx = context(profile, r.name)
        problems: list[str] = []
        try:
            complete = ctx.complete
        except CorruptRunError as e:
            complete, problems = False, [str(e)]
        rows.append({"run": r.name, "stage": r.stage, "hash": ctx.hash, "complete": complete,
                     "corrupt": bool(problems), "problems": problems, "partial": ctx.partial_dir.exists()})
    return rows


def verify_runs(profile: Profile, runs: list[str] | None = None, hashes: bool = True,
                root: Path | None = None) -> list[dict]:
    """Check the stored runs of ``profile`` (or only ``runs``) against their manifests.

    Per run: state "ok", "damaged" (problems name the files; message says the fix), "unverifiable"
    (a manifest written before the store recorded file lists), "missing" (not run yet); plus the
    files the manifest does not list ("extra", written after the run completed)."""
    unknown = sorted(set(runs or []) - set(profile.runs))
    if unknown:
        raise ConfigError(f"profile {profile.name!r} has no run(s) {unknown}; runs: {', '.join(profile.runs)}")
    out = []
    for r in profile.order():
        if runs and r.name not in runs:
            continue
        ctx = context(profile, r.name, root or RUNS_DIR)
        row = {"run": r.name, "stage": r.stage, "hash": ctx.hash, "dir": str(ctx.dir), "problems": [],
               "extra": [], "message": ""}
        if not (ctx.dir / MANIFEST).is_file():
            row["state"] = "missing"
        else:
            try:
                has_list = isinstance(ctx.manifest().get("files"), dict)
                row["problems"] = ctx.verify(hashes=hashes)
            except DataError as e:
                has_list, row["problems"] = True, [f"{MANIFEST}: {e}"]
            if row["problems"]:
                row["state"], row["message"] = "damaged", ctx.corrupt_message(row["problems"])
            elif not has_list:
                row["state"] = "unverifiable"
                row["message"] = (f"run {r.name!r} was stored before manifests listed files; --force it to "
                                  "record them")
            else:
                row["state"], row["extra"] = "ok", ctx.extra_files()
        out.append(row)
    return out


def _is_resumable_partial(partial: Path, resumable_stages: Collection[str]) -> bool:
    """Is a partial folder a resumable build? Its BUILD_INFO says; one without (e.g. left by an
    older version) is when its stage (the folder above it) is one of ``resumable_stages``."""
    try:
        return bool(read_json(partial / BUILD_INFO)["resumable"])
    except (OSError, DataError, KeyError, TypeError):
        return partial.parent.name in resumable_stages


def clean_debris(profile_name: str, root: Path | None = None, log: Callable[[str], None] = echo,
                 completed_runs: dict[str, str] | None = None, resumable_stages: Collection[str] = ()) -> list[Path]:
    """Remove what failed attempts left in ``<root>/<profile>/``; returns what was removed.

    * ``<stage>/.partial-*`` of stages that do not resume (no live builder holds its lock);
      a resumable stage's partial folder (its checkpoints) is kept (``resumable_stages`` names
      those stages, for partial folders that do not record it themselves);
    * ``<stage>/.lock-*`` that no process holds;
    * ``<stage>/.old-*`` left by an interrupted ``--force`` swap;
    * ``failed/<run>.ipynb`` of runs that have since completed (``completed_runs``: run -> the
      folder of its complete run; a failed notebook older than that run's manifest is stale).
    """
    base = Path(root or RUNS_DIR) / profile_name
    removed: list[Path] = []
    if not base.is_dir():
        return removed
    for stage_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for p in sorted(stage_dir.glob(".partial-*")):
            lock = stage_dir / f".lock-{p.name.removeprefix('.partial-')}"
            if lock_held(lock) or _is_resumable_partial(p, resumable_stages):
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        for p in sorted(stage_dir.glob(".old-*")):
            if not lock_held(stage_dir / f".lock-{p.name.removeprefix('.old-')}"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        for p in sorted(stage_dir.glob(".lock-*")):
            if not lock_held(p):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                removed.append(p)
    failed = base / "failed"
    for run, run_dir in (completed_runs or {}).items():
        nb = failed / f"{run}.ipynb"
        man = Path(run_dir) / MANIFEST
        if nb.is_file() and man.is_file() and nb.stat().st_mtime <= man.stat().st_mtime:
            nb.unlink()
            removed.append(nb)
    for p in removed:
        log(f"cleaned up {p} (left by an earlier attempt)")
    return removed

