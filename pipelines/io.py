"""Small file primitives every stage uses: atomic writes, JSONL, completion markers.

A reader must never see a half-written file: everything goes to a temp file in the same
folder and is renamed into place. A stage (or a shard of one) is complete when its marker
exists; reruns skip completed work. A write that fails for lack of space or permission is a
`StorageError` naming the path and what to do; each stage reports it as `StageFailed`
(`stage_storage_errors`), so `vcla` prints that message instead of a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp-"
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


class StorageError(OSError):
    """A write failed for lack of space or permission; the message names the path and what to do."""

    def __str__(self) -> str:
        return str(self.args[0])


def storage_error(err: BaseException, path: str | Path) -> StorageError | None:
    """The StorageError for `err` while writing `path`, or None when `err` is not about space or
    permission. Works for errors that carry no file name (a failed write(), pyarrow's "[Errno 28]")."""
    if isinstance(err, StorageError):
        return err
    code = getattr(err, "errno", None)
    if code is None and (m := re.search(r"\[errno (\d+)\]|os error (\d+)", str(err), re.IGNORECASE)):
        code = int(m.group(1) or m.group(2))
    if code not in STORAGE_ERRNOS:
        return None
    where = Path(getattr(err, "filename", None) or path)
    folder = next((p for p in where.parents if p.exists()), Path("/"))
    cause, todo = STORAGE_ERRNOS[code]
    free = shutil.disk_usage(folder).free / 2**20
    out = StorageError(f"cannot write {where}: {cause} ({free:.0f} MiB free on that file system). To fix: "
                       f"{todo.format(folder=folder)} or choose another --run-dir, then run the same command "
                       "again: finished work is kept, half-written files are never used and are cleared")
    out.errno, out.filename = code, str(where)
    return out


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


@contextmanager
def stage_storage_errors(stage: str, folder: str | Path, *clear: type[Exception]) -> Iterator[None]:
    """Report a full disk or a permission error (and errors of the `clear` types, whose messages
    already say where and what to do) as `StageFailed`: `vcla` prints the message, no traceback."""
    try:
        yield
    except (OSError, *clear) as err:
        failure = err if isinstance(err, clear) else storage_error(err, folder)
        if failure is None:
            raise
        from pipelines.stages import StageFailed  # not at the top: pipelines.stages imports the stages

        raise StageFailed(f"{stage}: {failure}") from err


def current_umask() -> int:
    """The process umask, read without changing it: os.umask() can only read it by setting it, and
    a thread creating a file meanwhile would get the wrong mode. Linux says it in /proc (>= 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _umask_by_setting()


@cache
def _umask_by_setting() -> int:
    """Fallback without /proc: set and restore once (0o077 meanwhile: never wider than intended)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode open() gives a new file under the current umask (0644 under 0022)."""
    return 0o666 & ~current_umask()


def share_tree(root: str | Path) -> None:
    """Give `root` and everything under it the modes open() and mkdir() give under the umask: for a
    folder made by mkdtemp (0700) or holding safetensors files (0600 whatever the umask since
    safetensors 0.8, save_pretrained included: safetensors#782). Symlinks are left alone."""
    root, umask = Path(root), current_umask()
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside `path`; rename it onto `path` only if the block succeeds.
    The file gets the mode open() would give it (mkstemp makes it 0600: unreadable to the group
    and others whatever the umask). A full disk or a permission error is a StorageError naming `path`."""
    path = Path(path)
    with storage_guard(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
        try:
            with os.fdopen(fd, mode, **kwargs) as f:
                os.fchmod(f.fileno(), file_mode())
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json(path: str | Path, data: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def clean_stale_temp_files(folder: str | Path) -> int:
    """Remove temp files a killed run left behind; returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.rglob(TMP_PREFIX + "*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def is_done(folder: str | Path) -> bool:
    return (Path(folder) / "_SUCCESS").is_file()


def mark_done(folder: str | Path, info: dict[str, Any] | None = None) -> None:
    write_json(Path(folder) / "_SUCCESS", info or {})
