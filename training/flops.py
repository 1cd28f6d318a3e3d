"""Model FLOPs of training steps, for MFU (PaLM's accounting: what the model needs, padding excluded).

    flops = training_flops(model_cfg, {"steps": 40, "samples": 640, "tokens": 140_000,
                                       "trained_tokens": 9_000, "images": 640})
    mfu = flops / seconds / peak_flops_per_second

For the stage LLaVA stage 2 trains (`benchmarks/train.py --gpu`): the LLM and an MLP/linear
projector in full, the vision tower frozen. The counts are a run's metrics (`train_stage`).
"""

from __future__ import annotations

from training.config import ModelConfig


def training_flops(cfg: ModelConfig, counts: dict) -> float:
    """LLM: 6 x non-embedding parameters per token + 12 x layers x width x sequence (attention,
    forward and backward); LM head only on trained tokens (the trainer forms no other logits);
    projector per image token: 6 x its parameters, but 4 x for the first layer (its input, the
    frozen tower's output, needs no gradient); vision: forward only, patch embedding and the
    layers up to the feature layer."""
    if cfg.llm.init is None or cfg.vision.init is None:
        raise ValueError("training_flops needs the dims of `llm.init` and `vision.init`")
    if cfg.connector.kind not in ("linear", "mlp2x_gelu"):
        raise ValueError(f"training_flops counts linear / mlp2x_gelu connectors, not {cfg.connector.kind!r}")
    llm, vis = cfg.llm.init, cfg.vision.init
    d, layers, f = llm["hidden_size"], llm["num_hidden_layers"], llm["intermediate_size"]
    kv = d * llm.get("num_key_value_heads", llm["num_attention_heads"]) // llm["num_attention_heads"]
    tokens, seq = counts["tokens"], counts["tokens"] / counts["samples"]
    text = 6 * layers * (2 * d * d + 2 * d * kv + 3 * d * f) * tokens + 12 * layers * d * seq * tokens
    head = 6 * d * llm["vocab_size"] * counts["trained_tokens"]
    dv, p = vis["hidden_size"], vis["patch_size"]
    patches = (vis["image_size"] // p) ** 2 + 1
    depth = cfg.vision.feature_layer % (vis["num_hidden_layers"] + 1)  # the layers that run
    layer = 2 * (4 * dv * dv + 2 * dv * vis["intermediate_size"]) * patches + 4 * dv * patches * patches
    vision = 2 * 3 * p * p * dv * (patches - 1) + depth * layer
    image_tokens = patches - int(not cfg.vision.keep_cls)
    projector = 4 * dv * d + (6 * d * d if cfg.connector.kind == "mlp2x_gelu" else 0)
    return text + head + counts["images"] * (vision + projector * image_tokens)
