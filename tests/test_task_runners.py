"""Render through the recipe's task runner: a 2-worker Dask LocalCluster gives the same shards."""

import json
import shutil

import pytest

from pipelines.orchestration.flows import STEP_FLOWS, with_runner

pytestmark = pytest.mark.xdist_group("prefect")


def run_step(name: str, run_dir, overrides: list[str]):
    # a validation split too (at 40 images the recipe's 5% may be empty): 4 shard sets to compare
    spec = {"recipe": "recipes/demo.yaml", "overrides": ["demo.num_images=40", "render.validation_fraction=0.2", *overrides],
            "run_dir": str(run_dir)}
    state = with_runner(STEP_FLOWS[name], spec)(**spec, return_state=True)
    assert state.is_completed(), state
    return state


def shard_checksums(run_dir) -> dict[str, str]:
    manifest = json.loads((run_dir / "render" / "manifest.json").read_text(encoding="utf-8"))
    found = {}
    def walk(node):
        if isinstance(node, dict):
            if "sha256" in node and "path" in node:
                found[node["path"]] = node["sha256"]
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(manifest)
    return found


def spill_tasks(flow_run_id) -> int:
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                               sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=100)
            return [r for r in runs if r.name.startswith("spill_part") and r.state.is_completed()]

    return len(asyncio.run(read()))


def test_render_on_dask_matches_the_thread_runner(prefect_server, tmp_path):
    run_dir = tmp_path / "run"
    for stage in ("demo-data", "download", "curate", "generate", "translate"):
        run_step(stage, run_dir, [])
    threads = run_step("render", run_dir, [])
    expected = shard_checksums(run_dir)
    assert len(expected) >= 3
    sources = len(list((run_dir / "translate" / "records").glob("*.jsonl")))
    assert spill_tasks(threads.state_details.flow_run_id) == sources

    shutil.rmtree(run_dir / "render")
    dask = run_step("render", run_dir, ["task_runner.kind=dask", "task_runner.max_workers=2"])
    assert spill_tasks(dask.state_details.flow_run_id) == sources
    assert shard_checksums(run_dir) == expected
