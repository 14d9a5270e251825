"""tools/compare_stores.py: two builds that differ only in the clock (timestamps, wall times,
speeds) and temporary paths compare equal; a changed output byte, number, page output or figure
is named."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("compare_stores", REPO / "tools" / "compare_stores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(runtime: float, loss: float) -> dict:
    """A shown table (HTML and pandas text) with a clock column, as the DPO page's final metrics."""
    html = (f"<table><thead><tr><th></th><th>loss</th><th>runtime</th></tr></thead><tbody><tr><th>end</th>"
            f"<td>{loss}</td><td>{runtime}</td></tr></tbody></table>")
    text = f"       loss  runtime\nend  {loss:.4f}  {runtime:7.4f}"
    return {"output_type": "display_data", "metadata": {}, "data": {"text/html": html, "text/plain": text}}


def _page(when: str, tmp: str, output: str, runtime: float = 0.1, loss: float = 0.5, glued: str = "1.0") -> dict:
    stamp = {"start_time": when, "end_time": when, "duration": 1.5, "status": "completed", "exception": False}
    log = {"output_type": "stream", "name": "stderr", "text": f"[20/20 00:{len(tmp):02d}, {len(tmp)} it/s]"}
    glue = {"output_type": "display_data", "metadata": {"scrapbook": {"name": "n"}}, "data": {"text/plain": glued}}
    return {"cells": [{"id": tmp[-3:], "cell_type": "code", "source": "overrides = {}", "execution_count": 1,
                       "metadata": {"tags": ["injected-parameters", "remove-input"]}, "outputs": []},
                      {"id": "c01", "cell_type": "code", "source": "ctx = open_stage()", "execution_count": 2,
                       "metadata": {"tags": ["remove-cell"]}, "outputs": [log, glue]},
                      {"id": "c00", "cell_type": "code", "source": "show(ctx)", "execution_count": 3,
                       "metadata": {"tags": ["remove-input"], "papermill": dict(stamp),
                                    "execution": {"iopub.status.idle": when}},
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": output},
                                   _table(runtime, loss)]}],
            "metadata": {"papermill": {**stamp, "input_path": "/repo/notebooks/01_curate.ipynb",
                                       "output_path": f"/tmp/{tmp}/01_curate.ipynb",
                                       "parameters": {"profile": "smoke", "overrides": {}}},
                         "zephyr": {"run": "curate", "hash": "abc"}},
            "nbformat": 4, "nbformat_minor": 5}


def _build(root: Path, when: str, tmp: str, data: bytes = b'{"x": 1}\n', output: str = "n = 3\n",
           **page) -> Path:
    run = root / "runs" / "smoke" / "curate" / "abc"
    run.mkdir(parents=True)
    (run / "data.jsonl").write_bytes(data)
    (run / "log.jsonl").write_text(json.dumps({"loss": 0.5, "train_runtime": len(tmp), "tstamp": when}) + "\n")
    (run / "manifest.json").write_text(json.dumps({
        "config_hash": "abc", "start": when, "end": when, "wall_time_s": len(tmp), "git": {"commit": tmp},
        "machine": {"cpus": len(tmp)}, "files": {"data.jsonl": {"sha256": "…", "mtime_ns": len(tmp)}}}))
    for folder, name in ((root / "book" / "stages", "01_curate.ipynb"),
                         (root / "runs" / "smoke" / "executed", "x.ipynb")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(_page(when, tmp, output, **page)))
    (root / "book" / "stages" / "figures").mkdir()
    (root / "book" / "stages" / "figures" / "f.png").write_bytes(b"\x89PNG fig")
    return root


def test_builds_equal_but_for_timestamps_compare_equal_and_a_changed_byte_is_named(tmp_path):
    tool = _tool()
    a = _build(tmp_path / "a", "2026-01-01T00:00:00", "zephyr-curate-aaa")
    b = _build(tmp_path / "b", "2026-02-02T11:11:11", "zephyr-curate-bbbbbb", runtime=12.25)
    lines: list[str] = []
    assert tool.compare(a, b, "smoke", lines.append) == 0, lines
    assert "run curate/abc: 2 files, the same but for the clock" in lines
    assert "  log.jsonl: differs only in clock fields" in lines
    assert ("page book/stages/01_curate.ipynb: the same as the book shows it, but for timestamps, the build log "
            "and clock columns") in lines
    assert lines[-1] == "figures: 1, byte-identical"
    for i, page in enumerate(({"loss": 0.25}, {"glued": "2.0"})):  # a shown number, one glued in a removed cell
        d = _build(tmp_path / f"d{i}", "2026-01-01T00:00:00", "zephyr-curate-aaa", **page)
        lines.clear()
        assert tool.compare(a, d, "smoke", lines.append) == 2, page  # the book's page and the other run's
        cell = "2 (c00)" if "loss" in page else "1 (c01)"
        assert f"page book/stages/01_curate.ipynb: differs in cell {cell}" in lines

    c = _build(tmp_path / "c", "2026-01-01T00:00:00", "zephyr-curate-aaa", data=b'{"x": 2}\n', output="n = 4\n")
    (c / "book" / "stages" / "figures" / "f.png").write_bytes(b"\x89PNG other")
    lines.clear()
    assert tool.compare(a, c, "smoke", lines.append) == 4  # the file, two pages, the figures
    assert "run curate/abc: 2 files, 1 of 2 files differ: data.jsonl" in lines
    assert "page book/stages/01_curate.ipynb: differs in cell 2 (c00)" in lines
    assert lines[-1] == "figures: 1, differ: f.png"

    shutil.rmtree(c / "runs" / "smoke" / "curate")
    lines.clear()
    assert tool.compare(a, c, "smoke", lines.append) == 4
    assert f"run curate/abc: only in {a}" in lines
