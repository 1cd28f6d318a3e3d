"""A full disk or a folder without write permission: a clear message naming the path, nothing
corrupted or half-written left visible, and the same command succeeds once the cause is fixed.
(The download denied a shard folder and training out of disk at a checkpoint are links of the
crash chains in test_rel_crash_resume.py, where those stages are already set up.)

"Disk full" is RLIMIT_FSIZE in the child process (no mount needed, works without root): a write past
the limit fails with EFBIG exactly like ENOSPC fails a write (SIGXFSZ is ignored). "No permission"
is a folder of mode 0555; the suite may run as root, who ignores file modes, so a root child runs
without the capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from support.crash import run_vcla
from support.rel_runs import (
    assert_not_done_and_nothing_half_written,
    digest,
    failed_with,
    fresh_run,
    records,
    stale_temp_files,
    vcla_args,
)

pytestmark = pytest.mark.xdist_group("reliability")
KIB = 1024


def test_render_on_a_full_disk_then_in_a_read_only_folder_fails_clearly_and_the_rerun_matches(
        reference, env, tmp_path):
    run = fresh_run(tmp_path / "run", reference, "translate")
    out, args = run / "render", vcla_args("render", run)

    full = run_vcla(args, env=env, log=tmp_path / "full.log", fsize=32 * KIB)
    failed_with(full, f"vcla render: render: cannot write {out}/", "file larger than this process may write",
                "To fix: raise the file size limit", "run the same command again")
    assert_not_done_and_nothing_half_written(out)
    assert not (out / "data").exists(), "no shard may be visible after a failed render"

    out.chmod(0o555)  # a root child runs without the capabilities that ignore file modes
    try:
        denied = run_vcla(args, env=env, log=tmp_path / "denied.log", obey_permissions=True)
    finally:
        out.chmod(0o755)
    failed_with(denied, f"vcla render: render: cannot write {out}/", "permission denied",
                f"To fix: make {out} writable for this user", "run the same command again")
    assert_not_done_and_nothing_half_written(out)

    assert run_vcla(args, env=env, log=tmp_path / "rerun.log").returncode == 0
    assert digest(out, "data/**/*.parquet") == digest(reference / "render", "data/**/*.parquet")
    assert not (out / "_work").exists() and stale_temp_files(run) == []


def test_translation_memory_on_a_full_disk_is_rolled_back_and_the_rerun_matches(reference, env, tmp_path):
    run = fresh_run(tmp_path / "run", reference, "download", "curate", "generate")
    out, args, memory = run / "translate", vcla_args("translate", run), run / "translation-memory.sqlite"

    result = run_vcla(args, env=env, log=tmp_path / "full.log", fsize=32 * KIB)
    failed_with(result, f"vcla translate: translate: translation memory {memory}:", "SQLITE_IOERR",
                "To fix: free some space", "every translation already stored is kept")
    assert_not_done_and_nothing_half_written(out)
    db = sqlite3.connect(memory)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM tm").fetchone()[0] == 0, "the failed import must be rolled back whole"
    db.close()

    assert run_vcla(args, env=env, log=tmp_path / "rerun.log").returncode == 0
    assert records(out) == records(reference / "translate")
    assert stale_temp_files(run) == []


def test_a_real_enospc_from_the_kernel_names_the_file_and_says_to_free_space(tmp_path):
    """/dev/full fails every write with ENOSPC: the rejection log of a stage pointed at it (a symlink)
    gets the kernel's own "no space left", and the message names the log, not /dev/full's folder."""
    from common.storage import StorageError
    from pipelines.core.rejects import RejectWriter
    from pipelines.core.stats import StepStats

    (tmp_path / "rejected").mkdir()
    (tmp_path / "rejected" / "render.jsonl").symlink_to("/dev/full")
    try:
        with RejectWriter(tmp_path / "rejected", "render", StepStats("render")) as rejects:
            rejects.reject(source="coco", reason="bad_record", detail="x" * 100)
    except StorageError as err:
        message = str(err)
    else:
        raise AssertionError("a write to /dev/full succeeded")
    assert message.startswith(f"cannot write {tmp_path / 'rejected' / 'render.jsonl'}: no space left on the device")
    assert "MiB free on that file system). To fix: free some space on that file system" in message
