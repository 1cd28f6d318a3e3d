"""The three presets at full size on the `meta` device: total and trainable parameter counts
against figures computed by hand from the published architectures (models.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from training.build import visualcla_config
from training.config import ModelConfig, StageConfig
from training.lora import count_parameters, setup_stage
from training.model import VisualCLAModel

REPO = Path(__file__).resolve().parent.parent
ADDED = 4  # <img>, </img>, <img_token>, <pad>


def clip_l14() -> int:  # CLIP ViT-L/14, 224 px
    h, i, layers = 1024, 4096, 24
    embeddings = h + 3 * 14 * 14 * h + 257 * h
    layer = 4 * (h * h + h) + 2 * 2 * h + (h * i + i) + (i * h + h)
    return embeddings + 2 * h + layers * layer + 2 * h  # pre-LN, layers, post-LN


def llama(h: int, i: int, layers: int, vocab: int) -> int:
    return 2 * vocab * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h


def eva_vit_g() -> int:  # BLIP-2 vision: 1408 wide, 39 layers, fused qkv with bias
    h, i, layers = 1408, 6144, 39
    embeddings = h + (3 * 14 * 14 * h + h) + 257 * h
    layer = (h * 3 * h + 3 * h) + (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    return embeddings + layers * layer + 2 * h


def qformer() -> int:  # BERT-base Q-Former, cross-attention (from 1408) every 2nd layer, 32 queries
    h, i, enc = 768, 3072, 1408
    self_attn = 3 * (h * h + h) + (h * h + h) + 2 * h
    cross = (h * h + h) + 2 * (enc * h + h) + (h * h + h) + 2 * h
    ffn = (h * i + i) + (i * h + h) + 2 * h
    per_layer = self_attn + ffn  # the query FFN (transformers builds no text FFN without text input)
    return 2 * h + 12 * per_layer + 6 * cross + 32 * h


def resampler(h=1024, i=4096, layers=6, queries=64) -> int:  # queries, their positions, their LayerNorm
    return 2 * queries * h + 2 * h + layers * (4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h)


def _folder(tmp: Path, name: str, config) -> str:
    d = tmp / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config))
    return str(d)


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    from transformers import Blip2Config, CLIPVisionConfig, LlamaConfig

    tmp = tmp_path_factory.mktemp("presets")
    clip = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            patch_size=14, image_size=224, hidden_act="quick_gelu")
    return {
        "clip": _folder(tmp, "clip", clip),
        "alpaca": _folder(tmp, "alpaca", LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                                     num_attention_heads=32, vocab_size=49954)),
        "llama2": _folder(tmp, "llama2", LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                                     num_attention_heads=32, vocab_size=32000)),
        "ziya": _folder(tmp, "ziya", LlamaConfig(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                                 num_attention_heads=40, vocab_size=39424)),
        "blip2": _folder(tmp, "blip2", Blip2Config()),
    }


def preset(name: str, paths: dict) -> tuple[ModelConfig, dict]:
    recipe = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
    model = recipe["model"]
    model["vision"]["path"] = paths["vision"]
    model["llm"]["path"] = paths["llm"]
    if model["connector"].get("path"):
        model["connector"]["path"] = paths["vision"]
    return ModelConfig(**model), {k: StageConfig(**v) for k, v in recipe["stages"].items()}


def on_meta(cfg: ModelConfig) -> VisualCLAModel:
    with torch.device("meta"):
        return VisualCLAModel(visualcla_config(cfg))


def test_visualcla_7b(model_folders):
    cfg, stages = preset("visualcla-7b", {"vision": model_folders["clip"], "llm": model_folders["alpaca"]})
    model = on_meta(cfg)
    vocab = 49954 + ADDED
    total = clip_l14() + resampler() + (1024 * 4096 + 4096) + llama(4096, 11008, 32, vocab)
    assert clip_l14() == 303_179_776
    assert count_parameters(model)[0] == total
    assert cfg.connector.num_queries == model.config.num_image_tokens == 64
    lora = 8 * (4096 + 4096) * 4 * 32 + 8 * (1024 + 1024) * 4 * 24
    full = resampler() + (1024 * 4096 + 4096) + 2 * vocab * 4096  # + embed_tokens and lm_head
    assert count_parameters(setup_stage(model, stages["stage1"].trainable, stages["stage1"].lora))[1] == lora + full


def test_chinese_llava_7b(model_folders):
    cfg, stages = preset("chinese-llava-7b", {"vision": model_folders["clip"], "llm": model_folders["llama2"]})
    projector = 1024 * 4096 + 4096
    total = clip_l14() + projector + llama(4096, 11008, 32, 32000 + ADDED)
    assert count_parameters(on_meta(cfg))[0] == total
    assert on_meta(cfg).config.num_image_tokens == 256  # layer -2, CLS dropped
    assert count_parameters(setup_stage(on_meta(cfg), stages["stage1"].trainable, stages["stage1"].lora))[1] == projector
    r = 128
    lora = 32 * (4 * r * (4096 + 4096) + 3 * r * (4096 + 11008))
    assert count_parameters(setup_stage(on_meta(cfg), stages["stage2"].trainable, stages["stage2"].lora))[1] == lora + projector


def test_ziya_visual_14b(model_folders):
    cfg, stages = preset("ziya-visual-14b", {"vision": model_folders["blip2"], "llm": model_folders["ziya"]})
    projection = 768 * 5120 + 5120
    total = eva_vit_g() + qformer() + projection + llama(5120, 13824, 40, 39424 + ADDED)
    model = on_meta(cfg)
    assert count_parameters(model)[0] == total
    assert model.config.num_image_tokens == 32
    assert count_parameters(setup_stage(model, stages["stage1"].trainable, stages["stage1"].lora))[1] == projection
    lora = 40 * 4 * 8 * (5120 + 5120)
    assert count_parameters(setup_stage(on_meta(cfg), stages["stage2"].trainable, stages["stage2"].lora))[1] == lora + projection


def test_resampler_query_tokens_are_not_all_the_same():
    import torch

    from training.connectors import Resampler

    resampler = Resampler(vision_width=16, hidden=32, num_queries=8, num_layers=2, num_heads=4)
    out = resampler(torch.randn(2, 10, 16))
    assert out.shape == (2, 8, 32)
    assert torch.all(resampler.queries == 0)  # zero-initialised, as in the release
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3  # but each slot has its own position


def siglip_so400m() -> int:  # SigLIP so400m/14 at 384 px: 729 patches, no CLS, biases everywhere, no pooling head
    h, i, layers, patches = 1152, 4304, 27, (384 // 14) ** 2
    embeddings = (3 * 14 * 14 * h + h) + patches * h
    layer = 2 * 2 * h + 4 * (h * h + h) + (h * i + i) + (i * h + h)
    return embeddings + layers * layer + 2 * h  # post-LN


def qwen25_7b(vocab: int) -> int:  # 28 layers, 3584 wide, GQA with 4 KV heads of 128, q/k/v biases, untied head
    h, i, layers, kv = 3584, 18944, 28, 4 * 128
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h
    return 2 * vocab * h + layers * (attention + 3 * h * i + 2 * h) + h


def test_siglip_qwen25_7b(tmp_path):
    from transformers import Qwen2Config, SiglipVisionConfig

    vision = _folder(tmp_path, "siglip", SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                                            num_attention_heads=16, patch_size=14, image_size=384))
    llm = _folder(tmp_path, "qwen", Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                                 num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                                 tie_word_embeddings=False))
    cfg, stages = preset("siglip-qwen2.5-7b", {"vision": vision, "llm": llm})
    model = on_meta(cfg)
    assert qwen25_7b(152064) == 7_615_616_512  # Qwen2.5-7B as published (7.61B)
    projector = (1152 * 3584 + 3584) + (3584 * 3584 + 3584)
    assert count_parameters(model)[0] == siglip_so400m() + projector + qwen25_7b(152064 + ADDED)
    assert model.config.num_image_tokens == 729 and type(model.text_model).__name__ == "Qwen2ForCausalLM"
    assert count_parameters(setup_stage(on_meta(cfg), stages["stage1"].trainable, stages["stage1"].lora))[1] == projector
    r, h, i, kv = 64, 3584, 18944, 512
    lora = 28 * r * (2 * (h + h) + 2 * (h + kv) + 3 * (h + i))
    assert count_parameters(setup_stage(on_meta(cfg), stages["stage2"].trainable, stages["stage2"].lora))[1] == lora + projector
