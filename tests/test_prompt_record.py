"""The prompt a shard set was rendered with travels to the checkpoint: render writes it into
manifest.json (`prompt`: the VQA hint, its length rule, the templates), training copies it into each
stage folder's stage.json, and eval / chat / export read it from there, so a recipe that changes
`render.vqa_hint` is evaluated on the prompt it trained on (not the default hint)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.recipe import load_recipe
from pipelines.steps.render.render import run_render
from templates.instructions import HintPolicy
from templates.registry import get_template
from templates.schema import make_id
from templates.template import render_turns
from training.config import EvalConfig, ModelConfig, StageConfig
from training.run import shard_prompt, train_stage
from training.synthetic import draw, write_synthetic_shards

HINT = "用一个词回答。"
DEFAULT = HintPolicy().hint
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
LLM = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
       "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 500}
MODEL = ModelConfig(vision={"kind": "clip", "image_size": 32, "init": VISION},
                    connector={"kind": "resampler", "num_queries": 4, "hidden_size": 32, "num_layers": 1,
                               "num_heads": 2},
                    llm={"init": LLM})
N_IMAGES = 8
COLOURS = ("红色", "绿色", "蓝色", "黄色", "紫色")
SHAPES = ("圆形", "正方形", "三角形")  # the names training.synthetic.draw knows


def stage(**over) -> StageConfig:
    cfg = {"data": "pretrain", "template": "none", "max_steps": 1, "batch_size": 4, "logging_steps": 1,
           "save_steps": 50, "max_length": 160, "lr": {"default": 1e-3}, "warmup_ratio": 0.0,
           "trainable": {"vision": "lora", "connector": "full", "llm": "lora", "embeddings": True}}
    return StageConfig(**{**cfg, **over})


def shape_of(i: int) -> tuple[str, str]:
    return COLOURS[i % len(COLOURS)], SHAPES[i % len(SHAPES)]


def record(oid: int | str, task: str, pairs: list[tuple[str, str]], image: str | None) -> dict:
    return {"id": make_id("tiny", oid), "source": "tiny", "task": task, "lang": "zh", "image": image,
            "messages": [m for q, a in pairs for m in ({"role": "user", "content": q},
                                                       {"role": "assistant", "content": a})],
            "meta": {"original_id": oid}}


def translated_corpus(root: Path) -> Path:
    """A translate folder: captions and short-answer VQA about coloured shapes, plus text rows."""
    (root / "images").mkdir(parents=True)
    (root / "records").mkdir()
    rows = []
    for i in range(N_IMAGES):
        colour, shape = shape_of(i)
        (root / "images" / f"{i:03d}.png").write_bytes(draw(colour, shape, seed=i))
        image = f"images/{i:03d}.png"
        rows += [record(f"c{i}", "caption", [("<image>", f"一个{colour}的{shape}。")], image),
                 record(f"v{i}", "vqa", [(f"<image>\n{shape}是什么颜色？", colour)], image)]
    rows += [record(f"t{j}", "text", [(f"{j}加{j}等于几？", f"等于{2 * j}。")], None) for j in range(4)]
    (root / "records" / "tiny.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder: a shard set rendered with the recipe's own hint, stage 1 and stage 2 trained on it."""
    root = tmp_path_factory.mktemp("prompt")
    recipe = load_recipe("demo", overrides=[f"render.vqa_hint={HINT}", "render.validation_fraction=0",
                                            "render.row_group_rows=8"], run_dir=root / "run")
    run_render(recipe, translated_corpus(root / "translate"), root / "run" / "render")
    train, shards = root / "run" / "train", root / "run" / "render"
    train_stage(MODEL, "stage1", stage(), shards, train / "stage1")
    train_stage(MODEL, "stage2", stage(data="sft", template="visualcla"), shards, train / "stage2",
                init_from=train / "stage1")
    return root / "run"


@pytest.fixture(scope="module")
def moved(run, tmp_path_factory) -> Path:
    """The run's train/ copied elsewhere, the original train/ deleted (the shard set is nowhere near)."""
    target = tmp_path_factory.mktemp("elsewhere") / "copy-of-train"
    shutil.copytree(run / "train", target)
    shutil.rmtree(run / "train")
    return target


def sft_prompts(shards: Path) -> list[str]:
    rows = [r for p in sorted((shards / "data" / "sft").rglob("*.parquet"))
            for r in pq.read_table(p, columns=["task", "turns"]).to_pylist()]
    return [r["turns"][0]["prompt"] for r in rows if r["task"] == "vqa"]


def test_the_manifest_records_the_prompt_the_rows_were_rendered_with(run):
    manifest = json.loads((run / "render" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["prompt"] == {"vqa_hint": HINT, "vqa_hint_max_chars": 16,
                                  "templates": {"pretrain": "none", "sft": "visualcla"}}
    prompts = sft_prompts(run / "render")
    assert prompts and all(f"\n{HINT}" in p for p in prompts)
    assert not any(DEFAULT in p for p in prompts)
    assert f"`{HINT}`" in (run / "render" / "README.md").read_text(encoding="utf-8")  # the card says so too


def test_every_stage_folder_keeps_the_prompt_after_train_is_copied_elsewhere(moved):
    from training.chat import ChatModel

    for name, template in (("stage1", "none"), ("stage2", "visualcla")):
        meta = json.loads((moved / name / "stage.json").read_text(encoding="utf-8"))
        assert meta["prompt"] == {"vqa_hint": HINT, "vqa_hint_max_chars": 16, "template": template}, name
    bot = ChatModel.load(moved / "stage2")  # stage 2 trained from stage 1, loaded from the copy
    assert bot.hint == HintPolicy(HINT, 16) and bot.template == "visualcla"


def test_eval_asks_with_the_recipes_hint_exactly_as_the_shards_did(run, moved, tmp_path):
    """The evaluator's question is the recipe's hinted question (not the default hint), and the prompt
    it renders from it is, character for character, a VQA prompt the stage was trained on."""
    from training.evaluate import evaluate

    split = tmp_path / "eval_zh.jsonl"
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(3):
        colour, shape = shape_of(i)
        (tmp_path / "images" / f"{i}.png").write_bytes(draw(colour, shape, seed=i))
        lines.append(json.dumps({"id": i, "image": f"images/{i}.png", "question": f"{shape}是什么颜色？",
                                 "answer": colour}, ensure_ascii=False))
    split.write_text("\n".join(lines) + "\n", encoding="utf-8")
    metrics = evaluate(moved / "stage2", split, EvalConfig(batch_size=2, max_new_tokens=2), out=tmp_path / "eval")
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "eval_predictions.jsonl").read_text(
        encoding="utf-8").splitlines()]
    trained = set(sft_prompts(run / "render"))
    assert len(predictions) == 3 and metrics["vqa_hint"] == HINT
    for p in predictions:
        assert p["instruction"] == f"{p['question']}\n{HINT}" and DEFAULT not in p["instruction"]
        rendered = render_turns(get_template("visualcla"), [(p["instruction"], "")], image=True)[0]["prompt"]
        assert rendered in trained, rendered


def test_an_export_carries_the_hint(moved, tmp_path):
    from training.checkpoint import stage_hint
    from training.export import export

    out = export(moved / "stage2", "merged", tmp_path / "merged")
    assert json.loads((out / "prompt_template.json").read_text(encoding="utf-8"))["prompt"]["vqa_hint"] == HINT
    assert stage_hint(out) == HintPolicy(HINT, 16)


def test_shards_and_stages_without_the_record_get_the_defaults(tmp_path):
    from training.checkpoint import stage_hint

    sft = stage(data="sft", template="visualcla")
    shards = write_synthetic_shards(tmp_path / "synthetic", num_images=4)  # no manifest at all
    assert shard_prompt(shards, sft) == {"vqa_hint": DEFAULT, "vqa_hint_max_chars": 16, "template": "visualcla"}
    # a render of an older version: no `prompt`, but the recipe it records names the hint
    (shards / "manifest.json").write_text(json.dumps(
        {"format": "visualcla-forge/shards", "recipe": {"render": {"vqa_hint": "简答。", "vqa_hint_max_chars": 4}}},
        ensure_ascii=False), encoding="utf-8")
    assert shard_prompt(shards, sft) == {"vqa_hint": "简答。", "vqa_hint_max_chars": 4, "template": "visualcla"}
    old_stage = tmp_path / "old-stage"  # a stage folder written before stage.json had `prompt`
    old_stage.mkdir()
    (old_stage / "stage.json").write_text(json.dumps({"stage": "stage2", "template": "visualcla"}))
    assert stage_hint(old_stage) == HintPolicy()
    assert HintPolicy().ask_short("圆形是什么颜色？") == f"圆形是什么颜色？\n{DEFAULT}"
    assert HintPolicy("", 16).ask_short("圆形是什么颜色？") == "圆形是什么颜色？"  # hint switched off


def test_chat_short_appends_the_checkpoints_hint(moved, tmp_path, capsys):
    """`vcla chat --short` asks as the stage's short-answer rows did: its answer is the greedy answer to
    the question with the recipe's hint (the model is the copied stage 2; the recipe is the default one)."""
    from pipelines.cli.main import main
    from training.chat import GREEDY, ChatModel, chat

    image = tmp_path / "red-circle.png"
    image.write_bytes(draw("红色", "圆形"))
    args = ["chat", "--checkpoint", str(moved / "stage2"), "--image", str(image), "--text", "圆形是什么颜色？", "--greedy"]
    assert main([*args, "--short"]) == 0
    printed = capsys.readouterr().out.strip()
    bot = ChatModel.load(moved / "stage2")
    expected, history = chat(bot, image, bot.hint.ask_short("圆形是什么颜色？"), **GREEDY)
    assert printed == expected and history[0]["value"] == f"圆形是什么颜色？\n{HINT}"
