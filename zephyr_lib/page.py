"""Small helpers the stage notebooks use to draw their pages: glue, tables, figures."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def glue(key: str, value, display: bool = False) -> None:
    """myst-nb glue (so the book can cite the number); returns nothing, so a cell ending in a
    glue call does not echo the value."""
    try:
        from myst_nb import glue as _glue
    except ImportError:  # pragma: no cover - myst-nb ships with jupyter-book
        return
    _glue(key, value, display=display)


def table(df: pd.DataFrame, key: str | None = None, floatfmt: str = "{:.3g}"):
    """Show a DataFrame (and glue it under `key`)."""
    def fmt(v):
        if isinstance(v, float):
            return "–" if v != v else floatfmt.format(v)  # NaN: nothing to show (e.g. no paper number)
        return "–" if v is None else v
    styled = df.style.format(fmt)
    if key:
        glue(key, df, display=False)
    return styled


def save_figure(fig, path: str | os.PathLike, key: str | None = None) -> Path:
    """Save a figure as a PNG file atomically (and glue it, displayed, under `key`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    if key:
        glue(key, fig, display=True)
    return path


def logged(log: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows of a trainer log that hold `column` (an empty frame if a short run never logged it)."""
    if column not in log:
        empty = log.iloc[0:0].copy()
        empty[column] = []
        return empty
    return log.dropna(subset=[column])
