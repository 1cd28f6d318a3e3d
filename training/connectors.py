"""Connectors: image features [B, T, vision width] -> [B, N, connector width].

One builder, `build_connector(kind, ...)`; the projection into the LLM width is separate
(`VisualCLAModel.image_projection_layer`), so every connector ends in the same place.

| kind         | what                                                                 | N            |
|--------------|----------------------------------------------------------------------|--------------|
| `resampler`  | VisualCLA: learnable queries attend to [queries; image features]     | num_queries  |
| `linear`     | LLaVA v1: nothing here, the projection is the whole projector        | T            |
| `mlp2x_gelu` | LLaVA 1.5: Linear(vision -> LLM width) + GELU, then the projection   | T            |
| `qformer`    | BLIP-2 Q-Former with its query tokens (Ziya, frozen)                 | num_queries  |
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResamplerLayer(nn.Module):
    """One BERT-like layer: attention of the queries over [queries; features], then a GELU FFN,
    each with a post-LayerNorm residual (models.md, VisualCLA resampler)."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float = 1e-12) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"resampler hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.ffn_output = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        b, n, d = queries.shape
        context = torch.cat([queries, features], dim=1)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, x.shape[1], self.heads, d // self.heads).transpose(1, 2)

        attn = F.scaled_dot_product_attention(heads(self.query(queries)), heads(self.key(context)),
                                              heads(self.value(context)))
        attn = attn.transpose(1, 2).reshape(b, n, d)
        queries = self.attention_norm(queries + self.output(attn))
        return self.ffn_norm(queries + self.ffn_output(F.gelu(self.intermediate(queries))))


class Resampler(nn.Module):
    """VisualCLA's visual resampler: zero-initialised learnable queries, `num_layers` layers.

    As in BERT's embeddings, each query slot adds a learned position embedding and the sum is
    layer-normalised: without that the zero queries are identical, get identical gradients and
    stay identical, so the N image tokens collapse into one token repeated N times."""

    def __init__(self, vision_width: int, hidden: int, num_queries: int, num_layers: int, num_heads: int,
                 intermediate: int | None = None) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(num_queries, hidden))
        self.query_positions = nn.Parameter(torch.randn(num_queries, hidden) * 0.02)
        self.query_norm = nn.LayerNorm(hidden, eps=1e-12)  # BERT's embedding LayerNorm
        self.input_projection = nn.Linear(vision_width, hidden) if vision_width != hidden else nn.Identity()
        self.layers = nn.ModuleList(
            ResamplerLayer(hidden, num_heads, intermediate or 4 * hidden) for _ in range(num_layers)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.input_projection(features)
        queries = self.query_norm(self.queries + self.query_positions)
        queries = queries.unsqueeze(0).expand(features.shape[0], -1, -1)
        queries = queries.to(features.dtype)
        for layer in self.layers:
            queries = layer(queries, features)
        return queries


class QFormerConnector(nn.Module):
    """BLIP-2's Q-Former and its query tokens (weights from a BLIP-2 checkpoint; kept frozen for Ziya)."""

    def __init__(self, qformer_config, num_queries: int) -> None:
        super().__init__()
        from transformers import Blip2QFormerModel

        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(qformer_config)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        mask = torch.ones(features.shape[:-1], dtype=torch.long, device=features.device)
        return self.qformer(query_embeds=queries, encoder_hidden_states=features,
                            encoder_attention_mask=mask).last_hidden_state


def build_connector(kind: str, vision_width: int, text_width: int, cfg: dict, qformer_config=None) -> tuple[nn.Module, int]:
    """The connector module and its output width (the projection's input width)."""
    if kind == "resampler":
        module = Resampler(vision_width, cfg["hidden_size"], cfg["num_queries"], cfg["num_layers"],
                           cfg["num_heads"], cfg.get("intermediate_size"))
        return module, cfg["hidden_size"]
    if kind == "linear":
        return nn.Identity(), vision_width
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(vision_width, text_width), nn.GELU()), text_width
    if kind == "qformer":
        if qformer_config is None:
            raise ValueError("the qformer connector needs a qformer_config")
        return QFormerConnector(qformer_config, cfg["num_queries"]), qformer_config.hidden_size
    raise ValueError(f"unknown connector kind {kind!r}")


def num_image_tokens(kind: str, cfg: dict, vision_tokens: int) -> int:
    """How many `<img_token>` an image becomes."""
    return cfg["num_queries"] if kind in ("resampler", "qformer") else vision_tokens
