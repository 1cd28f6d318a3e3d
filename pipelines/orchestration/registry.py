"""The registered pipeline steps, in run order: adding a step is one line here."""

from __future__ import annotations

from pipelines.core.step import Step
from pipelines.steps import curate, demo_data, download, evaluate, generate, publish, render, train, translate

STEPS: dict[str, Step] = {s.name: s for s in (
    demo_data.STEP,
    download.STEP,
    curate.STEP,
    generate.STEP,
    translate.STEP,
    render.STEP,
    publish.STEP,
    train.STEP,
    evaluate.STEP,
)}
PIPELINE = tuple(STEPS)
"""Step names in run order (build-and-train runs them all)."""
