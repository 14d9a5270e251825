"""Atomic, strict file I/O shared by every stage.

Every artifact is written to a temporary file in the same folder and renamed into place,
so a killed process never leaves a half-written file that looks complete. Readers name the
file and line of anything malformed.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataError(ValueError):
    """Malformed input: the message names the file, row and field."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def dumps(obj: Any) -> str:
    """Canonical JSON: sorted keys, UTF-8, no NaN (so hashes and files are stable)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, indent=2) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj))


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False, allow_nan=False) for r in rows]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None


def iter_jsonl_numbered(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, dict) per non-blank line; a bad line raises DataError naming file and line."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield one dict per non-blank line; a bad line raises DataError naming file and line."""
    for _, row in iter_jsonl_numbered(path):
        yield row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return list(iter_jsonl(path))


def require(row: dict, field: str, types: type | tuple[type, ...], where: str) -> Any:
    """Return row[field] if present and of the given type(s), else raise DataError naming `where`."""
    if field not in row:
        raise DataError(f"{where}: missing field '{field}'")
    value = row[field]
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise DataError(f"{where}: field '{field}' should be {names}, got {type(value).__name__}")
    return value


def fetch(source: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """A local path as is; an http(s) URL downloaded once into `cache_dir` (atomically) and reused."""
    src = str(source)
    if not src.startswith(("http://", "https://")):
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    import hashlib
    import urllib.request

    name = hashlib.sha256(src.encode()).hexdigest()[:12] + "-" + Path(src.split("?")[0]).name
    path = Path(cache_dir) / name
    if not path.exists():
        try:
            with urllib.request.urlopen(src, timeout=60) as r:  # noqa: S310 - a URL the user configured
                data = r.read()
        except OSError as e:
            raise OSError(f"could not download {src}: {e}") from None
        atomic_write_bytes(path, data)
    return path
