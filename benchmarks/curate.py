"""Curate step benchmark. Writes benchmarks/results/curate.json.

    .venv/bin/python benchmarks/curate.py                       # 10k, 100k, 1M hashes (~1 min on 2 cores)
    .venv/bin/python benchmarks/curate.py --sizes 10000 100000 --repeats 2

Near-duplicate search (`curators.near_dups.find_clusters`), threshold 8 of 64 bits (pHash near
duplicates), over synthetic 64-bit hashes: uniform random, then 2% of the items overwritten by a
copy of another item (source and copy sets disjoint) with 0-8 random bits flipped. Hashes are
passed as a uint64 array with string ids, as the curate step has them.

* ours: `find_clusters` (exact duplicates merged, multi-index hashing with k chosen by its cost
  model, union-find); the timed part is the call, not the data generation.
* baseline: `all_pairs_clusters`, every pair compared (numpy row by row, O(n^2)). It runs at the
  sizes where it is predicted to finish in `--baseline-budget` seconds (its time at the smallest
  size x (n / n_small)^2); elsewhere its time is extrapolated quadratically from the largest size
  it ran at, and the JSON says which (`all_pairs_source`, `speedup_vs_all_pairs_100k_source`).
* ours with the k of the largest size: the cost model picks k (chunks a near pair must share) per
  n, fewer and cheaper passes at 100k than at 1M; rerunning the smaller sizes with the largest
  size's k gives `growth_1m_over_100k_same_k`, the growth of one fixed algorithm.
* reference: `np.sort` of the n hashes, in the same process: how much a plain O(n log n) numpy pass
  grows from 100k to 1M on this machine (caches), the floor for `growth_1m_over_100k`.

Every measurement runs in a fresh subprocess, which reports its own peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, read in the child: RUSAGE_CHILDREN in this process
would be the largest child so far, not the one of this size) and its peak before the search (data
and ids only). Rounds are interleaved (every size and method once per round, `--repeats` rounds;
the baseline runs `--baseline-repeats` of them at sizes > 10k); medians are reported. Recall:
share of injected (source, copy) pairs that end in one cluster (must be 1.0); where the baseline
ran, its clusters must be identical to ours (`identical_to_all_pairs`).

`end_to_end`: hashing and scoring throughput (images/s per core) on 5k demo images, and the whole
curate step on them (see its docstring).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from math import comb
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "curate.json"
THRESHOLD = 8
INJECTED_FRACTION = 0.02
MAX_FLIPS = 8


def make_hashes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, sources, copies): uniform 64-bit hashes, copies[i] = sources[i] ^ (0-8 random bits)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    injected = int(n * INJECTED_FRACTION)
    order = rng.permutation(n)
    copies, sources = order[:injected], order[injected:2 * injected]
    flips = rng.integers(0, MAX_FLIPS + 1, size=injected)
    chosen = np.argsort(rng.random((injected, 64)), axis=1) < flips[:, None]  # `flips` distinct bits per row
    masks = (chosen.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    hashes[copies] = hashes[sources] ^ masks
    return hashes, sources, copies


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, n: int, seed: int, equal_chunks: int | None) -> dict:
    """One measurement in this (fresh) process."""
    from curators.near_dups import all_pairs_clusters, choose_equal_chunks, find_clusters

    hashes, sources, copies = make_hashes(n, seed)
    ids = [f"{i:07d}" for i in range(n)]
    before = peak_rss_mb()
    cpu, start = time.process_time(), time.perf_counter()
    if kind == "ours":
        clusters = find_clusters(ids, hashes, THRESHOLD, equal_chunks=equal_chunks)
    else:
        clusters = all_pairs_clusters(ids, hashes, THRESHOLD)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    result = {"seconds": seconds, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb(), "rss_before_search_mb": before,
              "clusters": len(clusters), "clustered_items": sum(1 + len(c.members) for c in clusters),
              "digest": hashlib.sha256(repr(clusters).encode()).hexdigest()[:16]}
    cluster_of = {}
    for number, cluster in enumerate(clusters):
        cluster_of[cluster.representative] = number
        for member, _ in cluster.members:
            cluster_of[member] = number
    found = sum(ids[s] in cluster_of and cluster_of.get(ids[s]) == cluster_of.get(ids[c])
                for s, c in zip(sources.tolist(), copies.tolist()))
    result["recall"] = found / max(1, len(sources))
    if kind == "ours":
        k = equal_chunks or choose_equal_chunks(len(np.unique(hashes)), THRESHOLD)
        result.update(equal_chunks=k, chunks=THRESHOLD + k, passes=comb(THRESHOLD + k, k))
        buffer = np.empty_like(hashes)
        times = []
        for _ in range(5):
            buffer[:] = hashes
            t = time.perf_counter()
            buffer.sort()
            times.append(time.perf_counter() - t)
        result["sort_ms"] = statistics.median(times) * 1e3
    return result


def run_child(kind: str, n: int, seed: int, equal_chunks: int = 0) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, str(n), str(seed), str(equal_chunks)],
                          check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def end_to_end(args: argparse.Namespace) -> dict | None:
    """The curate step's image work on `--e2e-images` demo scenes (96 px JPEGs, as the demo downloads
    them), in this one process (one core): hashing (decode, sha256, pHash) and CLIP scoring, each
    timed alone (median of `--repeats`), then the whole step (text rules and writing included).
    Scoring uses a tiny random CLIP (tests/support/tiny_clip.py: 32 px, 1 layer): it measures the
    pipeline around the model (decode, preprocess, batching, cache), not a real CLIP's compute."""
    if args.e2e_images <= 0:
        return None
    import random
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from support.tiny_clip import make_tiny_clip

    from curators.clip_score import ClipScorer, score_pairs
    from pipelines.demo.scenes import draw_scene, sample_scene
    from pipelines.recipe import load_recipe
    from pipelines.steps.curate.curate import measure, run_curate
    from templates.schema import Record, make_id

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        images = run / "download" / "images"
        images.mkdir(parents=True)
        rows, paths = [], []
        for i in range(1, args.e2e_images + 1):
            path = images / f"{i:06d}.jpg"
            draw_scene(sample_scene(i, random.Random(i))).resize((96, 96)).save(path, quality=92)
            paths.append(str(path))
            rows.append(Record(id=make_id("e2e", i), source="shapes-captions", task="caption", image=str(path),
                               messages=[{"role": "user", "content": "<image>"},
                                         {"role": "assistant", "content": f"A few coloured shapes, picture {i}."}]))
        (run / "download" / "records").mkdir()
        (run / "download" / "records" / "shapes-captions.jsonl").write_text(
            "".join(json.dumps(r.to_dict()) + "\n" for r in rows))
        plain = lambda fn, items: [fn(x) for x in items]  # noqa: E731  (one process: per-core figures)
        hashing = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            measure(paths, 1000, plain)
            hashing.append(time.perf_counter() - started)
        scorer = ClipScorer.load(make_tiny_clip(Path(tmp) / "clip"))
        pairs = [(str(i), r.messages[1]["content"], _loader(p)) for i, (r, p) in enumerate(zip(rows, paths))]
        scoring = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            score_pairs(scorer, None, pairs, 64)
            scoring.append(time.perf_counter() - started)
        recipe = load_recipe("recipes/demo.yaml", ["curate={}", "curate.report=false"], run)
        started = time.perf_counter()
        run_curate(recipe, run / "download", run / "curate", plain)
        step_s = time.perf_counter() - started
    n = args.e2e_images
    return {"images": n, "cores": 1, "hashing_s": round(statistics.median(hashing), 2),
            "hashing_images_per_s": round(n / statistics.median(hashing), 1),
            "tiny_clip_scoring_images_per_s": round(n / statistics.median(scoring), 1),
            "images_per_s": round(n / (statistics.median(hashing) + statistics.median(scoring)), 1),
            "whole_step_s": round(step_s, 2), "whole_step_images_per_s": round(n / step_s, 1),
            "note": "one process, one core; scoring with a tiny random CLIP (pipeline cost, not model compute)"}


def _loader(path: str):
    from PIL import Image

    def load():
        with Image.open(path) as im:
            return im.convert("RGB")
    return load


def plan_baseline(sizes: list[int], small_s: float, budget_s: float) -> dict[int, bool]:
    """Which sizes the all-pairs baseline runs at: predicted (n / n_small)^2 * t_small <= budget."""
    smallest = min(sizes)
    return {n: n == smallest or small_s * (n / smallest) ** 2 <= budget_s for n in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--baseline-repeats", type=int, default=3, help="baseline rounds at sizes > 10k")
    parser.add_argument("--baseline-budget", type=float, default=150.0,
                        help="run the all-pairs baseline at a size only if predicted under this many seconds")
    parser.add_argument("--e2e-images", type=int, default=5000, help="demo images for the end-to-end part (0: skip)")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "N", "SEED", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n, seed, k = args.child
        print(json.dumps(child(kind, int(n), int(seed), int(k) or None)))
        return

    sizes = sorted(args.sizes)
    load_before = os.getloadavg()
    started = time.perf_counter()
    ours: dict[int, list[dict]] = {n: [] for n in sizes}
    base: dict[int, list[dict]] = {n: [] for n in sizes}
    same_k: dict[int, list[dict]] = {n: [] for n in sizes}
    runs_baseline: dict[int, bool] = {}
    for round_ in range(args.repeats):
        for n in sizes:
            ours[n].append(run_child("ours", n, seed=n))
            if round_ == 0 and n == sizes[0]:
                base[n].append(run_child("baseline", n, seed=n))
                runs_baseline = plan_baseline(sizes, base[n][0]["seconds"], args.baseline_budget)
            elif runs_baseline.get(n) and (round_ < args.baseline_repeats or n <= 10_000):
                base[n].append(run_child("baseline", n, seed=n))
            line = f"round {round_ + 1}  {n:>9,} hashes  ours {ours[n][-1]['seconds']:8.3f} s"
            if base[n] and len(base[n]) == round_ + 1:
                line += f"  all-pairs {base[n][-1]['seconds']:8.2f} s"
            print(line, flush=True)
        large_k = ours[sizes[-1]][-1]["equal_chunks"]
        for n in sizes[:-1]:
            if ours[n][-1]["equal_chunks"] != large_k:
                same_k[n].append(run_child("ours", n, seed=n, equal_chunks=large_k))
                print(f"round {round_ + 1}  {n:>9,} hashes  ours with k={large_k} (as at {sizes[-1]:,}) "
                      f"{same_k[n][-1]['seconds']:8.3f} s", flush=True)
    load_after = os.getloadavg()
    summary = summarise(sizes, ours, base, same_k)
    summary.update(
        threshold=THRESHOLD, injected_fraction=INJECTED_FRACTION, max_flips=MAX_FLIPS, repeats=args.repeats,
        baseline_repeats_above_10k=args.baseline_repeats, statistic="median",
        rss_method="ru_maxrss of each measurement's own fresh subprocess (RUSAGE_SELF read in the child)",
        machine={"cpus": os.cpu_count(), "load_avg_before": load_before, "load_avg_after": load_after},
        wall_s=round(time.perf_counter() - started, 1), end_to_end=end_to_end(args),
    )
    if summary["end_to_end"]:
        summary["images_per_s"] = summary["end_to_end"]["images_per_s"]  # hashing + scoring, per core
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    report(summary)


def summarise(sizes: list[int], ours: dict[int, list[dict]], base: dict[int, list[dict]],
              same_k: dict[int, list[dict]]) -> dict:
    measured = max(n for n in sizes if base[n])
    measured_s = statistics.median(r["seconds"] for r in base[measured])
    per_size = {}
    for n in sizes:
        mine = ours[n]
        row = {
            "ours_s": round(statistics.median(r["seconds"] for r in mine), 4),
            "ours_s_runs": [round(r["seconds"], 4) for r in mine],
            "ours_cpu_s": round(statistics.median(r["cpu_s"] for r in mine), 4),
            "ours_peak_rss_mb": round(max(r["peak_rss_mb"] for r in mine), 1),
            "ours_rss_before_search_mb": round(max(r["rss_before_search_mb"] for r in mine), 1),
            "recall": min(r["recall"] for r in mine),
            "clusters": mine[0]["clusters"], "clustered_items": mine[0]["clustered_items"],
            "equal_chunks": mine[0]["equal_chunks"], "chunks": mine[0]["chunks"], "passes": mine[0]["passes"],
            "sort_ms": round(statistics.median(r["sort_ms"] for r in mine), 3),
        }
        if same_k[n]:
            row.update(ours_same_k_as_largest_s=round(statistics.median(r["seconds"] for r in same_k[n]), 4),
                       ours_same_k_as_largest_cpu_s=round(statistics.median(r["cpu_s"] for r in same_k[n]), 4),
                       same_k=same_k[n][0]["equal_chunks"])
        if base[n]:
            row.update(
                all_pairs_s=round(statistics.median(r["seconds"] for r in base[n]), 3),
                all_pairs_s_runs=[round(r["seconds"], 3) for r in base[n]],
                all_pairs_peak_rss_mb=round(max(r["peak_rss_mb"] for r in base[n]), 1),
                all_pairs_source="measured",
                identical_to_all_pairs=all(r["digest"] == mine[0]["digest"] for r in base[n] + mine + same_k[n]),
            )
        else:
            row.update(all_pairs_s=round(measured_s * (n / measured) ** 2, 1),
                       all_pairs_source=f"extrapolated: {measured:,} measured x ({n:,} / {measured:,})^2")
        row["speedup_vs_all_pairs"] = round(row["all_pairs_s"] / row["ours_s"], 1)
        per_size[str(n)] = row
    summary: dict = {"recall": min(r["recall"] for r in per_size.values())}
    identical = [r["identical_to_all_pairs"] for r in per_size.values() if "identical_to_all_pairs" in r]
    summary["identical_to_all_pairs"] = all(identical) if identical else None

    def ratio(key: str, big: int, small: int) -> float | None:
        if str(big) in per_size and str(small) in per_size:
            return round(per_size[str(big)][key] / per_size[str(small)][key], 2)
        return None

    summary["growth_1m_over_100k"] = ratio("ours_s", 1_000_000, 100_000)
    summary["growth_1m_over_100k_cpu"] = ratio("ours_cpu_s", 1_000_000, 100_000)
    if "ours_same_k_as_largest_s" in per_size.get("100000", {}) and "1000000" in per_size:
        summary["growth_1m_over_100k_same_k"] = round(
            per_size["1000000"]["ours_s"] / per_size["100000"]["ours_same_k_as_largest_s"], 2)
    summary["growth_100k_over_10k"] = ratio("ours_s", 100_000, 10_000)
    summary["sort_growth_1m_over_100k"] = ratio("sort_ms", 1_000_000, 100_000)
    summary["rss_growth_1m_over_100k"] = ratio("ours_peak_rss_mb", 1_000_000, 100_000)
    if "100000" in per_size:
        summary["speedup_vs_all_pairs_100k"] = per_size["100000"]["speedup_vs_all_pairs"]
        summary["speedup_vs_all_pairs_100k_source"] = per_size["100000"]["all_pairs_source"]
    if "1000000" in per_size:
        summary["speedup_vs_all_pairs_1m"] = per_size["1000000"]["speedup_vs_all_pairs"]
        summary["speedup_vs_all_pairs_1m_source"] = per_size["1000000"]["all_pairs_source"]
    summary["sizes"] = per_size
    return summary


def report(summary: dict) -> None:
    print(f"\nnear duplicates, threshold {summary['threshold']} of 64 bits, "
          f"{summary['injected_fraction']:.0%} injected copies with 0-{summary['max_flips']} flips "
          f"(medians of {summary['repeats']} interleaved rounds)")
    print(f"{'hashes':>10} {'k':>2} {'passes':>6} {'ours s':>9} {'peak MB':>8} {'all-pairs s':>12} "
          f"{'speed-up':>9} {'recall':>7} {'sort ms':>8}")
    for n, row in summary["sizes"].items():
        mark = "" if row["all_pairs_source"] == "measured" else "*"
        print(f"{int(n):>10,} {row['equal_chunks']:>2} {row['passes']:>6} {row['ours_s']:>9.3f} "
              f"{row['ours_peak_rss_mb']:>8.0f} {row['all_pairs_s']:>11.1f}{mark:1} "
              f"{row['speedup_vs_all_pairs']:>8.1f}x {row['recall']:>7.3f} {row['sort_ms']:>8.2f}")
    print("* extrapolated (quadratic) from the largest size it ran at")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("sizes",)}, indent=2))


if __name__ == "__main__":
    main()
