"""Trainer benchmark, tiny config, CPU, one run. Writes benchmarks/results/train.json.

    .venv/bin/python benchmarks/train.py [--images 256]

1. Our trainer (length grouping) vs transformers' `LlavaForConditionalGeneration` with the same
   dims, the same rows and plain padding, same trainable set (projector + LLM, vision frozen), same
   AdamW: samples/s and tokens/s end to end (data + step). Target >= 1.0x.
2. Stage 1 with the feature cache vs without: steady-state samples/s (the cache is built once;
   its build time is reported separately). Target >= 3x. Two shapes: LLaVA stage 1 (frozen CLIP,
   the MLP projector trains: vision features cached; `cache_speedup`) and Ziya stage 1 (frozen
   BLIP-2 ViT and Q-Former, the projection trains: Q-Former outputs cached; `cache_speedup_ziya`).
3. Padding fraction of our batches with vs without length grouping.
No GPU in this session: no MFU is reported. Run it on an otherwise idle machine: shared cores skew the ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training.config import ModelConfig, StageConfig  # noqa: E402
from training.run import train_stage  # noqa: E402
from training.synthetic import write_shards  # noqa: E402

MODEL = {
    "architecture": "llava",
    "vision": {"kind": "clip", "image_size": 64, "feature_layer": -2, "keep_cls": False, "post_layernorm": False,
               "init": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
                        "image_size": 64, "patch_size": 8}},
    "connector": {"kind": "mlp2x_gelu"},
    "llm": {"init": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 4, "max_position_embeddings": 512, "vocab_size": 800}},
}
ZIYA = {
    "architecture": "ziya",
    "vision": {"kind": "blip2", "image_size": 64, "feature_layer": -1, "keep_cls": True, "post_layernorm": True,
               "init": {**MODEL["vision"]["init"]}},
    "connector": {"kind": "qformer", "num_queries": 32, "hidden_size": 128, "num_layers": 2, "num_heads": 4,
                  "intermediate_size": 512},
    "llm": MODEL["llm"],
}
BATCH, STEPS = 16, 200


def stage(**over) -> StageConfig:
    cfg = {"data": "sft", "template": "visualcla", "max_steps": STEPS, "batch_size": BATCH, "max_length": 256,
           "logging_steps": 5, "save_steps": 10_000, "warmup_ratio": 0.0, "lr": {"default": 1e-3},
           "trainable": {"vision": "frozen", "connector": "full", "projection": "full", "llm": "full"}}
    cfg.update(over)
    return StageConfig(**cfg)


def llava_baseline(shards: Path, base: Path) -> dict:
    """The same model as a LlavaForConditionalGeneration, plain padding, a hand loop."""
    from transformers import AutoTokenizer

    from training.build import image_processor_from
    from training.checkpoint import load_merged
    from training.data import Collator, encode_turns, read_unit, shard_units, stage_files
    from training.export import to_llava

    ours = load_merged(base)
    model = to_llava(ours).train()
    model.model.vision_tower.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(str(base))
    collator = Collator(pad_token_id=tok.pad_token_id, image_processor=image_processor_from(base, ours.config))
    n = ours.config.num_image_tokens
    rows = [r for u in shard_units(stage_files(shards, "sft")) for r in read_unit(u)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    samples = tokens = padding = total = 0
    start = time.perf_counter()
    for step in range(STEPS):
        chunk = rows[(step * BATCH) % len(rows):][:BATCH]
        examples = []
        for r in chunk:
            img = r["image"] is not None
            enc = encode_turns(tok, r["turns"], image=img, num_image_tokens=n, max_length=256)
            examples.append({"input_ids": enc.input_ids, "labels": enc.labels, **({"image": r["image"]["bytes"]} if img else {})})
        batch = collator(examples)
        stats = batch.pop("padding_stats")
        if "pixel_values" not in batch:
            continue
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        samples += len(chunk)
        padding, total = padding + int(stats[0]), total + int(stats[1])
        tokens += int(stats[1] - stats[0])
    wall = time.perf_counter() - start
    return {"samples_per_second": samples / wall, "tokens_per_second": tokens / wall, "padding_fraction": padding / total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per measured run")
    args = ap.parse_args()
    globals()["STEPS"] = args.steps
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = ModelConfig(**MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_shards(tmp / "render", num_images=args.images, row_group_rows=64)
        ours = train_stage(cfg, "grouped", stage(), shards, tmp / "train" / "grouped")
        plain = train_stage(cfg, "plain", stage(length_grouping=False), shards, tmp / "train" / "plain")
        llava = llava_baseline(shards, tmp / "train" / "base")
        s1 = {"data": "pretrain", "template": "none",
              "trainable": {"vision": "frozen", "connector": "full", "projection": "full", "llm": "frozen"}}
        no_cache = train_stage(cfg, "s1", stage(**s1), shards, tmp / "train" / "s1")
        t0 = time.perf_counter()
        cached = train_stage(cfg, "s1c", stage(**s1, feature_cache=True), shards, tmp / "train" / "s1c")
        cached_total = time.perf_counter() - t0
        ziya_cfg = ModelConfig(**ZIYA)
        z1 = {"data": "pretrain", "template": "none",
              "trainable": {"vision": "frozen", "connector": "frozen", "projection": "full", "llm": "frozen"}}
        ziya_live = train_stage(ziya_cfg, "z1", stage(**z1), shards, tmp / "ziya" / "z1")
        ziya_cached = train_stage(ziya_cfg, "z1c", stage(**z1, feature_cache=True), shards, tmp / "ziya" / "z1c")

    def sps(m):  # steady state: samples over the Trainer's own runtime (data loading included)
        return m["samples"] / m["train_runtime"]

    def tps(m):
        return m["tokens"] / m["train_runtime"]

    result = {
        "device": "cpu (2 cores); no GPU in this session, so no MFU",
        "mfu": None,
        "config": {"vision": "CLIP 4x128, 64 px, patch 8", "connector": "mlp2x_gelu", "llm": "LLaMA 2x128",
                   "ziya": "BLIP-2 ViT 4x128 + Q-Former 2x128 (32 queries) + LLaMA 2x128", "batch_size": BATCH, "steps": STEPS, "rows_images": args.images},
        "ours_samples_per_second": sps(ours), "ours_tokens_per_second": tps(ours),
        "llava_samples_per_second": llava["samples_per_second"], "llava_tokens_per_second": llava["tokens_per_second"],
        "speedup_vs_llava": sps(ours) / llava["samples_per_second"],
        "stage1_samples_per_second_no_cache": sps(no_cache), "stage1_samples_per_second_cache": sps(cached),
        "cache_speedup": sps(cached) / sps(no_cache),
        "cache_run_wall_s_including_build": round(cached_total, 2),
        "ziya_stage1_samples_per_second_no_cache": sps(ziya_live),
        "ziya_stage1_samples_per_second_cache": sps(ziya_cached),
        "cache_speedup_ziya": sps(ziya_cached) / sps(ziya_live),
        "padding_fraction_grouped": ours["padding_fraction"], "padding_fraction_plain": plain["padding_fraction"],
        "padding_fraction_llava_plain": llava["padding_fraction"],
        "targets": {"speedup_vs_llava": ">= 1.0", "cache_speedup": ">= 3.0", "cache_speedup_ziya": ">= 3.0"},
    }
    out = REPO / "benchmarks" / "results" / "train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
