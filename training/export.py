"""Export a stage checkpoint: `merged` (VisualCLA-style merged layout) or `llava-hf`.

    export(Path("runs/demo/train/stage2"), "merged", Path("out/merged"))
    export(Path("runs/llava/train/stage2"), "llava-hf", Path("out/llava"))   # linear / mlp2x_gelu only

`merged`: every LoRA merged; `text_encoder/`, `vision_encoder/`, `connector.safetensors`, config,
tokenizer (+ `special_tokens_map.json`), processor, and `prompt_template.json` naming the prompt
template. What differs from VisualCLA's own merged folder: README.md ("Export").

`llava-hf`: transformers' `LlavaForConditionalGeneration` (safetensors) plus a `LlavaProcessor`
(`processor_config.json`: image processor, `patch_size`, `vision_feature_select_strategy`,
`num_additional_image_tokens` = 1 for CLIP's CLS, image token `<img_token>`; tokenizer files;
`chat_template.jinja`, our prompt template written as a Jinja chat template) and a
`generation_config.json`. `image_token_index` = `<img_token>`, so a newcomer's

    processor = AutoProcessor.from_pretrained(out); model = LlavaForConditionalGeneration.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = model.generate(**processor(text=text, images=[image], return_tensors="pt"), do_sample=False)

builds the very prompt `training.chat` builds (`<img>` + N x `<img_token>` + `</img>` in the first
instruction) and decodes the same greedy tokens (`check_llava_export`). Needs features LLaVA can
express: CLIP, no post-LN on the chosen layer (LLaVA takes raw hidden states); CLS kept -> strategy
"full", dropped -> "default".
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from common.files import share_tree
from common.layout import STAGE_FILE
from templates.image import IMG_END, IMG_START, IMG_TOKEN
from templates.template import Template
from training.checkpoint import (
    TEMPLATE_FILE,
    image_processor_from,
    load_stage,
    read_stage,
    save_merged,
    stage_hint,
)
from training.model import VisualCLAModel

FORMATS = ("merged", "llava-hf")
LLAVA_GENERATION = {"max_new_tokens": 512, "do_sample": True, "top_p": 0.9, "top_k": 40, "temperature": 0.5}
"""generation_config.json of a llava-hf export: VisualCLA's sampling defaults (as `vcla chat`) without
its repetition_penalty / no_repeat_ngram_size. Those two would count the prompt's tokens in
LlavaForConditionalGeneration (it generates from input_ids) but not in our chat (it generates from
embeddings), so with them `generate(do_sample=False)` would stop matching our greedy decoding."""


def export(checkpoint: Path, fmt: str, out: Path) -> Path:
    from transformers import AutoTokenizer

    checkpoint, out = Path(checkpoint), Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    model = load_stage(checkpoint, merge=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=False)  # load_stage checked it
    processor = image_processor_from(checkpoint, model.config)
    template = read_stage(checkpoint).get("template", "visualcla") if (checkpoint / STAGE_FILE).is_file() else "visualcla"
    if fmt == "merged":
        save_merged(model, tokenizer, processor, out)
    else:
        llava = to_llava(model)  # both raise before anything is written if LLaVA cannot express the model
        llava_proc = llava_processor(tokenizer, processor, model.config, template)
        llava.generation_config = llava_generation_config(tokenizer, template)
        llava.save_pretrained(out)
        llava_proc.save_pretrained(out)
        share_tree(out, folders=False)  # save_pretrained writes safetensors 0600
    prompt = {**stage_hint(checkpoint).to_record(), "template": template}  # the VQA hint: eval of the export asks the same
    (out / TEMPLATE_FILE).write_text(json.dumps({"template": template, "prompt": prompt}))
    return out


def to_llava(model: VisualCLAModel):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    cfg = model.config
    kind = cfg.connector_kind
    if kind not in ("linear", "mlp2x_gelu"):
        raise ValueError(f"llava-hf export needs a linear or mlp2x_gelu connector, not {kind!r}")
    if cfg.vision_post_layernorm:
        raise ValueError("llava-hf export needs vision.post_layernorm=false: LLaVA feeds the projector the raw "
                         "hidden states of `vision_feature_layer`, and a LayerNorm cannot be folded into a layer")
    if cfg.vision_config.model_type not in ("clip_vision_model", "siglip_vision_model"):
        raise ValueError("llava-hf export needs a CLIP or SigLIP vision encoder")
    config = LlavaConfig(
        vision_config=cfg.vision_config.to_dict(), text_config=model.text_model.config.to_dict(),
        image_token_index=cfg.image_token_id, image_seq_length=cfg.num_image_tokens,
        projector_hidden_act="gelu" if kind == "mlp2x_gelu" else "linear",
        vision_feature_select_strategy="full" if cfg.vision_keep_cls or not cfg.has_cls else "default",
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


# ---- processor, chat template, generation config of the llava-hf export ---------------------------

def llava_processor(tokenizer, image_processor, config, template: str):
    """A LlavaProcessor that expands `<img_token>` into the model's N image tokens: N = patches +
    `num_additional_image_tokens` (CLIP's CLS), minus the CLS again for strategy "default"."""
    from transformers import LlavaProcessor

    from templates.registry import get_template

    v = config.vision_config
    jinja = chat_template_jinja(get_template(template), tokenizer.bos_token if needs_bos(tokenizer) else None)
    keep = config.vision_keep_cls and config.has_cls
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=v.patch_size,
        vision_feature_select_strategy="full" if keep or not config.has_cls else "default",
        chat_template=jinja, image_token=IMG_TOKEN, num_additional_image_tokens=int(config.has_cls),
    )
    crop = dict(getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None) or {})
    side = crop.get("height") or crop.get("shortest_edge") or v.image_size
    n = (side // v.patch_size) ** 2 + (1 if keep else 0)
    if n != config.num_image_tokens:
        raise ValueError(f"the image processor gives {side} px images ({n} image tokens), the model expects "
                         f"{config.num_image_tokens}")
    return processor


def needs_bos(tokenizer) -> bool:
    """True if the tokenizer does not put BOS in front by itself (then the chat template writes it, as
    `training.data.prompt_ids` does; a LLaMA tokenizer adds it, and the template must not double it)."""
    if tokenizer.bos_token_id is None:
        return False
    return tokenizer("a")["input_ids"][:1] != [tokenizer.bos_token_id]


def llava_generation_config(tokenizer, template: str = "visualcla"):
    from transformers import GenerationConfig

    from training.chat import stop_token_ids

    stops = stop_token_ids(tokenizer, template)  # EOS, and ChatML's / Llama-3's end-of-turn token
    return GenerationConfig(**LLAVA_GENERATION, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=stops if len(stops) > 1 else stops[0], pad_token_id=tokenizer.pad_token_id)


def _lit(text: str) -> str:
    """A Jinja expression printing `text` exactly (a JSON string is a valid Jinja string literal)."""
    return "{{- " + json.dumps(text, ensure_ascii=False) + " -}}" if text else ""


def _format(fmt: str, slots: dict[str, str]) -> str:
    """A `str.format` template (`Template.first_turn`, `.turn`, `.response`) as Jinja: literal text
    printed as is, each `{slot}` replaced by the Jinja in `slots`."""
    out = []
    for literal, field, _, _ in string.Formatter().parse(fmt):
        out.append(_lit(literal))
        if field is not None:
            out.append(slots[field])
    return "".join(out)


def chat_template_jinja(template: Template, bos: str | None) -> str:
    """`template` as a Jinja chat template for transformers' `apply_chat_template`: the same text as
    `templates.render_turns` + `training.chat` (one image in the first instruction: its block
    `<img><img_token></img>` in the template's slot; several images, or images in later turns: each
    block on a line before its message's text, as `templates.image.inline_images`; the processor
    expands `<img_token>`). Each user turn already ends with the
    assistant header (`### Response:`), so `add_generation_prompt` changes nothing. A system message
    replaces the template's preamble (written with its `system_format`)."""
    text = "{{- text_of(message) -}}"
    pre, _, post = (json.dumps(x, ensure_ascii=False) for x in template.system_format.partition("{system}"))
    block = _lit(IMG_START + IMG_TOKEN + IMG_END + "\n")
    image = ("{%- if ns.image -%}" + _lit(IMG_START + IMG_TOKEN + IMG_END + template.image_sep) + "{%- endif -%}"
             if template.supports_image else "")
    text = ("{%- if not ns.image and message['content'] is not string -%}{%- for item in message['content'] "
            "if item['type'] == 'image' -%}" + block + "{%- endfor -%}{%- endif -%}" + text)
    parts = [
        "{#- prompt template " + json.dumps(template.name) + " of visualcla-forge (templates/registry.py) -#}\n",
        "{%- macro text_of(message) -%}{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}"
        "{%- endfor -%}{%- endif -%}{%- endmacro -%}\n",
        "{%- set ns = namespace(system=" + json.dumps(template.system_slot(), ensure_ascii=False)
        + ", image=false, images=0, first=0, users=0, turn=0) -%}\n",
        "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{%- set ns.users = ns.users + 1 -%}"
        "{%- endif -%}{%- if message['content'] is not string -%}"
        "{%- for item in message['content'] if item['type'] == 'image' -%}{%- set ns.images = ns.images + 1 -%}"
        "{%- if ns.users == 1 and message['role'] == 'user' -%}{%- set ns.first = ns.first + 1 -%}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{%- if message['role'] == 'system' -%}{%- set ns.system = '' -%}{%- if text_of(message) -%}"
        "{%- set ns.system = " + pre + " ~ text_of(message) ~ " + post + " -%}{%- endif -%}{%- endif -%}{%- endfor -%}\n",
        "{%- set ns.image = ns.images == 1 and ns.first == 1 -%}\n",
    ]
    if not template.supports_image:
        parts.append("{%- if ns.images -%}{{- raise_exception('template " + template.name
                     + " has no place for an image') -}}{%- endif -%}\n")
    if bos:
        parts.append(_lit(bos) + "\n")
    parts += [
        "{%- for message in messages if message['role'] != 'system' -%}\n",
        "{%- if message['role'] == 'user' -%}{%- if ns.turn == 0 -%}",
        _format(template.first_turn, {"system": "{{- ns.system -}}", "image": image, "text": text}),
        "{%- else -%}", _lit(template.answer_close), _format(template.turn, {"text": text}), "{%- endif -%}",
        "{%- set ns.turn = ns.turn + 1 -%}\n",
        "{%- elif message['role'] == 'assistant' -%}", _format(template.response, {"text": text}), "\n",
        "{%- else -%}{{- raise_exception('unknown role ' + message['role']) -}}{%- endif -%}\n",
        "{%- endfor -%}\n",
    ]
    return "".join(parts)


# ---- checking an export the way a newcomer would use it ---------------------------------------------

@torch.no_grad()
def check_llava_export(checkpoint: Path, export_dir: Path, image, text: str, max_new_tokens: int = 32) -> dict:
    """Greedy answers of our chat on `checkpoint` and of AutoProcessor + LlavaForConditionalGeneration on
    `export_dir`, loaded by path, for one image and instruction. Greedy = argmax decoding: do_sample=False,
    no repetition penalty, no n-gram blocking (the llava-hf model would count the prompt in both).
    `same_forced_tokens` compares `max_new_tokens` tokens with EOS held back, so a model that answers
    with EOS at once is still compared token by token."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from training.chat import GREEDY, ChatModel, build_prompt, cut_at_stop, load_rgb_image

    greedy = {**GREEDY, "max_new_tokens": max_new_tokens}
    forced = {**greedy, "min_new_tokens": max_new_tokens}
    bot = ChatModel.load(checkpoint)
    prompt = build_prompt(bot, text, [], image is not None)
    ids = torch.tensor([prompt])
    tok = bot.tokenizer
    pixels = bot.pixel_values([image]) if image is not None else None

    def ours(**kw) -> list[int]:
        return bot.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)[0].tolist()

    processor = AutoProcessor.from_pretrained(str(export_dir))
    llava = LlavaForConditionalGeneration.from_pretrained(str(export_dir)).eval()
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": text}]
    rendered = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=rendered, images=[load_rgb_image(image)] if image is not None else None, return_tensors="pt")

    def theirs(**kw) -> list[int]:
        return llava.generate(**inputs, **kw)[0, inputs["input_ids"].shape[1]:].tolist()

    mine, out = ours(**greedy), theirs(**greedy)
    template = bot.template
    return {
        "same_prompt": inputs["input_ids"][0].tolist() == prompt, "same_tokens": out == mine,
        "same_forced_tokens": ours(**forced) == theirs(**forced),
        "ours": cut_at_stop(tok.decode(mine, skip_special_tokens=True), template),
        "llava_hf": cut_at_stop(processor.decode(out, skip_special_tokens=True), template),
        "ours_ids": mine, "llava_hf_ids": out,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m training.export check CHECKPOINT EXPORT_DIR --image IMG --text TEXT`: exit 0 if the
    llava-hf export gives our prompt and greedy tokens (for `make demo` or a release check)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.export")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="compare a llava-hf export with its checkpoint (greedy)")
    check.add_argument("checkpoint", type=Path)
    check.add_argument("export_dir", type=Path)
    check.add_argument("--image", type=Path, required=True)
    check.add_argument("--text", required=True)
    check.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    result = check_llava_export(args.checkpoint, args.export_dir, args.image, args.text, args.max_new_tokens)
    ok = result["same_prompt"] and result["same_tokens"] and result["same_forced_tokens"]
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_ids")} | {"ok": ok}, ensure_ascii=False))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
