"""Progress bars for long steps: counts, rate and ETA (tqdm), quiet with VCLA_PROGRESS=0."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm


def bar(total: int | None, desc: str, unit: str = "rec", initial: int = 0, leave: bool = False) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, mininterval=2.0, dynamic_ncols=True, leave=leave,
                disable=os.environ.get("VCLA_PROGRESS") == "0")


T = TypeVar("T")


def counted(items: Iterable[T], pb: tqdm) -> Iterator[T]:
    """Pass `items` through, advancing `pb` by one for each."""
    for item in items:
        pb.update(1)
        yield item


def count_lines(path: str | Path, chunk: int = 1 << 22) -> int:
    """Lines in a file without decoding it (a 10 GB JSONL takes seconds), for a bar's total."""
    n = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            n += block.count(b"\n")
    return n
