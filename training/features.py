"""Stage-1 feature cache: with a frozen vision encoder, encode every image once, train from disk.

What is cached is the input of the first module that trains: the vision features when the
connector trains (LLaVA stage 1), the connector's output when it is frozen too (Ziya's Q-Former),
so a training step runs only the trained modules and the LLM. One safetensors file per shard unit
(`<unit.key>.safetensors`: `features` [images, tokens, width], one entry per image of the unit in row
order and a row's images in order; `offsets` [rows + 1], row i's images are features[offsets[i]:offsets[i+1]]),
written atomically (`.tmp-<name>`, renamed) by the rank that owns the unit (`units[rank::world]`);
a rerun skips units already cached and removes the temp file a killed run left. The folder name
is a hash of what the features depend on (level, vision config and weights, feature
layer/CLS/post-LN, image processor, and the connector when it is cached too), so a different
encoder never reads stale features. Disk cost: rows x tokens x width x 2-4 bytes (ViT-L/14,
257 tokens, bf16: ~0.5 MB per image; a 32-query Q-Former: ~0.05 MB).
"""

from __future__ import annotations

import hashlib
import json
from itertools import accumulate
from pathlib import Path

import torch
from safetensors.torch import save_file

from common.files import rename_into_place, staging_path
from training.data import ShardUnit, read_unit, row_images_bytes

LEVELS = {"vision": "image_features", "connector": "connector_features"}
"""Cache level -> the model's keyword argument that takes the cached tensor."""


def cache_level(trainable) -> str:
    """Where to cut: after the connector if it is frozen as well, else after the vision encoder."""
    return "connector" if trainable.connector == "frozen" else "vision"


def cache_key(model, processor, level: str = "vision") -> str:
    """A hash of everything the cached tensors depend on (configs, processor, frozen weights)."""
    cfg = model.config
    h = hashlib.sha256()
    h.update(b"per-image-v2")  # the file layout (features per image + row offsets)
    h.update(json.dumps([level, cfg.vision_config.to_dict()], sort_keys=True, default=str).encode())
    h.update(json.dumps([cfg.vision_feature_layer, cfg.vision_keep_cls, cfg.vision_post_layernorm]).encode())
    h.update(json.dumps(processor.to_dict(), sort_keys=True, default=str).encode())
    parts = [model.vision_model]
    if level == "connector":
        h.update(json.dumps(cfg.visual_resampler_config or {}, sort_keys=True, default=str).encode())
        parts.append(model.visual_resampler)
    for part in parts:
        params = list(part.parameters())
        for p in params[:: max(1, len(params) // 8)]:
            h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


def encode_images(model, pixels: torch.Tensor, level: str) -> torch.Tensor:
    features = model.vision_features(pixels)
    if level == "connector":
        features = model.visual_resampler(features.to(model.image_projection_layer.weight.dtype))
    return features


@torch.no_grad()
def build_feature_cache(model, units: list[ShardUnit], collator, folder: Path, rank: int = 0, world: int = 1,
                        batch_size: int = 64, level: str = "vision") -> Path:
    """Encode this rank's units into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    for unit in units[rank::world]:
        path = folder / f"{unit.key}.safetensors"
        tmp = staging_path(path)
        tmp.unlink(missing_ok=True)  # what a killed run of this rank was writing
        if path.is_file():
            continue
        per_row = [row_images_bytes(r) for r in read_unit(unit, ["image", "images"])]
        images = [im for row in per_row for im in row]
        offsets = torch.tensor([0, *accumulate(len(r) for r in per_row)], dtype=torch.long)
        chunks = []
        for s in range(0, len(images), batch_size):
            pixels = collator.process(images[s:s + batch_size]).to(model.device)
            chunks.append(encode_images(model, pixels, level).cpu())
        out = torch.cat(chunks) if chunks else torch.zeros((0, 1, 1))
        save_file({"features": out.contiguous(), "offsets": offsets.contiguous()}, str(tmp))
        rename_into_place(tmp, path)  # the umask's mode (safetensors writes 0600), fsynced first
    model.train(was_training)
    return folder
