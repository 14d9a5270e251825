"""Normalize the committed stage notebooks: every cell has a cell id (nbformat 4.5; without one,
nbformat warns on every run and invents a random id), code cells carry no outputs or execution
counts, and the JSON is written the way Jupyter writes it (sorted keys, one-space indent, UTF-8,
a final newline), so that a notebook saved from JupyterLab and one normalized here are the same.

    python tools/normalize_notebooks.py            # rewrite notebooks/*.ipynb in place
    python tools/normalize_notebooks.py --check    # exit 1 naming each notebook that is not normalized

Existing ids are kept (they are how JupyterLab and diffs follow a cell); a cell without one gets
the first free ``cNN``. ``tests/test_book.py`` fails on a notebook that is not normalized.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ID = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")  # nbformat 4.5's cell id pattern


def normalized(text: str) -> str:
    """The normalized JSON text of a notebook given as JSON text."""
    nb = json.loads(text)
    nb["nbformat"], nb["nbformat_minor"] = 4, max(5, nb.get("nbformat_minor", 0))
    seen: set[str] = set()
    for cell in nb["cells"]:
        cid = cell.get("id")
        if isinstance(cid, str) and ID.match(cid) and cid not in seen:
            seen.add(cid)
        else:
            cell.pop("id", None)
    n = 0
    for cell in nb["cells"]:
        if "id" not in cell:
            while f"c{n:02d}" in seen:
                n += 1
            cell["id"] = f"c{n:02d}"
            seen.add(cell["id"])
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is not normalized")
    ap.add_argument("notebooks", nargs="*", type=Path)
    a = ap.parse_args()
    bad = []
    for path in a.notebooks or sorted(NOTEBOOKS.glob("*.ipynb")):
        text = path.read_text(encoding="utf-8")
        want = normalized(text)
        if want != text:
            bad.append(path)
            if not a.check:
                path.write_text(want, encoding="utf-8")
    for path in bad:
        print(f"{path}: {'not normalized' if a.check else 'normalized'}")
    return 1 if (a.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
