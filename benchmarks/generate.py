"""Generation throughput and cost: our generate step vs a naive one-request-at-a-time loop, one run.

    .venv/bin/python benchmarks/generate.py
    .venv/bin/python benchmarks/generate.py --images 200 --naive-sample 30 --repeats 2 --latency 0.2

Everything talks to the loopback generation server (tests/support/gen_server.py) with 500 ms of
latency per answered request; it counts tokens as ceil(utf8 bytes / 4) and reports the prefix it
has seen before as `prompt_tokens_details.cached_tokens` (a provider's prefix cache).

Data: 1,000 synthetic COCO-like images, each with 2-5 English captions (caption records of a
download folder, `meta.image_id` set) and 2-8 boxes of COCO categories (an `instances_*.json`
joined by image id), kinds conversation, detail and reasoning at share 1.0: 3,000 jobs.

* ours: the real step, `run_generate(recipe, download, out)` with `generate.backend: openai`,
  `generate.concurrency: 64` (the recipe's limit: at most 64 requests in flight) and a fresh
  response cache and run folder each time: contexts, the shipped v1 few-shot prompts, cache,
  client limits and retries, parsing and checks, writing records and rejections.
* naive: the official sync client, one request at a time, no cache, the prompt files read and the
  messages built again for every request, the same jobs. 3,000 x 0.5 s is 25 minutes, so it is
  timed on the first `--naive-sample` jobs (the plan's order: every kind alike) and its time per
  job extrapolated linearly to all jobs (the requests are sequential and independent); the output
  and the JSON say so (`naive_sampled_jobs`, `naive_seconds_extrapolated`).
The two run `--repeats` times, interleaved (naive, ours, naive, ours, ...); medians are reported.
`--window-images` sets `generate.window_images` for ours (default: the recipe's default, 500).

Then, once each: a rerun of the step over the last run's cache into a new folder (must send
nothing), and a second pass with faults: a fresh cache and folder, about 10% of requests (strict
retries included) get one of 8 faults, mixed evenly: rate_limit (Retry-After 0.2 s), server_error,
hang (server holds 3 s; the recipe's `timeout_s` is 2 s for this pass), truncated_json,
wrong_shape, english, refusal, bounding_box. Request faults are retried by the client; a content
fault gets one stricter retry, and a record that fails again is a rejection with its reason.

Prints and writes benchmarks/results/generate.json: `speedup` (naive wall / ours; target >= 50
within the recipe's 64 in flight), `requests_per_record` (server requests / records kept, no
faults; <= 1.02), `requests_per_record_faults` (same with faults; <= 1.15),
`prompt_tokens_per_output_token` (billed prompt / completion tokens), `prefix_share` (token share
of the prompts in every message but the last: the shared system + few-shot prefix; >= 0.8),
`cached_share` (the server's cached_tokens / prompt_tokens), `rerun_requests` (0), `lost` (jobs
neither a record nor a rejection, both passes; must be 0).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
RESULTS = ROOT / "benchmarks" / "results" / "generate.json"
KEY_ENV = "VCLA_BENCH_KEY"
KEY = "sk-bench-local"
MODEL = "bench-gen"
CONCURRENCY = 64
FAULT_SHARE = 0.10
FAULT_KINDS = ("rate_limit", "server_error", "hang", "truncated_json", "wrong_shape", "english", "refusal",
               "bounding_box")
FAULT_TIMEOUT_S, HANG_S, RETRY_AFTER_S = 2.0, 3.0, 0.2
SOURCE = "coco-bench"

COCO = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]
_ADJ = ["small", "large", "old", "red", "white", "black", "wooden", "shiny", "striped", "blue"]
_PLACE = ["street", "park", "kitchen", "beach", "field", "living room", "station", "market", "garden", "office"]
_CAPTIONS = [
    "A {a} {n} next to a {m} in the {p}.",
    "There is a {n} and a {a} {m} in this {p}.",
    "A {n} sitting near a {m} on a sunny day.",
    "View of a {p} with a {a} {n}.",
    "Someone left a {n} beside the {a} {m}.",
    "The {a} {m} is close to a {n} in the {p}.",
]


# data -----------------------------------------------------------------------------------------
def write_download(folder: Path, images: int, seed: int = 0) -> Path:
    """`folder/records/<SOURCE>.jsonl` (one caption record per caption) and a COCO instances file
    with the boxes; returns the instances file."""
    from pipelines.sources.common import caption_messages
    from templates.schema import Record, make_id

    rng = random.Random(seed)
    records_dir = folder / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "thing"} for i, n in enumerate(COCO)]
    coco: dict = {"images": [], "categories": categories, "annotations": []}
    ann_id = 0
    with open(records_dir / f"{SOURCE}.jsonl", "w", encoding="utf-8") as f:
        for image_id in range(1, images + 1):
            file_name = f"{image_id:012d}.jpg"
            width, height = 640, 480
            coco["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            names = []
            for _ in range(rng.randint(2, 8)):
                cat = rng.randrange(len(COCO))
                names.append(COCO[cat])
                w, h = rng.uniform(20, 300), rng.uniform(20, 240)
                x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
                ann_id += 1
                coco["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": cat + 1,
                                            "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                                            "area": round(w * h, 2), "iscrowd": 0})
            for c in range(rng.randint(2, 5)):
                caption = rng.choice(_CAPTIONS).format(a=rng.choice(_ADJ), n=rng.choice(names), m=rng.choice(names),
                                                       p=rng.choice(_PLACE))
                record = Record(id=make_id(SOURCE, image_id * 10 + c), source=SOURCE, task="caption",
                                messages=caption_messages(caption), image=str(folder / "images" / file_name),
                                meta={"image_id": image_id, "annotation_id": image_id * 10 + c})
                f.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    instances = folder / "instances_bench.json"
    instances.write_text(json.dumps(coco), encoding="utf-8")
    return instances


def make_recipe(run_dir: Path, base_url: str, instances: Path, **generate):
    from pipelines.recipe import Recipe

    recipe = Recipe.model_validate({
        "name": "generate-bench",
        "generate": {"backend": "openai", "base_url": base_url, "api_key_env": KEY_ENV, "model": MODEL,
                     "concurrency": CONCURRENCY, "cache_path": str(run_dir / "generate-cache.sqlite"),
                     "boxes": [{"path": str(instances)}],
                     "kinds": {k: {"share": 1.0} for k in ("conversation", "detail", "reasoning")}, **generate},
        "model": {"vision": {"init": {}}, "llm": {"init": {}}},
        "stages": {},
    })
    recipe.run_dir = run_dir
    return recipe


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prefix_shares(log) -> tuple[float, float]:
    """Token share of every message but the last over the requests sent: (server's billing count,
    llm.estimate's count)."""
    from support.gen_server import _message_tokens

    from llm.estimate import prompt_tokens

    prefix = total = est_prefix = est_total = 0
    for r in log:
        if not r.messages:
            continue
        toks = [_message_tokens(m) for m in r.messages]
        prefix, total = prefix + sum(toks[:-1]), total + sum(toks)
        est_prefix += prompt_tokens(r.messages[:-1])
        est_total += prompt_tokens(r.messages)
    return prefix / max(1, total), est_prefix / max(1, est_total)


# runs -----------------------------------------------------------------------------------------
def run_ours(download: Path, instances: Path, run_dir: Path, latency: float, faults: bool = False,
             cache_from: Path | None = None, window: int | None = None) -> dict:
    """One run of the step against a fresh server; `cache_from`: reuse that run's response cache."""
    from support.gen_server import GenServer

    from common.layout import DONE_FILE
    from pipelines.steps.generate.generate import run_generate

    extra: dict = {"timeout_s": FAULT_TIMEOUT_S} if faults else {}
    if window is not None:
        extra["window_images"] = window
    with GenServer(api_key=KEY, latency_s=latency, hang_s=HANG_S, seed=7) as server:
        if faults:
            p = 1 - (1 - FAULT_SHARE) ** (1 / len(FAULT_KINDS))  # P(some fault) = FAULT_SHARE
            for kind in FAULT_KINDS:
                server.add_fault(kind, probability=p, retry_after=str(RETRY_AFTER_S))  # type: ignore[arg-type]
        recipe = make_recipe(cache_from or run_dir, server.base_url, instances, **extra)
        out = run_dir / "generate"
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the step's stats table
            run_generate(recipe, download, out)
        wall = time.perf_counter() - start
        server.wait_idle(HANG_S + 5)
        s = server.stats
        log = list(server.log)
        prefix_share, prefix_share_est = prefix_shares(log) if log else (0.0, 0.0)
        server_side = {"requests": s.requests, "ok": s.ok, "statuses": dict(s.statuses),
                       "faults": dict(s.faults), "strict_requests": s.strict_requests,
                       "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
                       "cached_tokens": s.cached_tokens, "peak_in_flight": s.peak_active}
    records = read_jsonl(out / "records" / "generated.jsonl")
    rejected = [r for r in read_jsonl(out / "rejected" / "generate.jsonl") if r.get("source") == "generated"]
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))["extra"]
    done = json.loads((out / DONE_FILE).read_text(encoding="utf-8")) if (out / DONE_FILE).exists() else {}
    jobs = 3 * stats.get("images", 0)
    return {
        "wall_s": wall, "jobs": jobs, "records": len(records), "rejected": len(rejected),
        "rejected_by_reason": dict(Counter(r["reason"] for r in rejected)),
        "lost": jobs - len(records) - len(rejected),
        "retry_pending": done.get("retry_pending"),
        "client_retries": stats.get("retries", 0), "strict_retries": stats.get("strict_retries", 0),
        "cache_hits": stats.get("cache_hits", 0),
        "prefix_share": prefix_share, "prefix_share_estimate": prefix_share_est, **server_side,
    }


def naive_jobs(download: Path, instances: Path, run_dir: Path, n: int):
    """The first `n` jobs of the step's own plan (same contexts, kinds and order as ours)."""
    from pipelines.steps.generate.generate import plan_jobs
    from pipelines.steps.generate.contexts import collect_contexts

    recipe = make_recipe(run_dir, "http://127.0.0.1:9/v1", instances)
    contexts, _ = collect_contexts(recipe, download / "records", None)
    return recipe.generate, plan_jobs(contexts, recipe.generate)[:n]


def run_naive(cfg, jobs, latency: float) -> dict:
    """One request at a time, no cache, the prompts read and the messages built for every request."""
    import openai
    from support.gen_server import GenServer

    from generators.prompt_set import load_prompts

    with GenServer(api_key=KEY, latency_s=latency, seed=7) as server:
        client = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=3)
        parsed = 0
        start = time.perf_counter()
        for job in jobs:
            prompts = load_prompts(cfg)
            messages = prompts.messages(job.kind, job.context.text())
            response = client.chat.completions.create(
                model=MODEL, messages=messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                response_format={"type": "json_object"})
            parsed += isinstance(json.loads(response.choices[0].message.content or "null"), dict)
        wall = time.perf_counter() - start
        client.close()
        s = server.stats
        return {"wall_s": wall, "per_job_s": wall / len(jobs), "requests": s.requests, "parsed": parsed,
                "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens}


# main -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--naive-sample", type=int, default=60, help="jobs the naive loop is timed on")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved (naive sample, ours) pairs; medians")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per answered request")
    parser.add_argument("--window-images", type=int, default=None,
                        help="generate.window_images for ours (default: the recipe's default)")
    parser.add_argument("--no-write", action="store_true", help="print only (a trial run)")
    args = parser.parse_args()

    os.environ[KEY_ENV] = KEY
    os.environ["VCLA_PROGRESS"] = "0"
    logging.disable(logging.WARNING)  # the client logs each retry of the fault pass
    import openai.resources.chat  # noqa: F401  (imported lazily by the client: keep it out of the timings)

    from generators.config import GenerateConfig

    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gen-bench-") as tmp:
        work = Path(tmp)
        download = work / "download"
        instances = write_download(download, args.images)
        cfg, sample = naive_jobs(download, instances, work / "plan", args.naive_sample)
        naive_runs, ours_runs = [], []
        for r in range(args.repeats):
            naive_runs.append(run_naive(cfg, sample, args.latency))
            ours_runs.append(run_ours(download, instances, work / f"ours-{r}", args.latency,
                                       window=args.window_images))
            print(f"  repeat {r + 1}/{args.repeats}: naive {naive_runs[-1]['per_job_s'] * 1000:.0f} ms/job, "
                  f"ours {ours_runs[-1]['wall_s']:.2f} s for {ours_runs[-1]['jobs']} jobs", flush=True)
        last = work / f"ours-{args.repeats - 1}"
        rerun = run_ours(download, instances, work / "rerun", args.latency, cache_from=last,
                         window=args.window_images)
        faulty = run_ours(download, instances, work / "faults", args.latency, faults=True,
                          window=args.window_images)
    load_after = os.getloadavg()

    ours = sorted(ours_runs, key=lambda r: r["wall_s"])[len(ours_runs) // 2]
    naive_per_job = statistics.median(r["per_job_s"] for r in naive_runs)
    naive_wall = naive_per_job * ours["jobs"]
    naive_tok = naive_runs[0]
    result = {
        "images": args.images, "jobs": ours["jobs"], "latency_s": args.latency, "concurrency": CONCURRENCY,
        "window_images": args.window_images or GenerateConfig.model_fields["window_images"].default,
        "repeats": args.repeats, "statistic": "median",
        "speedup": round(naive_wall / ours["wall_s"], 1),
        "ours_wall_s": round(ours["wall_s"], 2),
        "ours_wall_s_runs": [round(r["wall_s"], 2) for r in ours_runs],
        "ideal_wall_s": round(-(-ours["jobs"] // CONCURRENCY) * args.latency, 2),
        "naive_sampled_jobs": len(sample),
        "naive_sample_wall_s_runs": [round(r["wall_s"], 2) for r in naive_runs],
        "naive_seconds_per_job": round(naive_per_job, 4),
        "naive_seconds_extrapolated": round(naive_wall, 1),
        "requests_per_record": round(ours["requests"] / max(1, ours["records"]), 4),
        "requests_per_record_faults": round(faulty["requests"] / max(1, faulty["records"]), 4),
        "prompt_tokens_per_output_token": round(ours["prompt_tokens"] / max(1, ours["completion_tokens"]), 2),
        "naive_prompt_tokens_per_output_token":
            round(naive_tok["prompt_tokens"] / max(1, naive_tok["completion_tokens"]), 2),
        "prefix_share": round(ours["prefix_share"], 4),
        "prefix_share_estimate_tokenizer": round(ours["prefix_share_estimate"], 4),
        "cached_share": round(ours["cached_tokens"] / max(1, ours["prompt_tokens"]), 4),
        "rerun_requests": rerun["requests"],
        "rerun_records": rerun["records"],
        "lost": sum(r["lost"] for r in ours_runs) + rerun["lost"] + faulty["lost"],
        "lost_no_faults": sum(r["lost"] for r in ours_runs), "lost_rerun": rerun["lost"], "lost_faults": faulty["lost"],
        "no_faults": {k: v for k, v in ours.items() if k not in ("prefix_share", "prefix_share_estimate")},
        "faults": {**{k: v for k, v in faulty.items() if k not in ("prefix_share", "prefix_share_estimate")},
                   "fault_share": FAULT_SHARE, "timeout_s": FAULT_TIMEOUT_S, "hang_s": HANG_S,
                   "retry_after_s": RETRY_AFTER_S},
        "naive_runs": naive_runs,
        "machine": {"cpus": os.cpu_count(), "load_avg_before": [round(v, 2) for v in load_before],
                    "load_avg_after": [round(v, 2) for v in load_after], "python": platform.python_version()},
        "benchmark_wall_s": round(time.perf_counter() - started, 1),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _print(result, args.no_write)


def _print(r: dict, trial: bool) -> None:
    f, n = r["faults"], r["no_faults"]
    print(f"\ngenerate benchmark: {r['images']} images x 3 kinds = {r['jobs']} jobs, "
          f"{r['latency_s'] * 1000:.0f} ms latency per request, {r['concurrency']} in flight (the recipe's limit), "
          f"generate.window_images {r['window_images']}")
    print(f"  ours : {r['ours_wall_s']:.2f} s wall (median of {r['ours_wall_s_runs']}; "
          f"{r['ideal_wall_s']:.1f} s is the least {r['concurrency']} in flight allow), "
          f"{n['requests']} requests, peak {n['peak_in_flight']} in flight")
    print(f"  naive: {r['naive_seconds_extrapolated']:.0f} s wall, EXTRAPOLATED from the first "
          f"{r['naive_sampled_jobs']} jobs timed sequentially ({r['naive_sample_wall_s_runs']} s; "
          f"{r['naive_seconds_per_job'] * 1000:.0f} ms/job x {r['jobs']})")
    rows = [
        ("wall-clock speed-up", f"{r['speedup']:.1f}x", ">= 50x", r["speedup"] >= 50),
        ("requests per record, no faults", f"{r['requests_per_record']:.3f}", "<= 1.02",
         r["requests_per_record"] <= 1.02),
        ("requests per record, 10% faults", f"{r['requests_per_record_faults']:.3f}", "<= 1.15",
         r["requests_per_record_faults"] <= 1.15),
        ("prompt tokens billed per output token", f"{r['prompt_tokens_per_output_token']:.2f}", "-", None),
        ("share of prompt tokens in shared prefix", f"{r['prefix_share']:.3f}", ">= 0.8", r["prefix_share"] >= 0.8),
        ("  server cached_tokens / prompt_tokens", f"{r['cached_share']:.3f}", "-", None),
        ("requests on a rerun over the cache", str(r["rerun_requests"]), "0", r["rerun_requests"] == 0),
        ("jobs lost (every run, both passes)", str(r["lost"]), "0", r["lost"] == 0),
    ]
    for name, value, target, ok in rows:
        verdict = "" if ok is None else "PASS" if ok else "FAIL"
        print(f"  {name:<42} {value:<10} target {target:<8} {verdict}")
    print(f"  fault pass: {f['wall_s']:.1f} s, {f['requests']} requests for {f['records']} records + "
          f"{f['rejected']} rejections; faults fired {f['faults']}; client retries {f['client_retries']}, "
          f"strict retries {f['strict_retries']}; rejected by reason {f['rejected_by_reason']}")
    m = r["machine"]
    print(f"  machine: {m['cpus']} CPUs, load average {m['load_avg_before']} before, {m['load_avg_after']} after; "
          f"benchmark took {r['benchmark_wall_s']:.0f} s")
    print("trial run: nothing written" if trial else f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
