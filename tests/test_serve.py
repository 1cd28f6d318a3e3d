"""`vcla serve` on a real Prefect test server: deployments with the recipe's schedules, and a
triggered run that completes."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("prefect")

RECIPE = """\
name: served
sources:
  - {{name: shapes, kind: url_list, path: {corpus}/captions/urls.parquet}}
download: {{image_size: 32, processes: 1, threads: 4, allowed_file_roots: ["{corpus}"]}}
model: {{vision: {{init: {{}}}}, llm: {{init: {{}}}}}}
stages: {{s1: {{data: pretrain}}}}
schedules:
  - {{flow: download, cron: "0 2 * * *"}}
  - {{flow: translate, interval_s: 3600}}
"""


def read_deployments():
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.sorting import DeploymentSort

    async def read():  # limit and sort explicit: this server rejects the client's nulls
        async with get_client() as client:
            return await client.read_deployments(limit=50, sort=DeploymentSort.NAME_ASC)

    return asyncio.run(read())


def test_serve_deploys_schedules_and_runs_a_triggered_flow(prefect_server, tiny_demo, tmp_path):
    from prefect.deployments import run_deployment

    recipe = tmp_path / "served.yaml"
    recipe.write_text(RECIPE.format(corpus=tiny_demo), encoding="utf-8")
    run_dir = tmp_path / "run"
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    vcla = Path(sys.executable).parent / "vcla"
    server = subprocess.Popen([str(vcla), "serve", "--recipe", str(recipe), "--run-dir", str(run_dir)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(deployments := read_deployments()) < 2:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "vcla serve did not register its deployments"
            time.sleep(1)
        by_name = {d.name: d for d in deployments}
        assert set(by_name) == {"served-download-0", "served-translate-1"}
        assert by_name["served-download-0"].schedules[0].schedule.cron == "0 2 * * *"
        assert by_name["served-translate-1"].schedules[0].schedule.interval.total_seconds() == 3600
        assert by_name["served-download-0"].parameters["run_dir"] == str(run_dir)

        flow_run = run_deployment("download/served-download-0", timeout=180, poll_interval=1, as_subflow=False)
        if not flow_run.state.is_completed():
            server.terminate()
            pytest.fail(f"{flow_run.state}\n{server.communicate(timeout=30)[0][-4000:]}")
        assert (run_dir / "download" / "_SUCCESS").is_file()
        import pyarrow.parquet as pq

        rows = pq.read_metadata(tiny_demo / "captions" / "urls.parquet").num_rows  # 36 scenes + the corpus's noise rows
        assert (run_dir / "download" / "records" / "shapes.jsonl").read_text().count("\n") == rows > 36
    finally:
        server.terminate()
        server.wait(timeout=30)
