"""Where dropped records go: `rejected/<step>.jsonl`, one row per record with the reason.

Nothing is dropped silently: a step that drops a record calls `RejectWriter.reject`, which
both writes the row and counts it in the step's `StepStats`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.storage import storage_guard
from pipelines.core.stats import StepStats


class RejectWriter:
    """Appends rejection rows for one step; each row is flushed as it is written.

    Appending (not atomic replace) is deliberate: a killed run keeps the rejections it had
    recorded, and a rerun writes the file anew (`mode="w"`) before it re-reads its input.
    """

    def __init__(self, folder: str | Path, step: str, stats: StepStats, mode: str = "w",
                 name: str | None = None) -> None:
        self.path = Path(folder) / f"{name or step}.jsonl"
        self.step = step
        self.stats = stats
        with storage_guard(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, mode, encoding="utf-8")

    def reject(
        self,
        *,
        source: str,
        reason: str,
        detail: str = "",
        record_id: str | None = None,
        location: str | None = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        """Record one rejection. `location` is "file:line" or "file[index]" in the source."""
        row = {
            "stage": self.step,  # the row field keeps its name: rejected/*.jsonl already written
            "source": source,
            "reason": reason,
            "detail": detail,
            "id": record_id,
            "location": location,
            "record": record,
        }
        with storage_guard(self.path):
            self._f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            self._f.flush()
        self.stats.count_rejected(source, reason)

    def copy_from(self, path: str | Path) -> None:
        """Append the rows of another writer's file (a worker's part), already counted elsewhere."""
        path = Path(path)
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    self._f.write(line)
            self._f.flush()

    def close(self) -> None:
        with storage_guard(self.path):
            self._f.close()

    def __enter__(self) -> "RejectWriter":
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        try:
            self.close()
        except OSError:
            if exc_type is None:
                raise  # else the error already on its way out is the one to report
