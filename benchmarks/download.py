"""Download stage vs img2dataset alone, on the same 2,000 images from a loopback server.

    .venv/bin/python benchmarks/download.py [--images 2000] [--repeats 2]

Both sides get the same URL list and the same img2dataset options (`img2dataset_args` of
the same DownloadConfig); ours adds reading the source, the image checks in front of the
resizer, and the join. Runs alternate raw / ours `--repeats` times; the best wall time of
each side is compared (the machine is shared, the best run is the least disturbed one).
`startup_s` is img2dataset on a single image: its fixed cost (spawning workers).

Target: overhead_ratio = ours wall / raw wall <= 1.10.
Writes benchmarks/results/download.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipelines.steps.download.download import img2dataset_args, run_download  # noqa: E402
from pipelines.recipe import Recipe  # noqa: E402
from support.image_server import ImageServer, Route, noisy_jpeg  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "download"
RESULT = ROOT / "benchmarks" / "results" / "download.json"
DOWNLOAD = {"image_size": 64, "resize_mode": "border", "processes": 2, "threads": 16, "retries": 0,
            "timeout_s": 10.0, "samples_per_shard": 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # same for both sides
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    routes = {f"/img/{i:05d}.jpg": Route(noisy_jpeg(i)) for i in range(args.images)}
    with ImageServer(routes) as server:
        urls = [server.url(p) for p in routes]
        pq.write_table(pa.table({"url": urls, "caption": [f"image {i}" for i in range(len(urls))]}), WORK / "urls.parquet")
        pq.write_table(pa.table({"url": urls[:1]}), WORK / "one.parquet")
        recipe = make_recipe(WORK / "urls.parquet")
        startup = timed(lambda: raw(WORK / "one.parquet", WORK / "startup", recipe))
        runs = []
        for i in range(args.repeats):
            runs.append({"side": "raw", "wall_s": timed(lambda: raw(WORK / "urls.parquet", WORK / f"raw{i}", recipe))})
            phases: dict = {}
            runs.append({"side": "ours", "wall_s": timed(lambda: ours(recipe, WORK / f"ours{i}", phases)), **phases})
    report(args.images, startup, runs)


def make_recipe(url_list: Path) -> Recipe:
    return Recipe.model_validate({
        "name": "bench-download", "model": {"vision": {"init": {}}, "llm": {"init": {}}}, "stages": {},
        "sources": [{"name": "bench", "kind": "url_list", "path": str(url_list)}],
        "download": DOWNLOAD,
    })


def raw(url_list: Path, out: Path, recipe: Recipe) -> None:
    """img2dataset alone, with the options our stage would give it."""
    import img2dataset

    img2dataset.download(**img2dataset_args(recipe.download, str(url_list), str(out)))


def ours(recipe: Recipe, out: Path, phases: dict) -> None:
    """Our stage; `phases` gets its seconds per phase (read, fetch, join)."""
    stats = run_download(recipe, out)
    assert stats.kept == stats.read, f"benchmark images failed: {stats.rejected}"
    phases.update({k: v for k, v in stats.extra.items() if k.startswith("seconds.")})


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return round(time.perf_counter() - start, 2)


def report(n: int, startup: float, runs: list[dict]) -> None:
    raw_wall = min(r["wall_s"] for r in runs if r["side"] == "raw")
    ours_wall = min(r["wall_s"] for r in runs if r["side"] == "ours")
    result = {
        "images": n,
        "raw_wall_s": raw_wall,
        "ours_wall_s": ours_wall,
        "raw_images_per_s": round(n / raw_wall, 1),
        "ours_images_per_s": round(n / ours_wall, 1),
        "overhead_ratio": round(ours_wall / raw_wall, 3),
        "overhead_s": round(ours_wall - raw_wall, 2),
        "startup_s": startup,
        "target_ratio": 1.10,
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(), "python": platform.python_version()},
        "settings": DOWNLOAD,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nimg2dataset alone : {raw_wall:7.2f} s  {result['raw_images_per_s']:7.1f} images/s")
    print(f"our download stage: {ours_wall:7.2f} s  {result['ours_images_per_s']:7.1f} images/s")
    print(f"overhead ratio    : {result['overhead_ratio']:.3f}  (target <= 1.10; img2dataset start-up alone {startup:.1f} s)")
    print(f"written to {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":  # img2dataset spawns workers that re-import this file
    main()
