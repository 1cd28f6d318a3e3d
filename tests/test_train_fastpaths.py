"""The trainer's shortcuts compute exactly what the plain path computes: the loss from the trained
positions' logits only, vision layers past the chosen one skipped, frozen parts pinned to eval
mode, batched tokenisation, and the stage-1 feature cache (vision or connector level)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, Blip2VisionConfig, CLIPVisionConfig, LlamaConfig

from training.config import ModelConfig, StageConfig, TrainableConfig
from training.data import encode_texts, encode_turns
from training.features import cache_level
from training.lora import setup_stage
from training.model import VisualCLAConfig, VisualCLAModel
from training.run import train_stage
from training.synthetic import make_rows, write_synthetic_shards

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
LLM = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
       "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 500}


def tiny(kind: str = "clip", connector: str = "linear", **cfg) -> VisualCLAModel:
    vision = (CLIPVisionConfig if kind == "clip" else Blip2VisionConfig)(**VISION)
    text = LlamaConfig(**{**LLM, "vocab_size": 120})
    config = VisualCLAConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                             visual_resampler_config={"kind": connector}, image_token_id=119, **cfg)
    torch.manual_seed(0)
    return VisualCLAModel(config)


def test_training_loss_matches_the_full_logits_loss_and_its_gradients():
    model = tiny()
    ids = torch.randint(0, 110, (3, 14))
    labels = ids.clone()
    labels[:, :6] = -100
    labels[2, 10:] = -100
    mask = torch.ones_like(ids)
    mask[2, 11:] = 0
    for items in (None, torch.tensor(17)):
        model.train()
        fast = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=items)
        fast.loss.backward()
        fast_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        full = model.text_model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=items)
        full.loss.backward()
        assert fast.logits is None and full.logits.shape == (3, 14, 120)
        torch.testing.assert_close(fast.loss, full.loss)
        for name, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(fast_grads[name], p.grad, rtol=1e-5, atol=1e-7)
        model.zero_grad()
    with torch.no_grad():
        assert model.eval()(input_ids=ids, labels=labels).logits.shape == (3, 14, 120)


@pytest.mark.parametrize("kind", ["clip", "blip2"])
@pytest.mark.parametrize("layer", [-1, -2, -3, 1])
@pytest.mark.parametrize("post_ln", [True, False])
def test_vision_features_run_only_the_layers_they_need(kind, layer, post_ln):
    model = tiny(kind, vision_feature_layer=layer, vision_post_layernorm=post_ln).eval()
    pixels = torch.randn(2, 3, 32, 32)
    ran = []
    hooks = [m.register_forward_hook(lambda *_: ran.append(1)) for m in model._vision_inner().encoder.layers]
    with torch.no_grad():
        fast = model.vision_features(pixels)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        ref = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]
        if post_ln:
            ref = model._vision_inner().post_layernorm(ref)
    torch.testing.assert_close(fast, ref)
    assert len(ran) == layer % 4  # layers after the chosen one never run


def test_frozen_vision_and_connector_stay_in_eval_mode_while_the_rest_trains():
    ziya = setup_stage(tiny(connector="mlp2x_gelu"), TrainableConfig(vision="frozen", connector="frozen", projection="full",
                                               llm="frozen"), StageConfig(data="pretrain").lora)
    ziya.train()
    assert not ziya.vision_model.training and not ziya.visual_resampler.training
    assert ziya.image_projection_layer.training and ziya.text_model.training
    llava = setup_stage(tiny(connector="mlp2x_gelu"), TrainableConfig(vision="frozen", connector="full"), StageConfig(data="pretrain").lora)
    llava.train()
    assert not llava.vision_model.training and llava.visual_resampler.training


def test_batched_tokenisation_gives_the_ids_of_one_by_one_tokenisation(tmp_path):
    from training.tokenizer import build_tokenizer

    pretrain, sft = make_rows(24)
    texts = [t for row in pretrain + sft for turn in row["turns"] for t in (turn["prompt"], turn["response"])]
    build_tokenizer(texts, vocab_size=300).save_pretrained(str(tmp_path / "tok"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))  # the real from_pretrained path
    for row in pretrain + sft:
        image = row["image"] is not None
        texts = [t for turn in row["turns"] for t in (turn["prompt"], turn["response"])]
        alone = encode_turns(tok, row["turns"], images=int(image), num_image_tokens=5)
        known = encode_texts(tok, texts)
        batched = encode_turns(tok, row["turns"], images=int(image), num_image_tokens=5, known=known)
        assert (batched.input_ids, batched.labels) == (alone.input_ids, alone.labels)


LLAVA_STAGE1 = {"data": "pretrain", "template": "none", "max_steps": 4, "batch_size": 4, "logging_steps": 1,
                "save_steps": 100, "max_length": 96, "lr": {"default": 1e-3}, "warmup_ratio": 0.0}


@pytest.mark.parametrize("connector,trainable", [
    ({"kind": "mlp2x_gelu"}, {"vision": "frozen", "connector": "full", "projection": "full", "llm": "frozen"}),
    ({"kind": "qformer", "num_queries": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 2},
     {"vision": "frozen", "connector": "frozen", "projection": "full", "llm": "frozen"}),
], ids=["vision-level", "connector-level"])
def test_feature_cache_trains_the_same_losses_as_live_encoding(tmp_path, connector, trainable):
    """LLaVA stage 1 caches vision features; Ziya's frozen Q-Former is cached too (its dropout is
    off, pinned in eval mode, so the cached output is what a live step computes)."""
    kind = "blip2" if connector["kind"] == "qformer" else "clip"
    cfg = ModelConfig(architecture="ziya" if kind == "blip2" else "llava",
                      vision={"kind": kind, "image_size": 32, "init": VISION, "feature_layer": -2,
                              "keep_cls": kind == "blip2"},
                      connector=connector, llm={"init": LLM})
    shards = write_synthetic_shards(tmp_path / "shards", num_images=24, row_group_rows=8)
    live = train_stage(cfg, "s1", StageConfig(**LLAVA_STAGE1, trainable=trainable), shards, tmp_path / "t" / "live")
    stage = StageConfig(**LLAVA_STAGE1, trainable=trainable, feature_cache=True)
    cached = train_stage(cfg, "s1", stage, shards, tmp_path / "t" / "cached")
    assert [s for s, _ in cached["losses"]] == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor([l for _, l in cached["losses"]]),
                               torch.tensor([l for _, l in live["losses"]]), rtol=2e-4, atol=2e-4)
    folders = list((tmp_path / "t" / "cached" / "feature_cache").iterdir())
    assert len(folders) == 1 and len(list(folders[0].glob("*.safetensors"))) == 4  # one per row group (2 files x 8 + 4 rows)
    from safetensors.torch import load_file

    features = load_file(str(sorted(folders[0].glob("*.safetensors"))[0]))["features"]
    level = cache_level(TrainableConfig(**trainable))
    assert features.shape == ((8, 4, 32) if level == "connector" else (8, 16, 32))  # queries / patches


def test_training_flops_match_what_torch_counts_in_a_step():
    """The MFU numerator of `benchmarks/train.py --gpu` against torch's FLOP counter on a real
    forward + backward of the stage it describes (LLM and projector full, vision frozen)."""
    from torch.utils.flop_counter import FlopCounterMode

    from training.build import build_model
    from training.flops import training_flops
    from training.tokenizer import build_tokenizer

    cfg = ModelConfig(architecture="llava", connector={"kind": "mlp2x_gelu"}, llm={"init": LLM},
                      vision={"kind": "clip", "image_size": 32, "feature_layer": -2, "keep_cls": False,
                              "post_layernorm": False, "init": VISION})
    tok = build_tokenizer(["一个红色的圆形。"] * 8, vocab_size=300)
    model = setup_stage(build_model(cfg, tok), TrainableConfig(vision="frozen", connector="full", llm="full"),
                        StageConfig(data="sft").lora).train()
    model.set_attn_implementation("eager")  # torch counts attention as matmuls, not as CPU SDPA
    n, rows, length = model.config.num_image_tokens, 3, 40
    ids = torch.randint(5, 250, (rows, length))
    ids[:, 1], ids[:, 2:2 + n], ids[:, 2 + n] = (model.config.image_start_token_id, model.config.image_token_id,
                                                 model.config.image_end_token_id)
    labels = ids.clone()
    labels[:, :length - 9] = -100  # 8 trained next-token targets per row
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=labels, pixel_values=torch.randn(rows, 3, 32, 32)).loss.backward()
    counts = {"steps": 1, "samples": rows, "tokens": rows * length, "trained_tokens": int((labels != -100).sum()),
              "images": rows}
    assert training_flops(cfg, counts) == pytest.approx(counter.get_total_flops(), rel=0.01)
