"""One helper for every table of the book, in the stage pages (HTML) and the generated pages
(markdown): integers as integers, a fixed number of decimals per column, numbers right-aligned,
explicit spacing between columns, and wide tables scrolling inside their own box.

    formatted(df)            # the cells as strings, each column with its own number format
    html(df)                 # what a stage page shows (page.table calls it)
    markdown(df)             # what a generated page (provenance, performance) includes

A column of whole numbers prints as integers. Any other column of numbers gets
``decimals[column]`` decimals (or ``decimals`` for every such column) when given, else a number
chosen from the column's own values (3 below 1, 2 below 100, 1 below 10,000, 0 above); a string
such as ``"g"`` is a format spec instead (learning rates: ``5e-05``). The format is fixed for
the whole column, so numbers line up and compare at a glance.
"""
from __future__ import annotations

import html as _html
import math
import numbers
from typing import Any, Mapping, Union

import pandas as pd

MISSING = "–"
#: the scroll box's class: ``_static/zephyr.css`` styles it for the book; the inline style keeps
#: it working where that file is not loaded (JupyterLab)
BOX_CLASS = "zephyr-table"
_BOX_STYLE = "overflow-x: auto; max-width: 100%;"
_CELL_STYLE = "padding: 0.25em 0.75em; border-bottom: 1px solid #ddd; vertical-align: top;"


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # lists, arrays
        return False


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _numbers(values) -> list[float]:
    return [float(v) for v in values if _is_number(v) and not _is_missing(v) and math.isfinite(float(v))]


def whole(values) -> bool:
    """Every number of the column is a whole number (it prints as an integer)."""
    return all(x == int(x) and abs(x) < 1e15 for x in _numbers(values))


def auto_decimals(values) -> int:
    """Decimals for a column of numbers (see the module docstring)."""
    nums = _numbers(values)
    if not nums or whole(nums):
        return 0
    top = max(abs(x) for x in nums)
    return 3 if top < 1 else 2 if top < 100 else 1 if top < 10_000 else 0


#: a column format: decimals (int), a format spec (str), or a mapping column -> either
Spec = Union[int, str, Mapping[Any, Union[int, str]], None]


def _column_decimals(df: pd.DataFrame, decimals) -> dict:
    out = {}
    for col in df.columns:
        if isinstance(decimals, Mapping) and col in decimals:
            out[col] = decimals[col]
        elif whole(df[col]):
            out[col] = 0
        elif isinstance(decimals, (int, str)):
            out[col] = decimals
        else:
            out[col] = auto_decimals(df[col])
    return out


def cell(v: Any, decimals: int | str) -> str:
    """One cell as text: numbers with the column's decimals (thousands separated) or format
    spec, missing as –."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if _is_missing(v):
        return MISSING
    if _is_number(v):
        x = float(v)
        if not math.isfinite(x):
            return str(x)
        if isinstance(decimals, str):
            return format(x, decimals)
        if decimals == 0:
            return f"{round(x):,d}"
        return f"{x:,.{decimals}f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v)


def interval(d: Mapping, decimals: int = 2) -> str:
    """A difference with its interval, ``{diff, lo, hi}``, as '+0.24 [−0.01, +0.53]' (true minus signs)."""
    f = lambda x: f"{x:+.{decimals}f}".replace("-", "−")  # noqa: E731
    return f"{f(d['diff'])} [{f(d['lo'])}, {f(d['hi'])}]"


def numeric_columns(df: pd.DataFrame) -> list:
    """Columns whose present values are all numbers (they are right-aligned)."""
    out = []
    for col in df.columns:
        vals = [v for v in df[col] if not _is_missing(v)]
        if vals and all(_is_number(v) for v in vals):
            out.append(col)
    return out


def formatted(df: pd.DataFrame, decimals: Spec = None) -> pd.DataFrame:
    """The table's cells as strings, each column with its own fixed number format."""
    dec = _column_decimals(df, decimals)
    return pd.DataFrame({col: [cell(v, dec[col]) for v in df[col]] for col in df.columns}, index=df.index)


def _index_labels(df: pd.DataFrame) -> tuple[list[str], list[tuple]]:
    names = [("" if n is None else str(n)) for n in df.index.names]
    rows = [k if isinstance(k, tuple) else (k,) for k in df.index]
    return names, rows


def html(df: pd.DataFrame, decimals: Spec = None, index: bool = True) -> str:
    """The table as HTML in a box that scrolls sideways when the table is wider than the page.
    Numbers are right-aligned; every cell has explicit padding, so adjacent columns never touch."""
    text = formatted(df, decimals)
    right = set(numeric_columns(df))
    esc = _html.escape
    th = f'style="{_CELL_STYLE} text-align: left; border-bottom: 2px solid #999;"'
    # numbers right-aligned on one line; short text on one line; long text (answers, prompts) wraps
    # inside a column wide enough to read, and the box scrolls sideways when the columns need it
    style = {}
    for col in df.columns:
        longest = max((len(s) for s in text[col]), default=0)
        style[col] = ("text-align: right; white-space: nowrap;" if col in right else
                      "text-align: left; white-space: nowrap;" if longest <= 24 else
                      "text-align: left; min-width: 16em; max-width: 40em;")
    names, rows = _index_labels(df)
    show_index = index and not (len(names) == 1 and not names[0] and isinstance(df.index, pd.RangeIndex))
    head = [f"<th {th}>{esc(n)}</th>" for n in names] if show_index else []
    head += [f"<th {th}>{esc(str(c))}</th>" for c in df.columns]
    body = []
    for (label, (_, r)) in zip(rows, text.iterrows()):
        cells = [f'<th style="{_CELL_STYLE} text-align: left;">{esc(cell(x, 0))}</th>' for x in label] if show_index else []
        for col in df.columns:
            cells.append(f'<td style="{_CELL_STYLE} {style[col]}">{esc(r[col])}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="{BOX_CLASS}" style="{_BOX_STYLE}"><table class="{BOX_CLASS}__table" '
            f'style="border-collapse: collapse; margin: 0.5em 0;"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def markdown(df: pd.DataFrame, decimals: Spec = None, index: bool = False) -> str:
    """The table as a markdown (MyST) table, numbers right-aligned (``---:``)."""
    text = formatted(df, decimals)
    right = set(numeric_columns(df))
    names, rows = _index_labels(df)
    cols = ([n or " " for n in names] if index else []) + [str(c) for c in df.columns]
    align = (["---"] * len(names) if index else []) + ["---:" if c in right else "---" for c in df.columns]

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join(align) + "|"]
    for label, (_, r) in zip(rows, text.iterrows()):
        vals = ([cell(x, 0) for x in label] if index else []) + [r[c] for c in df.columns]
        lines.append("| " + " | ".join(esc(v) for v in vals) + " |")
    return "\n".join(lines)
