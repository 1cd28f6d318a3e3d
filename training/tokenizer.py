"""Tokenizers: the image tokens every model needs, and a small offline tokenizer for the demo/tests.

* `add_image_tokens(tok)` adds `<img>`, `</img>`, `<img_token>` (and `<pad>` if there is no pad
  token), as VisualCLA does; the caller resizes the LLM's embeddings to `len(tok)`.
* `build_tokenizer(texts, vocab_size)` trains a byte-fallback BPE (sentencepiece-LLaMA style:
  `<unk>`, `<s>`, `</s>`, 256 `<0xNN>` byte tokens, every character seen as a token, merges that
  may cross spaces so template boilerplate becomes a few tokens) with `tokenizers`, offline.
  It is a `PreTrainedTokenizerFast`; `save_pretrained` + `AutoTokenizer.from_pretrained` round-trip.
  The control tokens of chat formats found in the texts (ChatML's `<|im_start|>`, Llama-3's headers:
  `Template.special_tokens`) become special tokens, one id each, as in the real tokenizers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from templates.image import ADDED_TOKENS

PAD_TOKEN = "<pad>"
BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def add_image_tokens(tokenizer) -> int:
    """Add the image tokens (and a pad token if missing); returns how many were added."""
    added = tokenizer.add_special_tokens({"extra_special_tokens": list(ADDED_TOKENS)},
                                         replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return added


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    add_image_tokens(tokenizer)
    return tokenizer


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 2):
    """A small byte-fallback BPE tokenizer trained on `texts` (offline, deterministic)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    chars = Counter(ch for t in texts for ch in t)
    alphabet = sorted(ch.replace(" ", "▁") for ch in chars)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    specials = [UNK, BOS, EOS]
    tok = Tokenizer(models.BPE(unk_token=UNK, byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("\n", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, len(specials) + 256 + len(alphabet)), min_frequency=min_frequency,
        special_tokens=specials + byte_tokens, initial_alphabet=alphabet, limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   clean_up_tokenization_spaces=False)
    controls = template_tokens_in(texts)
    if controls:
        fast.add_special_tokens({"additional_special_tokens": controls}, replace_extra_special_tokens=False)
    add_image_tokens(fast)
    return fast


def template_tokens_in(texts: list[str]) -> list[str]:
    """The chat-format control tokens of the registered templates that occur in `texts`, in a fixed order."""
    from templates.registry import TEMPLATES

    wanted = dict.fromkeys(t for template in TEMPLATES.values() for t in template.special_tokens)
    return [t for t in wanted if any(t in text for text in texts)]
