"""Every file and folder a run writes gets the mode the user's umask asks for, as a plain open()
or mkdir() would give it: another user of a shared machine, or a Hub upload tool run as another
account, can read the dataset card as well as the shards beside it.

Atomic writes go through a temp file; `tempfile.mkstemp` creates it 0600 and `mkdtemp` 0700, and
safetensors >= 0.8 writes every file 0600 (safetensors#782), `save_pretrained` included. Before the
fix, records, manifest.json, README.md, stats.json, _SUCCESS and a memory export were 0600, the
demo corpus folder 0700 and every weight file 0600, while the shards were 0644.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

UMASKS = [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)]


def _render(root: Path) -> None:
    """The render stage on 4 captions (with images), 4 text records and a broken line."""
    from pipelines.recipe import RenderConfig, load_recipe
    from pipelines.steps.render.render import run_render
    from templates.schema import make_id

    src = root / "translate"
    (src / "images").mkdir(parents=True)
    (src / "records").mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(src / "images" / f"{i}.jpg")

    def rec(source: str, i: int, task: str, q: str, a: str, image: str | None) -> str:
        return json.dumps({"id": make_id(source, i), "source": source, "task": task, "lang": "zh", "image": image,
                           "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                           "meta": {}}, ensure_ascii=False)

    caps = [rec("caps", i, "caption", "<image>", f"第{i}张图。", f"images/{i}.jpg") for i in range(4)]
    text = [rec("text", i, "text", f"问题{i}", f"回答{i}", None) for i in range(4)] + ["{not json"]
    (src / "records" / "caps.jsonl").write_text("\n".join(caps) + "\n", encoding="utf-8")
    (src / "records" / "text.jsonl").write_text("\n".join(text) + "\n", encoding="utf-8")
    recipe = load_recipe("demo", run_dir=str(root))
    recipe = recipe.model_copy(update={"render": RenderConfig(validation_fraction=0.25, row_group_rows=2)})
    run_render(recipe, src, root / "render")


def _memory(root: Path) -> None:
    from translators.memory import TranslationMemory
    from translators.protocol import Verdict

    with TranslationMemory(root / "memory" / "tm.sqlite") as tm:
        tm.put_many([("A cat.", "一只猫。", Verdict(True))], source_lang="en", target_lang="zh", model="m",
                    prompt_version="v1")
        tm.export_jsonl(root / "memory" / "export.jsonl")


def _training(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each atomic writer of training/, the staged folder renames through their own code with the
    model building stubbed to write what it writes (safetensors weights and a config)."""
    import torch
    from safetensors.torch import save_file

    from common.files import TMP_PREFIX, write_json
    from training import run, trainer
    from training.data import shard_units
    from training.features import build_feature_cache

    train = root / "train"
    run.start_afresh(train / "stage1", "key")  # run_key.json through common.files.write_json
    write_json(train / "stage1" / "stage.json", {"stage": "stage1"}, sort_keys=False)  # as save_stage writes it

    def fake_prepare_base(cfg, staging: Path, texts, seed) -> Path:
        (staging / "text_encoder").mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(staging / "text_encoder" / "model.safetensors"))
        (staging / "config.json").write_text("{}")
        return staging

    monkeypatch.setattr(run, "prepare_base", fake_prepare_base)
    run.build_base_once(None, train / "base", root / "render", seed=0)

    staged = train / "stage1" / "checkpoints" / f"{TMP_PREFIX}2" / "checkpoint-2"
    staged.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(staged / trainer.TRAINABLE_FILE))
    (staged / "trainer_state.json").write_text("{}")
    hf_trainer = SimpleNamespace(args=SimpleNamespace(save_total_limit=None))
    trainer.VisualCLATrainer._move_into_place(hf_trainer, staged, staged.parent.parent / "checkpoint-2")

    no_images = pa.array([None, None], type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": no_images}), root / "text-rows.parquet")
    build_feature_cache(torch.nn.Linear(1, 1), shard_units([root / "text-rows.parquet"]), None, train / "features")


@pytest.mark.parametrize("umask, file_mode, dir_mode", UMASKS)
def test_every_file_a_run_writes_has_the_mode_the_umask_gives(tmp_path, monkeypatch, umask, file_mode, dir_mode):
    from pipelines.demo.corpus import generate_demo
    from pipelines.recipe import DemoConfig, DemoVisionConfig

    tiny_encoder = DemoVisionConfig(epochs=1, batch_size=8, num_layers=1, hidden_size=16, num_heads=2)
    old = os.umask(umask)
    try:
        generate_demo(tmp_path / "demo-data", DemoConfig(num_images=10, seed=3, vision_encoder=tiny_encoder))
        _render(tmp_path)
        _memory(tmp_path)
        _training(tmp_path, monkeypatch)
    finally:
        os.umask(old)

    modes = {str(p.relative_to(tmp_path)): (p.is_dir(), stat.S_IMODE(p.lstat().st_mode)) for p in tmp_path.rglob("*")}
    wrong = {name: oct(mode) for name, (is_dir, mode) in modes.items() if mode != (dir_mode if is_dir else file_mode)}
    assert wrong == {}, f"under umask {umask:04o}: files {file_mode:04o}, folders {dir_mode:04o}"
    written = {"demo-data", "demo-data/demo_manifest.json", "demo-data/vision_encoder/model.safetensors",
               "render/manifest.json", "render/README.md", "render/stats.json", "render/_SUCCESS",
               "render/rejected/render.jsonl", "memory/export.jsonl", "train/stage1/run_key.json",
               "train/stage1/stage.json", "train/base/text_encoder/model.safetensors",
               "train/stage1/checkpoints/checkpoint-2/trainable.safetensors"}
    assert written <= modes.keys(), sorted(written - modes.keys())
    assert any(name.startswith("render/data/") and name.endswith(".parquet") for name in modes)
    assert any(name.startswith("train/features/") and name.endswith(".safetensors") for name in modes)
