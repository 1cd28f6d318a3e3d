"""Talk to a checkpoint about an image: `chat(model, image, text, history) -> (response, history)`.

    bot = ChatModel.load("runs/demo/train/stage2")
    reply, history = chat(bot, "cat.jpg", "图中是什么？")
    reply, history = chat(bot, "cat.jpg", "它是什么颜色？", history)

`history` is VisualCLA's: ``[{"type": "instruction", "value": ...}, {"type": "response", ...}, ...]``;
an instruction that brought images also keeps them (``"images": [...]``). The prompt is rendered by
`templates.render_turns` and tokenised segment by segment exactly as in training
(`training.data.prompt_ids`). `image` is the conversation's image(s), passed again on every call as
VisualCLA's chat does: they go into the first instruction. Images a later turn adds go in
`turn_images` (``chat(bot, None, "和这张比呢？", history, turn_images=["dog.jpg"])``); several images, or
images after the first turn, stand inline where the text's `<image>` markers are (else each on a line
before the text), exactly as render places them in training rows. Generation stops at EOS or at the
template's end-of-turn token (`Template.stop`: ChatML's `<|im_end|>`, Llama-3's `<|eot_id|>`). Generation
defaults are VisualCLA's (sampling, top_p 0.9, top_k 40, temperature 0.5, repetition penalty 1.1,
no_repeat_ngram_size 15, max_new_tokens 512); pass `do_sample=False` for greedy answers (the same
answer every time), or seed torch (`torch.manual_seed`) before sampling to repeat a sampled one.
An image that is missing or cannot be decoded is an `ImageError` naming the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from templates.image import IMAGE_BLOCK, inline_images
from templates.instructions import HintPolicy
from templates.registry import get_template
from templates.schema import IMAGE_PLACEHOLDER
from templates.template import pairs_from_visualcla_history, render_turns
from training.data import prompt_ids

GENERATION_DEFAULTS = {"max_new_tokens": 512, "do_sample": True, "top_p": 0.9, "top_k": 40, "temperature": 0.5,
                       "repetition_penalty": 1.1, "no_repeat_ngram_size": 15}
SAMPLING_ONLY = ("top_p", "top_k", "temperature")
GREEDY = {"do_sample": False, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
"""Plain argmax decoding (`vcla chat --greedy`, the eval's chat): no sampling, no repetition penalty and no
n-gram blocking, so an exported llava-hf model's `generate(do_sample=False)` gives the same tokens (it
would count the prompt in both penalties; our chat generates from embeddings and counts only the answer)."""


class ImageError(ValueError):
    """An image to chat about that is missing or not a decodable image; the message names it."""


@dataclass
class ChatModel:
    model: Any
    tokenizer: Any
    processor: Any
    template: str = "visualcla"
    hint: HintPolicy = HintPolicy()
    """The short-answer VQA hint the checkpoint's shards were rendered with (stage.json `prompt`):
    `bot.hint.ask_short(question)` asks for a short answer as training did (what the eval does)."""

    @classmethod
    def load(cls, checkpoint: str | Path, dtype: torch.dtype | None = None) -> "ChatModel":
        from training.checkpoint import load_for_inference, stage_hint

        return cls(*load_for_inference(Path(checkpoint), dtype), hint=stage_hint(Path(checkpoint)))

    def pixel_values(self, images: list) -> torch.Tensor:
        pil = [load_rgb_image(im) for im in images]
        pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
        return pixels.to(self.model.device)


def load_rgb_image(image) -> Image.Image:
    """An RGB PIL image from a PIL image, encoded bytes or a file path; ImageError if it is none."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    where = "image bytes" if isinstance(image, (bytes, bytearray)) else f"image {image}"
    try:
        with Image.open(io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"{where}: file not found") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ImageError(f"{where}: not a decodable image ({e})") from None


def generation_options(generation: dict[str, Any]) -> dict[str, Any]:
    """GENERATION_DEFAULTS updated with `generation`; greedy (do_sample=False) drops the sampling-only
    defaults, which transformers would otherwise warn about on every call."""
    kwargs = {**GENERATION_DEFAULTS, **generation}
    if not kwargs["do_sample"]:
        kwargs = {k: v for k, v in kwargs.items() if k not in SAMPLING_ONLY or k in generation}
    return kwargs


def build_prompt(bot: ChatModel, text: str, pairs: list[tuple[str, str]], images: int | bool,
                 counts: list[int] | None = None) -> list[int]:
    """Prompt ids for `text` after `pairs`. `counts`: images of each turn (pairs, then this one); default:
    `images` in the first turn. One image in the first turn goes into the template's slot (as training's
    one-image rows); otherwise each turn's images stand inline (`templates.image.inline_images`)."""
    texts = [q for q, _ in pairs] + [text]
    counts = counts if counts is not None else [int(images)] + [0] * len(pairs)
    slot = sum(counts) == 1 and counts[0] == 1 and IMAGE_PLACEHOLDER not in texts[0]
    if not slot:
        texts = [inline_images(t, k) if k else t for t, k in zip(texts, counts)]
    # an earlier answer that wrote an image block as text would read as an image: keep it text
    answers = [a.replace(IMAGE_BLOCK, IMAGE_PLACEHOLDER) for _, a in pairs] + [""]
    turns = render_turns(get_template(bot.template), list(zip(texts, answers)), image=slot)
    return prompt_ids(bot.tokenizer, turns, images=sum(counts), num_image_tokens=bot.model.config.num_image_tokens)


def stop_token_ids(tokenizer, template: str) -> list[int]:
    """EOS, and the template's end-of-turn token when it is one token of the vocabulary."""
    ids = [tokenizer.eos_token_id]
    stop = get_template(template).stop
    if stop and stop in tokenizer.get_vocab() and tokenizer.convert_tokens_to_ids(stop) not in ids:
        ids.append(tokenizer.convert_tokens_to_ids(stop))
    return ids


def as_images(value) -> list:
    """None, one image or a list/tuple of images -> a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def cut_at_stop(text: str, template: str) -> str:
    stop = get_template(template).stop
    if stop and stop in text:
        text = text[: text.index(stop)]
    return text.strip()


@torch.no_grad()
def chat(model: ChatModel | str | Path, image, text: str, history: list[dict] | None = None, *,
         turn_images=None, **generation) -> tuple[str, list[dict]]:
    bot = model if isinstance(model, ChatModel) else ChatModel.load(model)
    history = [dict(h) for h in history or []]
    pairs = pairs_from_visualcla_history(history)
    asked = history[0::2]
    new = as_images(turn_images)
    if not any(h.get("images") for h in asked) and image is not None:  # the conversation's image(s): turn 1
        if asked:
            asked[0]["images"] = as_images(image)
        else:
            new = as_images(image) + new
    counts = [len(h.get("images", ())) for h in asked] + [len(new)]
    images = [im for h in asked for im in h.get("images", ())] + new
    ids = build_prompt(bot, text, pairs, bool(images), counts)
    input_ids = torch.tensor([ids], device=bot.model.device)
    tok = bot.tokenizer
    out = bot.model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
        pixel_values=bot.pixel_values(images) if images else None,
        eos_token_id=stop_token_ids(tok, bot.template), pad_token_id=tok.pad_token_id, **generation_options(generation),
    )
    response = cut_at_stop(tok.decode(out[0], skip_special_tokens=True), bot.template)
    history += [{"type": "instruction", "value": text, **({"images": new} if new else {})},
                {"type": "response", "value": response}]
    return response, history
