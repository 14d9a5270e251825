"""Atomic, strict file I/O shared by every stage.

Every artifact is written to a temporary file in the same folder and renamed into place,
so a killed process never leaves a half-written file that looks complete. Readers name the
file and line of anything malformed.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataError(ValueError):
    """Malformed input: the message names the file, row and field."""


def _umask() -> int:
    """The process umask, read without changing it (Linux), else by the set-and-restore dance."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666  # before the umask: 0644 with the usual umask 022, as open() would create it


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE & ~_umask())  # mkstemp makes 0600: other readers of the store need 0644
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


class RowAudit:
    """The malformed rows of one real data set (a split, a file), dropped and counted by kind.

    A release of hundreds of thousands of rows may hold a few odd ones; stopping at the first
    would mean never running on it, letting them through would train on them. ``keep(check, row,
    where)`` runs a validator that raises :class:`DataError` (``where`` names the file and row, the
    message the field) and says whether the row is kept; a bad row is counted under its kind (the
    message without the row and the offending values, list indices generalised: ``field
    'messages[].role' should be one of ...``) with the first few rows of each kind.
    :meth:`finish` raises a one-line DataError when the share of bad rows exceeds
    ``max_fraction`` (0 = any bad row), naming the source, the first bad row and its field and the
    setting; else it returns the counts for the stage's metrics."""

    EXAMPLES = 3  # rows named per kind

    def __init__(self, source: str | os.PathLike, max_fraction: float = 0.0, setting: str = "max_bad_row_fraction"):
        self.source, self.max_fraction, self.setting = str(source), float(max_fraction), setting
        self.n_rows = 0
        self.kinds: dict[str, dict] = {}
        self.first: str | None = None  # the first bad row's full message (file, row, field)

    @staticmethod
    def kind_of(message: str, where: str) -> str:
        text = message[len(where) + 2:] if message.startswith(f"{where}: ") else message
        text = re.split(r",? (?:got|has) ", text, maxsplit=1)[0]
        return re.sub(r" \(-?[\d.]+(?:e[+-]?\d+)?\)", "", re.sub(r"\[\d+\]", "[]", text))  # values: one kind

    def keep(self, check, row: Any, where: str) -> bool:
        self.n_rows += 1
        try:
            check(row, where)
        except DataError as e:
            kind = self.kinds.setdefault(self.kind_of(str(e), where), {"count": 0, "rows": []})
            kind["count"] += 1
            if len(kind["rows"]) < self.EXAMPLES:
                kind["rows"].append(where)
            self.first = self.first or str(e)
            return False
        return True

    @property
    def n_bad(self) -> int:
        return sum(k["count"] for k in self.kinds.values())

    def as_dict(self) -> dict:
        return {"n_rows": self.n_rows, "n_dropped": self.n_bad, "max_bad_row_fraction": self.max_fraction,
                "kinds": self.kinds}

    def finish(self) -> dict:
        if self.n_bad and self.n_bad / self.n_rows > self.max_fraction:
            kinds = "; ".join(f"{k} ({v['count']})" for k, v in sorted(self.kinds.items(), key=lambda kv: -kv[1]["count"]))
            raise DataError(f"{self.source}: {self.n_bad} of {self.n_rows} rows malformed "
                            f"({self.n_bad / self.n_rows:.3%}, over {self.setting}={self.max_fraction:g}); "
                            f"first: {self.first}; by kind: {kinds}")
        return self.as_dict()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (model weights do not fit in memory twice)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ChecksumError(DataError):
    """A file's sha256 is not the one expected."""


def _check_sha256(path: Path, expected: str, what: str) -> str:
    got = sha256_file(path)
    if got != expected.lower():
        raise ChecksumError(f"{what}: sha256 {got} does not match the expected {expected.lower()}")
    return got


def fetch(source: str | os.PathLike, cache_dir: str | os.PathLike, sha256: str | None = None) -> Path:
    """A local path as is; an http(s) URL downloaded once into `cache_dir` (atomically) and reused.

    With ``sha256`` (64 hex digits) the file's bytes must have that hash: a download that does
    not match is refused and not kept, a cached copy that no longer matches is refused naming it.
    Every download is recorded beside the file in ``<file>.source.json`` (URL, size, sha256,
    time), so the store tells which bytes a run read even when no hash was given.
    """
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"fetch: sha256 must be 64 hex digits, got {len(sha256)} characters")
    src = str(source)
    if not src.startswith(("http://", "https://")):
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if sha256 is not None:
            _check_sha256(path, sha256, str(path))
        return path
    import hashlib
    import time
    import urllib.request

    name = hashlib.sha256(src.encode()).hexdigest()[:12] + "-" + Path(src.split("?")[0]).name
    path = Path(cache_dir) / name
    record = path.with_name(path.name + ".source.json")
    if path.exists():
        if sha256 is not None:
            _check_sha256(path, sha256, f"{path} (cached download of {src}; delete it to download again)")
        return path
    try:
        with urllib.request.urlopen(src, timeout=60) as r:  # noqa: S310 - a URL the user configured
            data = r.read()
    except OSError as e:
        raise OSError(f"could not download {src}: {e}") from None
    got = hashlib.sha256(data).hexdigest()
    if sha256 is not None and got != sha256.lower():
        raise ChecksumError(f"{src}: the download's sha256 {got} does not match the expected "
                            f"{sha256.lower()}; nothing was kept")
    atomic_write_bytes(path, data)
    write_json(record, {"url": src, "size": len(data), "sha256": got, "expected_sha256": sha256,
                        "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return path
