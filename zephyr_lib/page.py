"""Small helpers the stage notebooks use to draw their pages: glue, tables, figures."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def glue(key: str, value, display: bool = False):
    """myst-nb glue (so the book can cite the number), a no-op outside a notebook kernel."""
    try:
        from myst_nb import glue as _glue
    except ImportError:  # pragma: no cover - myst-nb ships with jupyter-book
        return value
    _glue(key, value, display=display)
    return value


def table(df: pd.DataFrame, key: str | None = None, floatfmt: str = "{:.3g}"):
    """Show a DataFrame (and glue it under `key`)."""
    styled = df.style.format(lambda v: floatfmt.format(v) if isinstance(v, float) else v)
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
