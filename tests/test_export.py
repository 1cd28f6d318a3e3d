"""Exports as a newcomer uses them: llava-hf through AutoProcessor + LlavaForConditionalGeneration,
merged through our loader; and that the demo recipe's model is one the llava-hf export can express."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from templates.image import IMAGE_BLOCK, IMG_END, IMG_START, IMG_TOKEN, inline_images
from templates.registry import get_template
from templates.template import chat_prompt
from training.config import ModelConfig, StageConfig
from training.run import train_stage
from training.synthetic import draw, write_synthetic_shards

REPO = Path(__file__).resolve().parent.parent
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
LLM = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
       "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 500}


def demo_model_section() -> dict:
    """recipes/demo.yaml's `model:` vision flags and connector (its sizes and paths are the demo's)."""
    model = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())["model"]
    vision = {k: v for k, v in model["vision"].items() if k not in ("path", "image_size", "kind")}
    return {"vision": vision, "connector": model["connector"]}


LAYOUTS = {
    # LLaVA 1.5: layer -2, CLS dropped (strategy "default")
    "llava": {"vision": {"feature_layer": -2, "keep_cls": False, "post_layernorm": False},
              "connector": {"kind": "mlp2x_gelu"}},
    # the demo recipe's own flags (CLS kept: strategy "full", num_additional_image_tokens 1)
    "demo": demo_model_section(),
}


def model_cfg(layout: str) -> ModelConfig:
    over = LAYOUTS[layout]
    return ModelConfig(architecture="llava",
                       vision={"kind": "clip", "image_size": 32, "init": VISION, **over["vision"]},
                       connector=over["connector"], llm={"init": LLM})


def sft_stage(**over) -> StageConfig:
    cfg = {"data": "sft", "template": "visualcla", "max_steps": 3, "batch_size": 4, "logging_steps": 1,
           "save_steps": 50, "max_length": 160, "lr": {"default": 2e-3}, "warmup_ratio": 0.0,
           "trainable": {"vision": "frozen", "connector": "full", "projection": "full", "llm": "full",
                         "embeddings": True}}
    return StageConfig(**{**cfg, **over})


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), num_images=16, row_group_rows=8)


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def trained(request, tmp_path_factory, shards) -> Path:
    """A tiny stage trained in full (3 steps) with the layout's vision flags; returns its folder."""
    run = tmp_path_factory.mktemp(f"run-{request.param}")
    train_stage(model_cfg(request.param), "stage2", sft_stage(), shards, run / "train" / "stage2")
    return run / "train" / "stage2"


def image(colour="红色", shape="圆形", seed=3) -> Image.Image:
    return Image.open(io.BytesIO(draw(colour, shape, seed=seed))).convert("RGB")


def test_llava_export_loads_with_autoprocessor_and_gives_our_greedy_chat(trained, tmp_path):
    """A newcomer's AutoProcessor + apply_chat_template + processor(text, images) +
    LlavaForConditionalGeneration.generate(do_sample=False) on the export, all loaded by path, builds
    our chat's prompt token for token and decodes our chat's greedy tokens and text."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from training.chat import ChatModel, build_prompt, chat
    from training.export import export

    out = export(trained, "llava-hf", tmp_path / "llava")
    processor = AutoProcessor.from_pretrained(str(out))  # old export: KeyError 'chat_template'
    assert not (out / "chat_template.json").exists() and (out / "chat_template.jinja").is_file()
    model = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    bot = ChatModel.load(trained)
    question = "圆形是什么颜色？"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=text, images=[image()], return_tensors="pt")
    prompt = build_prompt(bot, question, [], True)
    assert inputs["input_ids"][0].tolist() == prompt
    assert prompt.count(bot.model.config.image_token_id) == bot.model.config.num_image_tokens
    torch.testing.assert_close(inputs["pixel_values"], bot.pixel_values([image()]), rtol=0, atol=0)
    # the same through the tokenising path of apply_chat_template
    again = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": image()}, {"type": "text", "text": question}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    assert again["input_ids"][0].tolist() == prompt

    n = 12
    greedy = {"do_sample": False, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "max_new_tokens": n}
    with torch.no_grad():
        theirs = model.generate(**inputs, do_sample=False, max_new_tokens=n)[0, len(prompt):].tolist()
    reply, _ = chat(bot, image(), question, **greedy)
    from training.export import check_llava_export

    result = check_llava_export(trained, out, image(), question, max_new_tokens=n)
    assert result["same_prompt"] and result["same_tokens"] and result["same_forced_tokens"], result
    assert theirs == result["ours_ids"]
    assert result["llava_hf"] == reply == result["ours"]
    # and a longer stream (EOS held back for n tokens): every greedy step agrees, not just a short answer
    forced = {"do_sample": False, "max_new_tokens": n, "min_new_tokens": n}
    ids = torch.tensor([prompt])
    with torch.no_grad():
        theirs = model.generate(**inputs, **forced)[0, len(prompt):].tolist()
        ours = bot.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=bot.pixel_values([image()]),
                                  eos_token_id=bot.tokenizer.eos_token_id, pad_token_id=bot.tokenizer.pad_token_id,
                                  **forced)[0].tolist()
    assert theirs == ours and len(ours) == n
    from training.export import main  # the check `make demo` can run: python -m training.export check ...

    image().save(tmp_path / "q.png")
    assert main(["check", str(trained), str(out), "--image", str(tmp_path / "q.png"), "--text", question]) == 0


def test_chat_template_writes_our_prompt_text_for_every_image_template(trained, tmp_path):
    """Multi-turn text: the Jinja template renders `templates.chat_prompt`'s bytes (BOS + text, the
    image block as <img><img_token></img>) for every template that can place an image; the processor
    then expands <img_token> to the model's N image tokens, as `expand_image_block` does."""
    from transformers import AutoProcessor

    from training.export import export

    out = export(trained, "llava-hf", tmp_path / "llava")
    processor = AutoProcessor.from_pretrained(str(out))
    from training.export import chat_template_jinja
    tok = processor.tokenizer
    history = [("圆形是什么颜色？", "红色。"), ("它在哪里？", "左上角。")]
    messages = []
    for i, (q, a) in enumerate(history):
        content = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": q}]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": a}]}]
    messages.append({"role": "user", "content": "还有别的形状吗？"})
    for name in ("visualcla", "llava_v1", "ziya", "llama2_chat"):
        template = get_template(name)
        ours = chat_prompt(template, history, "还有别的形状吗？", image=True)
        rendered = processor.apply_chat_template(messages, chat_template=chat_template_jinja(template, tok.bos_token))
        assert rendered == tok.bos_token + ours.replace(IMAGE_BLOCK, IMG_START + IMG_TOKEN + IMG_END), name
    text_only = processor.apply_chat_template([{"role": "user", "content": "你好"}])
    assert text_only == tok.bos_token + chat_prompt(get_template("visualcla"), [], "你好", image=False)
    two = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                                      {"type": "text", "text": "x"}]}])
    inline = chat_prompt(get_template("visualcla"), [], inline_images("x", 2), image=False)  # as training.chat
    assert two == tok.bos_token + inline.replace(IMAGE_BLOCK, IMG_START + IMG_TOKEN + IMG_END) and two.count(IMG_TOKEN) == 2
    n = json.loads((out / "config.json").read_text())["image_seq_length"]
    ids = processor(text=processor.apply_chat_template(messages), images=[image()])["input_ids"][0]
    assert list(ids).count(processor.image_token_id) == n


def test_demo_recipe_model_exports_to_llava_hf():
    """recipes/demo.yaml's vision flags and connector, at test size: the llava-hf export accepts the
    model (it refused the post-LN default: "needs vision.post_layernorm=false") and gives its logits."""
    from training.build import visualcla_config
    from training.export import to_llava
    from training.model import VisualCLAModel
    from training.tokenizer import build_tokenizer

    tok = build_tokenizer(["图中是什么？红色的圆形。"] * 4, vocab_size=300)
    torch.manual_seed(0)
    model = VisualCLAModel(visualcla_config(model_cfg("demo"), tok)).eval()
    llava = to_llava(model).eval()
    n = model.config.num_image_tokens
    ids = torch.tensor([[tok.bos_token_id, model.config.image_start_token_id] + [model.config.image_token_id] * n
                        + [model.config.image_end_token_id, 7, 9, 11]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(llava(input_ids=ids, pixel_values=pixels).logits,
                                   model(input_ids=ids, pixel_values=pixels).logits, rtol=1e-4, atol=1e-5)


def test_merged_export_layout(trained, tmp_path):
    """The merged folder: VisualCLA's `text_encoder/`, `vision_encoder/`, config, tokenizer with
    `special_tokens_map.json`, processor; connector tensors under VisualCLA's prefixes; the prompt
    template in `prompt_template.json` (not `chat_template.json`, which transformers reads as its own);
    it loads back through our loader with that template and the stage's logits."""
    from safetensors import safe_open

    from training.checkpoint import load_for_inference, load_stage
    from training.export import export

    out = export(trained, "merged", tmp_path / "merged")
    names = {p.name for p in out.iterdir()}
    assert {"text_encoder", "vision_encoder", "connector.safetensors", "config.json", "tokenizer.json",
            "special_tokens_map.json", "preprocessor_config.json", "prompt_template.json"} <= names
    assert "chat_template.json" not in names
    special = json.loads((out / "special_tokens_map.json").read_text())
    assert special["bos_token"] == "<s>" and special["pad_token"] == "<pad>"
    assert special["additional_special_tokens"] == [IMG_START, IMG_END, IMG_TOKEN]
    with safe_open(str(out / "connector.safetensors"), "pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"visual_resampler", "image_projection_layer"}
    model, _, _, template = load_for_inference(out)
    assert template == "visualcla"
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, load_stage(trained).eval()(input_ids=ids).logits)
