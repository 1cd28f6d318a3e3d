"""Storage errors a user can fix (a full disk, a quota, a file-size limit, a folder not writable):
recognised by errno, also inside messages that carry none (pyarrow's, safetensors'), and turned into
one `StorageError` whose message names the path and what to do.

This module is the one place that words them (`storage_message`): a step's write, the translation
memory's SQLite errors (`SQLITE_STORAGE_ERRORS`) and a training checkpoint all say it the same way."""

from __future__ import annotations

import errno
import re
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FREE_SPACE = "free some space on that file system"
STORAGE_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", FREE_SPACE),
    errno.EDQUOT: ("disk quota exceeded", FREE_SPACE + " or raise the quota"),
    errno.EFBIG: ("file larger than this process may write", "raise the file size limit (ulimit -f)"),
    errno.EACCES: ("permission denied", "make {folder} writable for this user"),
    errno.EPERM: ("operation not permitted", "make {folder} writable for this user"),
    errno.EROFS: ("read-only file system", "mount {folder} read-write"),
}
"""errno -> (what happened, what to do) for the write errors a user can fix."""
WRITE_FAILED = ("the write failed", FREE_SPACE + " or make {folder} writable for this user")
"""(what happened, what to do) for a failed write whose cause carries no errno (torch.save's error)."""
SQLITE_STORAGE_ERRORS = {
    "SQLITE_FULL": ("the disk is full", FREE_SPACE),
    "SQLITE_IOERR": ("a write failed (usually a full disk or a file size limit)",
                     FREE_SPACE + " (or raise the file size limit)"),
    "SQLITE_READONLY": ("the file or its folder is read-only", "make {folder} writable for this user"),
    "SQLITE_CANTOPEN": ("the file cannot be created or opened", "make {folder} writable for this user"),
}
"""SQLite error families (`sqlite3.Error.sqlite_errorname` prefixes) a user can fix -> (what happened, what to do)."""
RERUN = "run the same command again: finished work is kept, half-written files are never used and are cleared"


class StorageError(OSError):
    """A write failed for lack of space or permission; the message names the path and what to do."""

    def __str__(self) -> str:
        return str(self.args[0])


def storage_message(subject: str, cause: str, todo: str, folder: str | Path, detail: str = "",
                    instead: str = "choose another --run-dir", then: str = RERUN) -> str:
    """The one wording of a storage error a user can fix:

        <subject>: <cause> (<detail>; N MiB free on that file system). To fix: <todo> or <instead>, then <then>

    `todo` may name `{folder}` (the nearest existing folder of the path: the one to make writable);
    `folder` is also where the free space is measured."""
    folder = Path(folder)
    free = shutil.disk_usage(folder).free / 2**20
    facts = f"{detail}; " if detail else ""
    return (f"{subject}: {cause} ({facts}{free:.0f} MiB free on that file system). To fix: "
            f"{todo.format(folder=folder)} or {instead}, then {then}")


def storage_errno(err: BaseException) -> int | None:
    """The errno of `err` if it is one a user can fix (STORAGE_ERRNOS), else None. Also found inside
    messages that carry no errno attribute (pyarrow's "[Errno 28]", safetensors' "os error 28")."""
    code = getattr(err, "errno", None)
    if code is None and (m := re.search(r"\[errno (\d+)\]|os error (\d+)", str(err), re.IGNORECASE)):
        code = int(m.group(1) or m.group(2))
    return code if code in STORAGE_ERRNOS else None


def nearest_folder(path: str | Path, itself: bool = False) -> Path:
    """The nearest existing folder above `path` (`path` itself first if `itself`): the one whose
    permissions and free space a failed write of `path` is about."""
    path = Path(path)
    return next((p for p in ((path,) if itself else ()) + tuple(path.parents) if p.exists()), Path("/"))


def storage_error(err: BaseException, path: str | Path) -> StorageError | None:
    """The StorageError for `err` while writing `path`, or None when `err` is not about space or
    permission. Works for errors that carry no file name (a failed write(), pyarrow's "[Errno 28]")."""
    if isinstance(err, StorageError):
        return err
    code = storage_errno(err)
    if code is None:
        return None
    where = Path(getattr(err, "filename", None) or path)
    folder = nearest_folder(where)
    cause, todo = STORAGE_ERRNOS[code]
    out = StorageError(storage_message(f"cannot write {where}", cause, todo, folder))
    out.errno, out.filename = code, str(where)
    return out


def open_wal(path: Path, schema: str, autocommit: bool = True) -> sqlite3.Connection:
    """A SQLite file several threads and processes share: WAL (readers while one writes), synchronous
    NORMAL (a committed row survives a killed process), `schema` applied. Call it inside
    `sqlite_storage_errors`, so a full disk or a read-only folder is worded for the user."""
    db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None if autocommit else "")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    return db


@contextmanager
def sqlite_storage_errors(path: Path, error: type[StorageError], subject: str, instead: str,
                          then: str) -> Iterator[None]:
    """Re-raise SQLite's full-disk / read-only / cannot-open errors (`SQLITE_STORAGE_ERRORS`) as
    `error`, worded by `storage_message` with "<subject> <path>"; other SQLite errors pass through.
    SQLite has rolled the unfinished transaction back by then: the file is not corrupt."""
    try:
        yield
    except sqlite3.OperationalError as err:
        name = getattr(err, "sqlite_errorname", "") or ""
        family = next((k for k in SQLITE_STORAGE_ERRORS if name.startswith(k)), None)
        if family is None:
            raise
        cause, todo = SQLITE_STORAGE_ERRORS[family]
        raise error(storage_message(f"{subject} {path}", cause, todo, nearest_folder(path),
                                    detail=f"{name}: {err}", instead=instead, then=then)) from err


@contextmanager
def storage_guard(path: str | Path) -> Iterator[None]:
    """Re-raise a full-disk or permission error inside the block as a StorageError naming `path`."""
    try:
        yield
    except OSError as err:
        clear = storage_error(err, path)
        if clear is None or clear is err:
            raise
        raise clear from err
