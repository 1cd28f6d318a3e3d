"""Prefect flows: one per stage, and `build_and_train` chaining them.

Every stage runs as a task whose cache key is the stage's *fingerprint*: the recipe values the
stage depends on, the upstream stage's output id and the source of the stage's own code. A
finished stage writes its fingerprint to `<output>/_FLOW.json`; a rerun with the same
fingerprint is a Prefect cache hit and does no work. A stage whose output is missing,
incomplete (a crash) or stale (other inputs or code) runs again, and resumes from what it
had written (img2dataset shards, the translation memory, training checkpoints).

Retryable work: a stage whose `_SUCCESS` says `retry_pending: N > 0` (records it dropped for a
cause a later run may not meet: an endpoint's 5xx, a timeout) is not a cache hit while N > 0:
each flow run runs it again in place (not set aside: it resumes and redoes only what failed).
Its *output id*, which the stages downstream put in their fingerprints, is its fingerprint plus
what its `_SUCCESS` says the output is (`output_digest` if it gives one, else the whole marker),
so a retry that changed the output makes them redo their work, and one that healed nothing does not.

Flow parameters are plain strings (recipe path, overrides, run folder), so the same flows can
be served as deployments with schedules (`vcla serve`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.context import TaskRunContext

from pipelines.io import read_json, write_json
from pipelines.recipe import Recipe, load_recipe
from pipelines.stages import PIPELINE, STAGES, Stage

REPO = Path(__file__).resolve().parent.parent
MARKER = "_FLOW.json"
DONE = "_SUCCESS"
PARTIAL_OPTIONS = ("stage", "checkpoint")


@lru_cache(maxsize=None)
def code_hash(paths: tuple[str, ...]) -> str:
    """sha256 over the sources of the given modules / packages (relative to the repo)."""
    h = hashlib.sha256()
    for rel in paths:
        target = REPO / rel
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for f in files:
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def fingerprint(stage: Stage, recipe: Recipe) -> str:
    """What a stage's output depends on, hashed: config, code, output place, upstream output."""
    upstream = STAGES[stage.upstream] if stage.upstream else None
    parts = {
        "stage": stage.name,
        "config": _jsonable(stage.config(recipe)),
        "code": code_hash(stage.code),
        "output": str(stage.output(recipe)),
        "upstream": recorded_output(upstream, recipe) if upstream else None,
    }
    return _sha256(parts)


def _sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def recorded(stage: Stage, recipe: Recipe) -> dict[str, Any]:
    """The stage's `_FLOW.json` ({} when it has none: never finished through the flows, or interrupted)."""
    out = stage.output(recipe)
    if out is None or not (out / MARKER).is_file():
        return {}
    return read_json(out / MARKER)


def recorded_fingerprint(stage: Stage, recipe: Recipe) -> str | None:
    return recorded(stage, recipe).get("fingerprint")


def recorded_output(stage: Stage, recipe: Recipe) -> str | None:
    """The id of the stage's finished output, which downstream fingerprints include (module docstring)."""
    marker = recorded(stage, recipe)
    return marker.get("output", marker.get("fingerprint"))


def flow_marker(key: str, out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """What `_FLOW.json` holds for a finished stage: its fingerprint, its output id, the retryable
    work its `_SUCCESS` declares, and its summary."""
    done = read_json(out / DONE) if (out / DONE).is_file() else {}
    what = done.get("output_digest", done)
    return {"fingerprint": key, "output": _sha256({"fingerprint": key, "output": what}),
            "retry_pending": int(done.get("retry_pending") or 0), "summary": summary}


def _cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    return parameters["key"]


def _transient(task, task_run, state) -> bool:
    """Retry I/O trouble (a network blip, a busy disk); a bad recipe or bad data fails at once."""
    try:
        state.result()
    except (ConnectionError, TimeoutError, BlockingIOError):
        return True
    except Exception:
        return False
    return False


@task(name="stage", cache_key_fn=_cache_key, persist_result=True, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=_transient, task_run_name="{name}")
def stage_task(name: str, key: str | None, spec: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Run one stage; `key` (its fingerprint) is what Prefect caches the result under."""
    recipe = load_recipe(spec["recipe"], spec["overrides"], spec["run_dir"])
    stage = STAGES[name]
    started = time.monotonic()
    summary = stage.run(recipe, argparse.Namespace(**options))
    summary = {**summary, "wall_s": round(time.monotonic() - started, 2)}
    out = stage.output(recipe)
    if out is not None and key is not None:
        write_json(out / MARKER, flow_marker(key, out, summary))
    return summary


def run_stage(name: str, spec: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Submit a stage task: a cache hit when its output is complete, up to date and left no
    retryable work; run in place when it left some; set aside and redone when it is stale."""
    recipe = load_recipe(spec["recipe"], spec["overrides"], spec["run_dir"])
    stage = STAGES[name]
    out = stage.output(recipe)
    # `train --stage s` or `eval --checkpoint c` does part of a stage: not cached, not marked done
    partial = any(options.get(k) for k in PARTIAL_OPTIONS)
    key = fingerprint(stage, recipe) if out is not None and not partial else None
    marker = recorded(stage, recipe)
    current = key is not None and marker.get("fingerprint") == key
    if marker and not current and not partial:
        _set_aside(name, out)
    pending = current and marker.get("retry_pending", 0) > 0
    if pending:
        _reopen(name, out, marker["retry_pending"])
    cached = current and not pending
    result = stage_task.with_options(refresh_cache=not cached)(name, key, spec, options)
    if cached:
        print(f"[{name}] up to date (fingerprint {key[:12]}); nothing to do")
    return result


def _reopen(name: str, out: Path, pending: int) -> None:
    """A finished output with retryable work left runs again in place. Its `_FLOW.json` goes first,
    so a run that fails or is killed on the way leaves it as an interrupted one (resumed next time)."""
    (out / MARKER).unlink()
    print(f"[{name}] the last run left work to retry ({out / DONE}: retry_pending {pending}); "
          "running the stage again in place: finished work is kept, only what failed is redone")


def _set_aside(name: str, out: Path) -> None:
    """A finished output whose inputs or code changed is stale: keep it beside, start afresh.

    (An output without a marker is an interrupted run; that one is resumed in place.)"""
    stale = out.with_name(out.name + ".stale")
    if stale.exists():
        shutil.rmtree(stale)
    out.rename(stale)
    print(f"[{name}] inputs or code changed since {out} was made; moved it to {stale} and redoing the stage")


def _spec(recipe: str, overrides: list[str] | None, run_dir: str | None) -> dict[str, Any]:
    return {"recipe": str(recipe), "overrides": list(overrides or []), "run_dir": run_dir}


def with_runner(flow_obj, spec: dict[str, Any]):
    """The flow with the recipe's task runner (threads by default, Dask or Ray from the recipe)."""
    from pipelines.runners import task_runner

    recipe = load_recipe(spec["recipe"], spec["overrides"], spec["run_dir"])
    return flow_obj.with_options(task_runner=task_runner(recipe.task_runner))


def _stage_flow(name: str):
    def body(recipe: str = "recipes/demo.yaml", overrides: list[str] | None = None,
             run_dir: str | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
        return run_stage(name, _spec(recipe, overrides, run_dir), {"command": name, **(options or {})})

    # Deployments import a flow by its qualified name, so each one is a module attribute below.
    body.__name__ = body.__qualname__ = f"{name.replace('-', '_')}_flow"
    return flow(name=name, log_prints=True)(body)


demo_data_flow = _stage_flow("demo-data")
download_flow = _stage_flow("download")
translate_flow = _stage_flow("translate")
render_flow = _stage_flow("render")
publish_flow = _stage_flow("publish")
train_flow = _stage_flow("train")
eval_flow = _stage_flow("eval")
STAGE_FLOWS = {f.name: f for f in (demo_data_flow, download_flow, translate_flow, render_flow, publish_flow,
                                   train_flow, eval_flow)}
assert tuple(STAGE_FLOWS) == PIPELINE


@flow(name="build-and-train", log_prints=True)
def build_and_train(recipe: str = "recipes/demo.yaml", overrides: list[str] | None = None,
                    run_dir: str | None = None) -> dict[str, Any]:
    """Every stage in order; writes and prints the run summary."""
    from pipelines.summary import summary_table, write_summary

    spec = _spec(recipe, overrides, run_dir)
    loaded = load_recipe(spec["recipe"], spec["overrides"], spec["run_dir"])
    started = time.monotonic()
    results = {}
    for name in PIPELINE:
        print(f"[build-and-train] {name} ...")
        results[name] = run_stage(name, spec, {"command": "build-and-train"})
    summary = write_summary(loaded, results, time.monotonic() - started)
    print(summary_table(summary))
    return summary
