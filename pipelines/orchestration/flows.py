"""Prefect flows: one per step, and `build_and_train` chaining them.

Every step runs as a task whose cache key is the step's *fingerprint*: the recipe values the
step depends on, the upstream step's output id and the source of the step's own code. A
finished step's fingerprint is recorded in its `<output>/_SUCCESS` (key "flow"); a rerun with the same
fingerprint is a Prefect cache hit and does no work. A step whose output is missing,
incomplete (a crash) or stale (other inputs or code) runs again, and resumes from what it
had written (img2dataset shards, the translation memory, training checkpoints).

Retryable work: a step whose `_SUCCESS` says `retry_pending: N > 0` (records it dropped for a
cause a later run may not meet: an endpoint's 5xx, a timeout) is not a cache hit while N > 0:
each flow run runs it again in place (not set aside: it resumes and redoes only what failed).
Its *output id*, which the steps downstream put in their fingerprints, is its fingerprint plus
what its `_SUCCESS` says the output is (`output_digest` if it gives one, else the whole marker),
so a retry that changed the output makes them redo their work, and one that healed nothing does not.

Flow parameters are plain strings (recipe path, overrides, run folder), so the same flows can
be served as deployments with schedules (`vcla serve`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.context import TaskRunContext

from common.layout import DONE_FILE
from pipelines.core.completion import FLOW_KEY, forget_flow, read_marker, record_flow
from pipelines.core.step import Step
from pipelines.orchestration.fingerprint import fingerprint, sha256_json
from pipelines.orchestration.registry import PIPELINE, STEPS
from pipelines.orchestration.runners import task_runner
from pipelines.orchestration.summary import summary_table, write_summary
from pipelines.recipe import Recipe, load_recipe


def recorded(step: Step, recipe: Recipe) -> dict[str, Any]:
    """The flows' record in the step's `_SUCCESS` ({} when there is none: never finished through the
    flows, or interrupted)."""
    out = step.output(recipe)
    return read_marker(out).get(FLOW_KEY, {}) if out is not None else {}


def recorded_output(step: Step, recipe: Recipe) -> str | None:
    """The id of the step's finished output, which downstream fingerprints include (module docstring)."""
    marker = recorded(step, recipe)
    return marker.get("output", marker.get("fingerprint"))


def flow_record(key: str, out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """What the flows record for a finished step: its fingerprint, its output id, the retryable
    work the step declared, and its summary."""
    done = {k: v for k, v in read_marker(out).items() if k != FLOW_KEY}
    what = done.get("output_digest", done)
    return {"fingerprint": key, "output": sha256_json({"fingerprint": key, "output": what}),
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


@task(name="step", cache_key_fn=_cache_key, persist_result=True, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=_transient, task_run_name="{name}")
def step_task(name: str, key: str | None, spec: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Run one step; `key` (its fingerprint) is what Prefect caches the result under."""
    recipe = load_recipe(spec["recipe"], spec["overrides"], spec["run_dir"])
    step = STEPS[name]
    started = time.monotonic()
    summary = step.run(recipe, step.make_options(options))
    summary = {**summary, "wall_s": round(time.monotonic() - started, 2)}
    out = step.output(recipe)
    if out is not None and key is not None:
        record_flow(out, flow_record(key, out, summary))
    return summary


def run_step(name: str, spec: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Submit a step task: a cache hit when its output is complete, up to date and left no
    retryable work; run in place when it left some; set aside and redone when it is stale."""
    step = STEPS[name]
    # `train --stage s` or `eval --checkpoint c` does part of a step: not cached, not marked done
    partial = step.make_options(options).partial
    out, key, marker = _state(name, spec, partial)
    current = key is not None and marker.get("fingerprint") == key
    if marker and not current and not partial:
        _set_aside(name, out)
    pending = current and marker.get("retry_pending", 0) > 0
    if pending:
        _reopen(name, out, marker["retry_pending"])
    cached = current and not pending
    result = step_task.with_options(refresh_cache=not cached)(name, key, spec, options)
    if cached:
        print(f"[{name}] up to date (fingerprint {key[:12]}); nothing to do")
    return result


def _state(name: str, spec: dict[str, Any], partial: bool = False) -> tuple[Path | None, str | None, dict[str, Any]]:
    """A step's output folder, its fingerprint now (None when partial or without output) and its marker."""
    recipe = load_recipe(spec["recipe"], spec["overrides"], spec["run_dir"])
    step = STEPS[name]
    out = step.output(recipe)
    upstream = recorded_output(STEPS[step.upstream], recipe) if step.upstream else None
    key = fingerprint(step, recipe, upstream) if out is not None and not partial else None
    return out, key, recorded(step, recipe)


def train_and_evaluate_stage_by_stage(spec: dict[str, Any], recipe: Recipe) -> None:
    """Before the train step: when it has work to do and the recipe has eval suites, train every stage
    but the last one by one, each evaluated on its suites as soon as it has trained (captions after stage
    1). The whole train step then finds those stages done and trains the last; the eval step that follows
    evaluates every stage and writes the report. Finished train / eval folders of other inputs are set aside
    first, so the stages trained and evaluated here are the ones the steps keep."""
    if not recipe.eval.suites or len(recipe.stages) < 2:
        return
    out, key, marker = _state("train", spec)
    if key is not None and marker.get("fingerprint") == key:
        return  # up to date (or left retryable work, which the train step redoes in place)
    if marker:  # a finished train folder from other inputs: its stages are not this run's
        _set_aside("train", out)
    out, _, marker = _state("eval", spec)
    if marker:  # finished evaluating the old stages: this train run makes it stale, whatever its key says now
        _set_aside("eval", out)
    for stage in list(recipe.stages)[:-1]:
        run_step("train", spec, {"stage": stage})
        run_step("eval", spec, {"stage": stage})


def _reopen(name: str, out: Path, pending: int) -> None:
    """A finished output with retryable work left runs again in place. The flows' record goes first,
    so a run that fails or is killed on the way leaves it as an interrupted one (resumed next time)."""
    forget_flow(out)
    print(f"[{name}] the last run left work to retry ({out / DONE_FILE}: retry_pending {pending}); "
          "running the step again in place: finished work is kept, only what failed is redone")


def _set_aside(name: str, out: Path) -> None:
    """A finished output whose inputs or code changed is stale: keep it beside, start afresh.

    (An output without a marker is an interrupted run; that one is resumed in place.)"""
    stale = out.with_name(out.name + ".stale")
    if stale.exists():
        shutil.rmtree(stale)
    out.rename(stale)
    print(f"[{name}] inputs or code changed since {out} was made; moved it to {stale} and redoing the step")


def _spec(recipe: str, overrides: list[str] | None, run_dir: str | None) -> dict[str, Any]:
    return {"recipe": str(recipe), "overrides": list(overrides or []), "run_dir": run_dir}


def with_runner(flow_obj, spec: dict[str, Any]):
    """The flow with the recipe's task runner (threads by default, Dask or Ray from the recipe)."""
    recipe = load_recipe(spec["recipe"], spec["overrides"], spec["run_dir"])
    return flow_obj.with_options(task_runner=task_runner(recipe.task_runner))


def _step_flow(name: str):
    def body(recipe: str = "recipes/demo.yaml", overrides: list[str] | None = None,
             run_dir: str | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
        return run_step(name, _spec(recipe, overrides, run_dir), options or {})

    # Deployments import a flow by its qualified name, so each one is a module attribute below.
    body.__name__ = body.__qualname__ = f"{name.replace('-', '_')}_flow"
    return flow(name=name, log_prints=True)(body)


STEP_FLOWS = {name: _step_flow(name) for name in PIPELINE}
"""One flow per registered step."""
for _flow in STEP_FLOWS.values():  # deployments import a flow by its qualified name: make it a module attribute
    globals()[_flow.fn.__name__] = _flow


@flow(name="build-and-train", log_prints=True)
def build_and_train(recipe: str = "recipes/demo.yaml", overrides: list[str] | None = None,
                    run_dir: str | None = None) -> dict[str, Any]:
    """Every step in order; writes and prints the run summary."""
    spec = _spec(recipe, overrides, run_dir)
    loaded = load_recipe(spec["recipe"], spec["overrides"], spec["run_dir"])
    started = time.monotonic()
    results = {}
    for name in PIPELINE:
        print(f"[build-and-train] {name} ...")
        if name == "train":
            train_and_evaluate_stage_by_stage(spec, loaded)
        results[name] = run_step(name, spec, {"if_configured": True})
    summary = write_summary(loaded, results, time.monotonic() - started)
    print(summary_table(summary))
    return summary
