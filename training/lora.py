"""What a stage trains: LoRA, full modules, frozen modules, and a learning rate per module group.

    model = setup_stage(model, stage_cfg.trainable, stage_cfg.lora)
    groups = param_groups(model, stage_cfg)           # connector / vision / llm, each with its lr

| recipe                      | LoRA (peft)              | trained in full                                   |
|-----------------------------|--------------------------|---------------------------------------------------|
| VisualCLA (both stages)     | CLIP q/k/v/out, LLaMA q/k/v/o | resampler, projection, embed_tokens, lm_head |
| LLaVA stage 1               | -                        | projector                                         |
| LLaVA stage 2               | LLaMA (or `llm: full`)   | projector                                         |
| Ziya                        | optional, LLaMA          | projection (ViT + Q-Former frozen)                |

LoRA targets of the LLM come from `LLM_LORA_TARGETS` (architecture -> its attention and MLP linear
layers, read off transformers' modelling code), never from guessing by name: `lora.llm_targets` names
the groups `attention` / `mlp` or modules of that table, and anything else is an error.

Connector, projection and embeddings are peft `modules_to_save` (so `adapter_model.safetensors`
holds them in full, as the VisualCLA release does); a vision tower or LLM trained in full is not
wrapped and is saved in `non_lora_trainables.safetensors` (LLaVA's name for the same thing).
"""

from __future__ import annotations

import types

from torch import nn

from training.config import LearningRates, LoraConfig, TrainableConfig

CONNECTOR = ("visual_resampler", "image_projection_layer")

_LLAMA_LIKE = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
LLM_LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE, "gemma2": _LLAMA_LIKE,
    "phi3": {"attention": ("qkv_proj", "o_proj"), "mlp": ("gate_up_proj", "down_proj")},
}
"""LLM architecture (config `model_type`) -> its linear layers LoRA adapts, by group. Mixture-of-experts
models are not listed: transformers 5 fuses their experts into parameters, which are not linear layers."""


def llm_lora_targets(model_type: str, names: list[str]) -> list[str]:
    """The module names `lora.llm_targets` means for this architecture (groups expanded); ValueError for
    an architecture the table lacks or a name that is not one of its layers."""
    table = LLM_LORA_TARGETS.get(model_type)
    if table is None:
        raise ValueError(f"no LoRA targets known for LLM architecture {model_type!r} (training.lora.LLM_LORA_TARGETS "
                         f"knows {', '.join(sorted(LLM_LORA_TARGETS))}); add its layers there or train llm: full")
    known = [m for group in table.values() for m in group]
    out: list[str] = []
    for name in names:
        expanded = table.get(name, (name,))
        bad = [m for m in expanded if m not in known]
        if bad:
            raise ValueError(f"lora.llm_targets: {bad[0]!r} is not a linear layer of {model_type} (its targets: "
                             f"{', '.join(known)}; groups: {', '.join(table)})")
        out += [m for m in expanded if m not in out]
    return out


def lora_target_regex(trainable: TrainableConfig, lora: LoraConfig, llm_type: str = "llama") -> str | None:
    parts = []
    if trainable.vision == "lora":
        parts.append(rf"vision_model\..*\.({'|'.join(lora.vision_targets)})")
    if trainable.llm == "lora":
        parts.append(rf"text_model\..*\.({'|'.join(llm_lora_targets(llm_type, lora.llm_targets))})")
    return "|".join(f"(?:{p})" for p in parts) or None


def full_modules(trainable: TrainableConfig) -> tuple[list[str], list[str]]:
    """(modules_to_save names, other module prefixes trained in full)."""
    save = []
    if trainable.connector == "full":
        save.append("visual_resampler")
    if trainable.projection == "full":
        save.append("image_projection_layer")
    if trainable.embeddings and trainable.llm != "full":
        save += ["embed_tokens", "lm_head"]
    other = [name for name, mode in (("vision_model", trainable.vision), ("text_model", trainable.llm)) if mode == "full"]
    return save, other


def setup_stage(model: nn.Module, trainable: TrainableConfig, lora: LoraConfig) -> nn.Module:
    """Freeze everything, then open what the stage trains. Returns a PeftModel when LoRA is used."""
    model.requires_grad_(False)
    save, other = full_modules(trainable)
    regex = lora_target_regex(trainable, lora, model.config.text_config.model_type)
    if regex is not None:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=regex,
                                modules_to_save=save or None, bias="none")
        model = get_peft_model(model, config)
    else:
        for name, module in model.named_modules():
            if name.split(".")[-1] in save:
                module.requires_grad_(True)
    base = model.get_base_model() if regex is not None else model
    for name in other:
        getattr(base, name).requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("this stage trains nothing: every module is frozen")
    for name in ("vision_model", "visual_resampler"):
        if not any(p.requires_grad for p in getattr(base, name).parameters()):
            keep_in_eval_mode(getattr(base, name))
    return model


def keep_in_eval_mode(module: nn.Module) -> None:
    """Pin a frozen vision tower or connector to eval mode, as BLIP-2 pins its frozen ViT: a
    frozen Q-Former applies no dropout, so its output is what the feature cache stored, and the
    Trainer's `model.train()` each step no longer walks these sub-trees."""
    module.eval()
    module.train = types.MethodType(lambda self, mode=True: self, module)


def group_of(name: str) -> str:
    if any(part in name for part in CONNECTOR):
        return "connector"
    if "vision_model" in name:
        return "vision"
    return "llm"


def param_groups(model: nn.Module, lr: LearningRates, weight_decay: float) -> list[dict]:
    """Optimizer groups per module group (connector, vision, llm) x (decay, no decay)."""
    rates = {"connector": lr.connector or lr.default, "vision": lr.vision or lr.default, "llm": lr.llm or lr.default}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and "norm" not in name.lower() and "embed" not in name
        groups.setdefault((group_of(name), decay), []).append(p)
    return [{"params": ps, "lr": rates[g], "weight_decay": weight_decay if decay else 0.0, "name": f"{g}"}
            for (g, decay), ps in sorted(groups.items())]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable), counting each tensor once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable
