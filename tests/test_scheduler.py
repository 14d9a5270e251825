"""The runner's parallel schedule (``zephyr run --jobs N``), on a fake plan: which runs go together,
with how many threads, in what order, and what a failure stops. No stage executes here."""
from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import pytest

from zephyr_lib import runner


def _plan():
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["a"], "e": ["b", "c", "d"]}
    return [SimpleNamespace(name=n, stage="x", upstream=u, spec=SimpleNamespace(alone=False)) for n, u in deps.items()]


class _Fake:
    """Stands in for execute_run: records when each run starts and ends, and its thread share."""

    def __init__(self, fail: str = ""):
        self.lock = threading.Lock()
        self.events: list[tuple[str, str, float]] = []
        self.threads: dict[str, int | None] = {}
        self.now = 0
        self.peak = 0
        self.fail = fail

    def __call__(self, profile, name, overrides, force, timeout_s, log_dir, threads=None, running=None):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.threads[name] = threads
            self.events.append((name, "start", time.monotonic()))
        time.sleep(0.6 if name == "c" else 0.3)  # c outlasts b: d starts beside c
        with self.lock:
            self.now -= 1
            self.events.append((name, "end", time.monotonic()))
        if name == self.fail:
            raise runner.StageFailed(f"run {name!r} failed")
        return "done"

    def t(self, name, what):
        return next(t for n, w, t in self.events if n == name and w == what)


def _run(fake, monkeypatch, jobs=2):
    monkeypatch.setattr(runner, "execute_run", fake)
    lines: list[str] = []
    profile = SimpleNamespace(run_hash=lambda n: "0" * 12)
    runner._run_parallel(profile, _plan(), {}, set(), 60.0, None, jobs,
                         lambda msg, flush=True: lines.append(msg), [])
    return lines


def test_ready_runs_go_two_at_a_time_with_a_thread_share_and_a_lone_run_gets_every_core(monkeypatch):
    fake = _Fake()
    lines = _run(fake, monkeypatch)
    share = max(1, (os.cpu_count() or 1) // 2)
    assert fake.threads == {"a": None, "b": share, "c": share, "d": share, "e": None}  # None: every core
    assert fake.peak == 2
    assert fake.t("b", "start") >= fake.t("a", "end") and fake.t("c", "start") >= fake.t("a", "end")
    assert fake.t("e", "start") >= max(fake.t(x, "end") for x in "bcd")
    # b and c ran side by side; d took b's slot while c still ran
    assert fake.t("c", "start") < fake.t("b", "end") <= fake.t("d", "start") < fake.t("c", "end")
    assert sum("done in" in x for x in lines) == 5 and lines[0].startswith("[1/5] a (x @ 000000000000): started")


def test_a_failure_starts_nothing_new_lets_the_running_finish_and_is_raised(monkeypatch):
    fake = _Fake(fail="b")
    with pytest.raises(runner.StageFailed, match="run 'b' failed"):
        _run(fake, monkeypatch)
    started = {n for n, w, _ in fake.events if w == "start"}
    assert started == {"a", "b", "c"}  # c was already running beside b; d and e never started
    assert {n for n, w, _ in fake.events if w == "end"} == started


def test_one_job_is_refused_below_one(monkeypatch):
    with pytest.raises(runner.ConfigError, match="--jobs must be at least 1"):
        runner.run_pipeline("smoke", jobs=0)


def test_a_stage_marked_alone_waits_for_a_free_machine_and_runs_by_itself(monkeypatch):
    """base and eval are marked ``alone``: base goes first with every core although curate is ready
    too, and nothing starts beside it."""
    deps = {"base": [], "curate": [], "sft": ["base", "curate"], "eval": ["sft"]}
    from zephyr_lib.stages import STAGES

    plan = [SimpleNamespace(name=n, stage=n, upstream=u, spec=STAGES[n]) for n, u in deps.items()]
    fake = _Fake()
    monkeypatch.setattr(runner, "execute_run", fake)
    runner._run_parallel(SimpleNamespace(run_hash=lambda n: "0" * 12), plan, {}, set(), 60.0, None, 2,
                         lambda msg, flush=True: None, [])
    assert fake.threads["base"] is None and fake.t("curate", "start") >= fake.t("base", "end")
    assert fake.threads["eval"] is None and fake.peak == 1
