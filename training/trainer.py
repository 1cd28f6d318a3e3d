"""The transformers `Trainer`, specialised only where it must be (`VisualCLATrainer`), and the
callbacks `train_stage` (training/run.py) gives it: a progress bar and JSONL log per stage
(`StageProgress`) and the simulated crash of the `--resume` tests (`StopAfter`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

from common.files import TMP_PREFIX, atomic_open, rename_into_place
from common.progress import bar
from training.checkpoint import WRITE_ERRORS, checkpoint_write_error, trainable_state
from training.config import StageConfig
from training.stream import ShardStream
from training.lora import param_groups

TRAINABLE_FILE = "trainable.safetensors"
"""What a Trainer checkpoint (`checkpoints/checkpoint-N/`) holds of the model: the trainable tensors."""


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class VisualCLATrainer(Trainer):
    """transformers' Trainer with: our streaming loader (already sharded per rank, so it is not
    re-sharded by accelerate), one optimiser group per module group, trainable-only checkpoints
    (safetensors), and the padding fraction in the logs."""

    def __init__(self, *args, stream: ShardStream, stage_cfg: StageConfig, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stream, self.stage_cfg = stream, stage_cfg
        self.padding = torch.zeros(5, dtype=torch.long)  # (padding, all, trained tokens, images, samples) since last log
        self.totals = torch.zeros(5, dtype=torch.long)
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
            self.samples += int(stats[4])  # a packed row holds several samples
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
            logs["trained_tokens"] = int(self.padding[2])  # since the last log: what the loss averages over
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
        rename_into_place(staged, target)  # modes from the umask (safetensors writes 0600), fsynced
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
            self.bar = bar(state.max_steps, self.desc, unit="step", initial=self.step, leave=True)

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
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("".join(kept))


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"]) if line.endswith("\n") else -1
    except (ValueError, KeyError, TypeError):
        return -1


class StopAfter(TrainerCallback):
    """Simulates a crash after N optimizer steps (tests of `--resume`)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True
        return control
