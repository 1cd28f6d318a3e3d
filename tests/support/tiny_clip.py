"""Tiny random CLIP / Chinese-CLIP folders that load offline (`make_tiny_clip`), for tests and the demo.

Nothing is downloaded: the tokenizer is built here from a hand-made vocabulary (CLIP: byte-level BPE
over the 256 byte symbols plus a few merges; Chinese-CLIP: a WordPiece `vocab.txt` of Chinese
characters and ASCII letters), and the image processor is the PIL one (`CLIPImageProcessorPil` /
`ChineseCLIPImageProcessorPil`: the torchvision-backed default needs torchvision, which the project does
not install). The model is saved with `save_pretrained` (safetensors: transformers 5 writes nothing
else), the tokenizer and image processor beside it, as a real Hub folder has them.

    folder = make_tiny_clip(tmp_path / "clip")                      # CLIPModel, model_type "clip"
    folder = make_tiny_clip(tmp_path / "cn", kind="chinese_clip")   # ChineseCLIPModel
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    ChineseCLIPConfig,
    ChineseCLIPImageProcessorPil,
    ChineseCLIPModel,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

IMAGE_SIZE = 32
MAX_TEXT_LENGTH = 16
"""Both the text tower's max_position_embeddings and the tokenizer's model_max_length: small, so a
test can check that long texts are truncated."""

KINDS = ("clip", "chinese_clip")

_VISION = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1,
               num_attention_heads=2, intermediate_size=37)
_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
             max_position_embeddings=MAX_TEXT_LENGTH)

_CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
_CLIP_MERGES = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("r", "e"), ("re", "d</w>")]
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHINESE = "一只猫狗在草地上红色的蓝天白云车人图片照片这是和"


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer whose vocabulary covers every byte (so any text encodes,
    Chinese included) plus a few merged words."""
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in [*_CLIP_SPECIALS, *symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in _CLIP_MERGES)]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=list(_CLIP_MERGES), model_max_length=MAX_TEXT_LENGTH)


def bert_tokenizer(folder: Path) -> BertTokenizer:
    """A WordPiece tokenizer read from a hand-written `vocab.txt` (Chinese characters, ASCII letters)."""
    tokens = [*_BERT_SPECIALS, *_CHINESE, *"abcdefghijklmnopqrstuvwxyz0123456789", *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    vocab_file = Path(folder) / "vocab.txt"
    vocab_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    vocab = {line: i for i, line in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}
    return BertTokenizer(vocab=vocab, model_max_length=MAX_TEXT_LENGTH)


def make_tiny_clip(folder: str | Path, kind: str = "clip", seed: int = 0) -> Path:
    """Save a tiny random CLIP (`kind="clip"`) or Chinese-CLIP (`kind="chinese_clip"`) model with its
    tokenizer and image processor in `folder` (created) and return it. Same `seed`, same weights."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if kind == "clip":
        tokenizer = clip_tokenizer()
        config = CLIPConfig(text_config=dict(_TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
                            vision_config=_VISION, projection_dim=16)
        model = CLIPModel(config)
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    else:
        tokenizer = bert_tokenizer(folder)
        config = ChineseCLIPConfig(text_config=dict(_TEXT, vocab_size=len(tokenizer), type_vocab_size=2),
                                   vision_config=_VISION, projection_dim=16)
        model = ChineseCLIPModel(config)
        image_processor = ChineseCLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder
