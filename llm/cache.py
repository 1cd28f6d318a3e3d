"""Response cache: every reply an endpoint gave, keyed by what determined it, in one SQLite file.

Key: (model, prompt version, kind, context hash, sampling settings): the same request asked again
is answered from here, so a rerun sends nothing and a `kill -9` loses only the requests in
flight (each reply is committed as it arrives; WAL lets readers in while a run writes). What the
reply means (valid, rejected) is not stored: the caller parses and checks it again, so a change of
checks applies to cached replies too.

Files in the exchange format (JSONL, one reply per line: model, prompt_version, kind, context_hash,
sampling, content) can be imported, e.g. the demo corpus's replies; a file already imported
unchanged is skipped (by its sha256).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.files import sha256_file
from common.storage import StorageError, open_wal, sqlite_storage_errors
from llm.usage import Usage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key            TEXT PRIMARY KEY,
    model          TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    kind           TEXT NOT NULL,
    context_hash   TEXT NOT NULL,
    sampling       TEXT NOT NULL,
    content        TEXT NOT NULL,
    usage          TEXT NOT NULL,
    origin         TEXT NOT NULL,
    created_at     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS imports (sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, rows INTEGER NOT NULL);
"""
IMPORT_FIELDS = ("model", "prompt_version", "kind", "context_hash", "sampling", "content")


class CacheImportError(ValueError):
    """An import file not in the exchange format; the message names the file and line."""


class CacheWriteError(StorageError):
    """The cache file could not be opened or written (full disk, no permission); SQLite rolled back
    the unfinished transaction: every reply already stored is kept."""


def storage_errors(path: Path, section: str) -> AbstractContextManager[None]:
    """SQLite's full-disk / read-only / cannot-open errors as a CacheWriteError naming `path`."""
    return sqlite_storage_errors(path, CacheWriteError, "response cache", instead=f"set {section}.cache_path to "
                                 "another place", then="run the same command again: every reply already stored is kept")


@dataclass(frozen=True, slots=True)
class CacheKey:
    model: str
    prompt_version: str
    kind: str
    context_hash: str
    sampling: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        blob = json.dumps([self.model, self.prompt_version, self.kind, self.context_hash, self.sampling],
                          sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class CachedReply:
    content: str
    usage: Usage
    origin: str
    """`model` (answered in a run) or `import` (from an exchange file)."""


class ResponseCache:
    def __init__(self, path: str | Path, section: str = "generate") -> None:
        self.path = Path(path)
        self.section = section
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with storage_errors(self.path, section):
            self._db = open_wal(self.path, _SCHEMA)
        self._lock = threading.Lock()

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def get(self, key: CacheKey) -> CachedReply | None:
        with self._lock:
            row = self._db.execute("SELECT content, usage, origin FROM responses WHERE key = ?",
                                   (key.digest(),)).fetchone()
        return None if row is None else CachedReply(row[0], Usage.from_dict(json.loads(row[1])), row[2])

    def put(self, key: CacheKey, content: str, usage: Usage, origin: str = "model") -> None:
        """Store one reply, committed at once (a killed run keeps it)."""
        row = (key.digest(), key.model, key.prompt_version, key.kind, key.context_hash,
               json.dumps(key.sampling, sort_keys=True), content, json.dumps(usage.to_dict()), origin, time.time())
        with self._lock, storage_errors(self.path, self.section):
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?)", row)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def import_jsonl(self, path: str | Path) -> int:
        """Import an exchange file; returns the rows imported (0 when this exact file was imported
        before). A bad line fails the import naming the file and line; nothing of it is kept."""
        path = Path(path)
        digest = sha256_file(path)
        with self._lock:
            if self._db.execute("SELECT 1 FROM imports WHERE sha256 = ?", (digest,)).fetchone():
                return 0
        rows = list(_read_import(path))
        with self._lock, storage_errors(self.path, self.section):
            self._db.execute("BEGIN")
            for key, content in rows:
                self._db.execute(
                    "INSERT OR IGNORE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (key.digest(), key.model, key.prompt_version, key.kind, key.context_hash,
                     json.dumps(key.sampling, sort_keys=True), content, json.dumps(Usage().to_dict()), "import",
                     time.time()))
            self._db.execute("INSERT INTO imports VALUES (?,?,?)", (digest, str(path), len(rows)))
            self._db.execute("COMMIT")
        return len(rows)


def _read_import(path: Path) -> Iterator[tuple[CacheKey, str]]:
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CacheImportError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            missing = [k for k in IMPORT_FIELDS if k not in row] if isinstance(row, dict) else list(IMPORT_FIELDS)
            if missing or not isinstance(row.get("content"), str) or not isinstance(row.get("sampling"), dict):
                raise CacheImportError(f"{path}:{lineno}: a cache row needs {', '.join(IMPORT_FIELDS)} "
                                 f"(content a string, sampling an object); missing or wrong: {missing or 'types'}")
            yield CacheKey(str(row["model"]), str(row["prompt_version"]), str(row["kind"]),
                           str(row["context_hash"]), row["sampling"]), row["content"]
