"""Files a reader never sees half-written: atomic writes (temp file beside, fsync, rename) with the
mode the umask gives, of one file (`atomic_open`, `write_json`, `write_jsonl`) or of a whole folder
(`atomic_folder`, `rename_into_place`), JSON / JSONL helpers, checksums, and clearing what a killed
run left (`clean_stale_temp_files`). Every temp name starts with `TMP_PREFIX`.

A write that fails for lack of space or permission is a `common.storage.StorageError` naming the
path and what to do."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import IO, Any

from common.storage import storage_guard

TMP_PREFIX = ".tmp-"
"""Every temp file or folder of ours starts with this, so a rerun can clear what a killed run left."""


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


def share_tree(root: str | Path, folders: bool = True) -> None:
    """Give `root` (a file, or a folder and everything under it) the modes open() and mkdir() give
    under the umask: for a folder made by mkdtemp (0700) or holding safetensors files (0600 whatever
    the umask since safetensors 0.8, save_pretrained included: safetensors#782). `folders=False`
    leaves the folders' own modes alone (a folder the user made). Symlinks are left alone."""
    root, umask = Path(root), current_umask()
    for p in [root, *root.rglob("*")]:
        if p.is_symlink() or (p.is_dir() and not folders):
            continue
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def fsync_tree(root: str | Path) -> None:
    """fsync `root` (a file) or every file under it (a folder): what a rename then makes visible is
    on disk, not only in the page cache. Symlinks are left alone."""
    root = Path(root)
    for p in [root] if root.is_file() else sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def rename_into_place(staged: str | Path, target: str | Path) -> None:
    """Make a file or folder written under a temp name visible as `target` in one rename, sealed
    first: the modes the umask gives (`share_tree`) and every file fsynced. A folder already at
    `target` (an older or incomplete copy) is removed first; a file is replaced by the rename."""
    staged, target = Path(staged), Path(target)
    share_tree(staged)
    fsync_tree(staged)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    os.replace(staged, target)


def staging_path(target: str | Path) -> Path:
    """The temp name beside `target` that a folder (or a file a library writes by name) is written
    under before `rename_into_place`; deterministic, so the next run clears what a killed one left."""
    target = Path(target)
    return target.with_name(TMP_PREFIX + target.name)


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `target` (`staging_path`; one writer per target at a
    time); rename it onto `target` (`rename_into_place`) only if the block succeeds, remove it
    otherwise. A reader sees the old folder or the complete new one, never a half-written one."""
    target = Path(target)
    staging = staging_path(target)
    shutil.rmtree(staging, ignore_errors=True)  # what a killed writer left
    staging.mkdir(parents=True)
    try:
        yield staging
        rename_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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


def write_json(path: str | Path, data: Any, sort_keys: bool = True, default: Any = None) -> None:
    """`data` as indented UTF-8 JSON, atomically; `default` as json.dump's (e.g. str)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2, sort_keys=sort_keys, default=default)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]], sort_keys: bool = True) -> int:
    n = 0
    with atomic_open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=sort_keys) + "\n")
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


def clean_stale_temp_files(folder: str | Path, recursive: bool = True) -> int:
    """Remove the temp files and staging folders (`TMP_PREFIX`*) a killed run left in `folder`
    (and below it unless `recursive` is False); returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = sorted(folder.rglob(TMP_PREFIX + "*") if recursive else folder.glob(TMP_PREFIX + "*"))
    removed = 0
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink(missing_ok=True)
        else:
            continue  # inside a staging folder removed above
        removed += 1
    return removed
