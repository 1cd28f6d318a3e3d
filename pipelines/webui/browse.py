"""The data tab's event handlers: a page of shard rows, a page of rejected rows.

Each handler returns plain values (a status line, table rows, HTML) so the same call serves the
page and the API (`/data_page`, `/rejected`, through `gradio_client`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.webui.cards import card, table_row
from pipelines.webui.data import Filters, ShardSet
from pipelines.webui.rejected import Rejections

ALL = ""
"""The filter value meaning "any" (the dropdowns show it as the `all` label)."""
REJECTED_DETAIL = 160


class DataHandlers:
    """Over one run folder: its `render/` shards and its steps' `rejected/` rows."""

    def __init__(self, run_dir: Path, words: dict[str, str]) -> None:
        self.run_dir, self.words = Path(run_dir), words
        self.shards = ShardSet(self.run_dir / "render")
        self.rejections = Rejections(self.run_dir)

    def choices(self, column: str) -> list[tuple[str, str]]:
        """Dropdown choices (label, value) for `subset`, `source` or `task`, "all" first."""
        values = self.shards.subsets() if column == "subset" else self.shards.choices(column)
        return [(self.words["all"], ALL), *((v, v) for v in values)]

    def data_page(self, subset: str, source: str, task: str, text: str, page: float, size: float):
        """(status line, table rows, cards HTML, page shown) for 1-based `page`."""
        if not self.shards.groups:
            return self.words["no_shards"].format(self.run_dir / "render" / "data"), [], "", 1
        filters = Filters(subset=subset or None, source=source or None, task=task or None, text=text or "")
        number, size = max(1, int(page or 1)), max(1, int(size or 10))
        shown = self.shards.page(filters, number - 1, size)
        if not shown.rows and number > 1 and shown.total:  # past the end (then the count is known): the last page
            number = -(-shown.total // size)
            shown = self.shards.page(filters, number - 1, size)
        if shown.total is None:
            status = self.words["page_line_open"].format(number, len(shown.rows), (number - 1) * size + len(shown.rows) + 1)
        else:
            status = self.words["page_line"].format(number, len(shown.rows), shown.total)
        html = "".join(card(row, self.words) for row in shown.rows)
        return status, [table_row(row) for row in shown.rows], html, number

    def table_headers(self) -> list[str]:
        return [self.words[k] for k in ("col_id", "col_subset", "col_source", "col_task", "col_instruction",
                                        "col_response")]

    def rejected_headers(self) -> list[str]:
        return [self.words[k] for k in ("step", "col_source", "reason", "col_detail", "col_id", "col_location")]

    def step_choices(self) -> list[str]:
        return self.rejections.steps()

    def reason_choices(self, step: str) -> list[tuple[str, str]]:
        counts = self.rejections.reasons(step) if step else {}
        return [(self.words["all"], ALL), *((f"{r} ({n})", r) for r, n in sorted(counts.items()))]

    def rejected(self, step: str, reason: str, page: float, size: float):
        """(status line, table rows) of one page of `step`'s rejected rows (1-based `page`)."""
        if not step:
            return self.words["no_rejections"], []
        counts = self.rejections.reasons(step)
        if not counts:
            return self.words["no_rejections"], []
        by_reason = ", ".join(f"{r} {n}" for r, n in counts.most_common())
        status = self.words["rejected_line"].format(step, sum(counts.values()), by_reason)
        rows = self.rejections.page(step, reason or None, max(1, int(page or 1)) - 1, int(size or 20))
        return status, [_rejected_line(row) for row in rows]


def _rejected_line(row: dict[str, Any]) -> list[str]:
    detail = str(row.get("detail") or "")
    if len(detail) > REJECTED_DETAIL:
        detail = detail[: REJECTED_DETAIL - 1] + "…"
    return [str(row.get("stage") or ""), str(row.get("source") or ""), str(row.get("reason") or ""), detail,
            str(row.get("id") or ""), str(row.get("location") or "")]
