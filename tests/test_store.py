"""The run store: atomic run folders, manifests, cache, --force, locks, a kill midway."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from zephyr_lib.config import load_profile
from zephyr_lib.store import context


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
        from zephyr_lib.config import load_profile
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
