"""The model: vision encoder -> connector -> projection -> LLM, one class for every preset.

    config = VisualCLAConfig(vision_config=..., text_config=..., visual_resampler_config={...})
    model = VisualCLAModel(config)                        # random weights (meta device for sizing)
    model = VisualCLAModel.from_parts(config)             # weights from the *_name_or_path folders

Attribute names follow the VisualCLA release (`vision_model`, `text_model`, `visual_resampler`,
`image_projection_layer`), so adapter keys read `base_model.model.text_model...` as theirs do.
An image enters the text as `<img>` + N x `<img_token>` + `</img>`; `forward` overwrites the N
`<img_token>` embeddings with the projected connector outputs, image by image in batch order: a
row's images in the order of their blocks, rows one after another (several images per row work
the same as one). Vision: CLIP, BLIP-2 or SigLIP (no CLS token); LLM: any decoder-only model
transformers implements (`AutoModelForCausalLM`; Llama 1/2/3, Qwen2/2.5/3, Mistral, ...).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Blip2QFormerModel,
    Blip2VisionModel,
    CLIPVisionModel,
    PreTrainedConfig,
    PreTrainedModel,
    SiglipVisionModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import CausalLMOutputWithPast

from training.connectors import build_connector, num_image_tokens
from training.data import IGNORE

VISION_CLASSES = {"clip_vision_model": CLIPVisionModel, "blip_2_vision_model": Blip2VisionModel,
                  "siglip_vision_model": SiglipVisionModel}
NO_CLS = ("siglip_vision_model",)
"""Vision towers without a CLS token: every output token is a patch."""
POST_NORMED = ("blip_2_vision_model", "siglip_vision_model")
"""Towers whose `last_hidden_state` has been through their post-LayerNorm already (CLIP's has not)."""


class VisualCLAConfig(PreTrainedConfig):
    model_type = "visualcla"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "qformer_config": SubConfigSpec(config_class=AutoConfig, model_type="blip_2_qformer", optional=True),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    visual_resampler_config: dict | None = None
    """The connector: {kind, num_queries, hidden_size, num_layers, num_heads, intermediate_size}."""
    use_visual_resampler: bool = True
    architecture: str = "visualcla"
    vision_feature_layer: int = -1
    vision_keep_cls: bool = True
    vision_post_layernorm: bool = True
    image_token_id: int | None = None
    image_start_token_id: int | None = None
    image_end_token_id: int | None = None
    vision_name_or_path: str | None = None
    text_name_or_path: str | None = None
    connector_name_or_path: str | None = None
    tie_word_embeddings: bool = False

    @property
    def connector_kind(self) -> str:
        return (self.visual_resampler_config or {}).get("kind", "resampler")

    @property
    def has_cls(self) -> bool:
        return self.vision_config.model_type not in NO_CLS

    @property
    def vision_tokens(self) -> int:
        v = self.vision_config
        return (v.image_size // v.patch_size) ** 2 + int(self.vision_keep_cls and self.has_cls)

    @property
    def num_image_tokens(self) -> int:
        return num_image_tokens(self.connector_kind, self.visual_resampler_config or {}, self.vision_tokens)


class VisualCLAModel(PreTrainedModel):
    config_class = VisualCLAConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer", "Blip2EncoderLayer", "SiglipEncoderLayer"]

    def __init__(self, config: VisualCLAConfig, vision_model=None, text_model=None) -> None:
        super().__init__(config)
        vision_cls = VISION_CLASSES[config.vision_config.model_type]
        self.vision_model = vision_model if vision_model is not None else vision_cls(config.vision_config)
        if text_model is None:
            text_model = AutoModelForCausalLM.from_config(config.text_config)
        self.text_model = text_model
        self._no_split_modules = [*self._no_split_modules, *(text_model._no_split_modules or [])]
        text_width = config.text_config.hidden_size
        self.visual_resampler, width = build_connector(
            config.connector_kind, config.vision_config.hidden_size, text_width,
            config.visual_resampler_config or {}, config.qformer_config,
        )
        self.image_projection_layer = nn.Linear(width, text_width)
        self._init_connector()

    def _init_connector(self) -> None:
        std = 0.02
        for module in [*self.visual_resampler.modules(), self.image_projection_layer]:
            if isinstance(module, Blip2QFormerModel):
                break  # pretrained; its own init already ran
            if isinstance(module, nn.Linear) and module.weight.device.type != "meta":
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)

    def _init_weights(self, module: nn.Module) -> None:  # sub-models initialise themselves
        pass

    # ---- building -------------------------------------------------------------------------

    @classmethod
    def from_parts(cls, config: VisualCLAConfig, dtype: torch.dtype | None = None) -> "VisualCLAModel":
        """Vision and LLM from their folders (`from_pretrained`), connector weights from theirs."""
        vision_model = text_model = None
        if config.vision_name_or_path:
            vision_model = load_vision(config, dtype)
        if config.text_name_or_path:
            text_model = AutoModelForCausalLM.from_pretrained(config.text_name_or_path, dtype=dtype,
                                                              trust_remote_code=False)
        if text_model is not None:
            resize_embeddings(text_model, config.text_config.vocab_size)
        model = cls(config, vision_model=vision_model, text_model=text_model)
        if config.connector_name_or_path:
            load_connector_weights(model, Path(config.connector_name_or_path))
        if dtype is not None:
            model.to(dtype)
        return model

    # ---- forward --------------------------------------------------------------------------

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The features the connector sees: chosen layer, post-LN or not, CLS kept or not.

        Only the layers up to the chosen one run (LLaVA's layer -2 skips the last layer's compute;
        transformers' `output_hidden_states` path would run them all and keep every layer's output).
        """
        cfg = self.config
        post_normed = cfg.vision_config.model_type in POST_NORMED
        pixel_values = pixel_values.to(self.vision_model.dtype)
        layers = cfg.vision_config.num_hidden_layers
        depth = cfg.vision_feature_layer % (layers + 1)  # hidden_states[i] is the output of i layers
        if depth == layers and (cfg.vision_post_layernorm or not post_normed):
            h = self.vision_model(pixel_values=pixel_values).last_hidden_state
            normed = post_normed  # BLIP-2 and SigLIP apply their post-LN to last_hidden_state, CLIP does not
        else:
            h, normed = self._first_layers(pixel_values, depth), False
        if cfg.vision_post_layernorm and not normed:
            h = self._vision_inner().post_layernorm(h)
        return h if cfg.vision_keep_cls or not cfg.has_cls else h[:, 1:]

    def _vision_inner(self) -> nn.Module:
        return getattr(self.vision_model, "vision_model", self.vision_model)

    def _first_layers(self, pixel_values: torch.Tensor, depth: int) -> torch.Tensor:
        inner = self._vision_inner()
        blip2 = self.config.vision_config.model_type == "blip_2_vision_model"
        h = inner.embeddings(pixel_values)
        if hasattr(inner, "pre_layrnorm"):  # CLIP's pre-LayerNorm (BLIP-2 and SigLIP have none)
            h = inner.pre_layrnorm(h)
        for layer in inner.encoder.layers[:depth]:
            h = layer(h) if blip2 else layer(h, None)
        return h

    def image_embeddings(self, pixel_values=None, image_features=None, connector_features=None) -> torch.Tensor:
        """Projected image tokens from pixels, from cached vision features (frozen vision), or from
        cached connector outputs (frozen vision and connector, Ziya's Q-Former)."""
        if connector_features is None:
            if image_features is None:
                image_features = self.vision_features(pixel_values)
            image_features = image_features.to(self.image_projection_layer.weight.dtype)
            connector_features = self.visual_resampler(image_features)
        return self.image_projection_layer(connector_features.to(self.image_projection_layer.weight.dtype))

    def embed(self, input_ids, pixel_values=None, image_features=None, connector_features=None) -> torch.Tensor:
        embeds = self.text_model.get_input_embeddings()(input_ids)
        if pixel_values is None and image_features is None and connector_features is None:
            return embeds
        images = self.image_embeddings(pixel_values, image_features, connector_features)
        slots = input_ids == self.config.image_token_id
        if int(slots.sum()) != images.shape[0] * images.shape[1]:
            raise ValueError(f"{int(slots.sum())} <img_token> positions for {images.shape[0]} image(s) of "
                             f"{images.shape[1]} tokens each")
        return embeds.masked_scatter(slots.unsqueeze(-1), images.to(embeds.dtype))

    def forward(self, input_ids, attention_mask=None, labels=None, pixel_values=None, image_features=None,
                connector_features=None, num_items_in_batch=None, **kwargs):
        """Training with `labels`: the loss alone, logits formed only for the trained positions
        (`causal_lm_loss`; as Liger's fused loss skips logits in training). Otherwise the LLM's
        usual output: logits for every position, and the same loss when `labels` are given."""
        kwargs.pop("use_cache", None)
        embeds = self.embed(input_ids, pixel_values, image_features, connector_features)
        if labels is None or not self.training:
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return self.text_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                                   use_cache=False, **kwargs)
        hidden = self.text_model.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False,
                                       **kwargs).last_hidden_state
        loss = causal_lm_loss(self.text_model.get_output_embeddings(), hidden, labels, num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, pixel_values=None, image_features=None, **gen_kwargs):
        """New tokens only (the LLM generates from embeddings, so the prompt is not echoed)."""
        embeds = self.embed(input_ids, pixel_values, image_features)
        return self.text_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **gen_kwargs)

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.text_model.get_output_embeddings()


def causal_lm_loss(lm_head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                   num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy, the same value as `LlamaForCausalLM`'s loss, with the LM head run
    only on positions whose next token is trained. Prompts, image tokens and padding (most of a
    stage-1 sequence) never get logits: that saves the head's compute and the batch x length x
    vocab float tensor. `num_items_in_batch` (the Trainer's, under gradient accumulation) divides
    the summed loss instead of the number of trained tokens, as transformers' loss does."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = lm_head(hidden[:, :-1][keep]).float()
    loss = nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    if num_items_in_batch is None:
        return loss / keep.sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


# ---- loading parts ------------------------------------------------------------------------------

def resize_embeddings(text_model: PreTrainedModel, vocab_size: int) -> None:
    """Grow the vocabulary to `vocab_size`; new rows are the mean of the old ones (deterministic,
    so a base rebuilt from the same folder is the same model)."""
    old = text_model.get_input_embeddings().num_embeddings
    if old >= vocab_size:
        return
    text_model.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        for emb in (text_model.get_input_embeddings().weight, text_model.get_output_embeddings().weight):
            emb[old:] = emb[:old].mean(0, keepdim=True)


def load_vision(config: VisualCLAConfig, dtype=None) -> nn.Module:
    """The vision tower from its folder: a CLIP(Vision), SigLIP(Vision) or BLIP-2 vision checkpoint, or a
    full BLIP-2 checkpoint (its `vision_model.*` tensors). SigLIP loads with our config (no pooling head)."""
    path = Path(config.vision_name_or_path)
    cls = VISION_CLASSES[config.vision_config.model_type]
    if cls is Blip2VisionModel and _model_type(path) == "blip-2":
        model = Blip2VisionModel(config.vision_config)
        _load_prefixed(model, path, "vision_model.")
        return model.to(dtype) if dtype is not None else model
    if cls is SiglipVisionModel:
        return cls.from_pretrained(path, config=config.vision_config, dtype=dtype)
    return cls.from_pretrained(path, dtype=dtype)


def load_connector_weights(model: VisualCLAModel, path: Path) -> None:
    """Connector (+ projection) weights: our `connector.safetensors`, or a BLIP-2 checkpoint's Q-Former."""
    from safetensors.torch import load_file

    if (path / "connector.safetensors").is_file():
        state = load_file(str(path / "connector.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        wanted = [k for k in missing if k.startswith(("visual_resampler.", "image_projection_layer."))]
        if wanted or unexpected:
            raise ValueError(f"{path}: connector weights do not fit (missing {wanted[:3]}, unexpected {unexpected[:3]})")
        return
    if _model_type(path) == "blip-2":
        _load_prefixed(model.visual_resampler.qformer, path, "qformer.")
        _load_prefixed(model.visual_resampler, path, "query_tokens", keep_prefix=True)
        return
    raise FileNotFoundError(f"{path}: no connector.safetensors and not a BLIP-2 checkpoint")


def _model_type(path: Path) -> str | None:
    import json

    cfg = path / "config.json"
    return json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None


def _load_prefixed(module: nn.Module, path: Path, prefix: str, keep_prefix: bool = False) -> None:
    """Load the tensors of `path/*.safetensors` whose names start with `prefix` into `module`."""
    from safetensors import safe_open

    state = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    state[key if keep_prefix else key[len(prefix):]] = f.get_tensor(key)
    if not state:
        raise ValueError(f"{path}: no tensors named {prefix}*")
    missing, unexpected = module.load_state_dict(state, strict=not keep_prefix)
    if keep_prefix and unexpected:
        raise ValueError(f"{path}: unexpected tensors {unexpected[:3]}")


AutoConfig.register("visualcla", VisualCLAConfig, exist_ok=True)
