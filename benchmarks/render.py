"""Render throughput and memory: our bucketed shard writer vs pandas `to_parquet`, one run.

    .venv/bin/python benchmarks/render.py                 # 10k and 100k rows (a few minutes on 2 cores)
    .venv/bin/python benchmarks/render.py --sizes 2000 5000

A synthetic translated corpus (224 px JPEGs, captions, VQA, conversations, text-only records) is
made once per size. Each measurement runs in a fresh subprocess that reports its own peak RSS:

* ours: `run_render` (rows built, external shuffle, dedup, split, mixing, zstd shards, card);
* baseline: the same rows built with the same `RowBuilder`, collected in a pandas DataFrame and
  written with `DataFrame.to_parquet(compression="zstd")` — no shuffle, dedup or sharding.

Writes benchmarks/results/render.json with `rows_per_s`, `baseline_rows_per_s` (at the largest
size) and `rss_growth` (our peak RSS at the largest size / at the smallest).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "render.json"
NUM_IMAGES = 1000
MIX = (("caption", 0.3), ("vqa", 0.3), ("conversation", 0.1), ("text", 0.3))


def make_images(folder: Path, n: int, size: int = 224) -> list[Path]:
    """Smooth colour fields with a little noise: JPEGs of typical photo size (~10-20 KB)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        base = np.stack([np.sin(xx * rng.uniform(1, 8) + c) * np.cos(yy * rng.uniform(1, 8)) for c in range(3)], -1)
        pixels = (127 + 100 * base + rng.normal(0, 6, base.shape)).clip(0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def make_corpus(root: Path, n_rows: int) -> None:
    from templates.schema import make_id

    images = make_images(root / "images", NUM_IMAGES)
    rng = np.random.default_rng(1)
    tasks = rng.choice([t for t, _ in MIX], size=n_rows, p=[p for _, p in MIX])
    (root / "records").mkdir(parents=True, exist_ok=True)
    with open(root / "records" / "bench.jsonl", "w", encoding="utf-8") as f:
        for i, task in enumerate(tasks):
            f.write(json.dumps(_record(i, str(task), images[i % NUM_IMAGES]), ensure_ascii=False) + "\n")


def _record(i: int, task: str, image: Path) -> dict:
    from templates.schema import make_id

    if task == "caption":
        messages = [("<image>", f"一张图片，编号{i}，画面里有几种颜色的条纹。")]
    elif task == "vqa":
        messages = [("<image>\n图中主要是什么颜色？", "红色")]
    elif task == "conversation":
        messages = [("<image>\n描述这张图片。", f"图片{i}展示了彩色的波纹图案。"), ("有几种颜色？", "三种。")]
    else:
        messages = [(f"请解释第{i}个概念。", "这是一个用于基准测试的示例回答，" * 4)]
    return {
        "id": make_id("bench", i), "source": f"bench-{task}", "task": task, "lang": "zh",
        "messages": [m for q, a in messages for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})],
        "image": None if task == "text" else str(image),
        "meta": {"original_id": i, "url": f"https://example.com/{image.name}"},
        "messages_en": None,
        "translation": {"model": "bench-model", "prompt_version": "v1", "qa": {"passed": True}},
    }


def _recipe():
    from pipelines.recipe import RenderConfig, load_recipe

    recipe = load_recipe("demo", run_dir=tempfile.gettempdir())
    return recipe.model_copy(update={"render": RenderConfig(text_per_multimodal=1.0, validation_fraction=0.05)})


def child_ours(corpus: Path, out: Path) -> dict:
    from pipelines.steps.render.render import run_render

    start = time.perf_counter()
    stats = run_render(_recipe(), corpus, out)
    return {"rows": stats.kept, "seconds": time.perf_counter() - start}


def child_baseline(corpus: Path, out: Path) -> dict:
    import pandas as pd

    from pipelines.steps.render.render import HIDDEN_COLUMNS, ImageLoader, RowBuilder, read_records
    from pipelines.core.rejects import RejectWriter
    from pipelines.core.stats import StepStats
    from templates.instructions import HintPolicy
    from templates.registry import get_template

    start = time.perf_counter()
    cfg = _recipe().render
    builder = RowBuilder(get_template(cfg.pretrain_template), get_template(cfg.sft_template),
                         HintPolicy(cfg.vqa_hint, cfg.vqa_hint_max_chars), ImageLoader(corpus))
    rows = []
    with RejectWriter(out / "rejected", "render", StepStats("render")) as rejects:
        for order, (record, loc) in enumerate(read_records(sorted((corpus / "records").glob("*.jsonl")), rejects)):
            row = builder.build(record, loc, order)
            for name in HIDDEN_COLUMNS:
                del row[name]
            rows.append(row)
    pd.DataFrame(rows).to_parquet(out / "baseline.parquet", compression="zstd")
    return {"rows": len(rows), "seconds": time.perf_counter() - start}


def run_child(kind: str, corpus: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(corpus), str(out)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--child", nargs=3, metavar=("KIND", "CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, corpus, out = args.child
        result = (child_ours if kind == "ours" else child_baseline)(Path(corpus), Path(out))
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        for n in args.sizes:
            corpus = Path(tmp) / f"corpus-{n}"
            make_corpus(corpus, n)
            results[n] = {kind: run_child(kind, corpus, Path(tmp) / f"{kind}-{n}") for kind in ("ours", "baseline")}
            for kind, r in results[n].items():
                print(f"{n:>7} rows  {kind:<8} {r['rows'] / r['seconds']:8.0f} rows/s  peak RSS {r['peak_rss_mb']:7.0f} MB")
    small, large = results[min(args.sizes)], results[max(args.sizes)]
    summary = {
        "rows_per_s": round(large["ours"]["rows"] / large["ours"]["seconds"], 1),
        "baseline_rows_per_s": round(large["baseline"]["rows"] / large["baseline"]["seconds"], 1),
        "rss_growth": round(large["ours"]["peak_rss_mb"] / small["ours"]["peak_rss_mb"], 3),
        "baseline_rss_growth": round(large["baseline"]["peak_rss_mb"] / small["baseline"]["peak_rss_mb"], 3),
        "image_px": 224,
        "sizes": {str(n): r for n, r in results.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "sizes"}, indent=2))


if __name__ == "__main__":
    main()
