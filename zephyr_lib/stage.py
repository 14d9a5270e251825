"""The :class:`Stage` record: what the rest of the library needs to know about a stage.

Each stage module (``zephyr_lib/stages/<name>.py``) defines one ``STAGE = Stage(...)``;
``zephyr_lib.stages.STAGES`` lists them. The record sits on the ground floor (it imports nothing of
the package) so that a resolved run can carry its stage's record (``config.Run.spec``) to the store,
the runner and the launcher without any of them importing the registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    """What the rest of the library needs to know about a stage."""

    name: str  # the stage vocabulary: config keys, modules, notebooks, run folders, glue keys
    config: type  # its config dataclass
    notebook: str  # notebooks/<notebook>.ipynb renders its runs
    artifact: str  # what a bare reference to one of its runs means (e.g. 'model', 'beta', 'metrics.json')
    build: Callable[[Any, Path], dict]  # build(ctx: store.RunContext, out): writes the run into the partial folder, returns metrics
    resumable: bool = False  # keep an interrupted attempt's partial folder (checkpoints) and resume
    trainer: str = ""  # its TRL wrapper module (e.g. 'zephyr_lib.sft', with train(cfg, init, data, out)); trains through zephyr_lib.launch
    alone: bool = False  # with `zephyr run --jobs N`: runs with every core, never beside another run
    trains: bool = False  # its runs train a model: the manifest records the machine's matmul rates at their start and end (the bench's compute floor)
