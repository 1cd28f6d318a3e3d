"""The `model:`, `stages:` and `eval:` sections of a recipe.

Owned by `training/` so a user can train on shards built by someone else with only this
package. Every part of the model comes either from a `path` (real weights, loaded with
`from_pretrained`) or from `init` (config keyword arguments; weights built from scratch,
as the demo and the tests do). A recipe names exactly one of the two.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _FromPathOrInit(_Section):
    path: str | None = None
    init: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self):
        if (self.path is None) == (self.init is None):
            raise ValueError("give exactly one of `path` (pretrained weights) or `init` (build from a config)")
        return self


class VisionConfig(_FromPathOrInit):
    kind: Literal["clip", "blip2", "siglip", "siglip2"] = Field(
        "clip", description="siglip2: a SigLIP 2 fixed-resolution (FixRes) checkpoint, which is a SigLIP model")
    feature_layer: int = Field(-1, description="hidden layer whose output feeds the connector")
    keep_cls: bool = Field(True, description="keep CLIP/BLIP-2's CLS token; SigLIP has none (all patches are kept)")
    post_layernorm: bool = Field(True, description="pass the features through the encoder's post-LN")
    image_size: int = Field(224, gt=0)


class ConnectorConfig(_Section):
    kind: Literal["resampler", "linear", "mlp2x_gelu", "qformer"] = "resampler"
    path: str | None = Field(None, description="pretrained connector weights (e.g. BLIP-2's Q-Former); None: fresh")
    num_queries: int = Field(32, gt=0)
    hidden_size: int = Field(768, gt=0)
    num_layers: int = Field(6, gt=0)
    num_heads: int = Field(12, gt=0)
    intermediate_size: int | None = None


class LLMConfig(_FromPathOrInit):
    """Any decoder-only LLM transformers supports natively (`AutoModelForCausalLM`, never remote code).
    `init` may name its `model_type` (llama, qwen2, qwen3, mistral, ...; default llama)."""

    tokenizer: str | None = Field(None, description="tokenizer folder; defaults to the LLM path")


class ModelConfig(_Section):
    architecture: Literal["visualcla", "llava", "ziya"] = "visualcla"
    vision: VisionConfig
    connector: ConnectorConfig = Field(default_factory=ConnectorConfig)
    llm: LLMConfig
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class LoraConfig(_Section):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    llm_targets: list[str] = Field(
        default_factory=lambda: ["attention"],
        description="module names, or the groups `attention` / `mlp` of the LLM's architecture (training.lora table)")
    vision_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])


class TrainableConfig(_Section):
    vision: Literal["frozen", "lora", "full"] = "frozen"
    connector: Literal["frozen", "full"] = "full"
    projection: Literal["frozen", "full"] = "full"
    llm: Literal["frozen", "lora", "full"] = "frozen"
    embeddings: bool = Field(False, description="train and save embed_tokens/lm_head in full (new tokens)")


class LearningRates(_Section):
    default: float = Field(2e-4, gt=0)
    connector: float | None = Field(None, gt=0)
    vision: float | None = Field(None, gt=0)
    llm: float | None = Field(None, gt=0)


class StageConfig(_Section):
    data: Literal["pretrain", "sft"]
    template: str = Field("visualcla", description="a templates.registry name, or `auto`: the LLM architecture's format")
    init_from: str | None = Field(None, description="name of an earlier stage whose checkpoint this one starts from")
    trainable: TrainableConfig = Field(default_factory=TrainableConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    lr: LearningRates = Field(default_factory=LearningRates)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(512, gt=0, description="tokens per sample; render fits rows to it, training never cuts")
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    length_grouping: bool = True
    feature_cache: bool = Field(False, description="encode images once (frozen vision) and train from the cache")
    token_cache: bool = Field(True, description="tokenise the stage's rows once into memory-mapped Arrow in the "
                              "train folder (training/token_cache.py); reruns and later epochs read it")
    tokenize_workers: int = Field(0, ge=0, description="processes building the token cache (0: one per CPU core, "
                                  "at most 8)")
    packing: bool = Field(False, description="pack several samples (with their images) into sequences of up to "
                          "max_length; attention never crosses samples (training/packing.py)")
    save_steps: int = Field(500, gt=0)
    logging_steps: int = Field(10, gt=0)
    dataloader_workers: int = Field(0, ge=0)
    seed: int = 0


class EvalConfig(_Section):
    split: str | None = Field(None, description="JSONL of {image, question, answer}; the demo's held-out set by default")
    max_new_tokens: int = Field(16, gt=0)
    batch_size: int = Field(16, gt=0)
    limit: int | None = Field(None, gt=0)
