"""A tiny synthetic shard set (coloured shapes) in the render step's layout, for tests and benchmarks.

    write_synthetic_shards(Path("/tmp/shards"), num_images=64)   # data/{pretrain,sft}/train/*.parquet

Rows follow `templates.rows.ROW_SCHEMA`; turns are rendered with the real templates
(`none` for captions, `visualcla` for questions, multi-turn conversations and text-only rows).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from templates.registry import get_template
from templates.rows import LINEAGE_FIELDS, ROW_SCHEMA
from templates.template import render_turns

COLOURS = {"红色": (220, 30, 30), "绿色": (30, 170, 60), "蓝色": (30, 60, 220), "黄色": (230, 200, 20),
           "紫色": (140, 40, 170)}
SHAPE_DRAWERS = {"圆形": "ellipse", "正方形": "rectangle", "三角形": "polygon"}
"""Shape name -> the `ImageDraw` method that draws it."""
HINT = "请用一个词或短语回答。"


def draw(colour: str, shape: str, size: int = 64, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(im)
    s = rng.randint(size // 3, size // 2)
    x, y = rng.randint(2, size - s - 2), rng.randint(2, size - s - 2)
    box = [x, y, x + s, y + s]
    if SHAPE_DRAWERS[shape] == "polygon":
        d.polygon([(x + s // 2, y), (x, y + s), (x + s, y + s)], fill=COLOURS[colour])
    else:
        getattr(d, SHAPE_DRAWERS[shape])(box, fill=COLOURS[colour])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def shard_row(i: int, subset: str, template: str, pairs, image: bytes | None, task: str) -> dict:
    """One shard row as render writes it: `pairs` (prompt, response) rendered with `template`."""
    return {
        "id": f"{subset}-{i:06d}", "source": "synthetic", "task": task, "lang": "zh", "stage": subset,
        "template": template, "turns": render_turns(get_template(template), pairs, image=image is not None),
        "messages": [], "messages_en": None,
        "image": {"bytes": image, "path": f"{i:06d}.png"} if image is not None else None,
        "lineage": {k: None for k in LINEAGE_FIELDS}, "meta": json.dumps({}),
    }


def make_rows(num_images: int, seed: int = 0, text_rows: int = 8, sft_template: str = "visualcla"):
    rng = random.Random(seed)
    colours, shapes = list(COLOURS), list(SHAPE_DRAWERS)
    pretrain, sft = [], []
    for i in range(num_images):
        c, s = rng.choice(colours), rng.choice(shapes)
        img = draw(c, s, seed=seed * 100_003 + i)
        pretrain.append(shard_row(i, "pretrain", "none", [("", f"一个{c}的{s}。")], img, "caption"))
        if i % 4 == 3:
            pairs = [(f"图中是什么形状？", f"{s}。"), (f"它是什么颜色？", f"它是{c}的。")]
            sft.append(shard_row(i, "sft", sft_template, pairs, img, "conversation"))
        else:
            sft.append(shard_row(i, "sft", sft_template, [(f"{s}是什么颜色？\n{HINT}", c)], img, "vqa"))
    for j in range(text_rows):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        sft.append(shard_row(num_images + j, "sft", sft_template, [(f"{a}加{b}等于几？", f"{a}加{b}等于{a + b}。")],
                        None, "text"))
    rng.shuffle(sft)
    return pretrain, sft


def write_synthetic_shards(out: Path, num_images: int = 64, seed: int = 0, row_group_rows: int = 16,
                           files_per_subset: int = 2, sft_template: str = "visualcla") -> Path:
    out = Path(out)
    pretrain, sft = make_rows(num_images, seed, sft_template=sft_template)
    for subset, rows in (("pretrain", pretrain), ("sft", sft)):
        folder = out / "data" / subset / "train"
        folder.mkdir(parents=True, exist_ok=True)
        per = -(-len(rows) // files_per_subset)
        for k in range(files_per_subset):
            part = rows[k * per:(k + 1) * per]
            table = pa.Table.from_pylist(part, schema=ROW_SCHEMA)
            pq.write_table(table, folder / f"{subset}-train-{k:05d}-of-{files_per_subset:05d}.parquet",
                           row_group_size=row_group_rows)
    return out
