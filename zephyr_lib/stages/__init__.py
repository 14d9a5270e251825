"""The stages of the pipeline, one module each, and the one registry that lists them.

Each stage module holds its config dataclass (one documented, validated field per setting), its
``build(ctx, out)`` (reads the config and upstream runs from ``ctx``, writes its artifacts and
``metrics.json`` into ``out``, returns the metrics) and a :class:`Stage` record. :data:`STAGES` is
the only list of stages: the config loader, the runner, the store, the launcher and the book all
read it.

Adding a stage (say ORPO beside DPO) takes: ``zephyr_lib/stages/orpo.py`` (config + build +
``STAGE``), its trainer wrapper (``zephyr_lib/orpo.py``), its notebook (``notebooks/NN_orpo.ipynb``),
one line in :data:`STAGES` below, one line in ``_toc.yml`` and the runs in a profile.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from ..store import RunContext


@dataclass(frozen=True)
class Stage:
    """What the rest of the library needs to know about a stage."""

    name: str  # the stage vocabulary: config keys, modules, notebooks, run folders, glue keys
    config: type  # its config dataclass
    notebook: str  # notebooks/<notebook>.ipynb renders its runs
    artifact: str  # what a bare reference to one of its runs means (e.g. 'model', 'beta', 'metrics.json')
    build: "Callable[[RunContext, Path], dict]"  # writes the run into the partial folder, returns metrics
    resumable: bool = False  # keep an interrupted attempt's partial folder (checkpoints) and resume
    trainer: bool = False  # trains through zephyr_lib.launch (in-process, or accelerate for several processes)
    alone: bool = False  # with `zephyr run --jobs N`: runs with every core, never beside another run


from . import aif, base, curate, dpo, eval, results, sft  # noqa: E402  (each defines STAGE)

STAGES: dict[str, Stage] = {s.name: s for s in (
    base.STAGE, curate.STAGE, sft.STAGE, aif.STAGE, dpo.STAGE, eval.STAGE, results.STAGE)}
