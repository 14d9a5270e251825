"""Compare two builds of a profile byte for byte: every stage output file, and the executed pages.

    python tools/compare_stores.py A B --profile smoke

A and B are build folders laid out as the runner writes them with ``ZEPHYR_RUNS_DIR=<X>/runs``
and ``ZEPHYR_BOOK_STAGES=<X>/book/stages`` (build the same profile from two commits, ideally
from the same code and store paths, since the pages print the store path). Per run folder
(``runs/<profile>/<stage>/<hash>/``), every file is hashed (sha256) on both sides; a JSON or
JSON-lines file that differs is compared again without the clock's fields (FastChat's ``tstamp``,
the Trainer's ``*runtime`` and ``*_per_second``), a text file as its set of lines (TRL's model
card lists its tags in set order); the manifests are compared without what differs between any
two builds (start and end times, wall time, file mtimes, git state, machine; file hashes are
compared above). Per executed page (``book/stages/*.ipynb``, ``runs/<profile>/executed/*.ipynb``)
the sources, tags, parameters and the outputs the book shows are compared, without papermill's
and Jupyter's timestamps, durations and temporary paths, the injected parameter cell's random id,
the outputs of ``remove-cell`` cells but their glued values (the rest is the build log: progress
bars and their times) and the clock's columns of shown tables; figures (``book/stages/figures``)
byte for byte. Every file that differs is named with how; exit 0 when nothing but the clock
differs, 1 otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

VOLATILE_MANIFEST = ("start", "end", "wall_time_s", "git", "machine")
VOLATILE_PAPERMILL = ("start_time", "end_time", "duration", "input_path", "output_path")
CLOCK = re.compile(r"^(?:tstamp|\w*runtime|\w*_per_second)$")  # wall-clock values in stored JSON and in tables


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def without_clock(x):
    """A parsed JSON value without the keys that hold wall-clock values (see CLOCK)."""
    if isinstance(x, dict):
        return {k: without_clock(v) for k, v in x.items() if not CLOCK.match(k)}
    if isinstance(x, list):
        return [without_clock(v) for v in x]
    return x


def same_but_clock(a: Path, b: Path) -> str | None:
    """Why two differing files are the same output ('clock fields', 'line order'), or None."""
    try:
        ta, tb = a.read_text(), b.read_text()
    except (UnicodeDecodeError, OSError):
        return None  # binary (weights, tensors): bytes only
    if a.suffix in (".json", ".jsonl"):
        parse = (lambda t: [json.loads(x) for x in t.splitlines() if x.strip()]) if a.suffix == ".jsonl" else json.loads
        if without_clock(parse(ta)) == without_clock(parse(tb)):
            return "clock fields"
        return None
    return "line order" if sorted(ta.splitlines()) == sorted(tb.splitlines()) else None


def manifest_core(path: Path) -> dict:
    """A run's manifest without the fields that differ between any two builds (file contents are
    compared file by file)."""
    m = json.loads(path.read_text())
    for key in VOLATILE_MANIFEST:
        m.pop(key, None)
    m["files"] = sorted(m.get("files", {}))
    return m


def _mask_html_tables(html: str) -> str:
    """Clock columns of HTML tables (a header cell named like CLOCK) with their values masked."""
    def table(m: re.Match) -> str:
        rows = re.findall(r"<tr.*?</tr>", m.group(0), re.S)
        if not rows:
            return m.group(0)
        cell = re.compile(r"(<t[hd][^>]*>)(.*?)(</t[hd]>)", re.S)
        clock = {i for i, c in enumerate(cell.findall(rows[0])) if CLOCK.match(c[1].strip())}
        out = m.group(0)
        for row in rows[1:]:
            cells = iter(range(10**6))
            masked = cell.sub(lambda c: c.group(1) + "…" + c.group(3) if next(cells) in clock else c.group(0), row)
            out = out.replace(row, masked)
        return out
    return re.sub(r"<table.*?</table>", table, html, flags=re.S)


def _mask_text_tables(text: str) -> str:
    """Clock columns of pandas' text tables (headers right-aligned over their values) masked."""
    lines, spans = text.split("\n"), []
    for i, line in enumerate(lines):
        heads = list(re.finditer(r"\S+", line))
        if any(CLOCK.match(h.group(0)) for h in heads):
            spans = [(heads[j - 1].end() if j else 0, h.end()) for j, h in enumerate(heads) if CLOCK.match(h.group(0))]
            continue
        if not line.strip():
            spans = []
        for lo, hi in spans:
            line = line[:lo] + "…" * max(0, min(hi, len(line)) - lo) + line[hi:]
        lines[i] = line
    return "\n".join(lines)


def _shown(output: dict) -> dict:
    out = json.loads(json.dumps(output))
    for mime, value in out.get("data", {}).items():
        text = "".join(value) if isinstance(value, list) else value
        if isinstance(text, str):
            out["data"][mime] = _mask_html_tables(text) if "html" in mime else _mask_text_tables(text)
    return out


def page_core(path: Path) -> dict:
    """An executed page as the book shows it, without timestamps, durations, temporary paths, the
    injected parameter cell's random id, the build log and the clock columns of its tables."""
    nb = json.loads(path.read_text())
    for key in VOLATILE_PAPERMILL:
        nb.get("metadata", {}).get("papermill", {}).pop(key, None)
    for cell in nb["cells"]:
        meta = cell.get("metadata", {})
        meta.pop("execution", None)  # Jupyter's iopub timestamps
        for key in VOLATILE_PAPERMILL:
            meta.get("papermill", {}).pop(key, None)
        tags = meta.get("tags", [])
        if "injected-parameters" in tags:
            cell.pop("id", None)  # papermill makes up a new one on every execution
        if "outputs" in cell:  # a remove-cell cell's outputs are not in the book but its glued values are
            cell["outputs"] = [_shown(o) for o in cell["outputs"]
                               if "remove-cell" not in tags or "scrapbook" in o.get("metadata", {})]
    return nb


def differing_cells(a: dict, b: dict) -> list[str]:
    if len(a["cells"]) != len(b["cells"]):
        return [f"{len(a['cells'])} vs {len(b['cells'])} cells"]
    out = [f"cell {i} ({ca.get('id', '?')})" for i, (ca, cb) in enumerate(zip(a["cells"], b["cells"])) if ca != cb]
    return out + (["notebook metadata"] if a["metadata"] != b["metadata"] else [])


def compare(a: Path, b: Path, profile: str, echo=print) -> int:
    """Print one line per run folder, page and figure; return the number of real differences."""
    problems = 0
    ra, rb = a / "runs" / profile, b / "runs" / profile
    left, right = ({str(m.parent.relative_to(r)) for m in r.glob("*/*/manifest.json")} for r in (ra, rb))
    for rel in sorted(left ^ right):
        echo(f"run {rel}: only in {a if rel in left else b}")
        problems += 1
    for rel in sorted(left & right):
        fa, fb = files(ra / rel), files(rb / rel)
        fa.pop("manifest.json"), fb.pop("manifest.json")
        differ = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
        why = {k: same_but_clock(ra / rel / k, rb / rel / k) if k in fa and k in fb else None for k in differ}
        real = [k for k in differ if why[k] is None]
        same_manifest = manifest_core(ra / rel / "manifest.json") == manifest_core(rb / rel / "manifest.json")
        problems += bool(real) + (not same_manifest)
        state = (f"{len(real)} of {len(fa | fb)} files differ: {', '.join(real[:8])}" if real else
                 "identical" if not differ else "the same but for the clock")
        echo(f"run {rel}: {len(fa)} files, {state}" + ("" if same_manifest else "; manifests differ"))
        for k in differ:
            if why[k]:
                echo(f"  {k}: differs only in {why[k]}")
    def pages(root: Path) -> dict[str, Path]:
        folders = (root / "book" / "stages", root / "runs" / profile / "executed")
        return {str(p.relative_to(root)): p for d in folders for p in sorted(d.glob("*.ipynb"))}

    pa, pb = pages(a), pages(b)
    for rel in sorted(set(pa) ^ set(pb)):
        echo(f"page {rel}: only in {a if rel in pa else b}")
        problems += 1
    for rel in sorted(set(pa) & set(pb)):
        if sha256(pa[rel]) == sha256(pb[rel]):
            echo(f"page {rel}: byte-identical")
            continue
        cells = differing_cells(page_core(pa[rel]), page_core(pb[rel]))
        problems += bool(cells)
        echo(f"page {rel}: " + (f"differs in {', '.join(cells)}" if cells else "the same as the book shows it, "
                                "but for timestamps, the build log and clock columns"))
    ga, gb = (files(x / "book" / "stages" / "figures") if (x / "book" / "stages" / "figures").is_dir() else {}
              for x in (a, b))
    differ = sorted(k for k in set(ga) | set(gb) if ga.get(k) != gb.get(k))
    problems += bool(differ)
    echo(f"figures: {len(ga | gb)}, " + (f"differ: {', '.join(differ)}" if differ else "byte-identical"))
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--profile", default="smoke")
    args = ap.parse_args()
    problems = compare(args.a, args.b, args.profile)
    print(f"{problems} difference(s) beyond the clock (timestamps, wall times, speeds) and temporary paths")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
