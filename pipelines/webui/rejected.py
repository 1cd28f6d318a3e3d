"""The data tab's other two views of a run: the rows each step rejected, and the curation report's pictures.

Every step writes what it dropped to `<run>/<step>/rejected/*.jsonl`, one JSON row per record with
`reason` and `detail` (`pipelines.core.rejects`). The files are read line by line, never whole: the
counts by reason once per file version (size and modification time), a page by skipping lines. Set-
aside folders of an earlier run (`<step>.stale`) are not shown.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

REPORT_PICTURES = ("*.png", "*.jpg", "*.jpeg", "*.webp")


class Rejections:
    """The `rejected/` rows of one run folder, by step."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._counts: dict[tuple[str, int, int], Counter] = {}

    def files(self, step: str) -> list[Path]:
        return sorted((self.run_dir / step / "rejected").glob("*.jsonl"))

    def steps(self) -> list[str]:
        """The steps that have a `rejected/` folder, in pipeline order where known."""
        found = {p.parent.parent.name for p in self.run_dir.glob("*/rejected/*.jsonl")}
        order = ["download", "curate", "generate", "translate", "render"]
        return sorted((s for s in found if not s.endswith(".stale")),
                      key=lambda s: (order.index(s) if s in order else len(order), s))

    def reasons(self, step: str) -> Counter:
        """Rejected rows of `step` by reason (cached per file version)."""
        total: Counter = Counter()
        for file in self.files(step):
            st = file.stat()
            key = (str(file), st.st_size, st.st_mtime_ns)
            if key not in self._counts:
                self._counts[key] = Counter(row.get("reason", "?") for row in json_rows(file))
            total += self._counts[key]
        return total

    def page(self, step: str, reason: str | None, number: int, size: int) -> list[dict[str, Any]]:
        """Rows `number * size` onward of `step` (only those with `reason`, when given)."""
        rows = (row for file in self.files(step) for row in json_rows(file)
                if not reason or row.get("reason") == reason)
        start = max(0, int(number)) * max(1, int(size))
        return list(islice(rows, start, start + max(1, int(size))))


def json_rows(file: Path) -> Iterator[dict[str, Any]]:
    """The JSON object rows of a JSONL file (rejected/ rows, held-out suites); a line cut short by a killed
    run, or anything but an object, is skipped."""
    with open(file, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row


def report_pictures(run_dir: Path) -> list[Path]:
    """The curation report's charts and contact sheets (`<run>/curate/report/`), when the run has them."""
    folder = Path(run_dir) / "curate" / "report"
    return sorted(p for pattern in REPORT_PICTURES for p in folder.glob(pattern))
