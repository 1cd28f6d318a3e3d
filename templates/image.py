"""Where the image goes in rendered text, and how the trainer turns that into image tokens.

The convention (one for every template and both stages):

* A rendered prompt holds each image as one **image block**, the literal string
  `IMAGE_BLOCK` = ``<img><image></img>``: a one-image conversation in the first turn's prompt
  (templates differ only in where that block sits and what follows it; VisualCLA: first
  instruction, then ``\\n``), several images where the record's ``<image>`` markers stood, in any
  user turn. The k-th block in text order is the row's k-th image.
* The trainer calls `expand_image_block(text, n)`, which replaces the block with
  ``<img>`` + n x ``<img_token>`` + ``</img>`` (n = number of connector outputs, e.g. the
  resampler's queries). The n `<img_token>` embeddings are then overwritten by the projected
  image features. Shards stay independent of n, so one shard set serves any connector size.
* ``<image>`` is also the marker that records (and the shard's `messages` column, which
  LLaMA-Factory reads) use for "the image goes here". Rendering removes it from message text
  and places the block; any of these reserved strings left in user text is a rejection,
  because the tokenizer would turn it into a special token.
"""

from __future__ import annotations

from templates.schema import IMAGE_PLACEHOLDER

IMG_START = "<img>"
IMG_END = "</img>"
IMG_TOKEN = "<img_token>"
IMAGE_BLOCK = f"{IMG_START}{IMAGE_PLACEHOLDER}{IMG_END}"
"""The single marker a rendered prompt carries for its image."""

RESERVED_STRINGS = (IMG_START, IMG_END, IMG_TOKEN, IMAGE_PLACEHOLDER)
"""Strings that must not appear in message text once the image marker has been removed."""

ADDED_TOKENS = (IMG_START, IMG_END, IMG_TOKEN)
"""Tokens the trainer adds to the tokenizer (VisualCLA also adds a `<pad>`)."""


def image_tokens(num_tokens: int) -> str:
    """``<img>`` + num_tokens x ``<img_token>`` + ``</img>``, as VisualCLA feeds an image."""
    if num_tokens <= 0:
        raise ValueError(f"an image needs at least one <img_token>, got {num_tokens}")
    return IMG_START + IMG_TOKEN * num_tokens + IMG_END


def expand_image_block(text: str, num_tokens: int, expected: int | None = 1) -> str:
    """Replace every image block in `text` by `image_tokens(num_tokens)`.

    `expected` is how many blocks the text must hold (None: any number); a mismatch raises,
    because a silently missing or doubled image would train the model on the wrong thing.
    """
    found = text.count(IMAGE_BLOCK)
    if expected is not None and found != expected:
        raise ValueError(f"expected {expected} image block(s) {IMAGE_BLOCK!r} in the text, found {found}")
    return text.replace(IMAGE_BLOCK, image_tokens(num_tokens))


def inline_images(text: str, n: int) -> str:
    """`text` with `n` image blocks where they go: at its `<image>` markers if it has exactly `n`, else
    (no marker) each block on a line of its own before the text, as LLaVA writes `<image>\\n`."""
    markers = text.count(IMAGE_PLACEHOLDER)
    if markers == n:
        return text.replace(IMAGE_PLACEHOLDER, IMAGE_BLOCK)
    if markers:
        raise ValueError(f"{markers} {IMAGE_PLACEHOLDER} marker(s) in the text for {n} image(s)")
    return (IMAGE_BLOCK + "\n") * n + text


def count_image_blocks(text: str) -> int:
    """How many image blocks `text` holds (one per image, in order)."""
    return text.count(IMAGE_BLOCK)


def find_reserved(text: str) -> str | None:
    """The first reserved string inside `text`, or None."""
    for s in RESERVED_STRINGS:
        if s in text:
            return s
    return None
