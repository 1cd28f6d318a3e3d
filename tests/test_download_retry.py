"""The download stage when images fail for a cause a later run may not meet (a 503, a timeout):
the stage completes, says so in `_SUCCESS` (`retry_pending`), and the next run fetches again only
the img2dataset shards holding such failures; a 404 is not retried, and a host that stays down
keeps the stage pending for `MAX_RERUNS` reruns only."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from support.image_server import ImageServer, Route, jpeg_bytes

from pipelines.steps.download import download
from pipelines.steps.download.download import run_download
from pipelines.recipe import Recipe

UNAVAILABLE = Route(b"busy", 503, "text/plain")
SLOW_S, TIMEOUT_S = 3.0, 1.0


def recipe_data(tmp: Path, server: ImageServer, paths: list[str], per_shard: int) -> dict:
    """A url_list recipe over `paths` on `server`; img2dataset shards hold `per_shard` sorted URLs."""
    urls = [server.url(p) for p in paths]
    pq.write_table(pa.table({"url": urls, "caption": [f"caption {i}" for i in range(len(urls))]}),
                   tmp / "urls.parquet")
    return {
        "name": "download-retry",
        "model": {"vision": {"init": {}}, "llm": {"init": {}}},
        "stages": {},
        "sources": [{"name": "urls", "kind": "url_list", "path": str(tmp / "urls.parquet")}],
        "download": {"image_size": 32, "resize_mode": "border", "processes": 1, "threads": 2, "retries": 0,
                     "timeout_s": TIMEOUT_S, "samples_per_shard": per_shard},
    }


def kept_urls(out: Path) -> set[str]:
    rows = [json.loads(line) for line in (out / "records" / "urls.jsonl").read_text().splitlines()]
    return {r["meta"]["image_url"] for r in rows}


def marker(out: Path, flow: bool = False) -> dict:
    """The step's `_SUCCESS` (without the flows' record), or with flow=True the flows' record in it."""
    done = json.loads((out / "_SUCCESS").read_text())
    return done.get("flow", {}) if flow else {k: v for k, v in done.items() if k != "flow"}


def fetched_since(server: ImageServer, before: dict[str, int]) -> dict[str, int]:
    return {p: n - before.get(p, 0) for p, n in server.hits.items() if n != before.get(p, 0)}


@pytest.mark.xdist_group("prefect")
def test_vcla_download_refetches_only_the_shards_with_transient_failures(prefect_server, tmp_path):
    """Run 1: a 503 and a timeout (transient), a 404 (not): exit 0, retry_pending 2. The images come
    back; run 2 (not a cache hit) fetches again the two shards holding them, and only those, and keeps
    their records. Run 3 is a cache hit."""
    from pipelines.cli.main import main

    # sorted URLs, 2 per shard: 00000 a0 a1 | 00001 b-flaky b-ok | 00002 c-gone c-ok | 00003 d-slow
    paths = ["/a0.jpg", "/a1.jpg", "/b-flaky.jpg", "/b-ok.jpg", "/c-gone.jpg", "/c-ok.jpg", "/d-slow.jpg"]
    routes = {p: Route(jpeg_bytes()) for p in paths if "ok" in p or p.startswith("/a")}
    routes["/b-flaky.jpg"] = UNAVAILABLE
    routes["/d-slow.jpg"] = Route(jpeg_bytes(), delay_s=SLOW_S)
    with ImageServer(routes) as server:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(recipe_data(tmp_path, server, paths, per_shard=2)))
        out = tmp_path / "run" / "download"
        command = ["download", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run")]

        assert main(command) == 0
        done, flow = marker(out), marker(out, flow=True)
        assert flow["summary"]["rejected"] == {"image_http_503": 1, "image_timeout": 1, "image_http_404": 1}
        assert done["retry_pending"] == flow["retry_pending"] == 2 and done["reruns"] == 0
        assert kept_urls(out) == {server.url(p) for p in ("/a0.jpg", "/a1.jpg", "/b-ok.jpg", "/c-ok.jpg")}
        untouched = {p: p.stat().st_mtime_ns for p in (out / "images").glob("0000[02]*")}
        assert len(untouched) == 2 * 3  # parquet, stats, folder of shards 00000 and 00002

        server.routes["/b-flaky.jpg"] = server.routes["/d-slow.jpg"] = Route(jpeg_bytes())  # healed
        before = dict(server.hits)
        assert main(command) == 0
        assert fetched_since(server, before) == {"/b-flaky.jpg": 1, "/b-ok.jpg": 1, "/d-slow.jpg": 1}
        redone = {p.name for p in (out / "images").glob("*_stats.json")
                  if p.stat().st_mtime_ns > max(untouched.values())}
        assert redone == {"00001_stats.json", "00003_stats.json"}
        assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
        healed, flow2 = marker(out), marker(out, flow=True)
        assert flow2["summary"]["rejected"] == {"image_http_404": 1}
        assert healed["retry_pending"] == flow2["retry_pending"] == 0 and healed["reruns"] == 1
        assert healed["output_digest"] != done["output_digest"] and flow2["output"] != flow["output"]
        assert kept_urls(out) == {server.url(p) for p in paths if p != "/c-gone.jpg"}
        rows = [json.loads(line) for line in (out / "records" / "urls.jsonl").read_text().splitlines()]
        assert all(Path(r["image"]).is_file() for r in rows)

        before, written = dict(server.hits), (out / "_SUCCESS").stat().st_mtime_ns
        assert main(command) == 0  # a cache hit: the stage task does not run (it would rewrite _SUCCESS)
        assert server.hits == before
        assert (out / "_SUCCESS").stat().st_mtime_ns == written and marker(out, flow=True) == flow2


@pytest.mark.xdist_group("download")
def test_a_host_that_stays_down_keeps_the_stage_pending_for_max_reruns_only(tmp_path, monkeypatch):
    """Always 503: each rerun fetches that one shard again (not the healthy one, not the 404) and
    changes nothing (same output_digest: nothing downstream is redone), until MAX_RERUNS reruns;
    then the stage is complete and does nothing."""
    monkeypatch.setattr(download, "MAX_RERUNS", 2)  # fewer img2dataset runs; the same rule
    paths = ["/a-down.jpg", "/b-ok.jpg", "/c-gone.jpg"]
    with ImageServer({"/a-down.jpg": UNAVAILABLE, "/b-ok.jpg": Route(jpeg_bytes())}) as server:
        recipe = Recipe.model_validate(recipe_data(tmp_path, server, paths, per_shard=1))
        out = tmp_path / "out"

        first = run_download(recipe, out)
        assert dict(first.rejected) == {"image_http_503": 1, "image_http_404": 1}
        done = marker(out)
        assert (done["retry_pending"], done["reruns"]) == (1, 0)
        for rerun in range(1, download.MAX_RERUNS + 1):
            before = dict(server.hits)
            again = run_download(recipe, out)
            assert fetched_since(server, before) == {"/a-down.jpg": 1}
            assert dict(again.rejected) == dict(first.rejected) and again.kept == first.kept == 1
            now = marker(out)
            assert now["reruns"] == rerun and now["output_digest"] == done["output_digest"]
            assert now["retry_pending"] == (1 if rerun < download.MAX_RERUNS else 0)

        before = dict(server.hits)
        assert run_download(recipe, out).to_dict() == again.to_dict()
        assert server.hits == before


@pytest.mark.parametrize("reason, transient", [
    ("image_timeout", True), ("image_connection_error", True), ("image_http_429", True), ("image_http_500", True),
    ("image_http_503", True), ("image_http_408", True), ("image_http_404", False), ("image_http_403", False),
    ("image_http_501", False), ("image_http_error", False), ("image_not_an_image", False),
    ("image_too_large", False), ("image_url_not_allowed", False), ("image_disallowed", False),
    ("image_missing", False), ("image_failed", False), ("image_truncated", False), ("empty_turn", False),
])
def test_which_failures_are_transient(reason, transient):
    assert download.is_transient(reason) is transient
