"""The demo's stand-in for a pretrained CLIP: a tiny ViT taught the shape and colour of each grid cell.

VisualCLA starts from a CLIP ViT-L/14 that has already seen 400M images; its two stages only
align that encoder with the LLM. A ViT trained from scratch through the language-model loss of
a few thousand captions is a different experiment, and it fails: measured on the shapes world,
its features encode colour (a per-cell linear probe reads it 95% of the time) but not shape
(probe at chance), so held-out "what colour is the circle?" stays near 0.5 on images with two
or three shapes. So the corpus ships its own small "pretrained" encoder, supervised on the
generator's labels (shape and colour in each cell of the 3x3 grid) for the *training* images only,
and saved with `save_pretrained` (safetensors) plus its `CLIPImageProcessor`, so that the demo
recipe loads it by `path` exactly as a preset loads a real CLIP checkpoint.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from common.progress import bar
from pipelines.demo.scenes import COLORS, POSITIONS, SHAPES, Scene, image_name
from pipelines.recipe import DemoVisionConfig

CELLS = sorted(POSITIONS)  # row-major 3x3 grid; Scene.shapes use the same (row, col) keys
EMPTY_SHAPE, EMPTY_COLOR = len(SHAPES), len(COLORS)


def cell_labels(scene: Scene) -> list[list[int]]:
    """[[shape per cell], [colour per cell]]; an empty cell is class EMPTY_*."""
    occupied = {s.cell: s for s in scene.shapes}
    return [[occupied[c].kind if c in occupied else EMPTY_SHAPE for c in CELLS],
            [occupied[c].color if c in occupied else EMPTY_COLOR for c in CELLS]]


class CellHead(torch.nn.Module):
    """Pools the patch tokens of each grid cell and classifies its shape and colour."""

    def __init__(self, width: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.shape = torch.nn.Linear(width, EMPTY_SHAPE + 1)
        self.color = torch.nn.Linear(width, EMPTY_COLOR + 1)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.grid
        h = patches.reshape(len(patches), g, g, -1)
        cells = torch.stack([h[:, r * g // 3:(r + 1) * g // 3, c * g // 3:(c + 1) * g // 3].mean((1, 2))
                             for r, c in CELLS], 1)
        return self.shape(cells), self.color(cells)


def pretrain_vision_encoder(images_dir: Path, train: list[Scene], heldout: list[Scene], out_dir: Path,
                            cfg: DemoVisionConfig, seed: int) -> dict[str, Any]:
    """Train on `train`, score on `heldout`, save to `out_dir`; returns the scores for the manifest."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    if cfg.image_size % cfg.patch_size or (cfg.image_size // cfg.patch_size) % 3:
        raise ValueError(f"demo.vision_encoder: image_size/patch_size = {cfg.image_size}/{cfg.patch_size} must be "
                         "a whole number of patches divisible by 3 (one block of patches per grid cell)")
    torch.manual_seed(seed)
    processor = CLIPImageProcessor(size={"shortest_edge": cfg.image_size},
                                   crop_size={"height": cfg.image_size, "width": cfg.image_size})
    model = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.hidden_size * 2, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size))
    head = CellHead(cfg.hidden_size, cfg.image_size // cfg.patch_size)
    x_train, y_train = _pixels(images_dir, train, processor, cfg.image_size), _labels(train)
    _fit(model, head, x_train, y_train, cfg, random.Random(f"{seed}:vision"))
    scores = _score(model, head, _pixels(images_dir, heldout, processor, cfg.image_size), _labels(heldout))
    scores["feature_scale"] = unit_scale_features(model, x_train[:256])
    model.save_pretrained(out_dir)  # safetensors
    processor.save_pretrained(out_dir)
    return {**scores, "train_images": len(train), "epochs": cfg.epochs}


@torch.no_grad()
def unit_scale_features(model, pixels: torch.Tensor) -> float:
    """Rescale the encoder's residual stream so its last hidden state has standard deviation ~1, as a
    real CLIP's roughly has; returns the factor. The demo recipe feeds the connector that raw hidden
    state (no post-LayerNorm: a llava-hf export, like LLaVA, takes `hidden_states[layer]` as it is), and
    a stream ~5x larger made the MLP connector learn which colour goes with which shape far worse
    (held-out accuracy 0.48 against 0.85). Every layer reads the stream through a LayerNorm, so scaling
    what writes into it (the pre-LayerNorm's affine, each attention output and MLP output projection)
    by s scales every hidden state by s and changes nothing else (up to the LayerNorms' epsilon)."""
    model.eval()
    scale = 1.0 / model(pixel_values=pixels).last_hidden_state.std().item()
    inner = getattr(model, "vision_model", model)  # transformers 5 flattened CLIPVisionModel
    writers = [inner.pre_layrnorm] + [m for layer in inner.encoder.layers for m in (layer.self_attn.out_proj, layer.mlp.fc2)]
    for module in writers:
        module.weight.mul_(scale)
        module.bias.mul_(scale)
    return round(scale, 4)


def _pixels(images_dir: Path, scenes: list[Scene], processor, size: int) -> torch.Tensor:
    """Normalised pixels, resized to `size` as the download step will (area filter, square images)."""
    pil = [Image.open(images_dir / image_name(s.image_id)).convert("RGB").resize((size, size), Image.Resampling.BOX)
           for s in scenes]
    return processor(images=pil, return_tensors="pt")["pixel_values"]


def _labels(scenes: list[Scene]) -> torch.Tensor:
    return torch.tensor(np.array([cell_labels(s) for s in scenes]))  # [N, 2, 9]


def _loss(model, head: CellHead, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    shape, color = head(model(pixel_values=x).last_hidden_state[:, 1:])
    ce = torch.nn.functional.cross_entropy
    return ce(shape.flatten(0, 1), y[:, 0].flatten()) + ce(color.flatten(0, 1), y[:, 1].flatten())


def _fit(model, head: CellHead, x: torch.Tensor, y: torch.Tensor, cfg: DemoVisionConfig, rng: random.Random) -> None:
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    per_epoch = max(1, len(x) // cfg.batch_size)
    total, warmup = cfg.epochs * per_epoch, max(1, cfg.epochs * per_epoch // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine to zero
        opt, lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step, total) / total))))
    model.train()
    with bar(cfg.epochs * per_epoch, "demo vision encoder", unit="step") as pb:
        for _ in range(cfg.epochs):
            order = list(range(len(x)))
            rng.shuffle(order)
            for b in range(per_epoch):
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                loss = _loss(model, head, x[idx], y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                pb.update(1)
    model.eval()


@torch.no_grad()
def _score(model, head: CellHead, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    if not len(x):
        return {}
    shape, color = head(model(pixel_values=x).last_hidden_state[:, 1:])
    occupied = y[:, 0] != EMPTY_SHAPE
    return {"heldout_cell_shape_accuracy": round((shape.argmax(-1) == y[:, 0])[occupied].float().mean().item(), 4),
            "heldout_cell_color_accuracy": round((color.argmax(-1) == y[:, 1])[occupied].float().mean().item(), 4)}
