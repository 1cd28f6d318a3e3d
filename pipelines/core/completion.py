"""A step folder is complete when its one marker, `_SUCCESS`, exists. The step writes it when it
finishes (`mark_done`), with what it wants the flows to know: `retry_pending` (records dropped for a
cause a rerun may not meet), `output_digest` (what its output is, for the steps downstream). The flows
then add their record under the key "flow" (`record_flow`: fingerprint, output id, summary); a marker
without it is a step finished outside the flows, or one the flows have not recorded yet.

Storage errors inside a step become `StepFailed` with the message naming the path and what to do."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.files import read_json, write_json
from common.layout import DONE_FILE
from common.storage import storage_error
from pipelines.core.errors import StepFailed

FLOW_KEY = "flow"
"""Where the flows keep their record in a step's `_SUCCESS`."""


@contextmanager
def step_storage_errors(step: str, folder: str | Path, *clear: type[Exception]) -> Iterator[None]:
    """Report a full disk or a permission error (and errors of the `clear` types, whose messages
    already say where and what to do) as `StepFailed`: `vcla` prints the message, no traceback."""
    try:
        yield
    except (OSError, *clear) as err:
        failure = err if isinstance(err, clear) else storage_error(err, folder)
        if failure is None:
            raise
        raise StepFailed(f"{step}: {failure}") from err


def is_done(folder: str | Path) -> bool:
    return (Path(folder) / DONE_FILE).is_file()


def mark_done(folder: str | Path, info: dict[str, Any] | None = None) -> None:
    """The step finished; `info` is what it tells the flows (a rerun replaces any earlier record)."""
    write_json(Path(folder) / DONE_FILE, info or {})


def read_marker(folder: str | Path) -> dict[str, Any]:
    """The folder's `_SUCCESS` ({} when the step has not finished)."""
    path = Path(folder) / DONE_FILE
    return read_json(path) if path.is_file() else {}


def record_flow(folder: str | Path, record: dict[str, Any]) -> None:
    """Add the flows' record to the marker (creating it for a step that writes none itself)."""
    write_json(Path(folder) / DONE_FILE, {**read_marker(folder), FLOW_KEY: record})


def forget_flow(folder: str | Path) -> None:
    """Drop the flows' record: the folder then counts as unfinished work to resume, not as up to date."""
    marker = read_marker(folder)
    if FLOW_KEY in marker:
        del marker[FLOW_KEY]
        write_json(Path(folder) / DONE_FILE, marker)
