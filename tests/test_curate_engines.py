"""Ray and Dask as real engines: the curate step's image tasks on a local Ray cluster (2 CPUs) and a Dask
LocalCluster give byte-identical outputs to the default thread runner; the download step's img2dataset
`ray` distributor fetches the same images as its multiprocessing one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import pipelines.orchestration.flows  # noqa: F401  (Prefect sets up logging on import, before capture)

pytestmark = [pytest.mark.xdist_group("prefect"), pytest.mark.slow]
BASE = ["demo.num_images=40", "demo.vision_encoder=null", "curate={}", "curate.images_per_task=8"]


@pytest.fixture(scope="module")
def downloaded(prefect_server, tmp_path_factory) -> Path:
    from pipelines.orchestration.flows import STEP_FLOWS

    run = tmp_path_factory.mktemp("engines") / "run"
    for name in ("demo-data", "download"):
        assert STEP_FLOWS[name](recipe="recipes/demo.yaml", overrides=BASE, run_dir=str(run),
                                return_state=True).is_completed()
    return run


def image_tasks(flow_run_id) -> int:
    """How many `image_facts` tasks of the flow run completed (they ran on its task runner)."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                               sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
            return [r for r in runs if r.name.startswith("image_facts") and r.state.is_completed()]

    return len(asyncio.run(read()))


def curate_on(downloaded: Path, tmp_path: Path, kind: str) -> Path:
    """The curate flow on `kind`, in a run folder of its own sharing the download step's output; its
    image work ran as one task per 8 images on that runner."""
    from pipelines.orchestration.flows import STEP_FLOWS

    run = tmp_path / kind
    run.mkdir()
    (run / "download").symlink_to(downloaded / "download")
    (run / "demo-data").symlink_to(downloaded / "demo-data")
    sets = [*BASE, f"task_runner.kind={kind}", "task_runner.max_workers=2"]
    state = STEP_FLOWS["curate"](recipe="recipes/demo.yaml", overrides=sets, run_dir=str(run), return_state=True)
    assert state.is_completed(), state
    images = len({json.loads(line)["image"] for p in (downloaded / "download" / "records").glob("*.jsonl")
                  for line in p.read_text().splitlines() if json.loads(line)["image"]})
    assert image_tasks(state.state_details.flow_run_id) == -(-images // 8)
    return run / "curate"


def outputs(folder: Path) -> dict[str, bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".jsonl", ".json"}
                   and p.name != "_SUCCESS")
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def test_curate_on_ray_and_dask_matches_the_thread_runner(downloaded, tmp_path):
    threads = outputs(curate_on(downloaded, tmp_path, "threads"))
    assert any(name.startswith("records/") for name in threads)
    kept = sum(len(b.splitlines()) for name, b in threads.items() if name.startswith("records/"))
    assert kept > 0
    for kind in ("dask", "ray"):
        other = outputs(curate_on(downloaded, tmp_path, kind))
        assert other.keys() == threads.keys(), kind
        for name in threads:
            if name == "stats.json":  # per-run seconds aside, the counts must agree
                a, b = json.loads(threads[name]), json.loads(other[name])
                assert (a["read"], a["kept"], a["rejected"]) == (b["read"], b["kept"], b["rejected"]), kind
            else:
                assert other[name] == threads[name], (kind, name)


def test_download_on_the_ray_distributor_fetches_what_multiprocessing_does(downloaded, tmp_path):
    from pipelines.recipe import load_recipe
    from pipelines.steps.download.download import run_download

    run = tmp_path / "ray-download"
    run.mkdir()
    (run / "demo-data").symlink_to(downloaded / "demo-data")
    recipe = load_recipe("recipes/demo.yaml", [*BASE, "download.distributor=ray"], run)
    stats = run_download(recipe, run / "download")
    assert stats.rejected_total == 0
    for path in sorted((downloaded / "download" / "records").glob("*.jsonl")):
        ours = [json.loads(x) for x in (run / "download" / "records" / path.name).read_text().splitlines()]
        theirs = [json.loads(x) for x in path.read_text().splitlines()]
        assert [r["id"] for r in ours] == [r["id"] for r in theirs]
        sha = lambda rows: [(r.get("meta", {}).get("image_download") or {}).get("sha256") for r in rows]  # noqa: E731
        assert sha(ours) == sha(theirs)
    shutil.rmtree(run / "download")
