"""The stages of the pipeline, one module each, and the one registry that lists them.

Each stage module holds its config dataclass (one documented, validated field per setting), its
``build(ctx, out)`` (reads the config and upstream runs from ``ctx``, writes its artifacts and
``metrics.json`` into ``out``, returns the metrics) and a :class:`Stage` record. :data:`STAGES` is
the only list of stages: the profile loader (:mod:`zephyr_lib.plan`) reads it and puts each run's
record on the run (``Run.spec``), so the store, the runner and the launcher below or beside it never
import the registry.

Adding a stage (say ORPO beside DPO) takes: ``zephyr_lib/stages/orpo.py`` (config + build +
``STAGE``, whose ``trainer`` names its TRL wrapper), the wrapper (``zephyr_lib/orpo.py``), its
notebook (``notebooks/NN_orpo.ipynb``), its name in :data:`MODULES` below and one line in
``_toc.yml``; then its runs in a profile (README, "Adding a trainer-backed stage").
"""
from __future__ import annotations

from importlib import import_module

from ..stage import Stage

#: The stage modules, in pipeline order (each defines ``STAGE``): a new stage is one name here.
MODULES = ("base", "curate", "sft", "aif", "dpo", "eval", "results")

STAGES: dict[str, Stage] = {s.name: s for s in (import_module(f"{__name__}.{m}").STAGE for m in MODULES)}
