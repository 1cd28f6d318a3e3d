"""Session-wide test settings and shared fixtures.

Nothing here may reach the network: the hub and Prefect are pointed at temp folders/offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset's albumentations phones home otherwise

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A 40-image demo corpus, generated once per test session (read-only for tests)."""
    from pipelines.demo.corpus import generate_demo
    from pipelines.recipe import DemoConfig

    out = tmp_path_factory.mktemp("demo") / "corpus"
    generate_demo(out, DemoConfig(num_images=40, seed=7))
    return out


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server (prefect_test_harness), started once per test session and worker."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
