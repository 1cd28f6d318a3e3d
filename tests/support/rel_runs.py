"""A small demo run to crash, and what a finished or interrupted run must look like (tests/reliability).

`reference_run` builds demo-data -> download -> curate -> generate -> translate -> render once per test
process, without
interruption, by calling the stages in-process; crash tests rebuild one stage in a fresh run folder
through `vcla` and compare the result with it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from functools import cache
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes" / "demo.yaml")
DATA = ["demo.num_images=60", "demo.vision_encoder.epochs=1", "demo.vision_encoder.batch_size=8",
        "sources.0.id_col=image_id", "download.processes=1", "download.threads=4", "download.samples_per_shard=16",
        "translator.window_records=32", "render.row_group_rows=16", "render.shard_size_mb=1"]
"""60 images (the demo's vision encoder pretrained for 6 steps only: what it learns does not matter
here); 54 to download in 4 img2dataset shards; 593 records translated 32 at a time; shards written in
row groups of 16 rows. Caption ids from the URL list's `image_id` column (without it they hash the
absolute file:// URL, so runs in two folders would have different ids)."""
TRAIN = ["stages.stage1.max_steps=8", "stages.stage1.save_steps=2", "stages.stage1.batch_size=4",
         "stages.stage1.logging_steps=1", "stages.stage1.warmup_ratio=0", "stages.stage1.dataloader_workers=0"]
"""Stage 1 of the demo model, 8 steps of 4 rows, a checkpoint every 2 steps."""
WORK_AREAS = ("_work", ".read", "_tmp")
"""Folders a stage keeps its own unfinished work in and clears when it starts or ends."""


def vcla_args(stage: str, run_dir: Path, *extra: str, settings: list[str] = DATA) -> list[str]:
    args = [stage, "--recipe", RECIPE, "--run-dir", str(run_dir)]
    for item in settings:
        args += ["--set", item]
    return args + list(extra)


def run_stages(run: Path, *names: str) -> Path:
    """Run stages in-process, uninterrupted, with the DATA settings."""
    from pipelines.recipe import load_recipe
    from pipelines.orchestration.registry import STEPS

    recipe = load_recipe(RECIPE, DATA, run)
    for name in names:
        STEPS[name].run(recipe, STEPS[name].make_options())
    return run


@cache
def reference_run(base: Path) -> Path:
    """demo-data, download, curate, generate, translate and render of the DATA settings, uninterrupted."""
    return run_stages(base / "reference", "demo-data", "download", "curate", "generate", "translate", "render")


TRAIN_ARGS = ("--stage", "stage1")


@cache
def train_reference(base: Path, prefect_url: str) -> dict:
    """Metrics of stage 1 trained uninterrupted by `vcla train` (TRAIN settings) on the reference shards."""
    from support.crash import child_env, run_vcla

    run = fresh_run(base / "train-reference", reference_run(base), "render")
    result = run_vcla(vcla_args("train", run, *TRAIN_ARGS, settings=DATA + TRAIN),
                      env=child_env({"PREFECT_API_URL": prefect_url}), log=base / "train-reference.log")
    assert result.returncode == 0, result.output[-4000:]
    return json.loads((run / "train" / "stage1" / "metrics.json").read_text())


def fresh_run(run: Path, reference: Path | None = None, *stages: str) -> Path:
    """A run folder with a copy of the reference's demo-data and output of `stages`; without a
    reference, with demo-data generated anew (what download needs: the URL list holds absolute
    file:// URLs, which must point into this run)."""
    if reference is None:
        return run_stages(run, "demo-data")
    for stage in ("demo-data", *stages):
        shutil.copytree(reference / stage, run / stage, symlinks=True)
    return run


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digest(folder: Path, pattern: str = "**/*", *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under `folder` matching `pattern`, by relative path."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.glob(pattern))
            if p.is_file() and not any(s in p.relative_to(folder).parts for s in skip)}


def records(folder: Path, run: Path | None = None) -> dict[str, list[dict]]:
    """records/<source>.jsonl of a stage folder, with the run folder's path replaced by <RUN>."""
    out = {}
    for path in sorted((folder / "records").glob("*.jsonl")):
        text = path.read_text(encoding="utf-8")
        if run is not None:
            text = text.replace(str(run), "<RUN>")
        out[path.stem] = [json.loads(line) for line in text.splitlines()]
    return out


def assert_same_records(got: dict[str, list[dict]], want: dict[str, list[dict]]) -> None:
    """Same sources, same ids in the same order (so no duplicate, no missing row), same content."""
    assert sorted(got) == sorted(want)
    for source in want:
        ids, want_ids = [r["id"] for r in got[source]], [r["id"] for r in want[source]]
        assert len(ids) == len(set(ids)), f"{source}: duplicate ids after resume"
        assert ids == want_ids, f"{source}: missing {set(want_ids) - set(ids)}, extra {set(ids) - set(want_ids)}"
        assert got[source] == want[source], f"{source}: records differ from the uninterrupted run"


def stale_temp_files(run: Path) -> list[str]:
    return [str(p) for p in run.rglob(".tmp-*")]


def visible(folder: Path) -> list[Path]:
    """Files a reader can see: not temp files, not inside a stage's own work area."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".tmp-")
            and not any(part in WORK_AREAS or part.startswith(".tmp-") for part in p.relative_to(folder).parts)
            and not p.name.endswith(".part")]


def assert_complete(path: Path) -> None:
    """A visible file is whole: JSON parses, every JSONL line parses, Parquet reads, SQLite checks."""
    if path.suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".jsonl":
        text = path.read_text(encoding="utf-8")
        assert not text or text.endswith("\n"), f"{path}: last line cut off"
        for line in text.splitlines():
            json.loads(line)
    elif path.suffix == ".parquet":
        pq.read_table(path)
    elif path.suffix == ".sqlite":
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", path
        finally:
            db.close()


def failed_with(result, *words: str) -> str:
    """The last line `vcla` printed for a failure, which must contain `words` in this order."""
    assert result.returncode == 1, result.output[-4000:]
    last = result.output.strip().splitlines()[-1]
    at = 0
    for word in words:
        found = last.find(word, at)
        assert found >= 0, f"{word!r} not in the error message (in this order):\n{last}"
        at = found + len(word)
    print(f"message: {last}")
    return last


def assert_not_done_and_nothing_half_written(out: Path, unfinished: tuple[str, ...] = ()) -> None:
    """Not marked done, no temp file, every visible file whole (`unfinished`: img2dataset shards
    without `_stats.json`, its own work area, which no reader uses)."""
    assert not (out / "_SUCCESS").exists()
    assert stale_temp_files(out) == []
    for path in visible(out):
        if path.parent.name == "images" and path.name[:5] in unfinished or path.parent.name in unfinished:
            continue
        assert_complete(path)
