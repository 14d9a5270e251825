"""Atomic writes, strict readers that name file and line, and fetching public eval files."""
from __future__ import annotations

import http.server
import threading

import pytest

from zephyr_lib.io import DataError, atomic_write_text, fetch, read_jsonl, require, write_json


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with pytest.raises(ValueError):
        write_json(tmp_path / "b.json", {"x": float("nan")})  # NaN is not JSON: refused, nothing written
    assert not (tmp_path / "b.json").exists() and len(list(tmp_path.iterdir())) == 1


def test_readers_name_file_line_and_field(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(DataError, match=r"rows.jsonl:3: not valid JSON"):
        read_jsonl(p)
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: expected a JSON object"):
        read_jsonl(p)
    with pytest.raises(DataError, match=r"row 7: field 'a' should be str, got int"):
        require({"a": 1}, "a", str, "row 7")
    with pytest.raises(DataError, match=r"row 7: missing field 'b'"):
        require({"a": 1}, "b", str, "row 7")


def test_fetch_downloads_once_and_caches(tmp_path):
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            if self.path.endswith("missing.jsonl"):
                self.send_error(404)
                return
            body = b'{"question_id": 81}\n'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/data/question.jsonl"
        a, b = fetch(url, tmp_path), fetch(url, tmp_path)
        assert a == b and a.name.endswith("question.jsonl") and read_jsonl(a) == [{"question_id": 81}]
        assert len(hits) == 1  # the second call is served from the cache
        with pytest.raises(OSError, match="could not download"):
            fetch(f"http://127.0.0.1:{server.server_port}/missing.jsonl", tmp_path)
    finally:
        server.shutdown()
    with pytest.raises(FileNotFoundError):
        fetch(tmp_path / "nope.jsonl", tmp_path)


def test_atomic_writes_make_files_readable_by_others(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644  # mkstemp alone gives 0600
        os.umask(0o027)
        write_json(tmp_path / "b.json", {})
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o640  # the umask is respected
    finally:
        os.umask(mask)


def test_fetch_verifies_and_records_a_sha256(tmp_path):
    import hashlib
    import json

    from conftest import serving

    from zephyr_lib.io import ChecksumError

    body = b'{"question_id": 81}\n'
    good, bad = hashlib.sha256(body).hexdigest(), "0" * 64
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        base = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(ChecksumError, match="does not match the expected 0000") as e:
            fetch(f"{base}/q.jsonl", tmp_path, sha256=bad)
        assert good in str(e.value)
        assert not list(tmp_path.iterdir())  # a download that does not match is not kept
        path = fetch(f"{base}/q.jsonl", tmp_path, sha256=good.upper())
        record = json.loads(path.with_name(path.name + ".source.json").read_text())
        assert record["sha256"] == good and record["size"] == len(body) and record["url"] == f"{base}/q.jsonl"
        assert fetch(f"{base}/q.jsonl", tmp_path, sha256=good) == path and len(hits) == 2  # cached, checked
        path.write_bytes(b"tampered\n")
        with pytest.raises(ChecksumError, match="cached download"):
            fetch(f"{base}/q.jsonl", tmp_path, sha256=good)
        unpinned = fetch(f"{base}/other.jsonl", tmp_path)  # no hash given: still recorded
        assert json.loads(unpinned.with_name(unpinned.name + ".source.json").read_text())["sha256"] == good
    local = tmp_path / "local.jsonl"
    local.write_bytes(body)
    assert fetch(local, tmp_path, sha256=good) == local
    with pytest.raises(ChecksumError):
        fetch(local, tmp_path, sha256=bad)
    with pytest.raises(ValueError, match="64 hex digits"):
        fetch(local, tmp_path, sha256="abc")
