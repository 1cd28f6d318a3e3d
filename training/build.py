"""From the recipe's `model:` section to a model, tokenizer and image processor.

    config = visualcla_config(model_cfg, tokenizer)     # configs only (read from the paths' config.json)
    model = build_model(model_cfg, tokenizer)           # weights from the paths, or fresh from `init`
    with torch.device("meta"): model = VisualCLAModel(visualcla_config(model_cfg))   # sizing only

Every part is either a `path` (a folder the user provides; nothing is downloaded) or `init`
(config keyword arguments, random weights). `prepare_base` saves a model built from `init` once,
in the merged layout, so later stages, resumes and exports load the very same weights.
A `path` that is missing or lacks config.json / tokenizer files is a `ModelPathError` naming the
recipe key (`require_model_folder`; `vcla` checks every folder of `model_folders` before it starts).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from templates.image import ADDED_TOKENS, IMG_END, IMG_START, IMG_TOKEN
from training.checkpoint import check_folder, check_model_paths, save_merged
from training.config import ModelConfig
from training.model import VisualCLAConfig, VisualCLAModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
"""One of these makes a folder a tokenizer folder (fast tokenizer, sentencepiece, BPE or WordPiece)."""


class ModelPathError(FileNotFoundError):
    """A `model.*` folder of the recipe that is missing or is not a model folder; names the key."""


def require_model_folder(key: str, path: str, config: bool = True, tokenizer: bool = False) -> Path:
    """`path` (the recipe's `key`) as a folder holding config.json and/or tokenizer files, or ModelPathError."""
    folder, fix = Path(path), f"fix the recipe or pass --set {key}=DIR"
    if not folder.exists():
        raise ModelPathError(f"{key}: {folder} does not exist (model paths are local folders; nothing is "
                             f"downloaded); {fix}")
    if not folder.is_dir():
        raise ModelPathError(f"{key}: {folder} is a file, not a model folder; {fix}")
    if config and not (folder / "config.json").is_file():
        raise ModelPathError(f"{key}: {folder} has no config.json (point it at a Hugging Face model folder: "
                             f"config.json, *.safetensors, tokenizer files); {fix}")
    if tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelPathError(f"{key}: {folder} has no tokenizer files ({' or '.join(TOKENIZER_FILES[:2])}); "
                             "copy the LLM's tokenizer there or set model.llm.tokenizer=DIR")
    return folder


def model_folders(cfg: ModelConfig) -> list[tuple[str, str, bool, bool]]:
    """(recipe key, folder, needs config.json, needs tokenizer files) for every folder the model loads."""
    llm, tok = cfg.llm.path, cfg.llm.tokenizer
    folders = [("model.llm.path", llm, True, tok is None), ("model.llm.tokenizer", tok, False, True),
               ("model.vision.path", cfg.vision.path, True, False),
               ("model.connector.path", cfg.connector.path, True, False)]
    return [f for f in folders if f[1]]


def _read_config(key: str, path: str) -> dict:
    return json.loads((require_model_folder(key, path) / "config.json").read_text())


VISION_CONFIGS = {"clip": CLIPVisionConfig, "blip2": Blip2VisionConfig, "siglip": SiglipVisionConfig,
                  "siglip2": SiglipVisionConfig}
"""`model.vision.kind` -> its vision config class. SigLIP 2's fixed-resolution checkpoints are SigLIP models."""
NAFLEX = ("siglip2", "siglip2_vision_model")


def vision_config(cfg: ModelConfig):
    v = cfg.vision
    cls = VISION_CONFIGS[v.kind]
    if v.path is None:
        config = cls(**{"image_size": v.image_size, **v.init})
    else:
        raw = _read_config("model.vision.path", v.path)
        if raw.get("model_type") in NAFLEX:
            raise ValueError(f"model.vision.path: {v.path} is a SigLIP 2 NaFlex checkpoint (model_type "
                             f"{raw['model_type']!r}); use a fixed-resolution one (e.g. siglip2-so400m-patch14-384)")
        raw = dict(raw.get("vision_config", raw))  # a full CLIP / BLIP-2 / SigLIP checkpoint: its vision part
        raw.pop("model_type", None)
        config = cls(**raw)
    if cls is SiglipVisionConfig:
        config.vision_use_head = False  # the pooling head's output is never used: no parameters for it
    return config


def qformer_config(cfg: ModelConfig, vision_width: int):
    c = cfg.connector
    if c.kind != "qformer":
        return None
    if c.path is not None:
        raw = _read_config("model.connector.path", c.path)
        raw = dict(raw.get("qformer_config", raw))
        raw.pop("model_type", None)
        raw.setdefault("encoder_hidden_size", vision_width)
        return Blip2QFormerConfig(**raw)
    return Blip2QFormerConfig(hidden_size=c.hidden_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                              intermediate_size=c.intermediate_size or 4 * c.hidden_size, encoder_hidden_size=vision_width)


def causal_lm_config(model_type: str, values: dict, where: str):
    """The config of a decoder-only LLM transformers implements itself (`AutoModelForCausalLM`; never
    remote code); ValueError naming `where` for an architecture it does not."""
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"{where}: model_type {model_type!r} is not a causal LM transformers implements "
                         f"(e.g. llama, qwen2, qwen3, mistral); custom-code models are not loaded")
    return AutoConfig.for_model(model_type, **values)


def text_config(cfg: ModelConfig, vocab_size: int | None):
    if cfg.llm.path is None:
        init = dict(cfg.llm.init)
        model_type = init.pop("model_type", "llama")
        if vocab_size is not None:
            init.setdefault("vocab_size", vocab_size)
        return causal_lm_config(model_type, init, "model.llm.init")
    raw = _read_config("model.llm.path", cfg.llm.path)
    model_type = raw.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"model.llm.path: {cfg.llm.path}/config.json names no model_type")
    return causal_lm_config(model_type, raw, f"model.llm.path ({cfg.llm.path})")


def llm_architecture(cfg: ModelConfig) -> tuple[str, int]:
    """(model_type, vocabulary size) of the recipe's LLM, from its config alone (what `template: auto` needs)."""
    text = text_config(cfg, None)
    return text.model_type, int(text.vocab_size or 0)


def stage_template(cfg: ModelConfig, name: str) -> str:
    """A stage's or render's template name with `auto` resolved by the LLM's architecture."""
    from templates.registry import resolve_template

    return resolve_template(name, *llm_architecture(cfg)) if name == "auto" else name


def visualcla_config(cfg: ModelConfig, tokenizer=None) -> VisualCLAConfig:
    """The composite config. Without a tokenizer (sizing on `meta`), the vocabulary is the LLM's
    plus the added tokens (`<img>`, `</img>`, `<img_token>`, `<pad>`) and the ids are placeholders."""
    vision = vision_config(cfg)
    text = text_config(cfg, len(tokenizer) if tokenizer is not None else None)
    if tokenizer is not None:
        text.vocab_size = max(text.vocab_size, len(tokenizer))
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS}
        text.pad_token_id, text.bos_token_id, text.eos_token_id = (
            tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    else:
        base = text.vocab_size
        text.vocab_size = base + len(ADDED_TOKENS) + 1
        ids = {t: base + i for i, t in enumerate(ADDED_TOKENS)}
    connector = cfg.connector.model_dump(exclude={"path"})
    return VisualCLAConfig(
        vision_config=vision, text_config=text, qformer_config=qformer_config(cfg, vision.hidden_size),
        visual_resampler_config=connector, use_visual_resampler=cfg.connector.kind == "resampler",
        architecture=cfg.architecture, vision_feature_layer=cfg.vision.feature_layer,
        vision_keep_cls=cfg.vision.keep_cls, vision_post_layernorm=cfg.vision.post_layernorm,
        image_token_id=ids[IMG_TOKEN], image_start_token_id=ids[IMG_START], image_end_token_id=ids[IMG_END],
        vision_name_or_path=cfg.vision.path, text_name_or_path=cfg.llm.path, connector_name_or_path=cfg.connector.path,
    )


def model_dtype(cfg: ModelConfig) -> torch.dtype | None:
    if cfg.dtype == "auto":
        return None
    dtype = DTYPES[cfg.dtype]
    if dtype == torch.bfloat16 and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        return torch.float32  # CPU training in bf16 is slower and less exact; keep fp32 there
    return dtype


def build_model(cfg: ModelConfig, tokenizer, dtype: torch.dtype | None = None) -> VisualCLAModel:
    """Weights from the paths (vision, LLM, connector) or fresh from `init`; embeddings resized
    to the tokenizer (new rows initialised to the mean, as VisualCLA's new tokens)."""

    config = visualcla_config(cfg, tokenizer)
    check_model_paths(config)  # safetensors only, no custom code
    return VisualCLAModel.from_parts(config, dtype=dtype)


PROCESSORS = {"clip": CLIPImageProcessorPil, "blip2": BlipImageProcessorPil, "siglip": SiglipImageProcessorPil,
              "siglip2": SiglipImageProcessorPil}
"""`model.vision.kind` -> its image processor (PIL backend: no torchvision)."""


def build_image_processor(cfg: ModelConfig):
    v = cfg.vision
    if v.path and (Path(v.path) / "preprocessor_config.json").is_file():
        return PROCESSORS[v.kind].from_pretrained(v.path)
    s = v.image_size
    if v.kind == "clip":
        return CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    if v.kind in ("siglip", "siglip2"):  # SigLIP: resize to the square, mean/std 0.5
        return SiglipImageProcessorPil(size={"height": s, "width": s})
    return BlipImageProcessorPil(size={"height": s, "width": s}, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)


def build_tokenizer_for(cfg: ModelConfig, texts=None):
    """The LLM's tokenizer (+ image tokens), or, for an `init` LLM, one trained on `texts`."""
    from training.tokenizer import build_tokenizer, load_tokenizer

    source = cfg.llm.tokenizer or cfg.llm.path
    if source:

        key = "model.llm.tokenizer" if cfg.llm.tokenizer else "model.llm.path"
        require_model_folder(key, source, config=key == "model.llm.path", tokenizer=True)
        check_folder(Path(source), "tokenizer")  # no auto_map: never offer to run the folder's code
        return load_tokenizer(source)
    if texts is None:
        raise ValueError("an `init` LLM without `llm.tokenizer` needs texts to train a tokenizer on")
    vocab = int((cfg.llm.init or {}).get("vocab_size") or 2000)
    return build_tokenizer(texts, vocab_size=vocab)


def prepare_base(cfg: ModelConfig, base_dir: Path, texts=None, seed: int = 0) -> Path:
    """For a model built (partly) from `init`: build it once and save it in the merged layout
    (`vision_encoder/`, `text_encoder/`, `connector.safetensors`, tokenizer, processor), so every
    later stage, resume and export loads the same weights with `from_pretrained`. Idempotent."""

    base_dir = Path(base_dir)
    if (base_dir / "config.json").is_file():
        return base_dir
    torch.manual_seed(seed)
    tokenizer = build_tokenizer_for(cfg, texts() if callable(texts) else texts)
    model = build_model(cfg, tokenizer, model_dtype(cfg))
    save_merged(model, tokenizer, build_image_processor(cfg), base_dir)
    return base_dir
