"""Render with several images per row (shards load with `datasets`, training reads them) and rows fitted to
the stages' max_length with the LLM's tokenizer: trailing turns dropped, `too_long` rejections, percentiles."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.recipe import RenderConfig, load_recipe
from pipelines.steps.render import run_render
from templates.registry import get_template
from templates.schema import make_id
from training.tokenizer import build_tokenizer

QUESTION = "这几张图有什么不同？"


def _rec(oid: str, task: str, pairs, image) -> dict:
    messages = [m for q, a in pairs for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    return {"id": make_id("src", oid), "source": "src", "task": task, "lang": "zh", "image": image,
            "messages": messages, "meta": {"original_id": oid}}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    (root / "in" / "records").mkdir(parents=True)
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        Image.new("RGB", (40, 40), colour).save(root / "in" / f"{i}.png")
    long = "".join(chr(0x4E00 + 7 * i) for i in range(60))  # characters the tokenizer never saw: 3 byte tokens each
    rows = [
        _rec("two", "conversation", [("<image>\n看这张。", "红色。"), (f"再看<image>。{QUESTION}", "第二张是绿色。")],
             ["0.png", "1.png"]),
        _rec("three", "conversation", [(f"<image><image><image>{QUESTION}", "红绿蓝。")], ["0.png", "1.png", "2.png"]),
        _rec("shortened", "conversation", [("<image>\n这是什么？", "红色。"), ("<image>\n那这张呢？", long)],
             ["0.png", "1.png"]),
        _rec("too-long", "conversation", [("<image>\n描述。", long + long)], "2.png"),
        _rec("one", "vqa", [("<image>\n什么颜色？", "蓝色")], "2.png"),
    ]
    (root / "in" / "records" / "r.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tok_dir = root / "tokenizer"
    preamble = get_template("visualcla").system + "### Instruction: \n### Response:"
    build_tokenizer([preamble, QUESTION, "看这张。再看红色绿色蓝色那呢什么描述请用一个词或短语回答"] * 3,
                    vocab_size=600).save_pretrained(tok_dir)
    recipe = load_recipe("demo", run_dir="/nonexistent")
    model = recipe.model.model_copy(update={"llm": recipe.model.llm.model_copy(update={"tokenizer": str(tok_dir)})})
    vision = model.vision.model_copy(update={"path": None, "init": {"hidden_size": 32, "intermediate_size": 64,
                                                                     "num_hidden_layers": 1, "num_attention_heads": 2,
                                                                     "patch_size": 48}})
    model = model.model_copy(update={"vision": vision})  # 96 px / 48 px patches + CLS: 5 tokens per image
    render = RenderConfig(text_per_multimodal=0.0, validation_fraction=0.0, row_group_rows=8)
    recipe = recipe.model_copy(update={"render": render, "model": model})
    stats = run_render(recipe, root / "in", root / "out")
    return root / "out", stats, tok_dir


def _rows(out: Path) -> dict[str, dict]:
    files = sorted((out / "data" / "sft" / "train").glob("*.parquet"))
    return {r["lineage"]["original_id"]: r for f in files for r in pq.read_table(f).to_pylist()}


def test_several_images_per_row_in_marker_order(rendered):
    out, stats, _ = rendered
    rows = _rows(out)
    two, three, one = rows["two"], rows["three"], rows["one"]
    assert two["image"] is None and [im["path"] for im in two["images"]] == ["0.png", "1.png"]
    assert [t["prompt"].count("<img><image></img>") for t in two["turns"]] == [1, 1]  # the second image in turn 2
    assert "再看<img><image></img>。" in two["turns"][1]["prompt"]
    assert [m["content"] for m in two["messages"] if m["role"] == "user"] == ["<image>\n看这张。", f"再看<image>。{QUESTION}"]
    assert len(three["images"]) == 3 and len(three["lineage"]["image_sha256"].split(",")) == 3
    assert one["images"] is None and one["image"]["path"] == "2.png"  # one image: the column it always had


def test_rows_are_fitted_to_max_length_whole_turns_only(rendered):
    out, stats, _ = rendered
    rows = _rows(out)
    shortened = rows["shortened"]
    assert len(shortened["turns"]) == 1 and shortened["image"]["path"] == "0.png" and shortened["images"] is None
    assert "too-long" not in rows and stats.rejected["too_long"] == 1 and stats.extra["shortened_too_long"] == 1
    rejected = [json.loads(line) for line in (out / "rejected" / "render.jsonl").read_text().splitlines()]
    too_long = next(r for r in rejected if r["reason"] == "too_long")
    assert too_long["record"]["max_length"] == 160 and too_long["record"]["tokens"] > 160
    assert "first turn alone does not fit max_length 160" in too_long["detail"]
    lengths = json.loads((out / "manifest.json").read_text())["token_lengths"]
    assert lengths["checked"] and lengths["sft"]["rows"] == 4 and lengths["sft"]["max"] <= 160
    assert lengths["sft"]["p50"] <= lengths["sft"]["p90"] <= lengths["sft"]["max"]


def test_training_reads_every_row_whole_and_datasets_decodes_the_lists(rendered, tmp_path):
    import datasets
    from transformers import CLIPImageProcessorPil

    from training.data import shard_units, subset_files
    from training.stream import Collator, ShardStream, StreamConfig
    from training.tokenizer import load_tokenizer

    out, _, tok_dir = rendered
    tok = load_tokenizer(tok_dir)
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    stream = ShardStream(shard_units(subset_files(out, "sft")), tok, Collator(tok.pad_token_id, proc),
                         StreamConfig(batch_size=8, max_length=160, num_image_tokens=5, batches_per_rank=1))
    batch = next(iter(stream))  # no RowTooLong: render fitted every row
    assert batch["pixel_values"].shape[0] == 2 + 3 + 1 + 1 == int((batch["input_ids"] == tok.convert_tokens_to_ids(
        "<img_token>")).sum()) // 5
    assert int(batch["padding_stats"][3]) == 7 and batch["input_ids"].shape[1] <= 160
    files = [str(p) for p in (out / "data" / "sft" / "train").glob("*.parquet")]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path))
    multi = [r for r in ds if r["images"]]
    assert len(multi) == 2 and all(isinstance(im, Image.Image) for r in multi for im in r["images"])
    assert torch.is_tensor(batch["pixel_values"])
