"""Weights are loaded from safetensors only, and no checkpoint's own code ever runs.

A tiny stage is trained once (real `train_stage`: a merged base, a LoRA stage folder and an HF
Trainer checkpoint). Copies of it are then booby-trapped: pickle files whose unpickling would
create a marker file are planted where transformers / peft / the Trainer look for weights, and
`auto_map` entries point at a module that creates the marker on import. Every loader we ship
(load_merged, load_stage, load_for_inference, ChatModel, export, build_model, the Trainer's
resume) must refuse with a clear error or ignore the trap, and the marker must never appear.

Nothing here unpickles the traps itself. The HF Trainer's own `optimizer.pt` / `scheduler.pt` /
`rng_state.pth` are pickles by design; transformers loads them with `torch.load(weights_only=True)`,
whose restricted unpickler refuses any callable: the resume test shows it does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from training.build import build_model, build_tokenizer_for
from training.chat import ChatModel
from training.checkpoint import UnsafeCheckpointError, load_for_inference, load_merged, load_stage
from training.config import ModelConfig, StageConfig
from training.export import export
from training.run import train_stage
from training.synthetic import write_synthetic_shards

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.xdist_group("rel_weights")

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
LLM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
       "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 400}


def model_cfg() -> ModelConfig:
    return ModelConfig(architecture="visualcla", vision={"kind": "clip", "image_size": 32, "init": VISION},
                       connector={"kind": "resampler", "num_queries": 4, "hidden_size": 32, "num_layers": 1,
                                  "num_heads": 2}, llm={"init": LLM})


def stage_cfg() -> StageConfig:
    return StageConfig(data="pretrain", template="none", max_steps=2, save_steps=2, batch_size=4, max_length=64,
                       logging_steps=1, warmup_ratio=0.0, lr={"default": 1e-3},
                       trainable={"vision": "lora", "connector": "full", "llm": "lora"})


class Trap:
    """Unpickling this runs `open(marker, "w")`: it is what a malicious .bin would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(path: Path, marker: Path) -> None:
    torch.save({"weight": Trap(marker)}, path)  # torch.save pickles; it does not unpickle


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """run/train/{base, stage1} from a real 2-step LoRA training (checkpoint-2 kept)."""
    root = tmp_path_factory.mktemp("weights")
    shards = write_synthetic_shards(root / "shards", num_images=8, row_group_rows=8)
    train_stage(model_cfg(), "stage1", stage_cfg(), shards, root / "run" / "train" / "stage1")
    return root


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of the trained run (base paths in stage.json rewritten to it)."""
    copy = tmp_path / "run"
    shutil.copytree(trained / "run", copy, symlinks=True)
    meta_path = copy / "train" / "stage1" / "stage.json"
    meta = json.loads(meta_path.read_text())
    meta["base"] = str(copy / "train" / "base")
    meta_path.write_text(json.dumps(meta))
    return copy / "train"


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "CODE_RAN"
    yield path
    assert not path.exists(), "a planted pickle or custom module was executed"


def test_the_untouched_checkpoint_loads(run, marker):
    model = load_stage(run / "stage1")
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("folder, real, planted", [
    ("base/text_encoder", "model.safetensors", "pytorch_model.bin"),
    ("base/vision_encoder", "model.safetensors", "model.pt"),
    ("stage1", "adapter_model.safetensors", "adapter_model.bin"),
    ("base", "connector.safetensors", "connector.ckpt"),
])
def test_pickle_weights_in_place_of_safetensors_are_refused(run, marker, folder, real, planted):
    (run / folder / real).unlink()
    plant_pickle(run / folder / planted, marker)
    loaders = [lambda: load_stage(run / "stage1"), lambda: load_for_inference(run / "stage1"),
               lambda: ChatModel.load(run / "stage1"), lambda: export(run / "stage1", "merged", run / "out")]
    if folder.startswith("base"):
        loaders.append(lambda: load_merged(run / "base"))
    for load in loaders:
        with pytest.raises(UnsafeCheckpointError) as err:
            load()
        message = str(err.value)
        assert f"{run / folder}:" in message and planted in message, message
        assert "safetensors only" in message and "arbitrary code" in message
    assert not (run / "out").exists()


def test_a_stray_pickle_next_to_safetensors_is_never_read(run, marker):
    """Hub repos often ship both; the safetensors file is what gets loaded, the pickle is not opened."""
    plant_pickle(run / "base" / "text_encoder" / "pytorch_model.bin", marker)
    plant_pickle(run / "stage1" / "adapter_model.bin", marker)
    before = load_stage(run / "stage1").state_dict()
    assert all(torch.isfinite(t).all() for t in before.values() if t.is_floating_point())


def test_user_model_paths_with_pickle_weights_are_refused_before_loading(run, marker):
    """A recipe's `llm.path` / `vision.path` pointing at pickle-only folders (build_model)."""
    text = run / "base" / "text_encoder"
    (text / "model.safetensors").unlink()
    plant_pickle(text / "pytorch_model.bin", marker)
    vision = {"kind": "clip", "image_size": 32, "path": str(run / "base" / "vision_encoder")}
    cfg = ModelConfig(architecture="visualcla", vision=vision,
                      connector={"kind": "resampler", "num_queries": 4, "hidden_size": 32, "num_layers": 1,
                                 "num_heads": 2}, llm={"path": str(text), "tokenizer": str(run / "base")})
    tokenizer = build_tokenizer_for(cfg)
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
        build_model(cfg, tokenizer)


EVIL_MODULE = """from pathlib import Path
Path({marker!r}).write_text("custom code ran")
from transformers import (
    LlamaConfig as EvilConfig,
    LlamaForCausalLM as EvilModel,
    PreTrainedTokenizerFast as EvilTokenizer,
)
"""


@pytest.mark.parametrize("folder, config", [
    ("base/text_encoder", "config.json"),
    ("base", "tokenizer_config.json"),
    ("stage1", "tokenizer_config.json"),
    ("stage1", "config.json"),
    ("base/vision_encoder", "config.json"),
])
def test_auto_map_custom_code_is_refused_and_never_imported(run, marker, folder, config):
    """With trust_remote_code unset, transformers *asks on the terminal* whether to run a tokenizer's
    custom code (and runs it on "y"); we refuse such folders before transformers sees them."""
    target = run / folder
    (target / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    data = json.loads((target / config).read_text())
    data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
                        "AutoTokenizer": [None, "evil.EvilTokenizer"]}
    data.pop("tokenizer_class", None)  # nothing local to fall back on: the case that prompts
    (target / config).write_text(json.dumps(data))
    for load in (lambda: load_for_inference(run / "stage1"), lambda: export(run / "stage1", "merged", run / "out")):
        with pytest.raises(UnsafeCheckpointError, match="auto_map.*trust_remote_code"):
            load()


def test_trainer_resume_refuses_a_booby_trapped_optimizer_state(trained, tmp_path, marker):
    """The Trainer's own pickles (optimizer.pt, scheduler.pt, rng_state.pth) are loaded by transformers
    with weights_only=True: a planted callable is refused (UnpicklingError), not executed."""
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run, symlinks=True)
    ckpt = next((run / "train" / "stage1" / "checkpoints").glob("checkpoint-*"))
    plant_pickle(ckpt / "optimizer.pt", marker)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global|weights_only"):
        train_stage(model_cfg(), "stage1", stage_cfg(), trained / "shards", run / "train" / "stage1", resume=True)


SOURCES = ["pipelines", "training", "translators", "templates", "benchmarks"]
FORBIDDEN = {
    r"trust_remote_code\s*=\s*True": "trust_remote_code is never enabled",
    r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load|\bcloudpickle\.loads?\(": "nothing is unpickled",
    r"allow_pickle\s*=\s*True": "numpy never unpickles",
    r"use_safetensors\s*=\s*False|safe_serialization\s*=\s*False": "weights are written/read as safetensors",
}


def test_no_source_file_enables_remote_code_or_unpickling():
    files = [p for d in SOURCES for p in (REPO / d).rglob("*.py")]
    assert len(files) > 40
    problems = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        for pattern, rule in FORBIDDEN.items():
            problems += [f"{path.relative_to(REPO)}: {m.group(0)!r} ({rule})" for m in re.finditer(pattern, text)]
        for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if not re.search(r"weights_only\s*=\s*True", call.group(0)):
                problems.append(f"{path.relative_to(REPO)}: torch.load without weights_only=True")
        for call in re.finditer(r"AutoTokenizer\.from_pretrained\(([^()]|\([^()]*\))*\)", text):
            if path.parent.name == "training" and path.name in ("checkpoint.py", "export.py"):
                assert "trust_remote_code=False" in call.group(0), path
    assert not problems, "\n".join(problems)


def test_every_torch_load_in_the_trainer_uses_weights_only():
    """What the resume relies on, checked in the installed transformers (a version bump would show)."""
    import transformers.trainer as trainer

    source = Path(trainer.__file__).read_text(encoding="utf-8")
    calls = [m.group(0) for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", source)]
    assert len(calls) >= 5 and all("weights_only=True" in c for c in calls), [c for c in calls if "weights_only" not in c]
