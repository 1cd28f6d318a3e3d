"""Image-text similarity with the CLIP model a recipe points at (`curate.clip.path`), and a score cache.

    scorer = ClipScorer.load("models/clip-vit-base-patch32")      # CLIPModel or ChineseCLIPModel folder
    scorer.score([image], ["a cat on the grass"])                  # -> array([0.31], dtype=float32)
    with ScoreCache(run_dir / "clip-scores.sqlite") as cache:
        scores = score_pairs(scorer, cache, [(image_sha256, text, load_image), ...], batch_size=64)

A score is the cosine similarity of the image's and the text's projected embeddings, in [-1, 1]:
*not* multiplied by the model's `logit_scale` (x100 for OpenAI's CLIP) and not softmaxed over a
batch, so it does not depend on which other pairs are scored with it and one threshold means the
same for every batch. Pairs are scored as given (image_i with text_i), not as the full matrix. Texts
longer than the text tower's context (77 tokens for OpenAI's CLIP) are truncated.

The folder is a Hugging Face model folder: `config.json` with `model_type` "clip" (`CLIPModel`, its
CLIP tokenizer) or "chinese_clip" (`ChineseCLIPModel`, its BERT tokenizer), safetensors weights, the
tokenizer files and `preprocessor_config.json`. Every class is named here, none is looked up from
the folder (no Auto class, no `auto_map`), so the folder's own code is never run; weights load with
`use_safetensors=True` and a folder holding only pickles (`pytorch_model.bin`) is refused, because
unpickling a file can run arbitrary code. The image processor is always the PIL one, so a score does
not depend on whether torchvision happens to be installed.

`ScoreCache` keeps every score in one SQLite file keyed by (model id, image sha256, text sha256):
a later run (another threshold, a killed run resumed) reads them instead of recomputing. The model id
(`ClipScorer.model_id`) is the sha256 of the folder's config, weights, tokenizer and image processor
files, so a changed model never reads another model's scores. Each batch is committed as it is
scored (WAL), so a killed run keeps everything scored before the batch in flight.

Library layer: imports `common/` and third-party packages only.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    ChineseCLIPImageProcessorPil,
    ChineseCLIPModel,
    ChineseCLIPProcessor,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

from common.files import sha256_file
from common.storage import StorageError, open_wal, sqlite_storage_errors

MODEL_TYPES = {
    "clip": (CLIPModel, CLIPProcessor, CLIPTokenizer, CLIPImageProcessorPil),
    "chinese_clip": (ChineseCLIPModel, ChineseCLIPProcessor, BertTokenizer, ChineseCLIPImageProcessorPil),
}
"""config.json `model_type` -> (model, processor, tokenizer, image processor) classes."""

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files that are unpickled when loaded (pytorch_model.bin, *.pt, ...)."""
SAFETENSORS_SUFFIXES = (".safetensors", ".safetensors.index.json")
IDENTITY_FILES = ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt")
"""Besides the safetensors files: what else decides a score, hashed into `model_id` when present."""

ImageLoader = Callable[[], Image.Image]
PairItem = tuple[str, str, ImageLoader]
"""(image sha256, text, a function returning the image): what `score_pairs` scores."""
CacheKey = tuple[str, str, str]
"""(model id, image sha256, text sha256)."""


class ClipModelError(ValueError):
    """A folder ClipScorer will not load: not a CLIP / Chinese-CLIP model, pickle-only weights, or
    weights that do not fit the config. The message names the folder and what to do."""


def text_sha256(text: str) -> str:
    """The text part of a cache key: sha256 of the UTF-8 text, exactly as scored (not normalised)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_folder_id(folder: str | Path) -> str:
    """sha256 over the names and sha256 of the folder's safetensors files and `IDENTITY_FILES`."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and (p.name.endswith(SAFETENSORS_SUFFIXES) or p.name in IDENTITY_FILES))
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\t{sha256_file(folder / name)}\n".encode("utf-8"))
    return h.hexdigest()


def check_clip_folder(folder: str | Path) -> str:
    """The folder's `model_type` ("clip" or "chinese_clip"), or ClipModelError / FileNotFoundError
    saying why the folder cannot be loaded. Reads config.json and the file names; loads nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: CLIP model folder not found (curate.clip.path must be a local "
                                "folder; nothing is downloaded)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ClipModelError(f"{folder}: no config.json; point curate.clip.path at a Hugging Face CLIPModel or "
                             "ChineseCLIPModel folder (config.json, *.safetensors, tokenizer files, "
                             "preprocessor_config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ClipModelError(f"{config_file}: not readable JSON ({e})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_TYPES:
        raise ClipModelError(
            f"{folder}: config.json has model_type {model_type!r}; a CLIP scorer needs one of "
            f"{', '.join(repr(t) for t in MODEL_TYPES)} (transformers CLIPModel or ChineseCLIPModel, text and "
            "vision towers together; a vision-only or text-only folder will not do)")
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if not any(n.endswith(SAFETENSORS_SUFFIXES) for n in names):
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise ClipModelError(
                f"{folder}: the weights are pickles ({', '.join(pickles)}), not safetensors; the CLIP scorer loads "
                "with use_safetensors=True only, because unpickling a file can run arbitrary code. Convert them in "
                "an environment you trust (from_pretrained(folder).save_pretrained(out), which writes "
                "model.safetensors) or use a safetensors release of the model.")
        raise ClipModelError(f"{folder}: no weights (model.safetensors); copy the model's safetensors files there")
    return model_type


class ClipScorer:
    """A loaded CLIP or Chinese-CLIP model with its processor; `score` gives paired cosine similarities."""

    def __init__(self, model: torch.nn.Module, processor, *, kind: str, folder: Path, model_id: str,
                 device: str, max_length: int) -> None:
        self.model = model
        self.processor = processor
        self.kind = kind
        self.folder = Path(folder)
        self.device = device
        self.max_length = max_length
        self._model_id = model_id

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, dtype: torch.dtype | None = None) -> "ClipScorer":
        """Load the model folder `path` (see the module docstring). `device`: "cuda" when available,
        else "cpu". `dtype`: float32 on CPU, float16 on a GPU (scores then differ by ~1e-3)."""
        folder = Path(path)
        kind = check_clip_folder(folder)
        model_cls, processor_cls, tokenizer_cls, image_processor_cls = MODEL_TYPES[kind]
        device = device or default_device()
        if dtype is None:
            dtype = torch.float32 if torch.device(device).type == "cpu" else torch.float16
        model_id = model_folder_id(folder)  # before loading: the id describes at most what was loaded
        model, info = model_cls.from_pretrained(folder, use_safetensors=True, local_files_only=True, dtype=dtype,
                                                output_loading_info=True)
        missing = sorted(info.get("missing_keys") or ())
        mismatched = [k for k, *_ in info.get("mismatched_keys") or ()]
        if missing or mismatched:
            bad = missing or mismatched
            raise ClipModelError(
                f"{folder}: the weights do not fit config.json ({len(bad)} {'missing' if missing else 'mismatched'} "
                f"tensors, e.g. {', '.join(bad[:3])}); the scorer would use random weights for them. Is it a "
                f"complete {model_cls.__name__} checkpoint?")
        model.to(device).eval()
        try:
            tokenizer = tokenizer_cls.from_pretrained(folder, local_files_only=True)
            image_processor = image_processor_cls.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise ClipModelError(f"{folder}: cannot load the {kind} tokenizer or image processor ({e}); the folder "
                                 "needs the tokenizer files and preprocessor_config.json the model came with") from e
        processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer)
        return cls(model, processor, kind=kind, folder=folder, model_id=model_id, device=device,
                   max_length=_max_text_length(model, tokenizer))

    @property
    def model_id(self) -> str:
        """A stable identity for caches: sha256 of the folder's config, weights, tokenizer and image
        processor files (computed once, when the folder was loaded)."""
        return self._model_id

    def score(self, images: Sequence[Image.Image], texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Cosine similarity of each (images[i], texts[i]) pair, float32 in [-1, 1], in `batch_size`
        pairs per forward pass (the batch size does not change the scores beyond float rounding)."""
        if len(images) != len(texts):
            raise ValueError(f"score: {len(images)} images but {len(texts)} texts (pairs are scored as given)")
        if batch_size < 1:
            raise ValueError(f"score: batch_size must be positive, not {batch_size}")
        out = np.empty(len(texts), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                stop = min(start + batch_size, len(texts))
                image_embeds = self.image_embeddings(images[start:stop])
                text_embeds = self.text_embeddings(texts[start:stop])
                sims = (image_embeds * text_embeds).sum(dim=-1).clamp_(-1.0, 1.0)
                out[start:stop] = sims.cpu().numpy()
        return out

    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The images' projected embeddings, unit length, float32 (call under inference_mode)."""
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        pixels = self.processor.image_processor(rgb, return_tensors="pt")["pixel_values"]
        features = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
        return _unit(features.pooler_output)

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """The texts' projected embeddings, unit length, float32; texts truncated to `max_length` tokens."""
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                          return_tensors="pt").to(self.device)
        features = self.model.get_text_features(**tokens)
        return _unit(features.pooler_output)


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _max_text_length(model: torch.nn.Module, tokenizer) -> int:
    """The text tower's context (max_position_embeddings), or the tokenizer's if that is shorter
    (transformers sets an unknown model_max_length to a huge number)."""
    positions = model.config.text_config.max_position_embeddings
    declared = getattr(tokenizer, "model_max_length", None) or math.inf
    return int(min(positions, declared))


# ---- the score cache -------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    model_id     TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    text_sha256  TEXT NOT NULL,
    score        REAL NOT NULL,
    PRIMARY KEY (model_id, image_sha256, text_sha256)
) WITHOUT ROWID;
"""


class ScoreCacheWriteError(StorageError):
    """The score cache could not be opened or written (full disk, no permission); SQLite rolled back
    the unfinished batch: every score already committed is kept."""


def _storage_errors(path: Path) -> AbstractContextManager[None]:
    """SQLite's full-disk / read-only / cannot-open errors as a ScoreCacheWriteError naming `path`."""
    return sqlite_storage_errors(path, ScoreCacheWriteError, "CLIP score cache",
                                 instead="set curate.clip.cache_path to another place",
                                 then="run the same command again: every score already stored is kept")


class ScoreCache:
    """CLIP scores in one SQLite file: (model id, image sha256, text sha256) -> score.
    `put_many` commits its rows in one transaction (a killed run keeps every committed batch); WAL
    lets another process read while a run writes. Safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _storage_errors(self.path):
            self._db = open_wal(self.path, _SCHEMA)
        self._lock = threading.Lock()

    def __enter__(self) -> "ScoreCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]

    def get_many(self, keys: Iterable[CacheKey]) -> dict[CacheKey, float]:
        """The cached score of each key that has one (keys without are absent from the result)."""
        found: dict[CacheKey, float] = {}
        with self._lock:
            for key in dict.fromkeys(keys):
                row = self._db.execute(
                    "SELECT score FROM scores WHERE model_id = ? AND image_sha256 = ? AND text_sha256 = ?",
                    key).fetchone()
                if row is not None:
                    found[key] = row[0]
        return found

    def put_many(self, rows: Iterable[tuple[str, str, str, float]]) -> int:
        """Store (model id, image sha256, text sha256, score) rows in one committed transaction
        (a key already present is overwritten); returns the number of rows."""
        rows = [(m, i, t, float(s)) for m, i, t, s in rows]
        if not rows:
            return 0
        with self._lock, _storage_errors(self.path):
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return len(rows)


def score_pairs(scorer: ClipScorer, cache: ScoreCache | None, items: Sequence[PairItem], batch_size: int = 64,
                progress: Callable[[int], None] | None = None) -> list[float]:
    """The score of each (image sha256, text, image loader) item, in input order.

    Cached scores (same model id, image and text) are returned without calling the loader; the rest
    are scored `batch_size` pairs at a time, each batch stored in `cache` (committed) before the
    next is loaded. A pair that occurs more than once is scored once; within a batch an image is
    loaded once however many texts it has. A loader's exception propagates (batches already scored
    stay cached). `cache=None` scores everything. `progress(n)` is called with the number of items
    settled (from the cache at first, then per batch)."""
    if batch_size < 1:
        raise ValueError(f"score_pairs: batch_size must be positive, not {batch_size}")
    model_id = scorer.model_id
    keys = [(model_id, image_sha, text_sha256(text)) for image_sha, text, _ in items]
    counts = Counter(keys)
    first: dict[CacheKey, int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    scores: dict[CacheKey, float] = cache.get_many(first) if cache is not None else {}
    pending = [(key, index) for key, index in first.items() if key not in scores]  # one per key: its first item
    if progress is not None and scores:
        progress(sum(counts[key] for key in scores))
    for start in range(0, len(pending), batch_size):
        batch = pending[start:start + batch_size]
        images: dict[str, Image.Image] = {}
        for (_, image_sha, _), index in batch:
            if image_sha not in images:
                images[image_sha] = items[index][2]()
        batch_scores = scorer.score([images[key[1]] for key, _ in batch], [items[index][1] for _, index in batch],
                                    batch_size=batch_size)
        del images
        if cache is not None:
            cache.put_many((*key, s) for (key, _), s in zip(batch, batch_scores))
        for (key, _), s in zip(batch, batch_scores):
            scores[key] = float(s)
        if progress is not None:
            progress(sum(counts[key] for key, _ in batch))
    return [scores[key] for key in keys]
