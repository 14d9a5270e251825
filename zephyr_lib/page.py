"""What the stage notebooks use to draw their pages: one :func:`open_stage` call, glue, tables,
figures. A page is a view: it shows what its run stored and computes nothing that another page
would need (cross-run comparisons live in the results stage).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .config import REPO

FIGURES = Path(os.environ.get("ZEPHYR_BOOK_STAGES", REPO / "book" / "stages")) / "figures"


def open_stage(stage: str, profile: str = "toy", run: str | None = None, overrides: dict | None = None,
               force: bool = False):
    """The one call at the top of a stage notebook: resolve the run (parameters validated like
    ``--set``), build it into the store if it is not there yet, print where it is. Returns the
    run's context; ``ctx.metrics()`` holds what the page shows.

    ``overrides``: ``{"learning_rate": 1e-3}`` for this run, ``{"curate": {"n_dialogues": 60}}``
    for any run of the plan (the shape the runner passes), or both in one dict; see
    :func:`zephyr_lib.plan.page_overrides`. An unknown run or key is a ConfigError naming it."""
    import sys

    from .plan import open_run

    caller = sys._getframe(1).f_globals
    if caller.get("__name__") == "__main__":  # a notebook's kernel: the cell after papermill's injected one
        refuse_secret_globals(caller)
    ctx = open_run(stage, profile, run, overrides, force)
    if not ctx.complete:
        from .preflight import require_for_run
        require_for_run(ctx)  # endpoints and hub first: never start work that cannot finish
        with ctx.build(resumable=ctx.run.spec.resumable) as out:
            ctx.run.spec.build(ctx, out)
    return ctx


_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit"}


def refuse_secret_globals(namespace: dict) -> None:
    """Refuse a notebook run whose globals hold a secret-shaped parameter: papermill turns every
    ``-p name value`` into a global (an extra name lands in a cell it injects after the parameters
    cell), and it has already written it into the executed notebook. Names that mean a credential
    and values shaped like a key are refused, naming the parameter, never showing the value."""
    from .config import ConfigError, refuse_secret_names

    data = {k: v for k, v in namespace.items() if not k.startswith("_") and k not in _KERNEL_NAMES
            and isinstance(v, (str, int, float, bool, dict, list, tuple, type(None)))}
    try:
        refuse_secret_names(data, "notebook parameter")
    except ConfigError as e:
        raise ConfigError(f"{e}. Papermill has already written the parameter into the executed notebook: "
                          "delete that file; pass settings with -p overrides '{...}' and keys only through "
                          "environment variables") from None


def show_run(ctx) -> None:
    """One line on the page: which run it shows (the book hides the build cell and its logs)."""
    from IPython.display import Markdown, display
    display(Markdown(f"*This page shows run `{ctx.run.name}` (stage `{ctx.run.stage}`, config `{ctx.hash}`) of the "
                     f"`{ctx.profile.name}` profile, stored in `{relative(ctx.dir)}`.*"))


def relative(path: str | os.PathLike) -> str:
    """A path as the book shows it: relative to the repository when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


_GLUED: set[str] = set()


def glued_keys() -> set[str]:
    """The glue keys this page (kernel) has glued so far."""
    return set(_GLUED)


def glue(key: str, value, display: bool = False) -> None:
    """myst-nb glue (so the book can cite the number); returns nothing, so a cell ending in a
    glue call does not echo the value."""
    _GLUED.add(key)
    try:
        from myst_nb import glue as _glue
    except ImportError:  # pragma: no cover - myst-nb ships with jupyter-book
        return
    _glue(key, value, display=display)


def table(df: pd.DataFrame, key: str | None = None, decimals=None, index: bool = True):
    """Show a DataFrame the way every table of the book is shown (:func:`zephyr_lib.tables.html`:
    integers as integers, fixed decimals per column, spaced and right-aligned numbers, a box that
    scrolls sideways when wide), and glue the frame itself under `key`."""
    from IPython.display import HTML

    from .tables import html
    if key:
        glue(key, df, display=False)
    return HTML(html(df, decimals, index=index))


def save_figure(fig, key: str) -> Path:
    """Show a figure on its page, glue it under `key` and save it as ``book/stages/figures/<key>.png``
    (never into a run folder: runs are finished, hash-named and listed by their manifests)."""
    path = FIGURES / f"{key}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    glue(key, fig, display=True)
    return path


def logged(log: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows of a trainer log that hold `column` (an empty frame if a short run never logged it)."""
    if column not in log:
        empty = log.iloc[0:0].copy()
        empty[column] = []
        return empty
    return log.dropna(subset=[column])
