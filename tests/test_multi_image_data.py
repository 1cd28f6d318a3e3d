"""Several images per record through the data steps (issue 17): LLaVA-Interleave items whose `image` is a
list, fetched from a loopback server with img2dataset (download), judged image by image and kept or dropped
whole (curate), skipped as generate contexts, rendered into shards whose `images` column `datasets` decodes
as a list of images."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.recipe import RenderConfig, Recipe, load_recipe
from pipelines.steps.curate import run_curate
from pipelines.steps.download.download import run_download
from pipelines.steps.render import run_render
from support.image_server import ImageServer, Route, encode
from templates.registry import get_template
from templates.schema import make_id
from training.tokenizer import build_tokenizer

pytestmark = pytest.mark.xdist_group("download")


def noise_jpeg(seed: int, side: int = 48) -> bytes:
    """A picture of its own (flat colours share a pHash: curate would call them near-duplicates)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels).resize((side, side), Image.NEAREST), "JPEG", quality=95)


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [t for q, a in pairs for t in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]


# id -> (images, conversation). "story" has the lowest record id, so its images represent their copies.
ITEMS = {
    "story": (["a.jpg", "b.jpg"], turns(("<image>\n第一张图里是什么？", "一些彩色方块。"), ("那<image>呢？", "另一些方块。"))),
    "broken": (["a.jpg", "gone.jpg"], turns(("<image><image>\n两张图有什么不同？", "不知道。"))),
    "copy": (["a-copy.jpg", "b-copy.jpg"], turns(("<image>和<image>一样吗？", "一样。"))),
    "half": (["a-again.jpg", "c.jpg"], turns(("<image>\n<image>\n比较这两张图。", "第二张不同。"))),
    "tiny": (["c.jpg", "small.jpg"], turns(("<image><image>\n哪张更小？", "第二张。"))),
    "one": (["b.jpg"], turns(("<image>\nDescribe the image concisely.", "彩色方块。"))),  # a caption
}


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    assert make_id("llava", "story") == min(make_id("llava", k) for k in ITEMS)
    tmp = tmp_path_factory.mktemp("multi")
    a, b = noise_jpeg(1), noise_jpeg(2)
    routes = {"/a.jpg": Route(a), "/b.jpg": Route(b), "/a-copy.jpg": Route(a), "/b-copy.jpg": Route(b),
              "/a-again.jpg": Route(a), "/c.jpg": Route(noise_jpeg(3)), "/small.jpg": Route(noise_jpeg(4, side=16))}
    items = [{"id": k, "image": ims if len(ims) > 1 else ims[0], "conversations": conv} for k, (ims, conv) in ITEMS.items()]
    (tmp / "interleave.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    with ImageServer(routes) as server:
        recipe = Recipe.model_validate({
            "name": "multi-image", "model": {"vision": {"init": {}}, "llm": {"init": {}}}, "stages": {},
            "sources": [{"name": "llava", "kind": "llava", "path": str(tmp / "interleave.json"),
                         "image_root": server.url("/"), "lang": "zh"}],
            "download": {"image_size": 64, "resize_mode": "border", "processes": 1, "threads": 4, "retries": 0,
                         "timeout_s": 5.0, "samples_per_shard": 16},
            "curate": {"near": {"keep_text": False}, "text": {"mode": "off"}, "report": False},
            "generate": {"model": "m", "backend": "cache", "cache_path": str(tmp / "generate.sqlite")},
        })
        download = run_download(recipe, tmp / "download")
    curate = run_curate(recipe, tmp / "download", tmp / "curate")
    return tmp, recipe, download, curate


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _by_id(rows: list[dict], key=lambda r: r["id"]) -> dict[str, dict]:
    ids = {make_id("llava", k): k for k in ITEMS}
    return {ids[key(r)]: r for r in rows}


def test_download_fetches_each_image_and_rejects_a_record_whole_naming_its_failed_image(steps):
    tmp, _, stats, _ = steps
    kept = _by_id(_lines(tmp / "download" / "records" / "llava.jsonl"))
    assert sorted(kept) == ["copy", "half", "one", "story", "tiny"]
    story = kept["story"]
    assert isinstance(story["image"], list) and len(story["image"]) == 2 and all(Path(p).is_file() for p in story["image"])
    assert [u.rsplit("/", 1)[1] for u in story["meta"]["image_url"]] == ["a.jpg", "b.jpg"]
    assert [d["original_width"] for d in story["meta"]["image_download"]] == [48, 48]
    assert isinstance(kept["one"]["image"], str) and kept["one"]["image"] == story["image"][1]  # fetched once
    (rejected,) = _lines(tmp / "download" / "rejected" / "download.jsonl")
    assert rejected["reason"] == "image_http_404" and rejected["detail"].startswith("image[1] of 2: http://")
    assert "gone.jpg" in rejected["detail"] and stats.rejected == {"image_http_404": 1}
    assert stats.extra["images_requested"] == 8 and stats.extra["images_fetched"] == 7


def test_curate_judges_each_image_and_keeps_or_drops_the_record_whole(steps):
    tmp, _, _, stats = steps
    kept = _by_id(_lines(tmp / "curate" / "records" / "llava.jsonl"))
    dropped = _by_id(_lines(tmp / "curate" / "rejected" / "curate.jsonl"), key=lambda r: r["id"])
    assert sorted(kept) == ["half", "one", "story"] and sorted(dropped) == ["copy", "tiny"]
    assert dropped["copy"]["reason"] == "duplicate_image"  # every one of its images is a copy
    assert dropped["copy"]["detail"].startswith("every image duplicates another; image[0] of 2: duplicate of ")
    assert [im["duplicate_of"] for im in dropped["copy"]["record"]["images"]] == kept["story"]["image"]
    assert dropped["tiny"]["reason"] == "too_small" and dropped["tiny"]["detail"].startswith("image[1] of 2: 16x16")
    half = kept["half"]  # one copy among its images: kept, the copy pointed at its representative
    assert half["image"][0] == kept["story"]["image"][0] and half["image"][1].endswith(".jpg")
    assert [d["index"] for d in half["meta"]["curate"]["duplicate_of"]] == [0]
    assert len(half["meta"]["curate"]["phash"]) == 2 and isinstance(kept["one"]["meta"]["curate"]["phash"], str)
    assert stats.rejected == {"duplicate_image": 1, "too_small": 1}


def test_generate_skips_multi_image_records_as_contexts_and_counts_them(steps):
    from pipelines.steps.generate.contexts import collect_contexts

    tmp, recipe, _, _ = steps
    counts: Counter = Counter()
    contexts, heldout = collect_contexts(recipe, tmp / "curate" / "records", None, counts)
    assert counts["multi_image_records_skipped"] == 2 and heldout == 0
    (image,) = contexts  # the story's second image: its caption comes from the one-image record only
    assert image == _by_id(_lines(tmp / "curate" / "records" / "llava.jsonl"))["one"]["image"]
    assert contexts[image].captions == ["彩色方块。"] and contexts[image].qa == []


def test_rendered_shards_hold_a_list_of_images_that_datasets_decodes(steps):
    import datasets

    tmp, _, _, _ = steps
    tok_dir = tmp / "tokenizer"
    preamble = get_template("visualcla").system + "### Instruction: \n### Response:"
    build_tokenizer([preamble, "第一张图里是什么？一些彩色方块。那呢另比较这两不同这是什么"] * 3, vocab_size=400).save_pretrained(tok_dir)
    recipe = load_recipe("demo", run_dir="/nonexistent")
    vision = recipe.model.vision.model_copy(update={"path": None, "init": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 48}})
    llm = recipe.model.llm.model_copy(update={"tokenizer": str(tok_dir)})
    model = recipe.model.model_copy(update={"vision": vision, "llm": llm})
    render = RenderConfig(text_per_multimodal=0.0, validation_fraction=0.0, row_group_rows=8)
    stats = run_render(recipe.model_copy(update={"render": render, "model": model}), tmp / "curate", tmp / "render")
    assert stats.kept == 3 and stats.rejected_total == 0
    files = sorted(str(p) for p in (tmp / "render" / "data").rglob("*.parquet"))
    rows = {r["id"]: r for r in datasets.load_dataset("parquet", data_files=files, split="train")}
    rows = {k: rows[make_id("llava", k)] for k in ("story", "half", "one")}
    for name in ("story", "half"):
        images = rows[name]["images"]
        assert rows[name]["image"] is None and len(images) == 2
        assert all(isinstance(im, Image.Image) and im.size == (64, 64) for im in images)
    assert rows["one"]["images"] is None and isinstance(rows["one"]["image"], Image.Image)
    a = Image.open(io.BytesIO(noise_jpeg(1))).resize((64, 64), Image.BOX)
    first = np.asarray(rows["story"]["images"][0], dtype=np.float32)
    assert np.abs(first - np.asarray(a, dtype=np.float32)).mean() < 12  # image a, in order (JPEG twice)
    assert np.array_equal(np.asarray(rows["half"]["images"][0]), np.asarray(rows["story"]["images"][0]))
    assert rows["story"]["lineage"]["image_url"].count(",") == 1 and rows["story"]["lineage"]["image_url"].endswith("/b.jpg")
