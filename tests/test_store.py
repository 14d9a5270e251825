"""The run store: atomic run folders, manifests, cache, --force, locks, a kill midway."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zephyr_lib.plan import load_profile
from zephyr_lib.store import context

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def prof():
    return load_profile("smoke")


def test_build_renames_into_place_with_a_full_manifest(tmp_path, prof):
    ctx = context(prof, "curate", tmp_path)
    assert not ctx.complete
    with ctx.build() as out:
        assert out.name.startswith(".partial-")
        (out / "metrics.json").write_text('{"x": 1}')
        assert not ctx.complete  # nothing looks complete until the block ends
    assert ctx.complete and not ctx.partial_dir.exists()
    man = ctx.manifest()
    for key in ("config", "config_hash", "upstream", "git", "packages", "seed", "start", "end", "wall_time_s"):
        assert key in man
    assert man["config_hash"] == ctx.hash and man["config"]["n_dialogues"] == 240
    assert man["packages"]["torch"].startswith("2.")
    sft = context(prof, "sft", tmp_path)
    with sft.build() as out:
        pass
    assert set(sft.manifest()["upstream"]) == {"base", "curate"}


def test_a_failed_build_leaves_nothing_complete_and_the_rerun_succeeds(tmp_path, prof):
    ctx = context(prof, "curate", tmp_path)
    with pytest.raises(RuntimeError):
        with ctx.build() as out:
            (out / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert not ctx.complete and not ctx.dir.exists()
    with ctx.build() as out:
        assert not (out / "half.txt").exists()  # a non-resumable stage starts clean
    assert ctx.complete


def test_a_resumable_build_keeps_its_checkpoints(tmp_path, prof):
    ctx = context(prof, "sft", tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with ctx.build(resumable=True) as out:
            (out / "checkpoints").mkdir()
            raise KeyboardInterrupt
    with ctx.build(resumable=True) as out:
        assert (out / "checkpoints").is_dir()


def test_killed_midway_leaves_no_complete_looking_run(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from zephyr_lib.plan import load_profile
        from zephyr_lib.store import context
        ctx = context(load_profile("smoke"), "curate", r"{tmp_path}")
        with ctx.build() as out:
            (out / "metrics.json").write_text("{{}}")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    ctx = context(load_profile("smoke"), "curate", tmp_path)
    assert ctx.partial_dir.exists() and not ctx.complete
    with ctx.build() as out:
        (out / "metrics.json").write_text('{"ok": true}')
    assert ctx.complete and ctx.metrics() == {"ok": True}


def test_force_replaces_a_complete_run_only_when_the_new_one_is_done(tmp_path, prof):
    ctx = context(prof, "curate", tmp_path)
    with ctx.build() as out:
        (out / "v").write_text("1")
    forced = context(prof, "curate", tmp_path, force=True)
    assert not forced.complete
    with pytest.raises(RuntimeError):
        with forced.build() as out:
            raise RuntimeError
    assert (ctx.dir / "v").read_text() == "1"  # the old run survives a failed rebuild
    with forced.build() as out:
        (out / "v").write_text("2")
    assert (ctx.dir / "v").read_text() == "2"


def test_two_builders_of_one_run_are_refused(tmp_path, prof):
    ctx = context(prof, "curate", tmp_path)
    with ctx.build():
        with pytest.raises(RuntimeError, match="being built by another process"):
            with context(prof, "curate", tmp_path).build():
                pass


def test_upstream_must_be_complete(tmp_path, prof):
    with pytest.raises(FileNotFoundError, match="python -m zephyr_lib run --profile smoke --stages base"):
        context(prof, "sft", tmp_path).resolve("base")


# ---------------------------------------------------------------------------- integrity

def test_the_manifest_lists_every_file_and_a_damaged_run_names_the_file_and_the_fix(tmp_path, prof):
    from zephyr_lib.store import CorruptRunError, verify_runs

    ctx = context(prof, "curate", tmp_path)
    with ctx.build() as out:
        (out / "beta").mkdir()
        (out / "beta" / "data.arrow").write_bytes(b"x" * 100)
        (out / "metrics.json").write_text('{"n": 1}')
    files = ctx.manifest()["files"]
    assert set(files) == {"beta/data.arrow", "metrics.json"}
    arrow = ctx.dir / "beta" / "data.arrow"
    assert files["beta/data.arrow"] == {"size": 100, "sha256": hashlib.sha256(b"x" * 100).hexdigest(),
                                        "mtime_ns": arrow.stat().st_mtime_ns}
    assert ctx.complete and ctx.verify(hashes=True) == []

    # same size, other bytes: its mtime changed, so reading the run re-hashes it and refuses it
    arrow.write_bytes(b"y" * 100)
    with pytest.raises(CorruptRunError, match="beta/data.arrow: its sha256 differs from the manifest"):
        ctx.complete
    # ... even when the manifest predates mtime records (files changed after the manifest are re-hashed)
    manifest = json.loads((ctx.dir / "manifest.json").read_text())
    for rec in manifest["files"].values():
        del rec["mtime_ns"]
    (ctx.dir / "manifest.json").write_text(json.dumps(manifest))
    os.utime(ctx.dir / "manifest.json", ns=(arrow.stat().st_mtime_ns - 10**9,) * 2)
    with pytest.raises(CorruptRunError, match="beta/data.arrow: its sha256 differs"):
        ctx.complete
    # with its mtime put back, only the full hash check (the verify command) sees it
    os.utime(ctx.dir / "manifest.json", ns=(arrow.stat().st_mtime_ns + 10**9,) * 2)
    assert ctx.complete
    (row,) = verify_runs(prof, ["curate"], root=tmp_path)
    assert row["state"] == "damaged" and "beta/data.arrow: its sha256 differs" in row["message"]
    assert "--stages curate --force" in row["message"]
    # a truncated file: every reader refuses it, naming the file and the fix
    (ctx.dir / "beta" / "data.arrow").write_bytes(b"x" * 10)
    with pytest.raises(CorruptRunError) as e:
        ctx.complete
    assert "beta/data.arrow: 10 bytes, the manifest says 100" in str(e.value)
    assert f"python -m zephyr_lib run --profile smoke --stages curate --force" in str(e.value)
    with pytest.raises(CorruptRunError, match="beta/data.arrow"):
        context(prof, "sft", tmp_path).upstream("curate")
    (ctx.dir / "metrics.json").unlink()
    with pytest.raises(CorruptRunError, match="metrics.json: missing"):
        context(prof, "sft", tmp_path).resolve("curate/beta")
    # --force rebuilds it
    forced = context(prof, "curate", tmp_path, force=True)
    assert not forced.complete
    with forced.build() as out:
        (out / "metrics.json").write_text("{}")
    assert context(prof, "curate", tmp_path).complete


def test_verify_command_checks_hashes_and_exits_1_on_damage(tmp_path, prof):
    env = {**os.environ, "ZEPHYR_RUNS_DIR": str(tmp_path)}
    ctx = context(prof, "curate", tmp_path)
    with ctx.build() as out:
        (out / "metrics.json").write_text('{"n": 1}')
    cmd = [sys.executable, "-m", "zephyr_lib", "verify", "--profile", "smoke"]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "curate" in ok.stdout and " ok" in ok.stdout and "base" in ok.stdout
    (ctx.dir / "metrics.json").write_text('{"n": 2}')  # same size
    bad = subprocess.run(cmd + ["--run", "curate"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "damaged" in bad.stdout
    assert "metrics.json: its sha256 differs" in bad.stderr and "--stages curate --force" in bad.stderr
    status = subprocess.run([sys.executable, "-m", "zephyr_lib", "status", "--profile", "smoke"], env=env,
                            capture_output=True, text=True)
    # the file's mtime changed since the manifest: status (like run) re-hashes it and sees the damage
    assert status.returncode == 0 and any(line.split()[:1] == ["curate"] and line.endswith("damaged")
                                          for line in status.stdout.splitlines())


# ---------------------------------------------------------------------------- locks

def test_the_lock_records_its_owner_and_a_live_owner_is_named(tmp_path, prof):
    from zephyr_lib.store import lock_owner

    ctx = context(prof, "curate", tmp_path)
    with ctx.build():
        owner = lock_owner(ctx.lock_path)
        assert owner["pid"] == os.getpid() and owner["run"] == "curate"
        with pytest.raises(RuntimeError, match=rf"being built by another process \(pid {os.getpid()} "):
            with context(prof, "curate", tmp_path).build():
                pass
    assert not ctx.lock_path.exists()  # released and removed


def test_a_lock_whose_owner_died_is_taken_over_with_a_message(tmp_path, prof, capsys):
    """The owner died, but a process it started (a forked worker) inherited the lock and lives on."""
    ctx = context(prof, "curate", tmp_path)
    ctx.lock_path.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ctx.lock_path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "run": "curate"}))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys, time
        f = open({str(ctx.lock_path)!r})
        fcntl.flock(f, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with ctx.build() as out:
            (out / "metrics.json").write_text("{}")
        assert ctx.complete
        assert f"its owner, process {int(dead.stdout)}, is no longer running" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_a_leftover_lock_file_of_a_killed_build_is_taken_over(tmp_path, prof, capsys):
    ctx = context(prof, "curate", tmp_path)
    ctx.lock_path.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ctx.lock_path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "run": "curate"}))
    with ctx.build():
        pass
    assert "ended without finishing; its lock is taken over" in capsys.readouterr().err


# ---------------------------------------------------------------------------- OS errors and debris

def test_store_os_errors_are_one_line_naming_the_path_and_stage_errors_pass_through(tmp_path, prof, monkeypatch):
    import errno

    from zephyr_lib import store
    from zephyr_lib.store import StoreError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(StoreError) as e:
        with context(prof, "curate", blocker / "runs").build():
            pass
    assert str(e.value).startswith(f"cannot write {blocker}") and "\n" not in str(e.value)
    # a full disk while the store writes the manifest: one line, the path, a hint
    ctx = context(prof, "curate", tmp_path)

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with pytest.raises(StoreError, match=r"cannot write .*manifest.json: No space left on device \(the disk is full"):
        with ctx.build() as out:
            monkeypatch.setattr(store, "write_json", full)
    monkeypatch.undo()
    assert not ctx.complete
    # the stage's own OSError is not rewritten into a store error
    with pytest.raises(OSError) as own:
        with ctx.build():
            raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/the/stage/wrote")
    assert not isinstance(own.value, StoreError) and own.value.filename == "/somewhere/the/stage/wrote"


def test_a_read_only_store_is_one_clear_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    script = ("from zephyr_lib.plan import load_profile; from zephyr_lib.store import context; "
              f"ctx = context(load_profile('smoke'), 'curate', {str(ro)!r}); ctx.build().__enter__()")
    cmd = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o ro tmpfs "{ro}" && exec "$0" -c "$1"',
           sys.executable, script]
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o ro tmpfs "{ro}"'], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("needs unshare and mount (root) to make a read-only file system")
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last == f"zephyr_lib.store.StoreError: cannot write {ro}/smoke: Read-only file system (a read-only " \
                   "file system: point ZEPHYR_RUNS_DIR at a writable folder)"


def test_debris_of_failed_attempts_is_cleaned_and_checkpoints_are_kept(tmp_path, prof):
    from zephyr_lib.store import BUILD_INFO, clean_debris

    cur = context(prof, "curate", tmp_path)
    with pytest.raises(RuntimeError):
        with cur.build() as out:
            (out / "half").write_text("x")
            raise RuntimeError("the stage failed")
    sft = context(prof, "sft", tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with sft.build(resumable=True) as out:
            (out / "checkpoints").mkdir()
            raise KeyboardInterrupt
    stage_dir = cur.dir.parent
    (stage_dir / ".lock-0123456789ab").write_text('{"pid": 999999999}')  # nobody holds it
    (stage_dir / ".old-0123456789ab").mkdir()
    with context(prof, "base", tmp_path).build():
        pass
    failed = tmp_path / "smoke" / "failed"
    failed.mkdir()
    (failed / "base.ipynb").write_text("{}")
    os.utime(failed / "base.ipynb", (0, 0))  # older than base's complete run
    (failed / "sft.ipynb").write_text("{}")   # sft never completed: its failure stays
    removed = clean_debris("smoke", tmp_path, log=lambda m: None,
                           completed_runs={"base": context(prof, "base", tmp_path).dir})
    assert set(removed) == {cur.partial_dir, stage_dir / ".lock-0123456789ab", stage_dir / ".old-0123456789ab",
                            failed / "base.ipynb"}
    assert (sft.partial_dir / "checkpoints").is_dir() and (sft.partial_dir / BUILD_INFO).is_file()
    assert (failed / "sft.ipynb").exists()


def test_store_files_are_readable_by_others(tmp_path, prof):
    ctx = context(prof, "curate", tmp_path)
    with ctx.build() as out:
        from zephyr_lib.io import write_json
        write_json(out / "metrics.json", {"a": 1})
    mask = os.umask(0o022)
    os.umask(mask)
    for f in ("metrics.json", "manifest.json"):
        assert stat.S_IMODE((ctx.dir / f).stat().st_mode) == 0o666 & ~mask


def test_stored_files_that_point_into_the_partial_folder_are_named(tmp_path, prof, capsys):
    ctx = context(prof, "eval", tmp_path)
    with ctx.build() as out:
        (out / "tasks").mkdir()
        (out / "tasks" / "arc.yaml").write_text(f"data_files: {out}/tasks/arc.jsonl\n")
        (out / "tasks" / "ok.yaml").write_text("data_files: arc.jsonl\n")
    err = capsys.readouterr().err
    assert "1 stored file(s) name the partial folder" in err and "tasks/arc.yaml" in err and "ok.yaml" not in err


TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def test_a_full_disk_during_an_artifact_write_is_one_line_naming_the_run_folder(tmp_path, prof, monkeypatch):
    """torch.save on a full disk raises a RuntimeError that names neither the errno nor the file
    (its message, as seen writing to /dev/full, below); the store turns it into one line naming
    the run's folder."""
    from zephyr_lib import store
    from zephyr_lib.store import StoreError

    ctx = context(prof, "curate", tmp_path)
    monkeypatch.setattr(store, "free_bytes", lambda path: 0)  # the disk under the store is full
    with pytest.raises(StoreError) as e:
        with ctx.build():
            raise RuntimeError(TORCH_SHORT_WRITE)
    msg = str(e.value)
    assert msg.startswith(f"cannot write {ctx.partial_dir}: No space left on device (the disk is full")
    assert "\n" not in msg and not ctx.complete
    monkeypatch.setattr(store, "free_bytes", lambda path: 10 << 30)  # space left: torch's own error passes through
    with pytest.raises(RuntimeError) as own:
        with ctx.build():
            raise RuntimeError(TORCH_SHORT_WRITE)
    assert not isinstance(own.value, StoreError)
    with pytest.raises(StoreError, match=r"cannot write .*: No space left on device"):  # safetensors' Rust error
        with ctx.build():
            raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                               'message: "No space left on device" })')
