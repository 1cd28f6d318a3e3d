"""Stage-1 feature cache: with a frozen vision encoder, encode every image once, train from disk.

One safetensors file per shard unit (`<unit.key>.safetensors`, tensor `features`
[rows, tokens, width], zeros for text-only rows), written atomically (`.tmp-<name>`, renamed) by the
rank that owns the unit (`units[rank::world]`); a rerun skips units already cached and removes the
temp file a killed run left. The folder name is a hash of what the features depend on (vision
config and weights, feature layer/CLS/post-LN, image processor), so a different encoder never
reads stale features. Disk cost: rows x tokens x width
x 2-4 bytes (ViT-L/14, 257 tokens, bf16: ~0.5 MB per image).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from training.data import Unit, read_unit


def cache_key(model, processor) -> str:
    cfg = model.config
    h = hashlib.sha256()
    h.update(json.dumps(cfg.vision_config.to_dict(), sort_keys=True, default=str).encode())
    h.update(json.dumps([cfg.vision_feature_layer, cfg.vision_keep_cls, cfg.vision_post_layernorm]).encode())
    h.update(json.dumps(processor.to_dict(), sort_keys=True, default=str).encode())
    for p in list(model.vision_model.parameters())[:: max(1, len(list(model.vision_model.parameters())) // 8)]:
        h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


@torch.no_grad()
def build_feature_cache(model, units: list[Unit], collator, folder: Path, rank: int = 0, world: int = 1,
                        batch_size: int = 64) -> Path:
    """Encode this rank's units into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    for unit in units[rank::world]:
        path = folder / f"{unit.key}.safetensors"
        tmp = path.with_name(".tmp-" + path.name)
        tmp.unlink(missing_ok=True)  # what a killed run of this rank was writing
        if path.is_file():
            continue
        rows = read_unit(unit, ["image"])
        with_image = [i for i, r in enumerate(rows) if r["image"] is not None and r["image"].get("bytes")]
        chunks = []
        for s in range(0, len(with_image), batch_size):
            idx = with_image[s:s + batch_size]
            pixels = collator.process([rows[i]["image"]["bytes"] for i in idx]).to(model.device)
            chunks.append(model.vision_features(pixels).cpu())
        if chunks:
            feats = torch.cat(chunks)
            out = torch.zeros((len(rows), *feats.shape[1:]), dtype=feats.dtype)
            out[with_image] = feats
        else:
            out = torch.zeros((len(rows), 1, 1))
        save_file({"features": out.contiguous()}, str(tmp))
        os.replace(tmp, path)
    model.train(was_training)
    return folder
