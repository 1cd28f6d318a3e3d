"""Today's backbones (issue 17): Llama-3 / Qwen2 / Qwen3 / Mistral LLMs through AutoModelForCausalLM, SigLIP,
ChatML and Llama-3 label masks byte for byte, several images per conversation, LoRA targets from a table."""

from __future__ import annotations

import pytest
import torch

from templates import get_template, render_turns
from templates.image import IMAGE_BLOCK
from templates.registry import template_for_llm
from training.config import ModelConfig, StageConfig
from training.data import IGNORE, encode_turns
from training.lora import llm_lora_targets
from training.tokenizer import build_tokenizer

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
LLM = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": False}
ARCHS = {"llama": {"model_type": "llama", "vocab_size": 500}, "qwen2": {"model_type": "qwen2"},
         "qwen3": {"model_type": "qwen3", "head_dim": 12}, "mistral": {"model_type": "mistral"}}


@pytest.fixture(scope="module")
def tok():
    texts = ["<|im_start|>user\n图中是什么形状？<|im_end|>\n", "<|start_header_id|>user<|end_header_id|>\n\n红色<|eot_id|>",
             "它是什么颜色？", "圆形。", "红色"] * 5
    return build_tokenizer(texts, vocab_size=400)


def _text(tok, ids) -> str:
    return tok.decode(ids).replace("▁", " ")  # this tiny tokenizer leaves its space marker next to added tokens


def _masked(tok, enc) -> tuple[str, str]:
    trained = _text(tok, [i for i, l in zip(enc.input_ids, enc.labels) if l != IGNORE])
    prompt = _text(tok, [i for i, l in zip(enc.input_ids, enc.labels) if l == IGNORE])
    return trained, prompt


def test_chatml_label_mask_byte_for_byte(tok):
    turns = render_turns(get_template("chatml"), [("图中是什么形状？", "圆形。"), ("它是什么颜色？", "红色")], image=True)
    enc = encode_turns(tok, turns, images=1, num_image_tokens=2, eos=get_template("chatml").eos)
    image = "<img>" + "<img_token>" * 2 + "</img>"
    assert _text(tok, enc.input_ids) == (
        "<s><|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + image
        + "\n图中是什么形状？<|im_end|>\n<|im_start|>assistant\n圆形。<|im_end|>\n<|im_start|>user\n它是什么颜色？"
        "<|im_end|>\n<|im_start|>assistant\n红色<|im_end|>")
    trained, _ = _masked(tok, enc)
    assert trained == "圆形。<|im_end|>红色<|im_end|>"  # the end-of-turn token is trained; no EOS is added
    assert enc.input_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>") and enc.labels[-1] == enc.input_ids[-1]


def test_llama3_label_mask_byte_for_byte(tok):
    turns = render_turns(get_template("llama3"), [("图中是什么形状？", "圆形。"), ("它是什么颜色？", "红色")], image=True)
    enc = encode_turns(tok, turns, images=1, num_image_tokens=1, eos=get_template("llama3").eos)
    head = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert _text(tok, enc.input_ids) == (
        "<s>" + head.format("user") + "<img><img_token></img>\n图中是什么形状？<|eot_id|>" + head.format("assistant")
        + "圆形。<|eot_id|>" + head.format("user") + "它是什么颜色？<|eot_id|>" + head.format("assistant") + "红色<|eot_id|>")
    trained, _ = _masked(tok, enc)
    assert trained == "圆形。<|eot_id|>红色<|eot_id|>"


def test_auto_template_and_lora_targets_come_from_tables():
    assert [template_for_llm(t, v) for t, v in [("qwen2", 151_936), ("qwen3", 151_936), ("llama", 128_256),
                                                ("llama", 32_000), ("mistral", 32_768)]] == [
        "chatml", "chatml", "llama3", "llama2_chat", "mistral"]
    with pytest.raises(KeyError, match="template: auto knows no prompt format for LLM architecture 'gpt2'"):
        template_for_llm("gpt2", 50_257)
    assert llm_lora_targets("qwen2", ["attention", "mlp"]) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"]
    assert llm_lora_targets("phi3", ["attention"]) == ["qkv_proj", "o_proj"]
    with pytest.raises(ValueError, match="'q_proj' is not a linear layer of phi3"):
        llm_lora_targets("phi3", ["q_proj"])
    with pytest.raises(ValueError, match="no LoRA targets known for LLM architecture 'gpt2'"):
        llm_lora_targets("gpt2", ["attention"])


def _model_cfg(tmp_path, arch: str, vision_kind: str = "clip") -> ModelConfig:
    """A tiny LLM of `arch`, saved by path (AutoModelForCausalLM, safetensors), and an `init` vision tower."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {**LLM, **ARCHS[arch]}
    model_type = values.pop("model_type")
    values.setdefault("vocab_size", 500)
    folder = tmp_path / arch
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **values)).save_pretrained(folder)
    # beside the model, not in its folder: there transformers would rebuild it as that model's tokenizer class
    texts = ["图中是什么形状？圆形。红色<|im_start|><|im_end|><|start_header_id|><|end_header_id|><|eot_id|>"] * 3
    build_tokenizer(texts, vocab_size=300).save_pretrained(tmp_path / f"{arch}-tokenizer")
    return ModelConfig(architecture="llava", vision={"kind": vision_kind, "image_size": 32, "init": VISION,
                                                     "post_layernorm": False}, connector={"kind": "mlp2x_gelu"},
                       llm={"path": str(folder), "tokenizer": str(tmp_path / f"{arch}-tokenizer")})


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_llm_architecture_loads_by_path_and_takes_two_images(tmp_path, arch):
    from training.build import build_model, build_tokenizer_for
    from training.stream import Collator

    cfg = _model_cfg(tmp_path, arch, vision_kind="siglip" if arch == "qwen2" else "clip")
    tokenizer = build_tokenizer_for(cfg)
    model = build_model(cfg, tokenizer).eval()
    assert type(model.text_model).__name__.lower().startswith(arch)
    n = model.config.num_image_tokens
    assert n == 16 + (arch != "qwen2")  # SigLIP: patches only; CLIP: + CLS
    block = IMAGE_BLOCK
    one_turn = [{"prompt": f"{block}甲乙{block}丙", "response": "丁"}]
    two_turns = [{"prompt": f"{block}甲", "response": "乙"}, {"prompt": f"{block}丙", "response": "丁"}]
    a = encode_turns(tokenizer, one_turn, images=2, num_image_tokens=n)
    b = encode_turns(tokenizer, two_turns, images=2, num_image_tokens=n)
    assert a.input_ids == b.input_ids and a.image_spans == b.image_spans and len(a.image_spans) == 2
    assert a.labels != b.labels  # same text positions, different turns
    pixels = torch.randn(2, 3, 32, 32)
    collate = Collator(pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        la = model(**{k: v for k, v in collate([{"input_ids": a.input_ids, "labels": a.labels}]).items()
                      if k in ("input_ids", "attention_mask")}, pixel_values=pixels).logits
        lb = model(input_ids=torch.tensor([b.input_ids]), pixel_values=pixels).logits
        swapped = model(input_ids=torch.tensor([b.input_ids]), pixel_values=pixels.flip(0)).logits
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    assert not torch.allclose(la, swapped)  # the images are placed in order, not pooled


def test_siglip_features_skip_the_head_and_keep_every_patch(tmp_path):
    from training.build import build_model, build_tokenizer_for

    cfg = _model_cfg(tmp_path, "qwen2", vision_kind="siglip")
    model = build_model(cfg, build_tokenizer_for(cfg))
    assert not any("head" in n for n, _ in model.vision_model.named_parameters())
    feats = model.vision_features(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 16, 32)
    cfg2 = cfg.model_copy(update={"vision": cfg.vision.model_copy(update={"feature_layer": -2})})
    model2 = build_model(cfg2, build_tokenizer_for(cfg2))
    model2.load_state_dict(model.state_dict())
    hidden = model.vision_model(pixel_values=torch.ones(1, 3, 32, 32), output_hidden_states=True).hidden_states
    torch.testing.assert_close(model2.vision_features(torch.ones(1, 3, 32, 32)), hidden[-2])


def _stage(**over) -> StageConfig:
    base = {"data": "sft", "template": "auto", "max_steps": 2, "batch_size": 4, "logging_steps": 1, "save_steps": 2,
            "max_length": 400, "lr": {"default": 1e-3}, "warmup_ratio": 0.0,
            "trainable": {"vision": "frozen", "connector": "full", "llm": "lora"}}
    return StageConfig(**{**base, **over})


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_two_stages_save_reload_merge_export_and_chat(tmp_path, arch):
    """A tiny Qwen2 (`template: auto` -> ChatML) and a tiny Llama (-> llama2_chat) through both stages, reload,
    merge, chat with an image in a later turn, and the llava-hf export."""
    from training.chat import ChatModel, chat
    from training.checkpoint import load_stage
    from training.export import export
    from training.run import train_stage
    from training.synthetic import write_synthetic_shards

    cfg = _model_cfg(tmp_path, arch)
    template = template_for_llm(arch, 500)
    shards = write_synthetic_shards(tmp_path / "shards", num_images=16, sft_template=template)
    s1 = train_stage(cfg, "stage1", _stage(data="pretrain", template="none",
                                           trainable={"vision": "frozen", "connector": "full", "llm": "frozen"}),
                     shards, tmp_path / "train" / "stage1")
    s2 = train_stage(cfg, "stage2", _stage(), shards, tmp_path / "train" / "stage2", init_from=tmp_path / "train" / "stage1")
    assert s1["steps"] == s2["steps"] == 2 and all(l == l for _, l in s2["losses"])
    stage2 = tmp_path / "train" / "stage2"
    merged = load_stage(stage2, merge=True)
    assert type(merged.text_model).__name__.lower().startswith(arch)
    bot = ChatModel.load(stage2)
    assert bot.template == template
    img = write_synthetic_image()
    reply, history = chat(bot, img, "图中是什么形状？", do_sample=False, max_new_tokens=4)
    reply2, history = chat(bot, None, "它是什么颜色？", history, turn_images=[img], do_sample=False, max_new_tokens=4)
    assert isinstance(reply2, str) and [len(h.get("images", ())) for h in history[0::2]] == [1, 1]
    out = export(stage2, "llava-hf", tmp_path / "llava")
    assert (out / "model.safetensors").is_file()


def write_synthetic_image():
    from io import BytesIO

    from PIL import Image

    from training.synthetic import draw

    return Image.open(BytesIO(draw("红色", "圆形")))
