"""The `packing` section of benchmarks/train.py: plain padding vs length grouping vs packing on a realistic
length mix, the tokenised cache's second-epoch data time, and the cache build's memory growth.

    .venv/bin/python benchmarks/train.py --only packing [--repeats 3]

The length mix (`MIX`) is modelled on LLaVA-1.5's 665K instruction mix (Liu et al. 2023, "Improved Baselines
with Visual Instruction Tuning", Table 7): LLaVA-Instruct-158K (58K conversations, 23K detailed descriptions,
77K complex reasoning: ~24% of the mix), short-answer VQA data (VQAv2, GQA, OKVQA, OCR-VQA, A-OKVQA,
TextCaps, RefCOCO, VG: ~70%) and ShareGPT text-only conversations (40K: ~6%). The token lengths per kind are
our assumptions for a Chinese tokenizer at a 512-token budget (one word or phrase per VQA answer, one to
three paragraphs per description / reasoning answer, multi-round conversations, long text-only chats), not
measured figures; the realised distribution is reported as percentiles. Every image is one image block of
the tiny model's image tokens.

Trained tokens/s = trained (non-pad) tokens over the Trainer's runtime (data loading included), one epoch of
the same rows per configuration; interleaved repeats, median.
"""

from __future__ import annotations

import io
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from templates.rows import ROW_SCHEMA
from training.config import ModelConfig, StageConfig
from training.run import train_stage
from training.synthetic import shard_row

# kind: (share of samples, images, rounds (lo, hi), prompt tokens (lo, hi), answer tokens (lo, hi))
MIX = {
    "vqa": (0.56, 1, (1, 1), (8, 20), (1, 4)),
    "vqa_multi": (0.14, 1, (2, 6), (8, 20), (1, 6)),   # LLaVA-1.5 groups an image's questions into one chat
    "conversation": (0.09, 1, (2, 5), (8, 24), (15, 60)),
    "detail": (0.035, 1, (1, 1), (8, 16), (80, 180)),
    "reasoning": (0.115, 1, (1, 1), (12, 30), (60, 160)),
    "text": (0.06, 0, (1, 3), (20, 80), (60, 200)),
}
BUDGET, ROUND_OVERHEAD = 440, 40
"""Characters per sample (512 tokens less the template's text) and the template's text per round."""
CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理世车"


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(CHARS) for _ in range(n))


def mix_rows(n: int, image: bytes, seed: int = 0, template: str = "visualcla") -> list[dict]:
    """`n` shard rows drawn from `MIX` (lengths in characters; the tokenizer maps them ~1:1 below)."""
    rng = random.Random(f"{seed}:mix")
    kinds, weights = list(MIX), [v[0] for v in MIX.values()]
    rows = []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        _, images, rounds, prompt, answer = MIX[kind]
        pairs, budget = [], BUDGET - 17 * images
        for _ in range(rng.randint(*rounds)):  # whole leading rounds that fit, as render keeps them
            q, a = _text(rng, rng.randint(*prompt)), _text(rng, rng.randint(*answer))
            budget -= len(q) + len(a) + ROUND_OVERHEAD
            if budget < 0 and pairs:
                break
            pairs.append((q, a))
        rows.append(shard_row(i, "sft", template, pairs, image if images else None, kind))
    return rows


def write_mix(folder: Path, rows: list[dict], row_group_rows: int = 256) -> Path:
    out = folder / "data" / "sft" / "train"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), out / "sft-train-00000-of-00001.parquet",
                   row_group_size=row_group_rows)
    return folder


def tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


MODEL = ModelConfig(
    architecture="llava", connector={"kind": "mlp2x_gelu"},
    vision={"kind": "clip", "image_size": 32, "init": {"hidden_size": 32, "intermediate_size": 64,
                                                        "num_hidden_layers": 2, "num_attention_heads": 2,
                                                        "image_size": 32, "patch_size": 8}},
    llm={"init": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 4, "max_position_embeddings": 1024}})
STAGE = {"data": "sft", "template": "visualcla", "epochs": 1, "batch_size": 8, "max_length": 512,
         "logging_steps": 1000, "save_steps": 100000, "warmup_ratio": 0.0, "feature_cache": True,
         "trainable": {"vision": "frozen", "connector": "full", "projection": "full", "llm": "full"}}
MODES = {"plain": {"length_grouping": False}, "grouped": {"length_grouping": True}, "packed": {"packing": True}}


def throughput(tmp: Path, shards: Path, repeats: int) -> dict:
    """Each mode `repeats` times, interleaved; the median run's figures per mode."""
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(repeats):
        for mode, over in MODES.items():
            m = train_stage(MODEL, mode, StageConfig(**STAGE, **over), shards, tmp / "train" / f"{mode}-{r}")
            runs[mode].append({"trained_tokens_per_s": m["trained_tokens"] / m["train_runtime"],
                               "padding_fraction": m["padding_fraction"], "steps": m["steps"],
                               "samples": m["samples"], "trained_tokens": m["trained_tokens"],
                               "packing_efficiency": m.get("packing_efficiency")})
    return {mode: sorted(rs, key=lambda x: x["trained_tokens_per_s"])[len(rs) // 2] for mode, rs in runs.items()}


def cache_epochs(tmp: Path, shards: Path, repeats: int) -> dict:
    """Data time of one pass over the stream's examples: live tokenising, first epoch with the cache
    (building it), second epoch (reading it). Medians over `repeats`."""
    from transformers import AutoTokenizer

    from training.data import shard_units, subset_files
    from training.stream import Collator, ShardStream, StreamConfig
    from training.token_cache import TokenSettings, build_token_cache

    tok = AutoTokenizer.from_pretrained(str(tmp / "train" / "base"))
    units = shard_units(subset_files(shards, "sft"))
    settings = TokenSettings("visualcla", True, 512, 17)
    times: dict[str, list[float]] = {"live": [], "first": [], "second": []}
    for r in range(repeats):
        folder = tmp / f"tokens-{r}"
        cfg = StreamConfig(batch_size=8, max_length=512, num_image_tokens=17, batches_per_rank=1)
        times["live"].append(_pass(ShardStream(units, tok, Collator(0), cfg), units))
        t = time.perf_counter()
        build_token_cache(units, tok, folder, settings, workers=1)
        cached = ShardStream(units, tok, Collator(0), StreamConfig(**{**cfg.__dict__, "token_cache": folder}))
        times["first"].append(time.perf_counter() - t + _pass(cached, units))
        times["second"].append(_pass(cached, units))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"data_s": {k: round(v, 3) for k, v in med.items()},
            "tokenize_cache_ratio": round(med["second"] / med["first"], 4)}


def _pass(stream, units) -> float:
    t = time.perf_counter()
    for _ in stream.examples(units):
        pass
    return time.perf_counter() - t


def rss_growth(tmp: Path, sizes: tuple[int, ...] = (10_000, 100_000)) -> dict:
    """Peak RSS of a fresh process that builds the token cache of `n` samples (shards written here first)."""
    peaks = {}
    for n in sizes:
        write_mix(tmp / f"rss-{n}", mix_rows(n, tiny_png(), seed=1), row_group_rows=1024)
        out = subprocess.run([sys.executable, __file__, "--rss", str(tmp / f"rss-{n}"), str(tmp / "train" / "base")],
                             capture_output=True, text=True, check=True)
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
    lo, hi = sizes
    return {"peak_rss_mb": {str(n): p["peak_mb"] for n, p in peaks.items()},
            "build_s": {str(n): p["build_s"] for n, p in peaks.items()},
            "rss_growth": round(peaks[hi]["peak_mb"] / peaks[lo]["peak_mb"], 3)}


def _rss_child(folder: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    from training.data import shard_units, subset_files
    from training.token_cache import TokenSettings, build_token_cache

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    units = shard_units(subset_files(folder, "sft"))
    base = _peak_kb()
    t = time.perf_counter()
    build_token_cache(units, tok, folder / "tokens", TokenSettings("visualcla", True, 512, 17), workers=1)
    print(json.dumps({"peak_mb": round(_peak_kb() / 1024, 1), "before_mb": round(base / 1024, 1),
                      "build_s": round(time.perf_counter() - t, 2)}))


def _peak_kb() -> int:
    """This process image's peak RSS (VmHWM). Not `getrusage`'s ru_maxrss: Linux keeps that across exec, so a
    child started by a large benchmark process would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def lengths_summary(rows: list[dict], tokenizer_dir: Path) -> dict:
    from transformers import AutoTokenizer

    from training.data import encode_turns
    from templates.rows import row_images

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    lengths = sorted(len(encode_turns(tok, r["turns"], images=len(row_images(r)), num_image_tokens=17).input_ids)
                     for r in rows)
    q = lambda p: lengths[min(len(lengths) - 1, int(p / 100 * len(lengths)))]  # noqa: E731
    return {"samples": len(lengths), "p10": q(10), "p50": q(50), "p90": q(90), "p99": q(99), "max": lengths[-1],
            "mean": round(sum(lengths) / len(lengths), 1)}


def run(tmp: Path, samples: int = 800, repeats: int = 3, rss_sizes: tuple[int, int] = (10_000, 100_000)) -> dict:
    rows = mix_rows(samples, tiny_png())
    shards = write_mix(tmp / "shards", rows)
    result = {"mix": {k: v[0] for k, v in MIX.items()}, "model": "llava 2x128 LLM, CLIP 2x32 (17 image tokens)",
              "stage": {k: STAGE[k] for k in ("batch_size", "max_length", "epochs")}}
    result["modes"] = throughput(tmp, shards, repeats)
    result["lengths"] = lengths_summary(rows, tmp / "train" / "base")
    plain, grouped, packed = (result["modes"][m]["trained_tokens_per_s"] for m in ("plain", "grouped", "packed"))
    result["packing_speedup_vs_plain"] = round(packed / plain, 3)
    result["packing_speedup_vs_grouped"] = round(packed / grouped, 3)
    result.update(cache_epochs(tmp, shards, repeats))
    result.update(rss_growth(tmp, rss_sizes))
    return result


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss":
        _rss_child(Path(sys.argv[2]), Path(sys.argv[3]))
