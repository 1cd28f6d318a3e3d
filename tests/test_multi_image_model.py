"""Several images per sample past the data steps (issue 17): a vqa suite item about two images, the feature
cache with two images per row (features cached per image, the same losses as live encoding), and a two-image
llava-hf export that builds our chat's prompt and decodes our greedy tokens."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from templates.image import IMAGE_BLOCK
from templates.rows import ROW_SCHEMA
from training.config import ModelConfig, StageConfig
from training.run import train_stage
from training.synthetic import draw, write_synthetic_shards

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
LLM = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
       "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 500}
CFG = ModelConfig(architecture="llava", vision={"kind": "clip", "image_size": 32, "init": VISION, "feature_layer": -2,
                                                "keep_cls": False, "post_layernorm": False},
                  connector={"kind": "mlp2x_gelu"}, llm={"init": LLM})
STAGE = {"max_steps": 3, "batch_size": 4, "logging_steps": 1, "save_steps": 50, "max_length": 200,
         "lr": {"default": 2e-3}, "warmup_ratio": 0.0}


def image(colour: str, shape: str) -> Image.Image:
    return Image.open(io.BytesIO(draw(colour, shape, seed=3))).convert("RGB")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("multi-model")
    shards = write_synthetic_shards(run / "shards", num_images=16, row_group_rows=8)
    stage = StageConfig(data="sft", template="visualcla", **STAGE,
                        trainable={"vision": "frozen", "connector": "full", "projection": "full", "llm": "full"})
    train_stage(CFG, "stage2", stage, shards, run / "train" / "stage2")
    return run / "train" / "stage2"


def test_a_vqa_suite_item_about_two_images_is_asked_with_both(trained, tmp_path):
    from evaluators.config import SuiteConfig
    from pipelines.recipe import load_recipe
    from pipelines.steps.evaluate.suites import run_suite
    from training.chat import ChatModel
    from training.evaluate import answer_all

    (tmp_path / "images").mkdir()
    for name, (colour, shape) in {"a": ("红色", "圆形"), "b": ("蓝色", "正方形")}.items():
        image(colour, shape).save(tmp_path / "images" / f"{name}.png")
    rows = [{"id": "two", "image": ["images/a.png", "images/b.png"], "question": "两张图里各是什么颜色？", "answer": "红色"},
            {"id": "one", "image": "images/b.png", "question": "这是什么颜色？", "answer": "蓝色"}]
    split = tmp_path / "split.jsonl"
    split.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    bot, recipe = ChatModel.load(trained), load_recipe("demo", run_dir=str(tmp_path))
    metrics, preds = run_suite("two", SuiteConfig(kind="vqa", path=str(split)), bot, recipe)
    assert metrics["n"] == 2 and [p["id"] for p in preds] == ["two", "one"]
    asked = [bot.hint.ask_short(r["question"]) for r in rows]
    images = [[tmp_path / "images" / "a.png", tmp_path / "images" / "b.png"], tmp_path / "images" / "b.png"]
    alone = answer_all(bot, images, asked, recipe.eval.max_new_tokens, 1, first_line=True)
    assert [p["prediction"] for p in preds] == alone  # batched together = each asked with its own image(s)
    swapped = answer_all(bot, [images[0][::-1]], asked[:1], recipe.eval.max_new_tokens, 1, first_line=True)
    assert isinstance(swapped[0], str)


def two_image_shards(src: Path, out: Path) -> Path:
    """The pretrain rows of `src` with two images each (its own and the next row's), both blocks in the prompt."""
    folder = out / "data" / "pretrain" / "train"
    folder.mkdir(parents=True)
    for path in sorted((src / "data" / "pretrain" / "train").glob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
        own = [r["image"] for r in rows]
        for i, row in enumerate(rows):
            row["images"], row["image"] = [own[i], own[(i + 1) % len(rows)]], None
            row["turns"][0]["prompt"] = row["turns"][0]["prompt"].replace(IMAGE_BLOCK, IMAGE_BLOCK + "\n" + IMAGE_BLOCK, 1)
        assert all(r["turns"][0]["prompt"].count(IMAGE_BLOCK) == 2 for r in rows)
        pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), folder / path.name, row_group_size=8)
    return out


def test_feature_cache_with_two_images_per_row_caches_each_and_trains_the_same_losses(tmp_path):
    from safetensors.torch import load_file

    shards = two_image_shards(write_synthetic_shards(tmp_path / "one", num_images=24, row_group_rows=8), tmp_path / "two")
    stage = {"data": "pretrain", "template": "none", **STAGE, "max_steps": 4,
             "trainable": {"vision": "frozen", "connector": "full", "projection": "full", "llm": "frozen"}}
    live = train_stage(CFG, "s1", StageConfig(**stage), shards, tmp_path / "t" / "live")
    cached = train_stage(CFG, "s1", StageConfig(**stage, feature_cache=True), shards, tmp_path / "t" / "cached")
    assert [s for s, _ in cached["losses"]] == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor([l for _, l in cached["losses"]]),
                               torch.tensor([l for _, l in live["losses"]]), rtol=2e-4, atol=2e-4)
    (folder,) = list((tmp_path / "t" / "cached" / "feature_cache").iterdir())
    first = load_file(str(sorted(folder.glob("*.safetensors"))[0]))["features"]
    assert first.shape == (16, 16, 32)  # 8 rows of the row group x 2 images: one entry per image, 16 patches each


def test_two_image_llava_export_builds_our_prompt_and_decodes_our_greedy_tokens(trained, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from training.chat import GREEDY, ChatModel, build_prompt
    from training.export import export

    out = export(trained, "llava-hf", tmp_path / "llava")
    processor = AutoProcessor.from_pretrained(str(out))
    model = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    bot = ChatModel.load(trained)
    question, images = "两张图有什么不同？", [image("红色", "圆形"), image("蓝色", "正方形")]
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=text, images=images, return_tensors="pt")
    prompt = build_prompt(bot, question, [], 2)
    assert inputs["input_ids"][0].tolist() == prompt
    assert prompt.count(bot.model.config.image_token_id) == 2 * bot.model.config.num_image_tokens
    n = 12
    forced = {**GREEDY, "max_new_tokens": n, "min_new_tokens": n}
    ids = torch.tensor([prompt])
    with torch.no_grad():
        theirs = model.generate(**inputs, **forced)[0, len(prompt):].tolist()
        ours = bot.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=bot.pixel_values(images),
                                  eos_token_id=bot.tokenizer.eos_token_id, pad_token_id=bot.tokenizer.pad_token_id,
                                  **forced)[0].tolist()
    assert theirs == ours and len(ours) == n
    with torch.no_grad():  # and the images matter, in order
        flipped = bot.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     pixel_values=bot.pixel_values(images[::-1]), eos_token_id=bot.tokenizer.eos_token_id,
                                     pad_token_id=bot.tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True,
                                     **forced)
        straight = bot.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=bot.pixel_values(images),
                                      eos_token_id=bot.tokenizer.eos_token_id, pad_token_id=bot.tokenizer.pad_token_id,
                                      output_logits=True, return_dict_in_generate=True, **forced)
    assert not torch.allclose(flipped.logits[0], straight.logits[0])
