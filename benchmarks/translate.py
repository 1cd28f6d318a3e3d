"""Translation throughput and cost: our stage vs a naive one-segment-per-request loop, one run.

    .venv/bin/python benchmarks/translate.py
    .venv/bin/python benchmarks/translate.py --segments 20000 --naive-sample 100

Both talk to the same loopback chat server (tests/support/chat_server.py) with 100 ms of
latency per request; it counts tokens as ceil(utf8 bytes / 4) on both sides.

* ours: `run_translate` on records holding 5,000 English segments, 30% of them repeats of
  others (VQA questions repeat like this): dedup, memory, batching, 16 requests in flight, QA.
* naive: the way public Chinese LLaVA sets were made: one segment per request, sequential,
  the official sync client. It is timed on a sample (default 200 segments) and its per-segment
  time extrapolated to all segments; the output says so.

Prints and writes benchmarks/results/translate.json: `speedup` (naive wall time / ours; target
>= 50), `requests_per_unique` (requests / unique segments; target <= 0.1), `billed_token_ratio`
(billed prompt + completion tokens / tokens of the unique sources and their translations;
target <= 1.3), `segments`, `lost` (segments neither in the output nor rejected; must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
RESULTS = ROOT / "benchmarks" / "results" / "translate.json"
KEY_ENV = "VCLA_BENCH_KEY"
KEY = "sk-bench-local"
LATENCY_S = 0.1

_ADJ = ["red", "blue", "green", "small", "large", "old", "young", "wooden", "striped", "shiny", "broken", "empty"]
_NOUN = ["car", "cat", "dog", "man", "woman", "bus", "table", "bench", "kite", "horse", "clock", "boat", "plate",
         "tree"]
_PLACE = ["street", "park", "kitchen", "beach", "field", "station", "market", "river", "garden", "room"]
_TEMPLATES = [
    "<image>\nWhat color is the {a} {n} in the {p}?",
    "<image>\nHow many {n}s are near the {a} {m}?",
    "A {a} {n} standing next to a {m} in the {p}.",
    "There are {k} {n}s and a {a} {m} in the {p}.",
    "Is the {n} on the left of the {a} {m}?",
    "The {a} {n} is behind the {m}, close to the {p} entrance.",
]


def make_segments(total: int, duplicate_share: float, seed: int = 0) -> tuple[list[str], int]:
    """`total` segments of which `duplicate_share` repeat earlier ones; returns (segments, unique)."""
    rng = random.Random(seed)
    unique_n = round(total * (1 - duplicate_share))
    unique: set[str] = set()
    while len(unique) < unique_n:
        t = rng.choice(_TEMPLATES)
        unique.add(t.format(a=rng.choice(_ADJ), n=rng.choice(_NOUN), m=rng.choice(_NOUN), p=rng.choice(_PLACE),
                            k=rng.randint(2, 12)))
    ordered = sorted(unique)
    rng.shuffle(ordered)
    segments = ordered + [rng.choice(ordered) for _ in range(total - unique_n)]
    rng.shuffle(segments)
    return segments, unique_n


def run_ours(server, segments: list[str], work: Path) -> dict:
    from support.translate_fixtures import make_recipe, read_jsonl, record, write_records

    from pipelines.steps.translate import run_translate

    records = [record("bench", i, "caption", ("assistant", s)) for i, s in enumerate(segments)]
    write_records(work / "download", "bench", records)
    recipe = make_recipe(work, backend="openai", base_url=server.base_url, api_key_env=KEY_ENV, model="bench-model")
    before = (server.stats.ok, server.stats.prompt_tokens, server.stats.completion_tokens)
    start = time.perf_counter()
    stats = run_translate(recipe, work / "download", work / "translate")
    wall = time.perf_counter() - start
    out = read_jsonl(work / "translate" / "records" / "bench.jsonl")
    rejected = read_jsonl(work / "translate" / "rejected" / "translate.jsonl")
    translations = {r["messages_en"][0]["content"]: r["messages"][0]["content"] for r in out}
    return {
        "wall_s": wall, "stats": stats,
        "requests": server.stats.ok - before[0],
        "billed": server.stats.prompt_tokens - before[1] + server.stats.completion_tokens - before[2],
        "translations": translations,
        "out_segments": sum(len(r["messages"]) for r in out),
        "rejected_segments": sum(len(r["record"]["messages"]) for r in rejected if r.get("record")),
    }


def run_naive(server, segments: list[str]) -> dict:
    import openai
    from support.chat_server import count_tokens

    client = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=3)
    before = (server.stats.prompt_tokens, server.stats.completion_tokens)
    useful = 0
    start = time.perf_counter()
    for text in segments:
        response = client.chat.completions.create(
            model="bench-model", temperature=0,
            messages=[{"role": "system", "content": "Translate the user's English text into Simplified Chinese."},
                      {"role": "user", "content": text}],
        )
        useful += count_tokens(text) + count_tokens(response.choices[0].message.content or "")
    wall = time.perf_counter() - start
    client.close()
    billed = server.stats.prompt_tokens - before[0] + server.stats.completion_tokens - before[1]
    return {"wall_s": wall, "per_segment_s": wall / len(segments), "billed_token_ratio": billed / useful}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=5000)
    parser.add_argument("--duplicates", type=float, default=0.3)
    parser.add_argument("--naive-sample", type=int, default=200)
    args = parser.parse_args()

    from support.chat_server import ChatServer, count_tokens

    os.environ[KEY_ENV] = KEY
    import openai.resources.chat  # noqa: F401  (the client imports it lazily: keep it out of both timings)
    segments, unique_n = make_segments(args.segments, args.duplicates)
    with ChatServer(api_key=KEY, latency_s=LATENCY_S) as server, tempfile.TemporaryDirectory() as tmp:
        ours = run_ours(server, segments, Path(tmp))
        sample = sorted(set(segments))[: args.naive_sample]
        naive = run_naive(server, sample)

    naive_wall = naive["per_segment_s"] * len(segments)
    unique = set(segments)
    useful = sum(count_tokens(s) + count_tokens(ours["translations"].get(s, "")) for s in unique)
    lost = len(segments) - ours["out_segments"] - ours["rejected_segments"]
    result = {
        "segments": len(segments), "unique_segments": unique_n, "latency_s": LATENCY_S,
        "ours_wall_s": round(ours["wall_s"], 3),
        "naive_wall_s_extrapolated": round(naive_wall, 1),
        "naive_sample_segments": len(sample), "naive_sample_wall_s": round(naive["wall_s"], 2),
        "speedup": round(naive_wall / ours["wall_s"], 1),
        "requests": ours["requests"],
        "requests_per_unique": round(ours["requests"] / unique_n, 4),
        "billed_tokens": ours["billed"],
        "billed_token_ratio": round(ours["billed"] / useful, 3),
        "naive_billed_token_ratio": round(naive["billed_token_ratio"], 3),
        "rejected": ours["rejected_segments"],
        "lost": lost,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _print(result)


def _print(r: dict) -> None:
    print(f"\ntranslate benchmark: {r['segments']} segments ({r['unique_segments']} unique), "
          f"{r['latency_s'] * 1000:.0f} ms latency per request")
    print(f"  ours : {r['ours_wall_s']:.2f} s wall, {r['requests']} requests")
    print(f"  naive: {r['naive_wall_s_extrapolated']:.0f} s wall, extrapolated from {r['naive_sample_segments']} "
          f"segments timed sequentially ({r['naive_sample_wall_s']:.1f} s)")
    rows = [
        ("wall-clock speed-up", f"{r['speedup']:.0f}x", ">= 50x", r["speedup"] >= 50),
        ("requests per unique segment", f"{r['requests_per_unique']:.3f}", "<= 0.1", r["requests_per_unique"] <= 0.1),
        ("billed / (source + translation) tokens",
         f"{r['billed_token_ratio']:.2f}  (naive {r['naive_billed_token_ratio']:.2f})", "<= 1.3",
         r["billed_token_ratio"] <= 1.3),
        ("segments lost", str(r["lost"]), "0", r["lost"] == 0),
    ]
    for name, value, target, ok in rows:
        print(f"  {name:<40} {value:<20} target {target:<8} {'ok' if ok else 'MISSED'}")
    print(f"  rejected (recorded with a reason): {r['rejected']}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
