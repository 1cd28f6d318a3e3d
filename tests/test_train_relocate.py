"""Stage folders are relocatable: a copied or moved `train/` (or run folder) loads and chats after the
original is deleted; paths into the run folder are stored relative; old absolute paths still load."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from training.config import ModelConfig, StageConfig
from training.run import shard_texts, train_stage
from training.synthetic import draw, write_synthetic_shards

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
LLM = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
       "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 500}
CONNECTOR = {"kind": "resampler", "num_queries": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 2}
QUESTION = "圆形是什么颜色？"


def stage(**over) -> StageConfig:
    cfg = {"data": "pretrain", "template": "none", "max_steps": 2, "batch_size": 4, "logging_steps": 1,
           "save_steps": 50, "max_length": 96, "lr": {"default": 1e-3}, "warmup_ratio": 0.0,
           "trainable": {"vision": "lora", "connector": "full", "llm": "lora", "embeddings": True}}
    return StageConfig(**{**cfg, **over})


SFT = {"data": "sft", "template": "visualcla", "max_length": 160}


def image() -> Image.Image:
    return Image.open(io.BytesIO(draw("红色", "圆形", seed=1))).convert("RGB")


def fingerprint(folder: Path) -> tuple[torch.Tensor, str]:
    """Logits of a fixed input and the greedy chat answer of a stage folder."""
    from training.chat import ChatModel, chat
    from training.checkpoint import load_stage

    model = load_stage(folder).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    reply, _ = chat(ChatModel.load(folder), image(), QUESTION, do_sample=False, max_new_tokens=4)
    return logits, reply


def stored_paths(train: Path) -> list[str]:
    """Every path a stage folder stores for loading: stage.json `base` / `init_from`, config.json paths."""
    out = []
    for meta in train.glob("*/stage.json"):
        data = json.loads(meta.read_text())
        out += [data.get("base") or "", data.get("init_from") or ""]
        config = json.loads((meta.parent / "config.json").read_text())
        out += [config.get(k) or "" for k in ("vision_name_or_path", "text_name_or_path", "connector_name_or_path")]
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), num_images=8, row_group_rows=8)


def test_a_copied_train_folder_loads_and_chats_without_the_original(shards, tmp_path):
    cfg = ModelConfig(vision={"kind": "clip", "image_size": 32, "init": VISION}, connector=CONNECTOR, llm={"init": LLM})
    run = tmp_path / "runs" / "demo"
    train = run / "train"
    train_stage(cfg, "stage1", stage(), shards, train / "stage1")  # LoRA stage on the base built from `init`
    train_stage(cfg, "stage2", stage(**SFT), shards, train / "stage2", init_from=train / "stage1")
    before = {s: fingerprint(train / s) for s in ("stage1", "stage2")}

    moved = tmp_path / "elsewhere" / "copy-of-train"  # not even called train/
    shutil.copytree(train, moved)
    shutil.rmtree(tmp_path / "runs")
    for s in ("stage1", "stage2"):
        logits, reply = fingerprint(moved / s)
        assert torch.equal(logits, before[s][0]) and reply == before[s][1], s
    paths = [p for p in stored_paths(moved) if p]
    assert paths and not any(str(run) in p or Path(p).is_absolute() for p in paths), paths
    assert json.loads((moved / "stage2" / "stage.json").read_text())["base"] == "../base"

    # stage folders written by older versions hold absolute paths: those still load
    meta_file = moved / "stage1" / "stage.json"
    meta = json.loads(meta_file.read_text())
    meta["base"] = str(moved / "base")
    meta_file.write_text(json.dumps(meta))
    assert torch.equal(fingerprint(moved / "stage2")[0], before["stage2"][0])


def test_a_moved_run_folder_loads_a_stage_built_from_model_paths_inside_it(shards, tmp_path):
    """A stage whose model comes from `path`s (no base): config.json's model paths point into the run
    folder (here the folders of a base saved inside it), so they are stored relative and resolved
    against the stage folder; the user's folders outside the run stay absolute."""
    from training.build import prepare_base

    init = ModelConfig(vision={"kind": "clip", "image_size": 32, "init": VISION}, connector=CONNECTOR,
                       llm={"init": LLM})
    run = tmp_path / "run"
    models = run / "models"
    prepare_base(init, models, texts=shard_texts(shards))
    cfg = ModelConfig(vision={"kind": "clip", "image_size": 32, "path": str(models / "vision_encoder")},
                      connector={**CONNECTOR, "path": str(models)},
                      llm={"path": str(models / "text_encoder"), "tokenizer": str(models)})
    train_stage(cfg, "stage2", stage(**SFT), shards, run / "train" / "stage2")
    before = fingerprint(run / "train" / "stage2")

    moved = tmp_path / "moved-run"
    shutil.move(run, moved)
    logits, reply = fingerprint(moved / "train" / "stage2")
    assert torch.equal(logits, before[0]) and reply == before[1]
    config = json.loads((moved / "train" / "stage2" / "config.json").read_text())
    assert config["vision_name_or_path"] == "../../models/vision_encoder"
    assert config["connector_name_or_path"] == "../../models"
    assert json.loads((moved / "train" / "stage2" / "stage.json").read_text())["base"] is None


def test_paths_outside_the_run_folder_stay_absolute(tmp_path):
    from training.checkpoint import portable_path, resolve_stored

    stage_dir = tmp_path / "runs" / "x" / "train" / "stage2"
    assert portable_path(tmp_path / "runs" / "x" / "train" / "base", stage_dir) == "../base"
    assert portable_path(tmp_path / "runs" / "x" / "demo-data" / "vision", stage_dir) == "../../demo-data/vision"
    assert portable_path(tmp_path / "models" / "clip", stage_dir) == str(tmp_path / "models" / "clip")
    assert portable_path(None, stage_dir) is None
    assert resolve_stored(stage_dir, "../base") == str(tmp_path / "runs" / "x" / "train" / "base")
    assert resolve_stored(stage_dir, "/abs/olds") == "/abs/olds"


def test_a_stage_stopped_partway_resumes_from_its_checkpoint_after_the_run_folder_moved(shards, tmp_path):
    """build-and-train after a crash in a moved run folder (resume="auto"): the resume key
    (run_key.json) and the stage's records hold no path into the run folder, so the stage continues
    from its newest checkpoint instead of starting afresh, and its loss curve is the uninterrupted one."""
    cfg = ModelConfig(vision={"kind": "clip", "image_size": 32, "init": VISION}, connector=CONNECTOR, llm={"init": LLM})
    run = tmp_path / "runs" / "demo"
    render, train = run / "render", run / "train"
    shutil.copytree(shards, render)  # the shards move with the run folder, as in a real run
    train_stage(cfg, "stage1", stage(), render, train / "stage1")
    st = stage(max_steps=4, save_steps=1, **SFT)
    full = train_stage(cfg, "stage2", st, render, train / "reference", init_from=train / "stage1")
    part = train_stage(cfg, "stage2", st, render, train / "stage2", init_from=train / "stage1",
                       resume="auto", _stop_after=2)  # the crash: checkpoints 1 and 2 written, no stage folder
    assert part["steps"] == 2 and (train / "stage2" / "checkpoints" / "checkpoint-2").is_dir()
    for name in ("run_key.json", "training_args.json"):
        assert str(run) not in (train / "stage2" / name).read_text(), name

    moved = tmp_path / "elsewhere" / "demo"
    moved.parent.mkdir()
    shutil.move(run, moved)
    resumed = train_stage(cfg, "stage2", st, moved / "render", moved / "train" / "stage2",
                          init_from=moved / "train" / "stage1", resume="auto")
    assert resumed["resumed_from"] == "checkpoints/checkpoint-2" and resumed["steps"] == 4
    curve = dict(resumed["losses"])  # steps 1-2 from checkpoint-2's history, 3-4 trained after the move
    assert {s: round(curve[s], 5) for s in (1, 2)} == {s: round(l, 5) for s, l in part["losses"]}
    assert [round(curve[s], 5) for s in (1, 2, 3, 4)] == [round(l, 5) for _, l in full["losses"]]
    for name in ("run_key.json", "training_args.json", "metrics.json", "stage.json"):
        text = (moved / "train" / "stage2" / name).read_text()
        assert str(moved) not in text and str(run) not in text, name
