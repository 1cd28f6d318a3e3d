"""Trainer benchmark, tiny config, CPU, one run. Writes benchmarks/results/train.json.

    .venv/bin/python benchmarks/train.py [--images 256] [--only vs-llava]

1. Our trainer (length grouping) vs transformers' `LlavaForConditionalGeneration` with the same
   dims, the same rows and plain padding, same trainable set (projector + LLM, vision frozen), same
   AdamW: samples/s and tokens/s end to end (data + step). Target >= 1.0x. Twice: the LLaMA 2x128
   LLM (visualcla template) and a Qwen2 2x128 one (ChatML, its shards rendered with it; `*_qwen2`).
   `--only vs-llava` runs just this comparison and updates those figures in results/train.json.
2. Stage 1 with the feature cache vs without: steady-state samples/s (the cache is built once;
   its build time is reported separately). Target >= 3x. Two shapes: LLaVA stage 1 (frozen CLIP,
   the MLP projector trains: vision features cached; `cache_speedup`) and Ziya stage 1 (frozen
   BLIP-2 ViT and Q-Former, the projection trains: Q-Former outputs cached; `cache_speedup_ziya`).
   `stage1_ms_per_step` splits both stage-1 steps into data / forward / backward: the cached step
   is the frozen LLM's forward and backward, which no cache removes, so `bound` (live step over the
   cached forward + backward) is the most the cache can gain in this config.
3. Padding fraction of our batches with vs without length grouping.
4. Packing (`benchmarks/train_packing.py`, issue 19): trained tokens/s of plain padding, length grouping
   and packing on a LLaVA-1.5-like length mix, the token cache's second-epoch data time over the first,
   and the cache build's peak RSS from 10k to 100k samples. `--only packing` runs just this section.
Each configuration runs `--repeats` times, interleaved; the median run is reported. No GPU in this
session: no MFU. Run it on an otherwise idle machine: shared cores skew the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training.config import ModelConfig, StageConfig  # noqa: E402
from training.flops import training_flops  # noqa: E402
from training.run import train_stage  # noqa: E402
from training.synthetic import write_synthetic_shards  # noqa: E402

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
QWEN2 = {**MODEL, "llm": {"init": {**MODEL["llm"]["init"], "model_type": "qwen2"}}}
"""The same dims with a Qwen2 LLM (q/k/v biases, ChatML), as `template: auto` would train it."""
BATCH, STEPS = 16, 200


def stage(**over) -> StageConfig:
    cfg = {"data": "sft", "template": "visualcla", "max_steps": STEPS, "batch_size": BATCH, "max_length": 256,
           "logging_steps": 5, "save_steps": 10_000, "warmup_ratio": 0.0, "lr": {"default": 1e-3},
           "trainable": {"vision": "frozen", "connector": "full", "projection": "full", "llm": "full"}}
    cfg.update(over)
    return StageConfig(**cfg)


def base_parts(base: Path):
    """Tokenizer, our model and the collator of a built base folder."""
    from transformers import AutoTokenizer

    from training.checkpoint import image_processor_from, load_merged
    from training.stream import Collator

    tok, model = AutoTokenizer.from_pretrained(str(base)), load_merged(base)
    return tok, model, Collator(pad_token_id=tok.pad_token_id, image_processor=image_processor_from(base, model.config))


def llava_baseline(shards: Path, base: Path, eos: bool = True) -> dict:
    """The same model as a LlavaForConditionalGeneration, plain padding, a hand loop. `eos`: the
    template's (ChatML trains its end-of-turn token and adds no EOS), as our trainer encodes the rows."""
    from training.data import encode_turns, read_unit, row_images_bytes, shard_units, subset_files
    from training.export import to_llava

    tok, ours, collator = base_parts(base)
    model = to_llava(ours).train()
    model.model.vision_tower.requires_grad_(False)
    n = ours.config.num_image_tokens
    rows = [r for u in shard_units(subset_files(shards, "sft")) for r in read_unit(u)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    samples = tokens = padding = total = 0
    start = time.perf_counter()
    for step in range(STEPS):
        chunk = rows[(step * BATCH) % len(rows):][:BATCH]
        examples = []
        for r in chunk:
            images = row_images_bytes(r)
            enc = encode_turns(tok, r["turns"], images=len(images), num_image_tokens=n, eos=eos)
            examples.append({"input_ids": enc.input_ids, "labels": enc.labels, **({"images": images} if images else {})})
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


def step_breakdown(model_cfg: ModelConfig, stage_over: dict, shards: Path, base: Path, steps: int) -> dict:
    """Milliseconds per stage-1 step spent in data, forward and backward, live and from the cache
    (a hand loop over the stage's own batches). `bound` = the live step over the cached forward +
    backward: the most a cache can gain when the rest of the cached step costs nothing."""
    from training.data import shard_units, subset_files
    from training.stream import ShardStream, StreamConfig
    from training.features import LEVELS, build_feature_cache, cache_level
    from training.lora import setup_stage

    st = stage(**stage_over)
    tok, model, collator = base_parts(base)
    units, level = shard_units(subset_files(shards, "pretrain")), cache_level(st.trainable)
    cache = build_feature_cache(model, units, collator, base.parent / f"breakdown-cache-{level}", level=level)
    model = setup_stage(model, st.trainable, st.lora).train()
    out = {}
    for name, folder in (("live", None), ("cache", cache)):
        stream = ShardStream(units, tok, collator, StreamConfig(
            batch_size=BATCH, max_length=256, num_image_tokens=model.config.num_image_tokens,
            batches_per_rank=steps, feature_cache=folder, feature_key=LEVELS[level]))
        t0 = time.perf_counter()
        batches = list(stream)
        data, fwd, bwd = time.perf_counter() - t0, 0.0, 0.0
        for b in batches:
            b.pop("padding_stats")
            t0 = time.perf_counter()
            loss = model(**b).loss
            t1 = time.perf_counter()
            loss.backward()
            fwd, bwd = fwd + t1 - t0, bwd + time.perf_counter() - t1
            model.zero_grad()
        out[name] = {k: round(1000 * v / steps, 2) for k, v in (("data", data), ("forward", fwd), ("backward", bwd))}
    live = sum(out["live"].values())
    return {**out, "bound": round(live / (out["cache"]["forward"] + out["cache"]["backward"]), 2)}


S1 = {"data": "pretrain", "template": "none",
      "trainable": {"vision": "frozen", "connector": "full", "projection": "full", "llm": "frozen"}}
Z1 = {"data": "pretrain", "template": "none",
      "trainable": {"vision": "frozen", "connector": "frozen", "projection": "full", "llm": "frozen"}}


def sps(m: dict) -> float:  # steady state: samples over the Trainer's own runtime (data loading included)
    return m["samples"] / m["train_runtime"]


def tps(m: dict) -> float:
    return m["tokens"] / m["train_runtime"]


def measure(runs: dict, repeats: int) -> dict[str, list[dict]]:
    """Each run `repeats` times, interleaved (a b c a b c ...), so a slow spell of a shared machine
    hits every configuration alike; each run gets a fresh output folder (no resume, no skip)."""
    out: dict[str, list[dict]] = {name: [] for name in runs}
    for i in range(repeats):
        for name, run in runs.items():
            out[name].append(run(i))
    return out


def median_by(results: list[dict], key) -> dict:
    """The run with the median value of `key` (its other fields come along)."""
    return sorted(results, key=key)[len(results) // 2]


def vs_llava_runs(tmp: Path, shards: Path, cfg: ModelConfig, images: int) -> dict:
    """Ours (grouped) and LlavaForConditionalGeneration, LLaMA and Qwen2; each base built by a warm-up run."""
    q_cfg = ModelConfig(**QWEN2)
    q_shards = write_synthetic_shards(tmp / "render-chatml", num_images=images, row_group_rows=64, sft_template="chatml")
    train_stage(cfg, "warm-up", stage(max_steps=5), shards, tmp / "warm" / "train" / "warm-up")
    train_stage(q_cfg, "warm-up", stage(max_steps=5, template="chatml"), q_shards, tmp / "warm-q" / "train" / "warm-up")

    def ours(name, model_cfg, data, **over):
        return lambda i: train_stage(model_cfg, name, stage(**over), data, tmp / f"{name}-{i}" / "train" / name)

    return {"grouped": ours("grouped", cfg, shards),
            "llava": lambda i: llava_baseline(shards, tmp / "warm" / "train" / "base"),
            "qwen2": ours("qwen2", q_cfg, q_shards, template="chatml"),
            "llava_qwen2": lambda i: llava_baseline(q_shards, tmp / "warm-q" / "train" / "base", eos=False)}


def vs_llava_result(runs: dict) -> dict:
    """The comparison's figures: ours (median run) over LlavaForConditionalGeneration's (median run)."""
    out = {}
    for ours_name, theirs, suffix in (("grouped", "llava", ""), ("qwen2", "llava_qwen2", "_qwen2")):
        m = median_by(runs[ours_name], sps)
        llava = median_by(runs[theirs], lambda r: r["samples_per_second"])
        out.update({f"ours_samples_per_second{suffix}": sps(m), f"ours_tokens_per_second{suffix}": tps(m),
                    f"llava_samples_per_second{suffix}": llava["samples_per_second"],
                    f"llava_tokens_per_second{suffix}": llava["tokens_per_second"],
                    f"speedup_vs_llava{suffix}": sps(m) / llava["samples_per_second"]})
    out["vs_llava_runs_samples_per_second"] = {
        name: [round(sps(r) if "llava" not in name else r["samples_per_second"], 1) for r in runs[name]]
        for name in ("grouped", "llava", "qwen2", "llava_qwen2")}
    return out


# ---- GPU: a ~1.2B config in bf16, tokens/s and MFU (`--gpu`) -----------------------------------

GPU_MODEL = {  # CLIP ViT-B/16 at 224 (86M, frozen) + mlp2x_gelu + LLaMA 22x2048 (TinyLlama's shape, 1.1B)
    "architecture": "llava", "dtype": "bfloat16",
    "vision": {"kind": "clip", "image_size": 224, "feature_layer": -2, "keep_cls": False, "post_layernorm": False,
               "init": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "image_size": 224, "patch_size": 16}},
    "connector": {"kind": "mlp2x_gelu"},
    "llm": {"init": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                     "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
                     "vocab_size": 32000}},
}
SMOKE_MODEL = {**GPU_MODEL, "dtype": "auto",  # the same code path at CPU size (`--gpu --smoke`)
               "vision": {**GPU_MODEL["vision"], "image_size": 32,
                          "init": {**MODEL["vision"]["init"], "image_size": 32, "num_hidden_layers": 2}},
               "llm": MODEL["llm"]}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 tensor-core peaks from the vendors' data sheets (SXM parts)."""


def gpu_benchmark(smoke: bool, steps: int) -> dict:
    """Our trainer on the ~1.2B config: steady-state step time from two runs (n1 and n2 steps; the
    difference drops start-up and the first slow steps), tokens/s and MFU against the device's peak."""
    cfg = ModelConfig(**(SMOKE_MODEL if smoke else GPU_MODEL))
    batch, n1, n2 = (4, 2, 12) if smoke else (16, 10, 10 + steps)
    over = {"batch_size": batch, "precision": "bf16", "dataloader_workers": 0 if smoke else 8, "max_length": 512,
            "trainable": {"vision": "frozen", "connector": "full", "projection": "full", "llm": "full"}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_synthetic_shards(tmp / "render", num_images=64 if smoke else 2048, row_group_rows=64)
        a, b = (train_stage(cfg, f"gpu{n}", stage(**over, max_steps=n), shards, tmp / f"r{n}" / "train" / "s")
                for n in (n1, n2))
    diff = {k: b[k] - a[k] for k in ("train_runtime", "steps", "samples", "tokens", "trained_tokens", "images")}
    seconds = diff["train_runtime"]
    if seconds <= 0:
        raise RuntimeError(f"the {n2}-step run took no longer than the {n1}-step run: too few steps to measure")
    achieved = training_flops(cfg, diff) / seconds / 1e12
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    config = ("smoke (CPU-size dims, same path)" if smoke else
              f"CLIP ViT-B/16 224 px (frozen) + mlp2x_gelu + LLaMA 22x2048 (1.1B, full), bf16, batch {batch}")
    return {"device": name, "config": config, "parameters": b["parameters"], "steady_steps": diff["steps"],
            "step_seconds": seconds / diff["steps"], "tokens_per_second": diff["tokens"] / seconds,
            "samples_per_second": diff["samples"] / seconds, "model_tflops_per_second": achieved,
            "peak_bf16_tflops": peak, "mfu": achieved / peak if peak else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per measured run")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per configuration (median kept)")
    ap.add_argument("--gpu", action="store_true", help="the ~1.2B bf16 config on the GPU: tokens/s and MFU, "
                    "written into results/train.json next to the CPU numbers")
    ap.add_argument("--smoke", action="store_true", help="with --gpu: the same path at CPU size, nothing written")
    ap.add_argument("--only", choices=["vs-llava", "packing"], help="run just this section (vs-llava: ours vs "
                    "LlavaForConditionalGeneration, LLaMA and Qwen2; packing: benchmarks/train_packing.py); its figures "
                    "are updated in results/train.json, the others kept")
    args = ap.parse_args()
    if args.gpu:
        result = gpu_benchmark(args.smoke, steps=40)
        print(json.dumps(result, indent=2))
        if not args.smoke:
            out = REPO / "benchmarks" / "results" / "train.json"
            data = json.loads(out.read_text()) if out.is_file() else {}
            data.update({"device": result["device"], "mfu": result["mfu"], "gpu": result})
            out.write_text(json.dumps(data, indent=2))
        return
    globals()["STEPS"] = args.steps
    torch.manual_seed(0)
    torch.set_num_threads(2)
    if args.only == "packing":
        return write_packing(packing_section(args.repeats))
    cfg, ziya_cfg = ModelConfig(**MODEL), ModelConfig(**ZIYA)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_synthetic_shards(tmp / "render", num_images=args.images, row_group_rows=64)

        def ours(name, model_cfg, **over):
            return lambda i: train_stage(model_cfg, name, stage(**over), shards, tmp / f"{name}-{i}" / "train" / name)

        compared = vs_llava_runs(tmp, shards, cfg, args.images)
        if args.only == "vs-llava":
            return write_vs_llava(vs_llava_result(measure(compared, args.repeats)), args)
        runs = measure({
            **compared,
            "plain": ours("plain", cfg, length_grouping=False),
            "s1": ours("s1", cfg, **S1),
            "s1c": ours("s1c", cfg, **S1, feature_cache=True),
            "z1": ours("z1", ziya_cfg, **Z1),
            "z1c": ours("z1c", ziya_cfg, **Z1, feature_cache=True),
        }, args.repeats)
        breakdown = {"llava_stage1": step_breakdown(cfg, S1, shards, tmp / "s1-0" / "train" / "base", STEPS),
                     "ziya_stage1": step_breakdown(ziya_cfg, Z1, shards, tmp / "z1-0" / "train" / "base", STEPS)}
    m = {name: median_by(rs, sps) for name, rs in runs.items() if "llava" not in name}
    llava = median_by(runs["llava"], lambda r: r["samples_per_second"])
    result = {
        "device": "cpu (2 cores); no GPU in this session, so no MFU",
        "mfu": None,
        "config": {"vision": "CLIP 4x128, 64 px, patch 8", "connector": "mlp2x_gelu", "llm": "LLaMA 2x128",
                   "llm_qwen2": "Qwen2 2x128 (ChatML shards), same dims as the LLaMA",
                   "ziya": "BLIP-2 ViT 4x128 + Q-Former 2x128 (32 queries) + LLaMA 2x128", "batch_size": BATCH,
                   "steps": STEPS, "rows_images": args.images, "repeats": args.repeats, "statistic": "median"},
        **vs_llava_result(runs),
        "stage1_samples_per_second_no_cache": sps(m["s1"]), "stage1_samples_per_second_cache": sps(m["s1c"]),
        "cache_speedup": sps(m["s1c"]) / sps(m["s1"]),
        "stage1_wall_s_no_cache": m["s1"]["wall_s"], "stage1_wall_s_cache_including_build": m["s1c"]["wall_s"],
        "ziya_stage1_samples_per_second_no_cache": sps(m["z1"]),
        "ziya_stage1_samples_per_second_cache": sps(m["z1c"]),
        "cache_speedup_ziya": sps(m["z1c"]) / sps(m["z1"]),
        "stage1_ms_per_step": breakdown,
        "padding_fraction_grouped": m["grouped"]["padding_fraction"], "padding_fraction_plain": m["plain"]["padding_fraction"],
        "padding_fraction_llava_plain": llava["padding_fraction"],
        "all_runs_samples_per_second": {name: [round(sps(r) if "llava" not in name else r["samples_per_second"], 1)
                                                for r in rs] for name, rs in runs.items()},
        "targets": {"speedup_vs_llava": ">= 1.0", "speedup_vs_llava_qwen2": ">= 1.0", "cache_speedup": ">= 3.0", "cache_speedup_ziya": ">= 3.0"},
    }
    result.update(packing_figures(packing_section(args.repeats)))
    out = REPO / "benchmarks" / "results" / "train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def write_vs_llava(figures: dict, args: argparse.Namespace) -> None:
    """`--only vs-llava`: the comparison's figures into results/train.json, the file's other figures kept."""
    out = REPO / "benchmarks" / "results" / "train.json"
    data = json.loads(out.read_text()) if out.is_file() else {}
    data.update(figures)
    data.setdefault("config", {})["llm_qwen2"] = "Qwen2 2x128 (ChatML shards), same dims as the LLaMA"
    data.setdefault("targets", {})["speedup_vs_llava_qwen2"] = ">= 1.0"
    data["vs_llava_measured"] = {"steps": STEPS, "rows_images": args.images, "repeats": args.repeats,
                                 "statistic": "median", "command": "benchmarks/train.py --only vs-llava"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    print(json.dumps(figures, indent=2))


PACKING_TARGETS = {"packing_speedup_vs_plain": ">= 1.5", "packing_speedup_vs_grouped": ">= 1.1",
                   "tokenize_cache_ratio": "<= 0.2", "rss_growth": "<= 1.2"}


def packing_section(repeats: int) -> dict:
    """Section 4 (issue 19): plain padding vs length grouping vs packing, the token cache, its memory."""
    from train_packing import run

    with tempfile.TemporaryDirectory() as tmp:
        return run(Path(tmp), repeats=repeats)


def packing_figures(section: dict) -> dict:
    return {"packing": section, **{k: section[k] for k in PACKING_TARGETS}}


def write_packing(section: dict) -> None:
    """`--only packing`: the section's figures into results/train.json, the file's other figures kept."""
    out = REPO / "benchmarks" / "results" / "train.json"
    data = json.loads(out.read_text()) if out.is_file() else {}
    data.update(packing_figures(section))
    data.setdefault("targets", {}).update(PACKING_TARGETS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    print(json.dumps(section, indent=2))


if __name__ == "__main__":
    main()
