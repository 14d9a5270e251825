"""The plan: profiles loaded against the stage registry, and the runs the notebooks open.

This is the floor above ``stages/``: :func:`load_profile` reads ``configs/<profile>.yaml`` with
:func:`config.parse_profile` against :data:`stages.STAGES`, so every resolved run carries its
stage's record (``Run.spec``); :func:`open_run` resolves the run a stage notebook renders;
:func:`describe` documents a stage's keys. Nothing below this module imports the registry.
"""
from __future__ import annotations

import dataclasses
import typing

from .config import ConfigError, EndpointConfig, Profile, WorldConfig, allowed, parse_profile
from .stages import STAGES
from .store import RunContext, context


def stage_configs() -> dict[str, type]:
    """Stage name -> its config dataclass, from the one registry (zephyr_lib.stages.STAGES)."""
    return {name: s.config for name, s in STAGES.items()}


def load_profile(profile: str, overrides: list[str] | dict | None = None) -> Profile:
    """Load configs/<profile>.yaml strictly and apply overrides (``run.key=value`` strings, or
    a {run: {key: value}} dict). Raises ConfigError naming the file, run/stage and key."""
    return parse_profile(profile, STAGES, overrides)


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



def describe(stage: str) -> str:
    """Markdown table of a stage's fields (or 'world', 'endpoint'): name, type, default, allowed values, meaning."""
    cls = {"world": WorldConfig, "endpoint": EndpointConfig}.get(stage) or stage_configs()[stage]
    rows = [f"{cls.__doc__.strip().splitlines()[0]}", "", "| key | type | default | allowed | meaning |",
            "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp = typing.get_type_hints(cls)[f.name]
        rows.append(f"| `{f.name}` | {getattr(tp, '__name__', str(tp))} | `{default!r}` | {allowed(f)} | {f.metadata['help']} |")
    return "\n".join(rows)
