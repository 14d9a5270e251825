"""The stage runner end to end on the smoke profile: papermill, cache, failures, parameters."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import papermill
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def zephyr(tmp_path, *args, timeout=600):
    env = {**os.environ, "ZEPHYR_RUNS_DIR": str(tmp_path / "runs"), "ZEPHYR_BOOK_STAGES": str(tmp_path / "book")}
    return subprocess.run([sys.executable, "-m", "zephyr_lib", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_run_executes_caches_and_hides_parameters(tmp_path):
    p = zephyr(tmp_path, "run", "--profile", "smoke", "--stages", "curate")
    assert p.returncode == 0, p.stderr + p.stdout
    assert "curate (curate @" in p.stdout and "done in" in p.stdout
    nb = nbformat.read(tmp_path / "runs" / "smoke" / "executed" / "curate.ipynb", as_version=4)
    assert nb.metadata["zephyr"]["run"] == "curate"
    tagged = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert tagged and "remove-input" in tagged[0].metadata["tags"]
    assert not any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    again = zephyr(tmp_path, "run", "--profile", "smoke", "--stages", "curate")
    assert again.returncode == 0 and "curate @" in again.stdout and ": cached" in again.stdout


def test_profiles_keep_their_own_pages_and_a_missing_page_is_rendered_not_rebuilt(tmp_path):
    """Building one profile never makes another's pages stale (they lived in one shared folder:
    an unchanged rerun re-executed the 7 stage-named pages), and a complete run whose page is
    missing only re-renders it, reported apart from a build."""
    assert zephyr(tmp_path, "run", "--profile", "smoke", "--stages", "curate").returncode == 0
    other = zephyr(tmp_path, "run", "--profile", "toy", "--stages", "curate", "--set", "curate.n_dialogues=300")
    assert other.returncode == 0 and "done in" in other.stdout, other.stderr
    again = zephyr(tmp_path, "run", "--profile", "smoke", "--stages", "curate")
    assert again.returncode == 0 and ": done in" not in again.stdout
    (tmp_path / "runs" / "smoke" / "executed" / "curate.ipynb").unlink()
    p = zephyr(tmp_path, "run", "--profile", "smoke", "--stages", "curate")
    assert p.returncode == 0 and "page rendered in" in p.stdout and "(run cached)" in p.stdout, p.stdout
    from zephyr_lib.bench import parse_runner_output
    parsed = parse_runner_output(p.stdout)
    assert list(parsed["rendered"]) == ["curate"] and parsed["executed"] == {}
    assert (tmp_path / "runs" / "smoke" / "executed" / "curate.ipynb").is_file()
    assert not (tmp_path / "book" / "01_curate.ipynb").exists()  # `zephyr book` publishes pages, not `run`


def test_same_config_and_seed_give_byte_identical_datasets(tmp_path):
    for sub in ("a", "b"):
        assert zephyr(tmp_path / sub, "run", "--profile", "smoke", "--stages", "curate").returncode == 0
    runs = [next((tmp_path / s / "runs" / "smoke" / "curate").glob("[0-9a-f]*")) for s in ("a", "b")]
    assert runs[0].name == runs[1].name
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*") if p.is_file()
                   and p.suffix in (".arrow", ".jsonl") or p.name == "dataset_dict.json")
    assert any(str(f).endswith(".arrow") for f in files)
    for f in files:
        assert (runs[0] / f).read_bytes() == (runs[1] / f).read_bytes(), f


def test_a_failing_stage_names_run_cell_and_log_and_never_reaches_the_book(tmp_path):
    p = zephyr(tmp_path, "run", "--profile", "smoke", "--stages", "curate",
               "--set", "curate.source=/nonexistent/raw_ultrachat.jsonl")
    assert p.returncode == 1
    assert "run 'curate'" in p.stderr and "code cell" in p.stderr and "curate.log" in p.stderr
    assert not (tmp_path / "runs" / "smoke" / "executed" / "curate.ipynb").exists()
    assert not list((tmp_path / "runs" / "smoke" / "curate").glob("[0-9a-f]*"))


def test_bad_overrides_fail_before_any_work(tmp_path):
    p = zephyr(tmp_path, "run", "--profile", "smoke", "--set", "curate.no_such_key=1")
    assert p.returncode == 2 and "no_such_key" in p.stderr
    assert not (tmp_path / "runs").exists()


def test_notebook_parameters_are_validated_like_set(tmp_path, monkeypatch):
    """A notebook takes profile/run/overrides/force; its overrides go through the config loader, so
    an unknown key or a bad value fails in the first cell that does work, naming it."""
    monkeypatch.setenv("ZEPHYR_RUNS_DIR", str(tmp_path / "runs"))
    nb = REPO / "notebooks" / "01_curate.ipynb"
    for params, needle in (({"profile": "smoke", "overrides": {"bogus": 1}}, "bogus"),
                           ({"profile": "smoke", "overrides": {"test_fraction": 2}}, "test_fraction must be in"),
                           ({"profile": "smoke", "overrides": {"openai_api_key": "x"}}, "looks like a secret")):
        with pytest.raises(papermill.PapermillExecutionError) as e:
            papermill.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters=params, cwd=str(REPO),
                                       kernel_name="python3", progress_bar=False)
        assert needle in str(e.value)
    papermill.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), cwd=str(REPO), kernel_name="python3",
                               parameters={"profile": "smoke", "overrides": {"n_dialogues": 60}}, progress_bar=False)
    manifests = list((tmp_path / "runs" / "smoke" / "curate").glob("*/manifest.json"))
    assert [json.loads(m.read_text())["config"]["n_dialogues"] for m in manifests] == [60]


def test_overrides_of_upstream_runs_reach_downstream_notebooks(tmp_path, monkeypatch):
    """One shape from the command line to the notebook: `--set` strings become {run: {key: value}}
    once, the runner hands that dict unchanged to the notebook as its `overrides` parameter, and the
    sft notebook resolves from it the same sft run and the same (overridden) curate run."""
    import yaml

    from zephyr_lib import runner
    from zephyr_lib.plan import load_profile, open_run

    want = load_profile("smoke", ["curate.n_dialogues=60", "sft.learning_rate=0.002"])
    assert want.overrides == {"curate": {"n_dialogues": 60}, "sft": {"learning_rate": 0.002}}
    monkeypatch.setattr(runner, "RUNS_DIR", tmp_path / "runs")
    sent, real_popen = [], runner.subprocess.Popen

    class Started(Exception):
        pass

    def popen(cmd, **kw):  # papermill's command line: the parameters go in as YAML after -y
        if "papermill" not in cmd:  # the stage's watchdog
            return real_popen(cmd, **kw)
        sent.append(yaml.safe_load(cmd[cmd.index("-y") + 1]))
        raise Started

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    with pytest.raises(Started):
        runner.execute_run(want, "sft", want.overrides, False, 60, tmp_path / "logs")
    assert sent[0]["overrides"] == want.overrides and sent[0]["run"] == "sft"
    ctx = open_run("sft", "smoke", "sft", sent[0]["overrides"])
    assert ctx.hash == want.run_hash("sft") != load_profile("smoke").run_hash("sft")
    assert ctx.profile.runs["curate"].config.n_dialogues == 60
    typed = open_run("sft", "smoke", "sft", {"learning_rate": 0.002, "curate": {"n_dialogues": 60}})
    assert typed.hash == ctx.hash  # what one types in the notebook for its own run: the same run


# ---------------------------------------------------------------------------- the runner owns its children

TINY = """\
description: robustness tests (tiny)
seed: 0
world: {n_entities: 8, n_unknown: 2}
stages:
  base: {vocab_size: 320, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,
         num_key_value_heads: 1, n_docs: 300, seq_len: 32, num_train_epochs: 1, batch_size: 32}
  curate: {n_dialogues: 60}
  sft: {num_train_epochs: 2, per_device_train_batch_size: 4, max_length: 64, eval_steps: 1000,
        save_steps: 2, logging_steps: 5, learning_rate: 1.0e-3}
runs:
  base: {}
  curate: {}
  sft: {}
"""


def _marked(mark: str) -> list[int]:
    """Live processes whose environment carries ZEPHYR_TEST_MARK=<mark> (the runner and all it started)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if f"ZEPHYR_TEST_MARK={mark}".encode() in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _start(tmp_path, mark, *args):
    env = {**os.environ, "ZEPHYR_RUNS_DIR": str(tmp_path / "runs"), "ZEPHYR_BOOK_STAGES": str(tmp_path / "book"),
           "ZEPHYR_TEST_MARK": mark}
    return subprocess.Popen([sys.executable, "-m", "zephyr_lib", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_killing_or_interrupting_the_runner_stops_every_process_of_the_stage_and_a_rerun_resumes(tmp_path):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY)
    runs = tmp_path / "runs" / "tiny"
    mark = f"kill-{os.getpid()}-{time.time_ns()}"
    # 1. SIGKILL to the runner's whole process group while base trains: papermill and its kernel run in
    #    their own session, so only the runner's watchdog can stop them.
    p = _start(tmp_path, mark + "a", "run", "--profile", str(profile), "--stages", "sft")
    try:
        _wait(lambda: list((runs / "base").glob(".partial-*")), 240, "base to start building")
        assert len(_marked(mark + "a")) >= 3  # runner, watchdog, papermill, kernel
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        _wait(lambda: not _marked(mark + "a"), 30, "every process of the stage to stop")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    # 2. the rerun takes the dead owner's lock over; SIGINT (Ctrl-C) once sft has a checkpoint
    p = _start(tmp_path, mark + "b", "run", "--profile", str(profile), "--stages", "sft")
    try:
        _wait(lambda: list(runs.glob("sft/.partial-*/checkpoints/checkpoint-*/trainer_state.json")), 480,
              "sft to write a checkpoint")
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, out
    assert "interrupted by SIGINT: stopped run 'sft'" in out and "the rerun resumes from it" in out, out
    assert "(base @" in out and "cleaned up" in out and ".lock-" in out, out  # the dead owner's lock went
    _wait(lambda: not _marked(mark + "b"), 30, "every process of the stage to stop")
    assert list(runs.glob("sft/.partial-*/checkpoints/checkpoint-*")), "the checkpoints were kept"
    locks = {str(f): f.read_text() for f in runs.glob("sft/.lock-*")}
    assert not locks, f"the run's lock was not released: {locks}\n{out}"
    # 3. the rerun resumes from the kept checkpoint and completes
    done = zephyr(tmp_path, "run", "--profile", str(profile), "--stages", "sft", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from" in (runs / "logs" / "sft.log").read_text()
    assert len(list(runs.glob("sft/[0-9a-f]*/manifest.json"))) == 1 and not list(runs.glob("*/.partial-*"))


def test_stop_marked_reaches_every_process_in_any_session(tmp_path):
    from zephyr_lib.runner import STAGE_TOKEN_ENV, marked_processes, stop_marked

    token = f"t{time.time_ns()}"
    env = {**os.environ, STAGE_TOKEN_ENV: token}
    # a parent that ignores SIGTERM, and a grandchild in its own session (like `accelerate launch`)
    script = "import os,signal,subprocess,sys,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True); " \
             "time.sleep(300)"
    p = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        _wait(lambda: len(marked_processes(token)) == 2, 20, "both processes to start")
        assert stop_marked(token, grace_s=0.5) == 2
        assert marked_processes(token) == []
    finally:
        p.kill()
        p.wait()


def test_the_watchdog_stops_the_stage_when_the_runner_dies(tmp_path):
    from zephyr_lib.runner import STAGE_TOKEN_ENV, marked_processes

    token = f"w{time.time_ns()}"
    runner = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from zephyr_lib.runner import start_watchdog
        start_watchdog({token!r}, grace_s=0.5)
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True,
                         env={{**os.environ, {STAGE_TOKEN_ENV!r}: {token!r}}})
        print("ready", flush=True)
        time.sleep(300)
    """)
    p = subprocess.Popen([sys.executable, "-c", runner], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    _wait(lambda: marked_processes(token), 20, "the stage process")
    p.kill()  # SIGKILL: the runner cannot clean up after itself
    p.wait()
    _wait(lambda: not marked_processes(token), 20, "the watchdog to stop the orphaned stage")


# ---------------------------------------------------------------------------- OS errors at the store boundary

def _unshare_or_skip(mnt):
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=64k tmpfs "{mnt}"'],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("needs unshare and mount (root) to make a read-only or full file system")


def test_a_read_only_store_is_one_line_naming_the_path(tmp_path):
    mnt = tmp_path / "store"
    mnt.mkdir()
    _unshare_or_skip(mnt)
    script = (f'mount -t tmpfs -o ro tmpfs "{mnt}" && ZEPHYR_RUNS_DIR="{mnt}/runs" ZEPHYR_BOOK_STAGES="{tmp_path}/book" '
              f'"{sys.executable}" -m zephyr_lib run --profile smoke --stages curate')
    p = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == (f"error: cannot write {mnt}/runs: Read-only file system (a read-only file system: "
                                "point ZEPHYR_RUNS_DIR at a writable folder)")


def test_a_full_disk_is_one_line_naming_the_path_and_the_rerun_cleans_up(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    _unshare_or_skip(mnt)
    run = (f'TMPDIR="{mnt}/tmp" ZEPHYR_RUNS_DIR="{mnt}/runs" ZEPHYR_BOOK_STAGES="{mnt}/book" '
           f'"{sys.executable}" -m zephyr_lib run --profile smoke --stages curate')
    script = (f'mount -t tmpfs -o size=256k tmpfs "{mnt}" && mkdir "{mnt}/tmp" && {run}; echo "rc=$?"; '
              f'find "{mnt}" -name "*.ipynb" -size 0 | sed "s/^/EMPTY /"; echo "--- more space"; '
              f'mount -o remount,size=64m "{mnt}" && {run}; echo "rc=$?"')
    p = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    first, second = p.stdout.split("--- more space")
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert "rc=1" in first and len(errors) == 1, p.stdout + p.stderr
    assert f"cannot write {mnt}" in errors[0] and "No space left on device" in errors[0], errors
    assert "Traceback" not in p.stderr and "EMPTY" not in first  # no raw traceback, no 0-byte notebook
    assert "rc=0" in second and "cleaned up" in second and ".partial-" in second, p.stdout + p.stderr
