"""Crash and resume: `vcla download|translate|render|train` killed with SIGKILL at seeded points, rerun,
and compared with an uninterrupted run.

Each stage is killed three times in a row in the same run folder (each rerun dies at a later point),
then run once more to the end. After every kill the files a reader can see must be whole; after the
last run the output must equal the uninterrupted run's: same record ids in the same order, same
shard checksums, no duplicate or missing row, no temp file left. Kill points are exact places in the
code (the n-th call of a function, n drawn from a seeded RNG) or, for img2dataset's worker
processes, an outside `kill -9` of the process group once the first shard is on disk. A killed run
calls the stage in a child process the way its Prefect task does (no Prefect client: 3 s less per
run); every last rerun is the user's `vcla <stage>` through its flow, which must mark the stage done.

Two storage failures ride along where a stage is slow to set up (img2dataset, training): the download
is denied one shard folder and training runs out of disk at its first checkpoint; both must stop with
a message naming the path and leave nothing half-written (more in test_rel_disk_errors.py).
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import pytest
from support.crash import Call, kill_group, run_vcla, start_vcla
from support.rel_runs import (
    DATA,
    TRAIN,
    TRAIN_ARGS,
    assert_complete,
    assert_not_done_and_nothing_half_written,
    assert_same_records,
    digest,
    failed_with,
    fresh_run,
    records,
    sha256,
    stale_temp_files,
    train_reference,
    vcla_args,
    visible,
)

pytestmark = pytest.mark.xdist_group("reliability")
SEED = 20261121
LOSS_TOLERANCE = 1e-4
"""Absolute tolerance on each logged loss of a resumed run (CPU, fp32; observed difference: 0)."""


def kill(args: list[str], point: Call, env: dict, log: Path):
    """Run the stage (directly, as its Prefect task would) until `point`, where it gets SIGKILL."""
    result = run_vcla(args, kill_at=[point], env=env, log=log, direct=True)
    assert result.killed, f"{point} was never reached; the run ended with {result.returncode}:\n{result.output[-3000:]}"
    print(f"killed at {result.note['detail'][:160]} after {result.seconds:.1f} s")
    return result


def finish_run(args: list[str], env: dict, log: Path) -> None:
    """The user's rerun: `vcla ...` through its Prefect flow, which must finish and mark the stage done."""
    result = run_vcla(args, env=env, log=log)
    assert result.returncode == 0, result.output[-4000:]
    print(f"rerun to the end: {result.seconds:.1f} s")


def assert_nothing_left_over(run: Path, stage: str) -> None:
    assert stale_temp_files(run) == []
    for work in ("_work", ".read", "images/_tmp"):
        assert not (run / stage / work).exists(), f"{run / stage / work} left behind"
    assert json.loads((run / stage / "_SUCCESS").read_text())["flow"]["fingerprint"]


# ---- download ---------------------------------------------------------------------------------

def test_download_killed_three_times_and_denied_a_folder_once_resumes_to_the_same_output(reference, env, tmp_path):
    rng = random.Random(f"download-{SEED}")
    run, want = fresh_run(tmp_path / "run"), reference / "download"
    out, args = run / "download", vcla_args("download", run)

    # 1. while reading the sources: the n-th spool file is written but not yet renamed
    kill(args, Call("os:replace", n=rng.randint(1, 4), under=str(out / ".read" / ".tmp-")), env, tmp_path / "1.log")
    check_download_visible(run, reference)
    # 2. `kill -9` from outside while img2dataset's worker fetches: first shard done, others not
    started = time.monotonic()
    proc = start_vcla(args, env=env, log=tmp_path / "2.log", direct=True)
    done = wait_for(lambda: len(list((out / "images").glob("*_stats.json"))) >= 1, proc, 120)
    kill_group(proc)
    assert done and len(list((out / "images").glob("*_stats.json"))) < 4, "the kill must land mid-fetch"
    print(f"killed mid-fetch after {time.monotonic() - started:.1f} s")
    check_download_visible(run, reference)
    # 3. not a crash: img2dataset may not write into one of the shard folders still to fetch
    shard = rng.choice([f"{i:05d}" for i in range(4) if not (out / "images" / f"{i:05d}").exists()])
    total = json.loads((want / "stats.json").read_text())["extra"]["images_requested"]  # 58: 54 + the copies
    denied_run(args, out, shard, env, tmp_path / "3.log", total)
    check_download_visible(run, reference)
    # 4. while joining records to images: the n-th records file is written but not yet renamed
    kill(args, Call("os:replace", n=rng.randint(1, 4), under=str(out / "records" / ".tmp-")), env, tmp_path / "4.log")
    check_download_visible(run, reference)

    finish_run(args, env, tmp_path / "5.log")
    assert_same_records(records(out, run), records(want, reference))
    assert digest(out / "images", "*/*.jpg") == digest(want / "images", "*/*.jpg")
    assert (out / "rejected" / "download.jsonl").read_text() == ""
    assert_nothing_left_over(run, "download")


def denied_run(args: list[str], out: Path, shard: str, env: dict, log: Path, total: int) -> None:
    """A run where img2dataset cannot write shard `shard`'s images (mode 0555; a root child runs
    without the capabilities that ignore modes): the stage stops, naming the shard and the folder,
    and marks nothing done; without the fix it kept going and dropped the shard's records for good."""
    folder = out / "images" / shard
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    try:
        result = run_vcla(args, env=env, log=log, obey_permissions=True)
    finally:
        folder.chmod(0o755)
    print(f"denied shard {shard}")
    images = min(16, total - 16 * int(shard))
    failed_with(result, f"vcla download: download: img2dataset has no result for {images} of {total} images, in "
                f"shard(s) {shard} of 4 in {out / 'images'}:", "a folder it may not write to",
                "only these shards are fetched again")
    assert "Permission denied" in result.output  # img2dataset's own error, printed above the message
    assert_not_done_and_nothing_half_written(out, unfinished=(shard,))
    assert not (out / "records").exists(), "no record may be dropped for an image that was never fetched"


def wait_for(condition, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.002)
    return False


def check_download_visible(run: Path, reference: Path) -> None:
    """Visible records files are whole and equal the uninterrupted run's; images of finished shards
    too (an unfinished img2dataset shard, one without `_stats.json`, is img2dataset's work area)."""
    out, want = run / "download", reference / "download"
    assert not (out / "_SUCCESS").exists()
    wanted = records(want, reference)
    for path in (out / "records").glob("*.jsonl"):
        assert_complete(path)
        assert records(out, run)[path.stem] == wanted[path.stem], f"{path} visible before it was complete"
    for stats in (out / "images").glob("*_stats.json"):
        shard = stats.name.split("_")[0]
        assert digest(out / "images", f"{shard}/*.jpg") == digest(want / "images", f"{shard}/*.jpg")
        assert_complete(out / "images" / f"{shard}.parquet")


# ---- translate --------------------------------------------------------------------------------

def test_translate_killed_three_times_resumes_to_the_same_records(reference, env, tmp_path):
    rng = random.Random(f"translate-{SEED}")
    run = fresh_run(tmp_path / "run", reference, "download", "curate", "generate")
    out, args = run / "translate", vcla_args("translate", run)
    memory = run / "translation-memory.sqlite"

    # 1. the memory import's rows are committed, the import itself is not yet recorded
    kill(args, Call("translators.memory:TranslationMemory.put_many", n=1, when="after"), env, tmp_path / "1.log")
    check_translate_visible(run, reference)
    assert memory_rows(memory) == (memory_rows(reference / "translation-memory.sqlite")[0], 0)
    # 2. in the middle of a records file: n windows of 32 records written to its temp file
    kill(args, Call("pipelines.steps.translate:_write", n=rng.randint(2, 12), when="after"), env, tmp_path / "2.log")
    check_translate_visible(run, reference)
    # 3. a records file complete in its temp file, not yet renamed into place
    kill(args, Call("os:replace", n=rng.randint(1, 4), under=str(out / "records" / ".tmp-")), env, tmp_path / "3.log")
    check_translate_visible(run, reference)

    finish_run(args, env, tmp_path / "4.log")
    assert_same_records(records(out), records(reference / "translate"))
    assert digest(out, "records/*.jsonl") == digest(reference / "translate", "records/*.jsonl")
    assert (out / "rejected" / "translate.jsonl").read_text() == ""
    assert memory_rows(memory) == memory_rows(reference / "translation-memory.sqlite")
    assert_nothing_left_over(run, "translate")


def memory_rows(path: Path) -> tuple[int, int]:
    """(translations, recorded imports) in a translation memory, after an integrity check."""
    import sqlite3

    assert_complete(path)
    db = sqlite3.connect(path)
    try:
        return tuple(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in ("tm", "imports"))
    finally:
        db.close()


def check_translate_visible(run: Path, reference: Path) -> None:
    out = run / "translate"
    assert not (out / "_SUCCESS").exists()
    for path in visible(out):
        assert_complete(path)
        if path.parent.name == "records":
            assert sha256(path) == sha256(reference / "translate" / "records" / path.name), f"{path} is partial"
    assert_complete(run / "translation-memory.sqlite")


# ---- render -----------------------------------------------------------------------------------

def test_render_killed_three_times_resumes_to_the_same_shards(reference, env, tmp_path):
    rng = random.Random(f"render-{SEED}")
    run = fresh_run(tmp_path / "run", reference, "curate", "translate")  # the card carries curate's counts
    out, args = run / "render", vcla_args("render", run)

    # 1. in the middle of a shard: n row groups written to its .part file
    kill(args, Call("pipelines.steps.render.shards:ShardWriter._write_row_group", n=rng.randint(1, 8), when="after"), env,
         tmp_path / "1.log")
    check_render_visible(run, reference)
    # 2. while moving finished shards into place: n of the 4 (config, split) sets done
    kill(args, Call("pipelines.steps.render.render:finalize", n=rng.randint(1, 3), when="after"), env, tmp_path / "2.log")
    check_render_visible(run, reference)
    # 3. writing the manifest, card, stats and marker: the n-th is complete in its temp file
    kill(args, Call("os:replace", n=rng.randint(1, 4), under=str(out / ".tmp-")), env, tmp_path / "3.log")
    check_render_visible(run, reference)

    finish_run(args, env, tmp_path / "4.log")
    shards = digest(out, "data/**/*.parquet")
    assert shards == digest(reference / "render", "data/**/*.parquet") and len(shards) >= 3
    manifest = json.loads((out / "manifest.json").read_text().replace(str(run), "<RUN>"))
    assert manifest == json.loads((reference / "render" / "manifest.json").read_text().replace(str(reference), "<RUN>"))
    assert {f["path"]: f["sha256"] for f in manifest["shards"]} == shards
    rejected = Path("rejected") / "render.jsonl"
    assert (out / rejected).read_bytes() == (reference / "render" / rejected).read_bytes()
    ids = [i for f in sorted(out.glob("data/**/*.parquet")) for i in pq_ids(f)]
    assert len(ids) == len(set(ids)) == sum(f["rows"] for f in manifest["shards"])
    assert_nothing_left_over(run, "render")


def pq_ids(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["id"]).column("id").to_pylist()


def check_render_visible(run: Path, reference: Path) -> None:
    """Every visible shard equals the reference's, and the shard set is all there or not there."""
    out, ref = run / "render", reference / "render"
    assert not (out / "_SUCCESS").exists()
    for path in visible(out):
        assert_complete(path)
    shards = digest(out, "data/**/*.parquet")
    for name, checksum in shards.items():
        assert checksum == sha256(ref / name), f"{name} visible but not the finished shard"
    assert not shards or set(shards) == set(digest(ref, "data/**/*.parquet")), "a partial shard set is visible"


# ---- train ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_metrics(prefect_server, tmp_path_factory) -> dict:
    return train_reference(tmp_path_factory.getbasetemp() / "reliability", prefect_server)


def test_train_killed_three_times_and_out_of_disk_once_resumes_to_the_same_step_and_loss(
        reference, train_metrics, env, tmp_path):
    rng = random.Random(f"train-{SEED}")
    run = fresh_run(tmp_path / "run", reference, "render")
    args = vcla_args("train", run, *TRAIN_ARGS, "--resume", settings=DATA + TRAIN)
    stage = run / "train" / "stage1"

    # 1. while saving the base model built from `init` (weights, config and tokenizer written)
    kill(args, Call("transformers.image_processing_base:ImageProcessingMixin.save_pretrained", n=1), env,
         tmp_path / "1.log")
    check_train_visible(run)
    # 2. not a crash: a full disk (4 MiB file size limit) fails the first checkpoint's optimizer state
    full_disk_run(args, stage / "checkpoints", env, tmp_path / "2.log")
    check_train_visible(run)
    # 3. in the middle of writing the k-th checkpoint (weights and optimizer written, state not)
    k = rng.randint(1, 3)
    kill(args, Call("transformers.trainer_callback:TrainerState.save_to_json", n=k), env, tmp_path / "3.log")
    check_train_visible(run)
    # 4. between two checkpoints, at the n-th optimizer step of the resumed run
    kill(args, Call("training.trainer:VisualCLATrainer.training_step", n=rng.randint(1, 3)), env, tmp_path / "4.log")
    check_train_visible(run)

    finish_run(args, env, tmp_path / "5.log")
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["resumed_from"] and metrics["resumed_from"].startswith("checkpoints/checkpoint-")  # relative
    assert metrics["steps"] == train_metrics["steps"] == 8
    assert metrics["final_loss"] == pytest.approx(train_metrics["final_loss"], abs=LOSS_TOLERANCE)
    assert [s for s, _ in metrics["losses"]] == [s for s, _ in train_metrics["losses"]]
    for (_, got), (_, want) in zip(metrics["losses"], train_metrics["losses"]):
        assert got == pytest.approx(want, abs=LOSS_TOLERANCE)
    print(f"final loss {metrics['final_loss']:.6f} vs uninterrupted {train_metrics['final_loss']:.6f}")
    assert stale_temp_files(run) == []


def full_disk_run(args: list[str], checkpoints: Path, env: dict, log: Path) -> None:
    """The base model's files (2.4 MB at most) fit in 4 MiB, a checkpoint's optimizer state (5.8 MB)
    does not: the run stops naming the checkpoint, and leaves no checkpoint folder behind."""
    result = run_vcla(args, env=env, log=log, fsize=4 << 20)
    failed_with(result, f"vcla train: train: could not write the checkpoint {checkpoints / 'checkpoint-2'}:",
                "MiB free", "then rerun with --resume")
    assert not list(checkpoints.glob("checkpoint-*")) and stale_temp_files(checkpoints) == []


BASE_FILES = ("config.json", "connector.safetensors", "tokenizer.json", "preprocessor_config.json")
CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def check_train_visible(run: Path) -> None:
    """A visible base folder and every visible checkpoint folder are complete; no stage is marked done."""
    from safetensors.torch import load_file

    train = run / "train"
    assert not (train / "stage1" / "stage.json").exists()
    if (train / "base").exists():
        for name in BASE_FILES:
            assert (train / "base" / name).is_file(), f"base folder visible without {name}"
    for ckpt in sorted((train / "stage1" / "checkpoints").glob("checkpoint-*")):
        for name in CHECKPOINT_FILES:
            assert (ckpt / name).is_file(), f"{ckpt} visible without {name}"
        assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == int(ckpt.name.split("-")[1])
        assert load_file(ckpt / "trainable.safetensors")
