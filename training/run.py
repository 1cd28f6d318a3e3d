"""The training recipe: one stage, read top to bottom.

    metrics = train_stage(model_cfg, "stage1", stage_cfg, Path("runs/demo/render"), Path("runs/demo/train/stage1"))

Set-up order (torchtune's): distributed + arguments -> model (base, or the previous stage merged)
-> tokenizer + image processor -> what trains (LoRA / full / frozen) -> data (this rank's shard
units, optional feature cache) -> optimiser groups + schedule (inside transformers' Trainer) ->
train -> save the stage folder. Multi-GPU / multi-node, FSDP and DeepSpeed come from accelerate:
launch this under `torchrun` or `accelerate launch --config_file configs/accelerate/<x>.yaml`.

The Trainer subclass and its callbacks are in training/trainer.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, ProgressCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from common.files import atomic_folder, clean_stale_temp_files, write_json
from common.layout import MANIFEST_FILE, STAGE_FILE
from templates.instructions import PROMPT_RECORD, HintPolicy
from templates.registry import get_template
from training.build import build_image_processor, build_model, build_tokenizer_for, model_dtype, prepare_base
from training.checkpoint import (
    WRITE_ERRORS,
    checkpoint_write_error,
    image_processor_from,
    load_stage,
    portable_path,
    save_stage,
    stage_base,
)
from training.config import ModelConfig, StageConfig
from training.data import count_rows, read_unit, shard_units, subset_files
from training.stream import Collator, ShardStream, StreamConfig
from training.lora import count_parameters, setup_stage
from training.token_cache import TokenSettings
from training.trainer import StageProgress, StopAfter, VisualCLATrainer, barrier

hf_logging.disable_progress_bar()


# ---- small helpers -----------------------------------------------------------------------------

def dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def precision_flags(precision: str) -> dict:
    cuda = torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return {"bf16": bf16_ok, "fp16": cuda and not bf16_ok}
    if precision == "bf16":
        return {"bf16": bf16_ok, "fp16": False}  # CPU: fp32 (bf16 autocast there is slower)
    if precision == "fp16":
        return {"bf16": False, "fp16": cuda}
    return {"bf16": False, "fp16": False}


def shard_texts(shards_dir: Path, limit: int = 50_000) -> list[str]:
    """Prompts and responses of the training shards (both subsets), to train a demo tokenizer on."""
    texts: list[str] = []
    for subset in ("pretrain", "sft"):
        try:
            units = shard_units(subset_files(shards_dir, subset))
        except FileNotFoundError:
            continue
        for unit in units:
            for row in read_unit(unit, ["turns"]):
                texts += [x for t in row["turns"] for x in (t["prompt"], t["response"])]
                if len(texts) >= limit:
                    return texts
    return texts


def uses_init(cfg: ModelConfig) -> bool:
    return cfg.vision.init is not None or cfg.llm.init is not None


def check_template(units, template: str) -> None:
    import pyarrow.parquet as pq

    found = set(pq.ParquetFile(units[0].file).read_row_group(units[0].row_group, columns=["template"])
                .column("template").to_pylist())
    if found != {template}:
        raise ValueError(f"shards were rendered with template(s) {sorted(found)}, the stage says "
                         f"{template!r}: chat would not see what training saw")


def resolved_stage(stage_cfg: StageConfig, text_config) -> StageConfig:
    """The stage with `template: auto` replaced by the LLM architecture's format (`templates.registry`)."""
    from templates.registry import AUTO, resolve_template

    if stage_cfg.template != AUTO:
        return stage_cfg
    name = resolve_template(AUTO, text_config.model_type, int(text_config.vocab_size))
    return stage_cfg.model_copy(update={"template": name})


def shard_prompt(shards_dir: Path, stage_cfg: StageConfig) -> dict:  # stage_cfg: template resolved
    """How the shard set's rows ask, for the stage folder (stage.json `prompt`): the manifest's short-answer
    VQA hint and its length rule, and the stage's template (`check_template` holds it to the shards').
    eval and chat read it there, so they ask as training saw. A manifest without the record (renders of
    older versions) gives its recipe's `render` section; no manifest (training.synthetic): the defaults."""
    try:
        manifest = json.loads((Path(shards_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    manifest = manifest if isinstance(manifest, dict) else {}
    record = manifest.get(PROMPT_RECORD)
    if not isinstance(record, dict):
        recipe = manifest.get("recipe")
        record = recipe.get("render") if isinstance(recipe, dict) else None
    return {**HintPolicy.from_record(record).to_record(), "template": stage_cfg.template}


def portable_model(model_cfg: ModelConfig, stage_dir: Path) -> dict:
    """The model section as the stage folder records it: its folder paths (`path`, `tokenizer`) that lie
    inside the run folder relative to `stage_dir` (`portable_path`), so a moved run folder records the same."""
    def walk(value, key=None):
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if key in ("path", "tokenizer") and isinstance(value, str) and value:
            return portable_path(value, stage_dir)
        return value
    return walk(model_cfg.model_dump(mode="json"))


def run_key(model_cfg: ModelConfig, stage_cfg: StageConfig, seed: int, init_from: Path | None,
            shards_dir: Path, out_dir: Path) -> str:
    """What a stage's checkpoints depend on: configs, seed, start weights and the shard manifest's content.
    Paths inside the run folder count relative to the stage folder `out_dir` (`portable_path`), so a
    moved run folder keeps its key and resumes (the shards count by content, not where they lie)."""
    h = hashlib.sha256(json.dumps([portable_model(model_cfg, out_dir), stage_cfg.model_dump(mode="json"), seed,
                                   portable_path(init_from, out_dir)], sort_keys=True, default=str).encode())
    manifest = Path(shards_dir) / MANIFEST_FILE
    h.update(manifest.read_bytes() if manifest.is_file() else b"")
    return h.hexdigest()


def same_run(out_dir: Path, key: str) -> bool:
    """True if `out_dir` holds checkpoints of this very run (same `run_key`)."""
    path = out_dir / "run_key.json"
    return (path.is_file() and json.loads(path.read_text()).get("key") == key
            and latest_trainer_checkpoint(out_dir / "checkpoints") is not None)


def start_afresh(out_dir: Path, key: str) -> None:
    """Forget checkpoints of another run (other config, seed or data) and record this run's key."""
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "run_key.json", {"key": key}, sort_keys=False, default=str)


def latest_trainer_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` the Trainer wrote in `folder` (what `--resume` continues from)."""
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None


def build_base_once(model_cfg: ModelConfig, base_dir: Path, shards_dir: Path, seed: int) -> None:
    """`prepare_base` into a temp folder renamed into place when complete: a killed build never
    leaves a base folder whose config.json exists while its tokenizer or processor does not."""
    if (base_dir / "config.json").is_file():
        return
    try:
        with atomic_folder(base_dir) as staging:  # replaces a base folder an older version left incomplete
            prepare_base(model_cfg, staging, lambda: shard_texts(shards_dir), seed)
    except WRITE_ERRORS as err:
        raise checkpoint_write_error("base model folder", base_dir, err) from err


def tokenised(units: list, tokenizer, root: Path, settings, rank: int, world: int, workers: int) -> Path:
    """The stage's token cache folder (`training.token_cache`), built where missing."""
    from training.token_cache import build_token_cache, cache_key

    folder = root / cache_key(units, tokenizer, settings)
    workers = workers or min(8, os.cpu_count() or 1)
    built = build_token_cache(units, tokenizer, folder, settings, rank, world, workers)
    if rank == 0:
        print(f"[train] token cache {folder.name}: {built['built']} of {built['units']} unit(s) tokenised "
              f"({built['rows']} rows), the rest read")
    return folder


def packed_sequences(tokens: Path, units: list, stage_cfg: StageConfig, seed: int) -> dict:
    """How many packed sequences one pass over the data makes, planned as the stream packs (buffers of
    batch_size x 32 samples in a seeded order), and the packing efficiency (real tokens / capacity)."""
    from training.packing import plan_packs
    from training.token_cache import cached_lengths

    lengths = cached_lengths(tokens, units)
    random.Random(f"{seed}:plan").shuffle(lengths)
    chunk = stage_cfg.batch_size * StreamConfig.buffer_batches
    sequences = sum(len(plan_packs(lengths[i:i + chunk], stage_cfg.max_length, seed))
                    for i in range(0, len(lengths), chunk))
    efficiency = round(sum(lengths) / max(1, sequences * stage_cfg.max_length), 4)
    print(f"[train] packing: {len(lengths)} samples into {sequences} sequences of up to {stage_cfg.max_length} "
          f"tokens per pass (efficiency {efficiency:.1%})")
    return {"sequences": sequences, "efficiency": efficiency}


# ---- the recipe -------------------------------------------------------------------------------

def train_stage(
    model_cfg: ModelConfig,
    stage_name: str,
    stage_cfg: StageConfig,
    shards_dir: Path,
    out_dir: Path,
    init_from: Path | None = None,
    resume: bool | str = False,
    seed: int | None = None,
    _stop_after: int | None = None,
) -> dict:
    """Train one stage on the shard set `shards_dir` and write its folder `out_dir`.

    `init_from`: the previous stage's folder (stage 2 starts from stage 1's weights, merged).
    `resume`: continue from the newest `out_dir/checkpoints/checkpoint-N` with the same data order;
    "auto": do so only if those checkpoints were made with the same model, stage, seed and shards
    (`run_key.json`), otherwise start afresh (what `build-and-train` does after a crash).
    Returns the stage metrics (also written to `out_dir/metrics.json`).
    """
    shards_dir, out_dir = Path(shards_dir), Path(out_dir)
    seed = stage_cfg.seed if seed is None else seed
    if stage_cfg.feature_cache and stage_cfg.trainable.vision != "frozen":
        raise ValueError(f"{stage_name}: feature_cache needs a frozen vision encoder (trainable.vision=frozen)")
    if (out_dir / STAGE_FILE).is_file() and (out_dir / "metrics.json").is_file() and resume is not True:
        return {**json.loads((out_dir / "metrics.json").read_text()), "skipped": True}  # finished earlier
    started = time.time()
    if resume == "auto":  # every rank reads before rank 0 may reset; a reset makes the answer False anyway
        key = run_key(model_cfg, stage_cfg, seed, init_from, shards_dir, out_dir)
        resume = same_run(out_dir, key)
        if not resume and dist_info()[0] == 0:
            start_afresh(out_dir, key)
    if dist_info()[0] == 0:
        clean_stale_temp_files(out_dir / "checkpoints", recursive=False)  # what a killed save was writing

    # 1. distributed set-up and Trainer arguments (creating them initialises the process group)
    flags = precision_flags(stage_cfg.precision)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out_dir / "logs")  # per stage, also within one process
    rank, world = dist_info()
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=stage_cfg.batch_size,
        gradient_accumulation_steps=stage_cfg.grad_accum, learning_rate=stage_cfg.lr.default,
        weight_decay=stage_cfg.weight_decay, warmup_steps=stage_cfg.warmup_ratio,
        lr_scheduler_type=stage_cfg.scheduler if stage_cfg.scheduler != "constant" else "constant_with_warmup",
        max_steps=1, logging_steps=stage_cfg.logging_steps, save_strategy="steps", save_steps=stage_cfg.save_steps,
        save_total_limit=2, report_to=_reporters(), seed=seed, data_seed=seed,
        dataloader_num_workers=stage_cfg.dataloader_workers, remove_unused_columns=False,
        gradient_checkpointing=stage_cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if stage_cfg.gradient_checkpointing else None,
        # on CPU, accelerate runs several processes as DDP only when told `cpu`: without it each rank
        # trained its own copy with no gradient all-reduce (tests/test_train_stages.py checks replicas match)
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None, ddp_find_unused_parameters=world > 1,
        disable_tqdm=os.environ.get("VCLA_PROGRESS") == "0" or rank != 0, **flags,  # steps, ETA
    )
    torch.manual_seed(seed)

    # 2. model: the previous stage merged, or the base (built from `init` once, or from the paths)
    dtype = model_dtype(model_cfg)
    if init_from is not None:
        init_from = Path(init_from).resolve()
        model, base = load_stage(init_from, dtype, merge=True), stage_base(init_from)
        source = init_from
    elif uses_init(model_cfg):
        base_dir = out_dir.parent / "base"
        if rank == 0:
            build_base_once(model_cfg, base_dir, shards_dir, seed)
        barrier()
        model, base, source = load_stage(base_dir, dtype), str(base_dir.resolve()), base_dir
    else:
        model, base, source = None, None, None

    # 3. tokenizer + image processor (saved with the base / previous stage, else from the paths)
    if source is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
        processor = image_processor_from(source, model.config)
    else:
        tokenizer = build_tokenizer_for(model_cfg)
        processor = build_image_processor(model_cfg)
        model = build_model(model_cfg, tokenizer, dtype)
    config = model.config
    stage_cfg = resolved_stage(stage_cfg, config.text_config)  # `template: auto` -> the LLM's format

    # 4. data: this rank's shard units; the feature cache if the vision encoder is frozen
    workers = max(1, stage_cfg.dataloader_workers)
    units = shard_units(subset_files(shards_dir, stage_cfg.data), world * workers)
    check_template(units, stage_cfg.template)
    rows = count_rows(units)
    template = get_template(stage_cfg.template)
    token_dir = None
    if stage_cfg.token_cache or stage_cfg.packing:
        token_dir = tokenised(units, tokenizer, out_dir.parent / "token_cache", TokenSettings(
            stage_cfg.template, template.eos, stage_cfg.max_length, config.num_image_tokens),
            rank, world, stage_cfg.tokenize_workers)
        barrier()
    packed = packed_sequences(token_dir, units, stage_cfg, seed) if stage_cfg.packing else None
    if stage_cfg.max_steps:
        batches = stage_cfg.max_steps * stage_cfg.grad_accum
    else:
        per_pass = packed["sequences"] if packed else rows
        batches = math.ceil(stage_cfg.epochs * per_pass / (world * stage_cfg.batch_size))
        batches = math.ceil(batches / stage_cfg.grad_accum) * stage_cfg.grad_accum
    args.max_steps = batches // stage_cfg.grad_accum
    if stage_cfg.warmup_ratio:
        args.warmup_steps = math.ceil(stage_cfg.warmup_ratio * args.max_steps)
    collator = Collator(pad_token_id=tokenizer.pad_token_id, image_processor=processor)
    cache, feature_key = None, "image_features"
    if stage_cfg.feature_cache:
        from training.features import LEVELS, build_feature_cache, cache_key, cache_level

        level = cache_level(stage_cfg.trainable)
        cache = out_dir / "feature_cache" / cache_key(model, processor, level)
        build_feature_cache(model.to(args.device), units, collator, cache, rank, world, level=level)
        feature_key = LEVELS[level]
        barrier()
    stream = ShardStream(units, tokenizer, collator, StreamConfig(
        batch_size=stage_cfg.batch_size, max_length=stage_cfg.max_length, num_image_tokens=config.num_image_tokens,
        batches_per_rank=batches, length_grouping=stage_cfg.length_grouping, seed=seed, rank=rank,
        world_size=world, feature_cache=cache, feature_key=feature_key, eos=template.eos, token_cache=token_dir,
        packing=stage_cfg.packing,
    ))

    # 5. what trains
    model = setup_stage(model, stage_cfg.trainable, stage_cfg.lora)
    total, trainable = count_parameters(model)

    # 6. train (optimiser groups, schedule, accumulation, precision, checkpoints: the Trainer's)
    trainer = VisualCLATrainer(model=model, args=args, stream=stream, stage_cfg=stage_cfg, train_dataset=stream,
                               callbacks=[StopAfter(_stop_after)] if _stop_after else None)
    for printer in (PrinterCallback, ProgressCallback):  # they print a dict per logging step
        trainer.remove_callback(printer)
    trainer.add_callback(StageProgress(stage_name, out_dir / "log.jsonl"))
    checkpoint = latest_trainer_checkpoint(Path(args.output_dir)) if resume else None
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    # 7. save the stage folder (rank 0) and the metrics
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    wall = time.time() - started
    tokens = int(trainer.totals[1] - trainer.totals[0])
    metrics = {
        "stage": stage_name, "steps": trainer.state.global_step, "rows": rows, "batches_per_rank": batches,
        "train_loss": result.training_loss, "final_loss": losses[-1][1] if losses else result.training_loss,
        "losses": losses, "padding_fraction": float(trainer.totals[0]) / max(1, int(trainer.totals[1])),
        "samples": trainer.samples, "tokens": tokens, "trained_tokens": int(trainer.totals[2]),
        "images": int(trainer.totals[3]), "wall_s": round(wall, 2), "token_cache": portable_path(token_dir, out_dir),
        "packing_efficiency": packed["efficiency"] if packed else None,
        "train_runtime": result.metrics.get("train_runtime"),
        "samples_per_second": trainer.samples / wall, "tokens_per_second": tokens / wall,
        "parameters": total, "trainable_parameters": trainable, "world_size": world,
        "resumed_from": portable_path(checkpoint, out_dir),  # relative: checkpoints/checkpoint-N
    }
    if rank == 0:
        meta = {
            "stage": stage_name, "architecture": model_cfg.architecture, "template": stage_cfg.template,
            "data": stage_cfg.data, "base": portable_path(base, out_dir),  # relative inside the run folder
            "init_from": portable_path(init_from, out_dir) if init_from else None,
            "trainable": stage_cfg.trainable.model_dump(), "lora": stage_cfg.lora.model_dump(),
            "num_image_tokens": config.num_image_tokens, PROMPT_RECORD: shard_prompt(shards_dir, stage_cfg),
        }
        if _stop_after is None:
            try:
                save_stage(model, out_dir, config=config, tokenizer=tokenizer, processor=processor, meta=meta)
            except WRITE_ERRORS as err:
                raise checkpoint_write_error("stage folder", out_dir, err) from err
        trainer_args = args.to_dict()
        for name in ("output_dir", "logging_dir"):  # paths into the stage folder: relative, as stage.json's
            if isinstance(trainer_args.get(name), str):
                trainer_args[name] = portable_path(trainer_args[name], out_dir)
        write_json(out_dir / "training_args.json", {"stage": stage_cfg.model_dump(),
                                                     "model": portable_model(model_cfg, out_dir),
                                                     "trainer": trainer_args}, sort_keys=False, default=str)
        if _stop_after is None:
            write_json(out_dir / "metrics.json", metrics, sort_keys=False, default=str)
    barrier()
    return metrics


def _reporters() -> list[str] | str:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return "none"
    return ["tensorboard"]
