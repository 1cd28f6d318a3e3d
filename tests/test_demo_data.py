import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.demo.corpus import generate_demo
from pipelines.recipe import DemoConfig
from pipelines.demo.scenes import COLORS, SHAPES, draw_scene, sample_scene

CJK = re.compile(r"[\u4e00-\u9fff]")


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = generate_demo(tmp_path / "a", DemoConfig(num_images=24, seed=1))
    b = generate_demo(tmp_path / "b", DemoConfig(num_images=24, seed=1))
    c = generate_demo(tmp_path / "c", DemoConfig(num_images=24, seed=2))
    url_list = "captions/urls.parquet"  # holds absolute file:// URLs, so it differs by folder only
    assert {k: v for k, v in a["files"].items() if k != url_list} == \
           {k: v for k, v in b["files"].items() if k != url_list}
    ua, ub = (pd.read_parquet(tmp_path / d / url_list) for d in "ab")
    assert ua.caption.tolist() == ub.caption.tolist()
    assert [u.replace("/a/", "/b/") for u in ua.url] == ub.url.tolist()
    same_images = sum(a["files"][k] == c["files"].get(k) for k in a["files"] if k.startswith("images/"))
    assert same_images == 0

    # regenerating in the same folder after deleting it gives identical hashes, url list included
    import shutil
    shutil.rmtree(tmp_path / "a")
    assert generate_demo(tmp_path / "a", DemoConfig(num_images=24, seed=1))["files"] == a["files"]


def test_rerun_keeps_complete_corpus_and_repairs_damaged_one(tmp_path):
    out = tmp_path / "corpus"
    first = generate_demo(out, DemoConfig(num_images=12))
    image = out / "images" / "000001.jpg"
    before = image.stat().st_mtime_ns
    assert generate_demo(out, DemoConfig(num_images=12)) == first
    assert image.stat().st_mtime_ns == before
    image.write_bytes(b"damaged")
    assert generate_demo(out, DemoConfig(num_images=12)) == first
    assert Image.open(image).size[0] >= 96
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_refuses_to_overwrite_a_folder_that_is_not_a_corpus(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demo corpus"):
        generate_demo(tmp_path, DemoConfig(num_images=12))
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_vqa_files_have_the_vqav2_layout(tiny_demo):
    for split in ("vqa", "heldout"):
        questions = load(tiny_demo / split / "questions.json")
        annotations = load(tiny_demo / split / "annotations.json")
        for key in ("info", "license", "data_subtype", "task_type", "data_type"):
            assert key in questions and key in annotations
        by_id = {a["question_id"]: a for a in annotations["annotations"]}
        assert len(by_id) == len(questions["questions"]) > 0
        for q in questions["questions"]:
            a = by_id[q["question_id"]]
            assert a["image_id"] == q["image_id"]
            assert len(a["answers"]) == 10
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            majority, n = Counter(x["answer"] for x in a["answers"]).most_common(1)[0]
            assert majority == a["multiple_choice_answer"] and n >= 8
            assert a["answer_type"] in ("yes/no", "number", "other")
    train_types = {a["question_type"] for a in load(tiny_demo / "vqa" / "annotations.json")["annotations"]}
    assert {"what color is the", "how many"} <= train_types and len(train_types) >= 4
    heldout_types = {a["question_type"] for a in load(tiny_demo / "heldout" / "annotations.json")["annotations"]}
    assert heldout_types == {"what color is the"}


def test_llava_json_has_the_llava_layout(tiny_demo):
    items = load(tiny_demo / "llava" / "llava_instruct.json")
    assert len(items) > 0
    kinds = Counter(item["id"].split("_", 1)[1] for item in items)
    assert set(kinds) == {"conversation", "detail", "complex_reasoning"}
    for item in items:
        assert set(item) == {"id", "image", "conversations"}
        assert isinstance(item["image"], str) and (tiny_demo / "images" / item["image"]).is_file()
        turns = item["conversations"]
        assert len(turns) % 2 == 0 and len(turns) >= 2
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert sum(t["value"].count("<image>") for t in turns) == 1
        assert turns[0]["value"].count("<image>") == 1
    assert max(len(i["conversations"]) for i in items if i["id"].endswith("conversation")) >= 4


def test_url_list_is_an_img2dataset_input(tiny_demo):
    table = pd.read_parquet(tiny_demo / "captions" / "urls.parquet")
    assert list(table.columns) == ["url", "caption", "image_id"]
    assert table.url.str.startswith("file:///").all()
    assert all(Path(u[len("file://"):]).is_file() for u in table.url)
    assert table.caption.str.len().min() > 10


def test_alpaca_text_is_chinese_distinct_and_loads_with_datasets(tiny_demo):
    import datasets

    path = tiny_demo / "text" / "alpaca_zh.json"
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    assert ds.column_names == ["instruction", "input", "output"]
    assert len(ds) >= 300
    assert len({(r["instruction"], r["input"]) for r in ds}) == len(ds)
    assert all(CJK.search(r["instruction"]) for r in ds)
    templates = {re.sub(r"\d+|“.*?”", "#", r["instruction"])[:6] for r in ds}
    assert len(templates) >= 10


def english_segments(corpus: Path) -> set[str]:
    segs = set(pd.read_parquet(corpus / "captions" / "urls.parquet").caption)
    for split in ("vqa", "heldout"):
        segs |= {q["question"] for q in load(corpus / split / "questions.json")["questions"]}
        for a in load(corpus / split / "annotations.json")["annotations"]:
            segs |= {x["answer"] for x in a["answers"]}
    for item in load(corpus / "llava" / "llava_instruct.json"):
        segs |= {t["value"] for t in item["conversations"]}
    return segs


def test_translation_memory_covers_every_english_segment(tiny_demo):
    rows = jsonl(tiny_demo / "translation_memory.jsonl")
    memory = {r["source"]: r["target"] for r in rows}
    assert len(memory) == len(rows)
    assert all(r["source_lang"] == "en" and r["target_lang"] == "zh" for r in rows)
    # the injected off-language captions (pipelines/demo/noise.py) are not English: not in the memory
    off_language = {r["caption"] for r in load(tiny_demo / "noise" / "injected.json")["off_language"]}
    assert off_language and not off_language & set(memory)
    missing = english_segments(tiny_demo) - off_language - set(memory)
    assert not missing
    for source, target in memory.items():
        assert source.count("<image>") == target.count("<image>")
        assert CJK.search(target) or target.isdigit(), (source, target)


def test_heldout_images_never_appear_in_training_files(tiny_demo):
    eval_rows = jsonl(tiny_demo / "heldout" / "eval_zh.jsonl")
    heldout = {r["image"].split("/")[-1] for r in eval_rows}
    assert len(heldout) == 4  # 10% of 40
    urls = pd.read_parquet(tiny_demo / "captions" / "urls.parquet").url
    train_names = {u.rsplit("/", 1)[-1] for u in urls}
    train_names |= {f"{q['image_id']:06d}.jpg" for q in load(tiny_demo / "vqa" / "questions.json")["questions"]}
    train_names |= {i["image"] for i in load(tiny_demo / "llava" / "llava_instruct.json")}
    assert heldout.isdisjoint(train_names)
    truth = load(tiny_demo / "noise" / "injected.json")  # the URL list's noise adds copies of training images
    copies = {r["file"].split("/")[-1] for kind in ("exact_copies", "near_copies") for r in truth[kind]}
    assert len(train_names - copies) == 36 and copies <= train_names
    memory = {r["source"]: r["target"] for r in jsonl(tiny_demo / "translation_memory.jsonl")}
    for row in eval_rows:
        assert memory[row["question_en"]] == row["question"] and memory[row["answer_en"]] == row["answer"]


def palette_colours(image: Image.Image, min_pixels: int = 25) -> set[str]:
    """Names of palette colours that cover at least `min_pixels` pixels (nearest within 70)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32).reshape(-1, 1, 3)
    palette = np.array([c[2] for c in COLORS], dtype=np.int32).reshape(1, -1, 3)
    dist = ((pixels - palette) ** 2).sum(-1)
    nearest, close = dist.argmin(1), dist.min(1) < 70 ** 2
    counts = np.bincount(nearest[close], minlength=len(COLORS))
    return {COLORS[i][0] for i, n in enumerate(counts) if n >= min_pixels}


def test_image_pixels_match_their_colour_answers(tiny_demo):
    rows = jsonl(tiny_demo / "heldout" / "eval_zh.jsonl")
    by_image: dict[str, set[str]] = {}
    for row in rows:
        by_image.setdefault(row["image"], set()).add(row["answer_en"])
    for image, answers in by_image.items():
        with Image.open(tiny_demo / image) as im:
            assert im.mode == "RGB" and 96 <= im.width <= 160 and 96 <= im.height <= 160
            assert palette_colours(im) == answers, image


def test_scenes_are_unambiguous_and_cover_the_vocabulary():
    import random

    scenes = [sample_scene(i, random.Random(i)) for i in range(300)]
    for s in scenes:
        assert 1 <= len(s.shapes) <= 3
        assert len({x.kind for x in s.shapes}) == len({x.color for x in s.shapes}) == len({x.cell for x in s.shapes}) == len(s.shapes)
    assert {x.color for s in scenes for x in s.shapes} == set(range(len(COLORS))) and len(COLORS) >= 6
    assert {x.kind for s in scenes for x in s.shapes} == set(range(len(SHAPES)))
    assert len({s.background for s in scenes}) >= 5
    assert len({x.cell for s in scenes for x in s.shapes}) == 9
    for s in scenes[:40]:
        image = draw_scene(s)
        for shape in s.shapes:
            row, col = shape.cell
            centre = image.getpixel((int((col + 0.5) * s.width / 3), int((row + 0.5) * s.height / 3)))
            nearest = min(COLORS, key=lambda c: sum((a - b) ** 2 for a, b in zip(centre, c[2])))
            assert nearest[0] == shape.color_en


@pytest.mark.xdist_group("img2dataset")
def test_img2dataset_downloads_the_url_list(tiny_demo, tmp_path):
    from img2dataset import download

    out = tmp_path / "out"
    download(url_list=str(tiny_demo / "captions" / "urls.parquet"), input_format="parquet", url_col="url",
             caption_col="caption", output_folder=str(out), output_format="files", processes_count=1,
             thread_count=4, image_size=64, resize_mode="border", timeout=5, retries=0,
             disable_all_reencoding=False, enable_wandb=False)
    stats = [load(p) for p in out.glob("*_stats.json")]
    rows = len(pd.read_parquet(tiny_demo / "captions" / "urls.parquet"))  # 36 training images + the noise rows
    assert rows > 36 and sum(s["successes"] for s in stats) == rows and sum(s["count"] for s in stats) == rows
    captions = sorted(p.read_text() for p in out.rglob("*.txt"))
    assert captions == sorted(pd.read_parquet(tiny_demo / "captions" / "urls.parquet").caption)
