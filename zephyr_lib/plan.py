"""The plan: profiles loaded against the stage registry, and the runs the notebooks open.

This is the floor above ``stages/``: :func:`load_profile` reads ``configs/<profile>.yaml`` with
:func:`config.parse_profile` against :data:`stages.STAGES`, so every resolved run carries its
stage's record (``Run.spec``); :func:`open_run` resolves the run a stage notebook renders (its
``overrides`` parameter read by :func:`page_overrides`);
:func:`describe` documents a stage's keys. Nothing below this module imports the registry.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterable, Mapping

from .config import ConfigError, EndpointConfig, Overrides, Profile, WorldConfig, allowed, parse_profile
from .stages import STAGES
from .store import RunContext, context


def stage_configs() -> dict[str, type]:
    """Stage name -> its config dataclass, from the one registry (zephyr_lib.stages.STAGES)."""
    return {name: s.config for name, s in STAGES.items()}


def load_profile(profile: str, overrides: Iterable[str] | Mapping[str, Mapping[str, Any]] | None = None) -> Profile:
    """Load configs/<profile>.yaml strictly and apply overrides (:data:`config.Overrides`,
    ``{run: {key: value}}``, or ``run.key=value`` strings). Raises ConfigError naming the file,
    run/stage and key."""
    return parse_profile(profile, STAGES, overrides)


def page_overrides(run: str, overrides: Mapping[str, Any] | None) -> Overrides:
    """A notebook's ``overrides`` parameter in the one shape, {run: {key: value}}.

    Accepted: the runner's shape, ``{"curate": {"n_dialogues": 60}, "sft": {"learning_rate": 2e-3}}``
    (every overridden run of the plan, so a notebook resolves the same upstream hashes as the runner
    that launched it), and what one types for the page's own run, ``{"learning_rate": 2e-3}``; the
    two mix. An entry whose value is a mapping is that run's overrides (no config value is a
    mapping); any other entry is a key of `run`. Whether runs and keys exist is checked when the
    profile is loaded; a dotted key ("curate.n_dialogues") is refused here with the nested form.
    """
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"run {run!r}: overrides must be a dict, {{key: value}} for this run or "
                          f"{{run: {{key: value}}}}, got {overrides!r}")
    out: Overrides = {}
    own: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping):
            out[str(key)] = dict(value)
        elif "." in str(key):
            other, field_name = str(key).split(".", 1)
            raise ConfigError(f"run {run!r}: override key {key!r}: give another run's overrides as "
                              f"{{{other!r}: {{{field_name!r}: {value!r}}}}}")
        else:
            own[str(key)] = value
    if own:
        mine = out.setdefault(run, {})
        twice = sorted(k for k in own if k in mine and mine[k] != own[k])
        if twice:
            raise ConfigError(f"run {run!r}: override key(s) {', '.join(map(repr, twice))} given twice with "
                              "different values (flat and under the run's name)")
        mine.update(own)
    return out


def open_run(stage: str, profile: str = "toy", run: str | None = None, overrides: Mapping[str, Any] | None = None,
             force: bool = False) -> RunContext:
    """The run a stage notebook renders (see ``page.open_stage``, which also builds it if needed).

    `overrides`: ``{run: {key: value}}`` for any runs of the plan (the shape the runner passes),
    and/or ``{key: value}`` for this run, e.g. ``{"learning_rate": 1e-3}`` (see
    :func:`page_overrides`). They are validated like ``--set``: an unknown run, an unknown key or
    a bad value is a ConfigError naming it.
    """
    run = run or stage
    prof = load_profile(profile, page_overrides(run, overrides))
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
