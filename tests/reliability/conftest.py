"""Fixtures shared by the crash/resume and storage-error tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.crash import child_env
from support.rel_runs import reference_run


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every killed or failed run is compared with (built once per worker)."""
    return reference_run(tmp_path_factory.getbasetemp() / "reliability")


@pytest.fixture(scope="module")
def env(prefect_server) -> dict[str, str]:
    return child_env({"PREFECT_API_URL": prefect_server})
