"""The stage runner: executes the stage notebooks in dependency order with papermill.

    python -m zephyr_lib run --profile toy                      # the whole plan
    python -m zephyr_lib run --profile toy --stages sft         # sft and what it needs
    python -m zephyr_lib run --profile toy --set sft.learning_rate=1e-3 --force

Every run of the plan is one papermill execution of its stage's notebook (in a subprocess, repo
root as working directory, kernel ``python3``, a per-stage time limit, a log per stage). A run
whose config and upstream hashes already have a complete folder is skipped ("cached"); one whose
run is complete but whose page is not current (the notebook changed) only re-renders its page
("rendered": the stage finds its run and computes nothing). Every executed notebook goes to
``runs/<profile>/executed/<run>.ipynb``, in the profile's own store, so building one profile never
makes another's pages stale; ``zephyr book`` publishes the pages of the runs named like their
stage into ``book/stages/``. A failed notebook never reaches the book: the error names the run,
the failing cell and the log.

The runner owns what it starts. Every process of a stage (papermill, its kernel, anything the
kernel starts, e.g. an ``accelerate launch`` job, in whatever session) carries a token in its
environment. Ctrl-C or SIGTERM to the runner stops all of them, releases the run's lock and says
what was kept (a resumable stage's ``.partial-*`` folder: the rerun resumes from it); a watchdog
process in its own session does the same if the runner itself is killed (SIGKILL of its group).
Parameters are checked for secrets before papermill writes anything, and the store's OS errors
(read-only, disk full) are one line naming the path.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import nbformat
import yaml

from .config import REPO, THREADS_ENV, ConfigError, Overrides, Profile, check_secret_free, refuse_secret_names
from .io import DataError, read_json
from .plan import load_profile
from .stages import STAGES
from .store import (BUILD_INFO, MANIFEST, RUNS_DIR, CorruptRunError, clean_debris, free_bytes,
                    context, lock_held, lock_owner, os_error_line, pid_alive, store_op)

NOTEBOOKS = REPO / "notebooks"
BOOK_STAGES = Path(os.environ.get("ZEPHYR_BOOK_STAGES", REPO / "book" / "stages"))
DEFAULT_TIMEOUT_S = {"smoke": 900, "toy": 3600}


STAGE_TOKEN_ENV = "ZEPHYR_STAGE_TOKEN"  # marks every process of one stage execution
STOP_GRACE_S = 10.0  # SIGTERM, then this long, then SIGKILL


class StageFailed(RuntimeError):
    pass


class StageInterrupted(KeyboardInterrupt):
    """The runner got SIGINT or SIGTERM; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ---- owning the stage's processes -------------------------------------------------------------

def marked_processes(token: str) -> list[int]:
    """Pids of live processes whose environment carries ``token`` (every process of a stage)."""
    needle = f"{STAGE_TOKEN_ENV}={token}".encode()
    me, pids = os.getpid(), []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(d))
        except OSError:  # gone, or not ours
            pass
    return pids


def stop_marked(token: str, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM every process of the stage, wait up to ``grace_s``, SIGKILL the rest. Returns how
    many processes there were."""
    seen: dict[int, str | None] = {}  # pid -> its start time, so a reused pid is never signalled

    def running() -> list[int]:
        # a dying process stops showing its environment before it has released its files (and
        # its locks): wait until every process seen is gone (or a zombie)
        for pid in marked_processes(token):
            seen.setdefault(pid, _start_time(pid))
        return [p for p, t in seen.items() if pid_alive(p) and _start_time(p) == t]

    n = len(running())
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = running()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and running():
            time.sleep(0.1)
    return max(n, len(seen))


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


# Runs in its own session, outside the runner's process group: blocks until the runner closes its
# stdin (it finished, or it died -- even by SIGKILL), then stops every process of the stage. No
# imports from zephyr_lib, so it starts fast and works from any working directory.
_WATCHDOG = r"""
import os, signal, sys, time
needle = b"%s=" + sys.argv[1].encode()
try:
    sys.stdin.buffer.read()
except BaseException:
    pass
def marked():
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open("/proc/%%s/environ" %% d, "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(d))
            except OSError:
                pass
    return pids
for sig, wait in ((signal.SIGTERM, float(sys.argv[2])), (signal.SIGKILL, 5.0)):
    pids = marked()
    if not pids:
        break
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    end = time.time() + wait
    while time.time() < end and marked():
        time.sleep(0.1)
""" % STAGE_TOKEN_ENV


def start_watchdog(token: str, grace_s: float = STOP_GRACE_S) -> subprocess.Popen:
    """A process that stops the stage's processes when this process closes its stdin or dies."""
    env = {k: v for k, v in os.environ.items() if k != STAGE_TOKEN_ENV}
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, token, str(grace_s)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env, cwd="/")


def close_watchdog(dog: subprocess.Popen) -> None:
    """Let the watchdog sweep (normally nothing is left) and exit; reap it in the background."""
    try:
        dog.stdin.close()
    except OSError:
        pass
    threading.Thread(target=dog.wait, daemon=True).start()


def _stop_lock_owner(lock_path: Path) -> None:
    """If the builder recorded in the run's lock was started by this runner and still lives
    (a process that escaped the token sweep), stop it: the lock must be free when we report."""
    owner = lock_owner(lock_path)
    if not owner or owner.get("runner_pid") != os.getpid() or not pid_alive(owner["pid"]):
        return
    try:
        os.kill(owner["pid"], signal.SIGKILL)
    except OSError:
        return
    deadline = time.time() + 10
    while time.time() < deadline and pid_alive(owner["pid"]):
        time.sleep(0.1)


def _kept_message(profile: Profile, run_name: str) -> str:
    """What an interrupted run left: the partial folder a rerun resumes from, or nothing."""
    ctx = context(profile, run_name)
    deadline = time.time() + 10
    while ctx.lock_path.exists() and lock_held(ctx.lock_path) and time.time() < deadline:
        time.sleep(0.2)
    if ctx.lock_path.exists():
        if lock_held(ctx.lock_path):
            owner = lock_owner(ctx.lock_path) or {}
            return (f"the run's lock {ctx.lock_path} is still held (by pid {owner.get('pid', '?')}); "
                    "nothing else was touched")
        ctx.lock_path.unlink(missing_ok=True)  # its owner is gone: release the run's lock
    part = ctx.partial_dir
    if not part.exists():
        return f"nothing of run {run_name!r} was kept (it had not started building)"
    try:
        resumable = bool(read_json(part / BUILD_INFO)["resumable"])
    except (OSError, DataError, KeyError, TypeError):
        resumable = ctx.run.spec.resumable
    if not resumable:
        shutil.rmtree(part, ignore_errors=True)
        return f"removed the unfinished {part} (stage {ctx.run.stage} starts over on a rerun)"
    ckpts = sorted((p.name for p in (part / "checkpoints").glob("checkpoint-*")),
                   key=lambda n: int(n.split("-")[1]) if n.split("-")[1].isdigit() else -1)
    what = f" (checkpoints: {', '.join(ckpts)})" if ckpts else " (no checkpoint yet)"
    return f"kept {part}{what}: the rerun resumes from it"


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


def notebook_hash(stage: str) -> str:
    """A stage notebook's source, hashed: an executed page is current only for the run it shows AND
    the notebook it was executed from (a changed page re-renders; the run itself stays cached)."""
    import hashlib
    return hashlib.sha256((NOTEBOOKS / f"{STAGES[stage].notebook}.ipynb").read_bytes()).hexdigest()[:12]


def _finish_notebook(path: Path, run_name: str, run_hash: str, page: str = "") -> None:
    """Hide the parameter cells' input in the book and record which run (and notebook) the page shows."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "parameters" in tags:
            cell.metadata["tags"] = sorted(set(tags) | {"remove-input"})
    nb.metadata["zephyr"] = {"run": run_name, "hash": run_hash, "notebook": page}
    tmp = path.with_suffix(".tmp.ipynb")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def executed_path(profile: Profile, run_name: str) -> Path:
    """Where a run's executed notebook is kept: in the profile's store (never shared by profiles)."""
    profile.runs[run_name]  # an unknown run is a KeyError here, not a path nobody reads
    return RUNS_DIR / profile.name / "executed" / f"{run_name}.ipynb"


def book_page(profile: Profile, stage: str) -> Path:
    """The book's page of a stage: ``book/stages/<notebook>.ipynb`` (``zephyr book`` copies the
    executed notebook of the run named like the stage there)."""
    return BOOK_STAGES / f"{profile.runs[stage].spec.notebook}.ipynb"


def outcome(state: str, t0: float) -> str:
    """The runner's report of one run: 'cached', 'page rendered in S s (run cached)' or 'done in S s'."""
    if state == "cached":
        return "cached"
    took = f"{time.time() - t0:.1f} s"
    return f"page rendered in {took} (run cached)" if state == "rendered" else f"done in {took}"


def executed_hash(path: Path, key: str = "hash") -> str | None:
    """What an executed page records: the run's config hash (``key="hash"``) or its notebook's (``"notebook"``)."""
    try:
        return json.loads(path.read_text())["metadata"]["zephyr"][key]
    except (OSError, KeyError, ValueError):
        return None


class _Tee:
    """Copy a child's output to its log file and keep the last lines in memory: when the disk is
    full the log is cut short, but the stage's own error is still known."""

    def __init__(self, stream, log: Path, keep: int = 400):
        self.lines: deque[str] = deque(maxlen=keep)
        self.log_error: OSError | None = None
        self._stream, self._log = stream, log
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            f = open(self._log, "a", encoding="utf-8", errors="replace")
        except OSError as e:
            f, self.log_error = None, e
        try:
            for line in self._stream:
                self.lines.append(line.rstrip("\n"))
                if f is not None:
                    try:
                        f.write(line)
                        f.flush()
                    except OSError as e:
                        self.log_error = e
                        try:
                            f.close()
                        except OSError:
                            pass
                        f = None
        finally:
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def tail(self, n: int = 12) -> str:
        self.thread.join(timeout=10)
        lines = [ln for ln in self.lines if ln.strip()]
        return "\n".join("    " + ln for ln in lines[-n:])


# OS errors that mean "the store (or the disk under it) cannot take this": shown as one line.
_OS_ERROR_LINE = re.compile(r"(?:\w+Error): \[Errno (\d+)\] ([^:\n]+?)(?:: '([^'\n]+)')?\s*$")
_STORE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)


def _full_filesystem(paths: list[Path], below: int = 4 << 20) -> Path | None:
    """The first of ``paths`` (or its nearest existing parent) on a file system with less than
    ``below`` bytes free."""
    for path in paths:
        free = free_bytes(path)
        if free is not None and free < below:
            return Path(path)
    return None


def _store_os_error(text: str, places: list[Path] = ()) -> str | None:
    """'cannot write PATH: REASON (hint)' for the first disk-full / read-only / permission error
    in ``text`` (a traceback, a cell's error), else None. An error that names no path (a write
    that ran out of space) is placed on the first of ``places`` whose disk is full."""
    for line in text.splitlines():
        if "StoreError: cannot " in line:  # the store already said it in one line
            return line.split("StoreError: ", 1)[1].strip()
        m = _OS_ERROR_LINE.search(line.strip())
        if m and int(m.group(1)) in _STORE_ERRNOS:
            path = m.group(3)
            if path is None and int(m.group(1)) == errno.ENOSPC:
                full = _full_filesystem(list(places))
                path = str(full) if full else None
            return os_error_line(OSError(int(m.group(1)), m.group(2), path))
    return None


def _keep_failed_notebook(out: Path, failed: Path) -> Path | None:
    """Copy the executed notebook of a failed run to ``failed`` if it is a readable notebook
    (never an empty or half-written file); a stale copy from an earlier failure is removed."""
    failed.unlink(missing_ok=True)
    try:
        if not out.is_file() or out.stat().st_size == 0:
            return None
        nbformat.read(out, as_version=4)
    except Exception:  # noqa: BLE001 - killed mid-write, or the disk filled up
        return None
    tmp = failed.with_suffix(".partial.ipynb")
    try:
        failed.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, tmp)
        os.replace(tmp, failed)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return failed


def _ignoring_signals():
    """While the stage is being stopped, a second Ctrl-C must not cut the cleanup short."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}


def execute_run(profile: Profile, run_name: str, overrides: Overrides, force: bool, timeout_s: float,
                log_dir: Path, threads: int | None = None, running: dict | None = None) -> str:
    """Execute one run's notebook; returns 'cached' (nothing ran), 'rendered' (the run was complete:
    only its page was executed again) or 'done'. Raises StageFailed, StoreError
    (the store could not be written: one line naming the path), or a KeyboardInterrupt after
    stopping every process of the stage. ``overrides``: the plan's overrides, {run: {key: value}}
    (``profile.overrides``), passed unchanged as the notebook's ``overrides`` parameter, so that
    the notebook resolves the same run and upstream hashes. ``threads``: the CPU threads the
    stage may use (when several run at once); ``running``: a registry where the stage's process
    token and lock path stay while it runs, for a caller that must stop it from another thread."""
    ctx = context(profile, run_name)
    dest = executed_path(profile, run_name)
    if not force:
        try:
            if ctx.complete and executed_hash(dest) == ctx.hash \
                    and executed_hash(dest, "notebook") == notebook_hash(ctx.run.stage):
                return "cached"
        except CorruptRunError as e:
            raise StageFailed(str(e)) from None
    try:
        rendering = not force and ctx.complete
    except CorruptRunError as e:
        raise StageFailed(str(e)) from None
    nb_in = NOTEBOOKS / f"{ctx.run.spec.notebook}.ipynb"
    params = {"profile": profile.name if profile.path.parent == REPO / "configs" else str(profile.path),
              "run": run_name, "overrides": overrides, "force": force}
    refuse_secret_names(params, f"run {run_name!r}: notebook parameter")  # before papermill writes it anywhere
    log = log_dir / f"{run_name}.log"
    failed = RUNS_DIR / profile.name / "failed" / f"{run_name}.ipynb"
    with store_op():
        log_dir.mkdir(parents=True, exist_ok=True)
        log.write_text("")
    with store_op("create a temporary folder in"):
        tmp = Path(tempfile.mkdtemp(prefix=f"zephyr-{run_name}-"))
        (tmp / TEMP_OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    try:
        out = tmp / nb_in.name
        cmd = [sys.executable, "-m", "papermill", str(nb_in), str(out), "-y", yaml.safe_dump(params),
               "-k", "python3", "--cwd", str(REPO), "--log-output", "--no-progress-bar"]
        token = uuid.uuid4().hex
        env = {**os.environ, STAGE_TOKEN_ENV: token, "ZEPHYR_RUNNER_PID": str(os.getpid())}
        if threads:
            env.update({THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        dog = start_watchdog(token)
        if running is not None:
            running[run_name] = (token, ctx.lock_path)
        try:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, text=True, errors="replace", bufsize=1)
            tee = _Tee(proc.stdout, log)
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                stop_marked(token, grace_s=2.0)
                proc.wait()
                raise StageFailed(f"run {run_name!r} ({ctx.run.stage}) exceeded its time limit of "
                                  f"{timeout_s:.0f} s and was stopped; log: {log}") from None
            except BaseException:  # Ctrl-C, SIGTERM: stop the whole stage, not just papermill
                saved = _ignoring_signals()
                try:
                    stop_marked(token)
                    proc.wait()
                    _stop_lock_owner(ctx.lock_path)
                finally:
                    for sig, h in saved.items():
                        signal.signal(sig, h)
                raise
        finally:
            close_watchdog(dog)
            if running is not None:
                running.pop(run_name, None)
        if rc != 0:
            readable = out.is_file() and out.stat().st_size > 0
            where = (_failing_cell(out) if readable
                     else "an unknown cell (the executed notebook could not be written; see the log)")
            kept = _keep_failed_notebook(out, failed)
            tail = tee.tail()
            cell_known = readable and not where.startswith("unknown")
            places = [RUNS_DIR / profile.name, tmp, dest.parent]
            disk = _store_os_error(where, places) if cell_known else _store_os_error(tail, places)
            if disk:  # a full disk, a read-only store: one line naming the path
                raise StageFailed(f"run {run_name!r} (stage {ctx.run.stage}) failed: {disk}; log: {log}")
            shown = "" if kept and not where.startswith(("unknown", "an unknown")) else f"\n  last lines of the log:\n{tail}"
            raise StageFailed(f"run {run_name!r} (stage {ctx.run.stage}, notebook {nb_in.name}) failed in {where}\n"
                              f"  log: {log}" + (f"\n  executed notebook with the error: {kept}" if kept else "")
                              + shown)
        with store_op():
            _finish_notebook(out, run_name, ctx.hash, notebook_hash(ctx.run.stage))
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp_dest = dest.with_suffix(".partial.ipynb")
            try:
                shutil.copy(out, tmp_dest)
                os.replace(tmp_dest, dest)
            finally:
                tmp_dest.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    failed.unlink(missing_ok=True)  # an earlier failure of this run is history now
    return "rendered" if rendering else "done"


TEMP_OWNER = ".zephyr-owner.json"  # in each temporary folder of a stage: the runner that made it


def clean_leaked_temp(run_names, echo=print, older_than_s: float = 3600.0) -> list[Path]:
    """Remove ``zephyr-<run>-*`` temporary folders that a killed runner left (SIGKILL skips its
    cleanup): those whose recorded owner process is gone, and those of older versions (no owner
    recorded) untouched for ``older_than_s``. A live runner's folder is never touched."""
    removed = []
    now = time.time()
    for run in run_names:
        for d in Path(tempfile.gettempdir()).glob(f"zephyr-{run}-*"):
            if not d.is_dir() or d.is_symlink():
                continue
            try:
                owner = json.loads((d / TEMP_OWNER).read_text())
            except (OSError, ValueError):
                owner = None
            if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
                if owner.get("host") != socket.gethostname() or pid_alive(owner["pid"]):
                    continue
            else:
                try:
                    if now - d.stat().st_mtime < older_than_s:
                        continue
                except OSError:
                    continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            echo(f"cleaned up {d} (the temporary folder of an earlier, killed run of {run!r})")
    return removed


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise StageInterrupted(signum)


def default_jobs() -> int:
    """How many runs execute at once by default: 1. On the 2-core reference machine two 1-thread
    runs side by side were measured slower than the same runs one after the other with 2 threads
    each (dDPO 415 s beside two shorter runs that took 182 s and 176 s; alone: 201, 80 and 92 s), so
    ``--jobs`` is for machines with more cores than a small model's operations can use."""
    return 1


def _runs_alone(run) -> bool:
    return run.spec.alone


def _run_parallel(profile: Profile, plan: list, overrides: Overrides, forced: set[str], timeout_s: float, log_dir: Path,
                  jobs: int, echo, current: list) -> None:
    """Execute the plan with up to ``jobs`` runs at once, each as soon as its upstream runs are done
    (in plan order), each with its share of the CPU threads. A run that is the only one ready while
    nothing runs gets every core, and so does a run of a stage marked ``alone`` (base pretraining,
    the evaluation): it waits for the machine to be free, and nothing starts beside it. A failure starts nothing new; the runs already going finish, then the first failure is
    raised."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    names = {r.name for r in plan}
    deps = {r.name: [u for u in r.upstream if u in names] for r in plan}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    done: set[str] = set()
    started: dict[str, tuple[str, float]] = {}
    failure: BaseException | None = None
    futures: dict = {}
    running: dict[str, tuple[str, Path]] = {}  # run -> (process token, lock path) while its stage runs
    exclusive = False  # the running run has every core: start nothing beside it
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            while True:
                ready = [r for r in plan if r.name not in started and all(d in done for d in deps[r.name])]
                lone = [r for r in ready if _runs_alone(r)]
                if lone:  # a stage that runs alone waits for the machine to be free, and goes first
                    ready = lone[:1] if not futures else []
                # a run that is ready alone, with nothing running, gets every core and runs alone
                alone = len(ready) == 1 and not futures
                for run in ready if failure is None and not exclusive else []:
                    if len(futures) >= jobs:
                        break
                    tag = f"[{len(started) + 1}/{len(plan)}] {run.name} ({run.stage} @ {profile.run_hash(run.name)})"
                    echo(f"{tag}: started", flush=True)
                    started[run.name] = (tag, time.time())
                    exclusive = alone
                    futures[pool.submit(execute_run, profile, run.name, overrides, run.name in forced,
                                        timeout_s, log_dir, None if alone else threads, running)] = run.name
                if not futures:
                    break
                finished, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                exclusive = exclusive and bool(set(futures) - set(finished))
                for fut in finished:
                    name = futures.pop(fut)
                    tag, t0 = started[name]
                    try:
                        state = fut.result()
                    except BaseException as e:  # noqa: BLE001 - re-raised once the others have finished
                        echo(f"{tag}: failed", flush=True)
                        failure = failure or e
                        continue
                    done.add(name)
                    echo(f"{tag}: {outcome(state, t0)}", flush=True)
        except KeyboardInterrupt:  # the worker threads cannot be interrupted: stop their stages from here
            saved = _ignoring_signals()
            try:
                current[:] = list(futures.values())
                pending = list(futures)
                while pending:  # a stage that was about to start registers a moment later: stop it too
                    for token, lock_path in list(running.values()):
                        stop_marked(token)
                        _stop_lock_owner(lock_path)
                    pending = list(wait(pending, timeout=1.0).not_done)
            finally:
                for sig, h in saved.items():
                    signal.signal(sig, h)
            raise
    if failure is not None:
        raise failure
    missing = [r.name for r in plan if r.name not in done]
    if missing:
        raise StageFailed(f"runs never became ready (their upstream runs are not in the plan?): {', '.join(missing)}")


def run_pipeline(profile_name: str, stages: list[str] | None = None, sets: Overrides | list[str] | None = None,
                 force: bool = False, timeout_s: float | None = None, echo=print, jobs: int | None = None,
                 retry_failed: bool = False) -> int:
    """Validate everything first, then execute the plan in dependency order (``jobs`` runs at once;
    default :func:`default_jobs`).

    Returns 0, or 128 + the signal number when SIGINT/SIGTERM stopped it (after stopping the
    stages' processes and saying what was kept). Raises StageFailed, StoreError, ConfigError.
    ``sets``: the config overrides, {run: {key: value}} (or ``--set`` strings); validated once
    against the profile, then passed unchanged to every notebook. ``retry_failed``: the stages'
    judges ask again for requests whose replies never parsed, past their limit of attempts across
    runs (``--retry-failed``; it enters no run's hash)."""
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    profile = load_profile(profile_name, sets)  # raises ConfigError before any work
    jobs = default_jobs() if jobs is None else jobs
    check_secret_free(profile)                  # *_api_key_env hold names, no value looks like a key
    plan = profile.order(stages)
    if not force:
        forced: set[str] = set()
    elif stages:  # --force with --stages reruns the named runs, not what they need
        forced = {r.name for r in plan if r.name in stages or r.stage in stages}
    else:
        forced = set(profile.runs)
    # preflight for the runs to build: endpoints, retired models, hub access, disk, GPUs (seconds, not hours in)
    from .preflight import report, run_checks
    todo = [r for r in plan if r.name in forced or not context(profile, r.name).complete]
    checks = run_checks(profile, todo, root=RUNS_DIR)
    if checks:
        report(checks, lambda m: echo(m, flush=True))
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise StageFailed(f"preflight: {len(failed)} check(s) failed, nothing was started: "
                          + " | ".join(f"{c.what}: {c.detail}" for c in failed))
    timeout_s = timeout_s or DEFAULT_TIMEOUT_S.get(profile.name, 48 * 3600)
    from .judges import RETRY_FAILED_ENV
    if retry_failed:  # inherited by every stage's papermill process and kernel
        os.environ[RETRY_FAILED_ENV] = "1"
    else:
        os.environ.pop(RETRY_FAILED_ENV, None)
    log_dir = RUNS_DIR / profile.name / "logs"
    completed = {r: context(profile, r).dir for r in profile.runs if (context(profile, r).dir / MANIFEST).is_file()}
    with store_op("clean up in"):
        clean_debris(profile.name, RUNS_DIR, log=lambda m: echo(m, flush=True), completed_runs=completed,
                     resumable_stages={n for n, s in STAGES.items() if s.resumable})
    clean_leaked_temp(list(profile.runs), echo=lambda m: echo(m, flush=True))
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, _raise_interrupt)
    t_all = time.time()

    current: list[str] = []
    try:
        if jobs == 1:
            for i, run in enumerate(plan, 1):
                current = [run.name]
                tag = f"[{i}/{len(plan)}] {run.name} ({run.stage} @ {profile.run_hash(run.name)})"
                echo(f"{tag}: started", flush=True)
                t0 = time.time()
                state = execute_run(profile, run.name, profile.overrides, run.name in forced, timeout_s, log_dir)
                echo(f"{tag}: {outcome(state, t0)}", flush=True)
        else:
            _run_parallel(profile, plan, profile.overrides, forced, timeout_s, log_dir, jobs, echo, current)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        for sig in handlers:  # a second Ctrl-C while reporting must not leave a traceback
            signal.signal(sig, signal.SIG_IGN)
        kept = "; ".join(_kept_message(profile, r) for r in current) if current else "nothing had started"
        names = ", ".join(repr(r) for r in current) or "nothing"
        echo(f"interrupted by {signal.Signals(signum).name}: stopped run {names} and every process it "
             f"started; {kept}", flush=True)
        return 128 + signum
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
    echo(f"profile {profile.name}: {len(plan)} runs in {time.time() - t_all:.1f} s", flush=True)
    return 0
