"""`Step`: how a pipeline step declares itself to the flows, the CLI and the summary.

A step is one module (or a folder whose `__init__.py` declares it) under `pipelines/steps/` that
ends with `STEP = Step(...)`: its name, the step it reads from, the folder it writes, the recipe
values its output depends on, its options (a dataclass the command line fills) and its body
`run(recipe, options) -> summary`. Registering it is one line in `pipelines/orchestration/registry.py`.

What the step does not write itself comes from shared parts: stats (`pipelines.core.stats`),
rejections (`pipelines.core.rejects`), the completion marker (`pipelines.core.completion`) and the
fingerprint that decides reruns (`pipelines.orchestration.fingerprint`: the step's recipe values,
its upstream's output and the code of its own module or folder plus everything of ours it imports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipelines.recipe import Recipe


@dataclass(frozen=True)
class NoOptions:
    """A step without command-line options."""

    partial: bool = False
    """True when the options ask for part of the step's work (`train --stage s`, `eval --checkpoint c`):
    such a run is neither cached nor marked done."""


@dataclass(frozen=True)
class EstimateOptions:
    """A step that calls an endpoint (translate, generate): `--estimate` sends nothing and prints what
    the run would cost."""

    estimate: bool = False
    """Send nothing; print requests, tokens, cache or memory hits, cost and time."""

    @property
    def partial(self) -> bool:
        return self.estimate


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Recipe, Any], dict[str, Any]]
    output: Callable[[Recipe], Path | None]
    """The folder whose `_SUCCESS` marks the step complete; None: nothing local (publish)."""
    section: Callable[[Recipe], Any]
    """The recipe values the output depends on (part of the step's fingerprint)."""
    upstream: str | None
    module: str
    """The step's module; its folder (for a step that is a package) or file, and every module of ours it
    imports, make up the code part of the fingerprint."""
    options: type = NoOptions
    """Dataclass of the step's options; filled from the command line or a flow's parameters."""

    def make_options(self, values: dict[str, Any] | None = None) -> Any:
        """The options dataclass from a dict (the CLI's arguments, a flow's JSON parameters); other keys
        are ignored, so one dict of command-line arguments serves every step."""
        names = {f.name for f in fields(self.options)}
        return self.options(**{k: v for k, v in (values or {}).items() if k in names})
