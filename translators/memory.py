"""Translation memory: every translation ever obtained, in one SQLite file shared across runs.

Key: (source text with whitespace normalised, target language, model, prompt version). A row
stores the translation and its QA verdict; a failed translation is kept for the record but
never served, so the next run asks again. When the exact text is missing, a row whose text
differs only in the placeholders at its edges (`<image>\nQ` vs `Q` vs `Q\n<image>`: datasets
place the image marker differently) is served as a `core` match; the caller re-attaches its own
edge placeholders (`MemoryEntry.core_target`). Imported files (the JSONL exchange format of
docs/ARCHITECTURE.md) are stored under the wildcard model and prompt version `*`: they serve
any model, and an exact (model, prompt version) row wins over them.

WAL mode lets several runs read while one writes; each `put_many` is one transaction, so a
killed run keeps everything it had received.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.files import sha256_file, write_jsonl
from common.storage import StorageError, open_wal, sqlite_storage_errors
from translators.placeholders import peel_edges
from translators.protocol import Verdict

WILDCARD = "*"
_LOOKUP_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tm (
    source_key     TEXT NOT NULL,
    core_key       TEXT NOT NULL,
    target_lang    TEXT NOT NULL,
    model          TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    source         TEXT NOT NULL,
    source_lang    TEXT NOT NULL,
    target         TEXT NOT NULL,
    qa_ok          INTEGER NOT NULL,
    qa             TEXT NOT NULL,
    origin         TEXT NOT NULL,
    updated_at     REAL NOT NULL,
    PRIMARY KEY (source_key, target_lang, model, prompt_version)
);
CREATE INDEX IF NOT EXISTS tm_core ON tm (core_key, target_lang);
CREATE TABLE IF NOT EXISTS imports (
    sha256      TEXT PRIMARY KEY,
    path        TEXT NOT NULL,
    rows        INTEGER NOT NULL,
    imported_at REAL NOT NULL
);
"""


def normalise(text: str) -> str:
    """The memory key of a segment: whitespace runs become one space, ends are stripped."""
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    source: str
    target: str
    verdict: Verdict
    origin: Literal["model", "import"]
    model: str
    match: Literal["exact", "core"] = "exact"

    @property
    def core_target(self) -> str:
        """The translation without its edge placeholders, to wrap in the caller's own."""
        return peel_edges(self.target)[1]


@dataclass(frozen=True, slots=True)
class ImportReport:
    path: str
    rows: int
    skipped_file: bool
    """True when this exact file (by sha256) had been imported before; nothing was read."""


class MemoryImportError(ValueError):
    """A memory file that cannot be imported; the message names the file and line and what to do."""


class MemoryWriteError(StorageError):
    """The memory file could not be opened or written (full disk, no permission); the message
    (common.storage's wording) names the file and what to do. SQLite rolled back the unfinished
    transaction: nothing is corrupt."""


def storage_errors(path: Path) -> AbstractContextManager[None]:
    """SQLite's full-disk / read-only / cannot-open errors as a MemoryWriteError naming `path`."""
    return sqlite_storage_errors(path, MemoryWriteError, "translation memory",
                                 instead="set translator.memory_path to another place",
                                 then="run the same command again: every translation already stored is kept")


class TranslationMemory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with storage_errors(self.path):
            self._db = open_wal(self.path, _SCHEMA, autocommit=False)
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "TranslationMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup_many(
        self, texts: Iterable[str], target_lang: str, model: str, prompt_version: str
    ) -> dict[str, MemoryEntry]:
        """Usable entries by normalised key. Preference: exact text before core match, then this
        (model, prompt version) before an import."""
        keys = {normalise(t) for t in texts}
        found = self._select("source_key", sorted(keys), target_lang, model, prompt_version, "exact")
        cores = {_core_key(k): k for k in keys - found.keys()}
        for core, entry in self._select("core_key", sorted(cores), target_lang, model, prompt_version, "core").items():
            found[cores[core]] = entry
        return found

    def _select(
        self, column: str, keys: list[str], target_lang: str, model: str, prompt_version: str,
        match: Literal["exact", "core"],
    ) -> dict[str, MemoryEntry]:
        found: dict[str, tuple[tuple[int, str], MemoryEntry]] = {}
        with self._lock:
            for i in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[i : i + _LOOKUP_CHUNK]
                rows = self._db.execute(
                    f"SELECT {column}, source_key, source, target, qa, origin, model FROM tm "
                    f"WHERE target_lang = ? AND qa_ok = 1 AND ((model = ? AND prompt_version = ?) "
                    f"OR (model = '{WILDCARD}' AND prompt_version = '{WILDCARD}')) "
                    f"AND {column} IN ({','.join('?' * len(chunk))})",
                    (target_lang, model, prompt_version, *chunk),
                ).fetchall()
                for key, source_key, source, target, qa, origin, row_model in rows:
                    rank = (int(row_model == WILDCARD), source_key)
                    if key not in found or rank < found[key][0]:
                        verdict = Verdict.from_dict(json.loads(qa))
                        found[key] = (rank, MemoryEntry(source, target, verdict, origin, row_model, match))
        return {k: entry for k, (_, entry) in found.items()}

    def put_many(
        self,
        rows: Iterable[tuple[str, str, Verdict]],
        *,
        source_lang: str,
        target_lang: str,
        model: str,
        prompt_version: str,
        origin: Literal["model", "import"] = "model",
    ) -> int:
        """Store (source, translation, verdict) rows in one transaction. A failed verdict never
        replaces a passing one."""
        now = time.time()
        params = [
            (normalise(src), _core_key(src), target_lang, model, prompt_version, src, source_lang, dst,
             int(v.ok), json.dumps(v.to_dict(), ensure_ascii=False), origin, now)
            for src, dst, v in rows
        ]
        with storage_errors(self.path), self._lock, self._db:
            self._db.executemany(
                "INSERT INTO tm VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (source_key, target_lang, model, prompt_version) DO UPDATE SET "
                "source = excluded.source, target = excluded.target, qa_ok = excluded.qa_ok, "
                "qa = excluded.qa, origin = excluded.origin, updated_at = excluded.updated_at "
                "WHERE excluded.qa_ok >= tm.qa_ok",
                params,
            )
        return len(params)

    def import_jsonl(self, path: str | Path) -> ImportReport:
        """Merge an exchange-format file; a file already imported (same bytes) is skipped."""
        path = Path(path)
        digest = sha256_file(path)
        with self._lock:
            seen = self._db.execute("SELECT 1 FROM imports WHERE sha256 = ?", (digest,)).fetchone()
        if seen:
            return ImportReport(str(path), 0, True)
        by_lang: dict[tuple[str, str], list[tuple[str, str, Verdict]]] = {}
        for src, dst, source_lang, target_lang in _read_exchange(path):
            by_lang.setdefault((source_lang, target_lang), []).append((src, dst, Verdict(True, (), "imported")))
        n = 0
        for (source_lang, target_lang), rows in by_lang.items():
            n += self.put_many(rows, source_lang=source_lang, target_lang=target_lang,
                               model=WILDCARD, prompt_version=WILDCARD, origin="import")
        with storage_errors(self.path), self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO imports VALUES (?,?,?,?)", (digest, str(path), n, time.time()))
        return ImportReport(str(path), n, False)

    def export_jsonl(self, path: str | Path, target_lang: str | None = None, model: str | None = None) -> int:
        """Write passing entries in the exchange format, one per (source, target language);
        a model's own translation is preferred over an imported one. Returns the row count."""
        query = "SELECT source_key, target_lang, source_lang, source, target, model FROM tm WHERE qa_ok = 1"
        params: list[str] = []
        if target_lang:
            query += " AND target_lang = ?"
            params.append(target_lang)
        if model:
            query += f" AND model IN (?, '{WILDCARD}')"
            params.append(model)
        query += f" ORDER BY source_key, target_lang, model = '{WILDCARD}', model"
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        out, last = [], None
        for key, tgt_lang, src_lang, src, dst, _ in rows:
            if (key, tgt_lang) != last:
                out.append({"source": src, "target": dst, "source_lang": src_lang, "target_lang": tgt_lang})
                last = (key, tgt_lang)
        write_jsonl(path, out, sort_keys=False)
        return len(out)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT origin, qa_ok, COUNT(*) FROM tm GROUP BY origin, qa_ok").fetchall()
        return {f"{origin}_{'ok' if ok else 'failed'}": n for origin, ok, n in rows}


def _core_key(text: str) -> str:
    return normalise(peel_edges(text)[1])


def _read_exchange(path: Path) -> Iterator[tuple[str, str, str, str]]:
    todo = "fix or delete that line and import the file again"
    for lineno, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MemoryImportError(f"{path}:{lineno}: not valid JSON ({e.msg}); {todo}") from None
        if not (isinstance(row, dict) and isinstance(row.get("source"), str) and isinstance(row.get("target"), str)):
            raise MemoryImportError(
                f"{path}:{lineno}: expected an object with string `source` and `target` "
                f'(exchange format: {{"source", "target", "source_lang", "target_lang"}}); {todo}'
            )
        yield row["source"], row["target"], str(row.get("source_lang", "en")), str(row.get("target_lang", "zh"))


def _text_encoding(path: Path) -> str:
    """UTF-8, skipping a byte-order mark (Windows tools write one); UTF-16/32 when its mark says so."""
    with open(path, "rb") as f:
        encoding = json.detect_encoding(f.read(4))
    return "utf-8-sig" if encoding == "utf-8" else encoding


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file; text that is not in its encoding is a MemoryImportError
    naming the line (UTF-8) or the last good line (UTF-16/32) and what to do."""
    encoding = _text_encoding(path)
    todo = "save the file as UTF-8 (the exchange format's encoding) and import it again"
    lineno = 0
    try:
        with open(path, encoding=encoding, errors="surrogateescape" if encoding == "utf-8-sig" else "strict") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    line.encode("utf-8")
                except UnicodeEncodeError as e:  # a byte that is not UTF-8, escaped as a lone surrogate
                    byte = ord(line[e.start]) - 0xDC00
                    raise MemoryImportError(f"{path}:{lineno}: not UTF-8 text (byte 0x{byte:02x}); {todo}") from None
                yield lineno, line
    except UnicodeDecodeError as e:
        raise MemoryImportError(f"{path}: after line {lineno}: not {encoding.upper()} text ({e.reason}); {todo}") from None
