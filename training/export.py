"""Export a stage checkpoint: `merged` (VisualCLA merged layout) or `llava-hf`.

    export(Path("runs/demo/train/stage2"), "merged", Path("out/merged"))
    export(Path("runs/llava/train/stage2"), "llava-hf", Path("out/llava"))   # linear / mlp2x_gelu only

`merged`: every LoRA merged; `text_encoder/`, `vision_encoder/`, `connector.safetensors`, config,
tokenizer, processor, and `chat_template.json` naming the prompt template.
`llava-hf`: transformers' `LlavaForConditionalGeneration` (safetensors), `image_token_index` =
`<img_token>`, so our `<img>` + N x `<img_token>` + `</img>` prompts run unchanged in it. Needs features
LLaVA can express: no post-LN on the chosen layer; CLS kept -> strategy "full", dropped -> "default".
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training.checkpoint import load_stage, read_stage, save_merged
from training.model import VisualCLAModel

FORMATS = ("merged", "llava-hf")


def export(checkpoint: Path, fmt: str, out: Path) -> Path:
    from transformers import AutoTokenizer

    from training.build import image_processor_from

    checkpoint, out = Path(checkpoint), Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    model = load_stage(checkpoint, merge=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=False)  # load_stage checked it
    processor = image_processor_from(checkpoint, model.config)
    template = read_stage(checkpoint).get("template", "visualcla") if (checkpoint / "stage.json").is_file() else "visualcla"
    if fmt == "merged":
        save_merged(model, tokenizer, processor, out)
    else:
        llava = to_llava(model)
        llava.save_pretrained(out)
        tokenizer.save_pretrained(out)
        processor.save_pretrained(out)
    (out / "chat_template.json").write_text(json.dumps({"template": template}))
    return out


def to_llava(model: VisualCLAModel):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    cfg = model.config
    kind = cfg.connector_kind
    if kind not in ("linear", "mlp2x_gelu"):
        raise ValueError(f"llava-hf export needs a linear or mlp2x_gelu connector, not {kind!r}")
    if cfg.vision_post_layernorm:
        raise ValueError("llava-hf export needs vision.post_layernorm=false (LLaVA takes raw hidden states)")
    if cfg.vision_config.model_type != "clip_vision_model":
        raise ValueError("llava-hf export needs a CLIP vision encoder")
    config = LlavaConfig(
        vision_config=cfg.vision_config.to_dict(), text_config=model.text_model.config.to_dict(),
        image_token_index=cfg.image_token_id, image_seq_length=cfg.num_image_tokens,
        projector_hidden_act="gelu" if kind == "mlp2x_gelu" else "linear",
        vision_feature_select_strategy="full" if cfg.vision_keep_cls else "default",
        vision_feature_layer=cfg.vision_feature_layer, multimodal_projector_bias=True,
    )
    llava = LlavaForConditionalGeneration(config).to(model.dtype)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("vision_model."):
            rest = key[len("vision_model."):]
            rest = rest[len("vision_model."):] if rest.startswith("vision_model.") else rest
            state[f"model.vision_tower.{rest}"] = value
        elif key.startswith("text_model.model."):
            state["model.language_model." + key[len("text_model.model."):]] = value
        elif key.startswith("text_model.lm_head."):
            state[key[len("text_model."):]] = value
    proj = model.image_projection_layer
    if kind == "mlp2x_gelu":
        first = model.visual_resampler[0]
        state["model.multi_modal_projector.linear_1.weight"], state["model.multi_modal_projector.linear_1.bias"] = first.weight, first.bias
        state["model.multi_modal_projector.linear_2.weight"], state["model.multi_modal_projector.linear_2.bias"] = proj.weight, proj.bias
    else:  # one Linear: linear_1 is ours, linear_2 the identity (activation "linear")
        eye = torch.eye(proj.out_features, dtype=proj.weight.dtype)
        state["model.multi_modal_projector.linear_1.weight"], state["model.multi_modal_projector.linear_1.bias"] = proj.weight, proj.bias
        state["model.multi_modal_projector.linear_2.weight"] = eye
        state["model.multi_modal_projector.linear_2.bias"] = torch.zeros(proj.out_features, dtype=proj.weight.dtype)
    missing, unexpected = llava.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"llava-hf mapping incomplete: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return llava
