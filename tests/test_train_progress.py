"""Training output: one progress bar per stage (loss and learning rate in it) instead of a dict per
logging step, and every logged step in `train/<stage>/log.jsonl`."""

from __future__ import annotations

import json

from test_train_stages import model_cfg, stage
from training.run import train_stage
from training.synthetic import write_synthetic_shards


def log_rows(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()]


def test_a_stage_prints_one_bar_and_logs_every_step_to_jsonl(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("VCLA_PROGRESS", raising=False)
    shards = write_synthetic_shards(tmp_path / "shards", num_images=16, row_group_rows=8)
    out = tmp_path / "run" / "train" / "stage1"
    train_stage(model_cfg(), "stage1", stage(max_steps=4, save_steps=2), shards, out, _stop_after=3)
    first = capfd.readouterr()
    assert "'loss'" not in first.out + first.err and "{'" not in first.out + first.err  # no dict lines
    bar = first.err.split("\r")[-1]
    assert bar.startswith("stage1:") and "3/4" in bar and "loss=" in bar and "lr=" in bar, first.err[-400:]

    steps = [r for r in log_rows(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["learning_rate"] > 0 for r in steps)

    # resumed from checkpoint-2 with progress off: step 3 of the interrupted run is dropped, then
    # logged again; nothing is printed (the Trainer printed every dict with its bar disabled)
    monkeypatch.setenv("VCLA_PROGRESS", "0")
    metrics = train_stage(model_cfg(), "stage1", stage(max_steps=4, save_steps=2), shards, out, resume=True)
    second = capfd.readouterr()
    assert "{'" not in second.out + second.err and "stage1:" not in second.err
    rows = [r for r in log_rows(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == [loss for _, loss in metrics["losses"]]
    assert "train_runtime" in log_rows(out)[-1]  # the Trainer's closing summary, also not printed
