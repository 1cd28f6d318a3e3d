"""The training recipe: one stage, read top to bottom.

    metrics = train_stage(model_cfg, "stage1", stage_cfg, Path("runs/demo/render"), Path("runs/demo/train/stage1"))

Set-up order (torchtune's): distributed + arguments -> model (base, or the previous stage merged)
-> tokenizer + image processor -> what trains (LoRA / full / frozen) -> data (this rank's shard
units, optional feature cache) -> optimiser groups + schedule (inside transformers' Trainer) ->
train -> save the stage folder. Multi-GPU / multi-node, FSDP and DeepSpeed come from accelerate:
launch this under `torchrun` or `accelerate launch --config_file configs/accelerate/<x>.yaml`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import rotate_checkpoints
from transformers.utils import logging as hf_logging

from training.build import (
    build_image_processor, build_model, build_tokenizer_for, model_dtype, prepare_base,
)
from training.checkpoint import load_stage, portable_path, save_stage, share_modes, stage_base, trainable_state
from training.config import ModelConfig, StageConfig
from training.data import Collator, ShardStream, StreamConfig, count_rows, read_unit, shard_units, stage_files
from training.lora import count_parameters, param_groups, setup_stage

hf_logging.disable_progress_bar()
TRAINABLE_FILE = "trainable.safetensors"
TMP_PREFIX = ".tmp-"
"""Folders and files being written; renamed into place when complete, removed by the next run."""


WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
"""What a failed checkpoint write raises: OSError, torch.save's RuntimeError, safetensors' error."""


class CheckpointWriteError(OSError):
    """A checkpoint or stage folder could not be written (disk full, no permission, ...)."""


# ---- small helpers -----------------------------------------------------------------------------

def dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


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
    """Prompts and responses of the training shards (both stages), to train a demo tokenizer on."""
    texts: list[str] = []
    for stage in ("pretrain", "sft"):
        try:
            units = shard_units(stage_files(shards_dir, stage))
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


def check_template(units, stage_cfg: StageConfig) -> None:
    import pyarrow.parquet as pq

    found = set(pq.ParquetFile(units[0].file).read_row_group(units[0].row_group, columns=["template"])
                .column("template").to_pylist())
    if found != {stage_cfg.template}:
        raise ValueError(f"shards were rendered with template(s) {sorted(found)}, the stage says "
                         f"{stage_cfg.template!r}: chat would not see what training saw")


def run_key(model_cfg: ModelConfig, stage_cfg: StageConfig, seed: int, init_from: Path | None,
            shards_dir: Path) -> str:
    """What a stage's checkpoints depend on: configs, seed, start weights and the shard manifest."""
    h = hashlib.sha256(json.dumps([model_cfg.model_dump(mode="json"), stage_cfg.model_dump(mode="json"), seed,
                                   str(init_from)], sort_keys=True, default=str).encode())
    manifest = Path(shards_dir) / "manifest.json"
    h.update(manifest.read_bytes() if manifest.is_file() else b"")
    return h.hexdigest()


def same_run(out_dir: Path, key: str) -> bool:
    """True if `out_dir` holds checkpoints of this very run (same `run_key`)."""
    path = out_dir / "run_key.json"
    return (path.is_file() and json.loads(path.read_text()).get("key") == key
            and last_checkpoint(out_dir / "checkpoints") is not None)


def start_afresh(out_dir: Path, key: str) -> None:
    """Forget checkpoints of another run (other config, seed or data) and record this run's key."""
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "run_key.json", {"key": key})


def last_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None


# ---- writing so that a killed run never leaves a folder that looks finished --------------------

def write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(TMP_PREFIX + path.name)
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def seal_tree(folder: Path) -> None:
    """Ready a staged folder for its rename into place: every file gets the mode open() gives under
    the umask (safetensors, and so save_pretrained and our checkpoints, write 0600) and is fsynced."""
    share_modes(folder)
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def remove_stale(folder: Path) -> None:
    """Remove what a killed run was writing (`.tmp-*` folders and files) in `folder`."""
    for stale in folder.glob(TMP_PREFIX + "*") if folder.is_dir() else ():
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def checkpoint_write_error(what: str, path: Path, err: BaseException) -> CheckpointWriteError:
    """The error to raise when writing `path` failed: what, where, the cause, and what to do."""
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free / 2**20
    return CheckpointWriteError(
        f"could not write the {what} {path}: {err} ({free:.0f} MiB free on that file system). "
        f"Free some space or make {probe} writable, then rerun with --resume: training continues from "
        f"the last complete checkpoint (incomplete ones are never used)")


def build_base_once(model_cfg: ModelConfig, base_dir: Path, shards_dir: Path, seed: int) -> None:
    """`prepare_base` into a temp folder renamed into place when complete: a killed build never
    leaves a base folder whose config.json exists while its tokenizer or processor does not."""
    if (base_dir / "config.json").is_file():
        return
    staging = base_dir.with_name(TMP_PREFIX + base_dir.name)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        prepare_base(model_cfg, staging, lambda: shard_texts(shards_dir), seed)
        seal_tree(staging)
        shutil.rmtree(base_dir, ignore_errors=True)  # a base folder left incomplete by an older version
        os.replace(staging, base_dir)
    except WRITE_ERRORS as err:
        raise checkpoint_write_error("base model folder", base_dir, err) from err


# ---- the Trainer, specialised only where it must be ------------------------------------------

class VisualCLATrainer(Trainer):
    """transformers' Trainer with: our streaming loader (already sharded per rank, so it is not
    re-sharded by accelerate), one optimiser group per module group, trainable-only checkpoints
    (safetensors), and the padding fraction in the logs."""

    def __init__(self, *args, stream: ShardStream, stage_cfg: StageConfig, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stream, self.stage_cfg = stream, stage_cfg
        self.padding = torch.zeros(4, dtype=torch.long)  # (padding, all, trained tokens, images) since last log
        self.totals = torch.zeros(4, dtype=torch.long)
        self.samples = 0

    def get_train_dataloader(self) -> DataLoader:
        workers = self.args.dataloader_num_workers
        return DataLoader(self.stream, batch_size=None, num_workers=workers, persistent_workers=False,
                          prefetch_factor=4 if workers else None)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = param_groups(opt_model, self.stage_cfg.lr, self.args.weight_decay)
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            kwargs.pop("lr", None)
            self.optimizer = cls([{k: v for k, v in g.items() if k != "name"} for g in groups],
                                 lr=self.args.learning_rate, **kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        stats = inputs.pop("padding_stats", None)
        if stats is not None and model.training:
            self.padding += stats.cpu()
            self.totals += stats.cpu()
            self.samples += inputs["input_ids"].shape[0]
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _clip_grad_norm(self, model):
        """The Trainer's clipping over the optimiser's parameters instead of every parameter of the
        model: frozen encoders hold most tensors of a stage and never have a gradient. FSDP and
        DeepSpeed clip their own way (the Trainer's path)."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            return super()._clip_grad_norm(model)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)

    def floating_point_ops(self, inputs: dict) -> int:
        """transformers' estimate (6 x tokens x non-embedding parameters), the count taken once: the
        default recounts every parameter each step, which costs more than a tiny model's step."""
        if getattr(self, "_flop_params", None) is None:
            self._flop_params = self.accelerator.unwrap_model(self.model).num_parameters(exclude_embeddings=True)
        return 6 * inputs["input_ids"].numel() * self._flop_params

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs and self.padding[1] > 0:
            logs["padding_fraction"] = round(float(self.padding[0]) / float(self.padding[1]), 4)
            self.padding.zero_()
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.args.should_save:
            return
        from safetensors.torch import save_file

        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        save_file(trainable_state(model), os.path.join(output_dir, TRAINABLE_FILE), metadata={"format": "pt"})

    def _get_output_dir(self, trial) -> str:
        return getattr(self, "_staging_dir", None) or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """HF's checkpoint written into `.tmp-<step>/` and renamed to `checkpoint-<step>` when complete
        (every rank's files in), so resume never picks up a checkpoint a killed save left half-written."""
        root = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staging, target = root / f"{TMP_PREFIX}{self.state.global_step}", root / name
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        barrier()
        self._staging_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
            barrier()
            if self.args.should_save:
                self._move_into_place(staging / name, target)
        except WRITE_ERRORS as err:  # torch.save reports a full disk as a RuntimeError
            shutil.rmtree(staging, ignore_errors=True)
            raise checkpoint_write_error("checkpoint", target, err) from err
        finally:
            self._staging_dir = None

    def _move_into_place(self, staged: Path, target: Path) -> None:
        seal_tree(staged)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staged, target)
        shutil.rmtree(staged.parent)
        rotate_checkpoints(str(target.parent), self.args.save_total_limit, use_mtime=False)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from safetensors.torch import load_file

        model = self.accelerator.unwrap_model(model or self.model)
        state = load_file(os.path.join(resume_from_checkpoint, TRAINABLE_FILE))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)


class StageProgress(TrainerCallback):
    """One progress bar per stage (steps, ETA, loss, learning rate) instead of the Trainer's dict
    printed at every logging step, and every logged dict as a line of `log_path` (JSONL, appended;
    a resumed run first drops the lines after its checkpoint). World process zero only."""

    def __init__(self, desc: str, log_path: Path) -> None:
        self.desc, self.log_path = desc, log_path
        self.bar: tqdm | None = None
        self.step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            keep_log_until(self.log_path, state.global_step)
            self.step = state.global_step
            self.bar = tqdm(total=state.max_steps, initial=self.step, desc=self.desc, unit="step", mininterval=2.0,
                            dynamic_ncols=True, disable=os.environ.get("VCLA_PROGRESS") == "0")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.step)
            self.step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": state.global_step, **logs}, default=float) + "\n")
        if self.bar is not None and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4g}", lr=f"{logs.get('learning_rate', 0):.3g}", refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def keep_log_until(path: Path, step: int) -> None:
    """Drop the lines of a JSONL log logged after `step` (every line for a run from step 0), and a
    last line cut short by a kill."""
    if not path.is_file():
        return
    kept = [ln for ln in path.read_text(encoding="utf-8").splitlines(keepends=True) if 0 < _logged_step(ln) <= step]
    tmp = path.with_name(TMP_PREFIX + path.name)
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"]) if line.endswith("\n") else -1
    except (ValueError, KeyError, TypeError):
        return -1


class _StopAfter(TrainerCallback):
    """Simulates a crash after N optimizer steps (tests of `--resume`)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True
        return control


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
    if (out_dir / "stage.json").is_file() and (out_dir / "metrics.json").is_file() and resume is not True:
        return {**json.loads((out_dir / "metrics.json").read_text()), "skipped": True}  # finished earlier
    started = time.time()
    if resume == "auto":  # every rank reads before rank 0 may reset; a reset makes the answer False anyway
        key = run_key(model_cfg, stage_cfg, seed, init_from, shards_dir)
        resume = same_run(out_dir, key)
        if not resume and dist_info()[0] == 0:
            start_afresh(out_dir, key)
    if dist_info()[0] == 0:
        remove_stale(out_dir / "checkpoints")

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

        from training.build import image_processor_from

        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
        processor = image_processor_from(source, model.config)
    else:
        tokenizer = build_tokenizer_for(model_cfg)
        processor = build_image_processor(model_cfg)
        model = build_model(model_cfg, tokenizer, dtype)
    config = model.config

    # 4. data: this rank's shard units; the feature cache if the vision encoder is frozen
    workers = max(1, stage_cfg.dataloader_workers)
    units = shard_units(stage_files(shards_dir, stage_cfg.data), world * workers)
    check_template(units, stage_cfg)
    rows = count_rows(units)
    if stage_cfg.max_steps:
        batches = stage_cfg.max_steps * stage_cfg.grad_accum
    else:
        batches = math.ceil(stage_cfg.epochs * rows / (world * stage_cfg.batch_size))
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
        world_size=world, feature_cache=cache, feature_key=feature_key,
    ))

    # 5. what trains
    model = setup_stage(model, stage_cfg.trainable, stage_cfg.lora)
    total, trainable = count_parameters(model)

    # 6. train (optimiser groups, schedule, accumulation, precision, checkpoints: the Trainer's)
    trainer = VisualCLATrainer(model=model, args=args, stream=stream, stage_cfg=stage_cfg, train_dataset=stream,
                               callbacks=[_StopAfter(_stop_after)] if _stop_after else None)
    for printer in (PrinterCallback, ProgressCallback):  # they print a dict per logging step
        trainer.remove_callback(printer)
    trainer.add_callback(StageProgress(stage_name, out_dir / "log.jsonl"))
    checkpoint = last_checkpoint(Path(args.output_dir)) if resume else None
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
        "images": int(trainer.totals[3]), "wall_s": round(wall, 2),
        "train_runtime": result.metrics.get("train_runtime"),
        "samples_per_second": trainer.samples / wall, "tokens_per_second": tokens / wall,
        "parameters": total, "trainable_parameters": trainable, "world_size": world,
        "skipped_too_long": stream.skipped, "resumed_from": str(checkpoint) if checkpoint else None,
    }
    if rank == 0:
        meta = {
            "stage": stage_name, "architecture": model_cfg.architecture, "template": stage_cfg.template,
            "data": stage_cfg.data, "base": portable_path(base, out_dir),  # relative inside the run folder
            "init_from": portable_path(init_from, out_dir) if init_from else None,
            "trainable": stage_cfg.trainable.model_dump(), "lora": stage_cfg.lora.model_dump(),
            "num_image_tokens": config.num_image_tokens,
        }
        if _stop_after is None:
            try:
                save_stage(model, out_dir, config=config, tokenizer=tokenizer, processor=processor, meta=meta)
            except WRITE_ERRORS as err:
                raise checkpoint_write_error("stage folder", out_dir, err) from err
        write_json_atomic(out_dir / "training_args.json",
                          {"stage": stage_cfg.model_dump(), "model": model_cfg.model_dump(), "trainer": args.to_dict()})
        if _stop_after is None:
            write_json_atomic(out_dir / "metrics.json", metrics)
    barrier()
    return metrics


def _reporters() -> list[str] | str:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return "none"
    return ["tensorboard"]
