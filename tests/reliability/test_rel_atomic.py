"""Partial output is never visible: atomic file writes, the translation memory's transactions,
and the cleanup of what a killed writer left behind (the stage-level crash tests are in
test_rel_crash_resume.py; these pin the primitives down in isolation, in a second or two)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from common.files import TMP_PREFIX, atomic_open, clean_stale_temp_files, write_json
from translators.memory import TranslationMemory
from translators.protocol import Verdict

REPO = Path(__file__).resolve().parents[2]


def test_a_reader_polling_a_file_rewritten_in_place_only_ever_sees_whole_versions(tmp_path):
    target = tmp_path / "stats.json"
    versions = [{"version": v, "rows": list(range(20_000 * (1 + v % 3)))} for v in range(30)]
    write_json(target, versions[0])
    seen: set[int] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(json.loads(target.read_text())["version"])  # raises on a partial file

    reader = threading.Thread(target=read)
    reader.start()
    for v in versions[1:]:
        write_json(target, v)
    done.set()
    reader.join()
    assert json.loads(target.read_text()) == versions[-1]
    assert len(seen) > 1, "the reader must have overlapped the writes"
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


_KILLED_WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
from common.files import atomic_open
with atomic_open({target!r}, "w") as f:
    f.write("x" * 100_000)
    f.flush()
    print("half written", flush=True)
    time.sleep(60)
"""


def test_a_writer_killed_mid_file_leaves_the_old_file_and_a_temp_file_the_next_run_removes(tmp_path):
    target = tmp_path / "records" / "coco.jsonl"
    with atomic_open(target) as f:
        f.write('{"id": "old"}\n')
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER.format(repo=str(REPO), target=str(target))],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "half written"
    child.send_signal(signal.SIGKILL)
    child.wait()

    assert target.read_text() == '{"id": "old"}\n', "a reader still sees the last whole version"
    temps = list(target.parent.glob(TMP_PREFIX + "coco.jsonl.*"))
    assert len(temps) == 1 and temps[0].stat().st_size == 100_000
    assert clean_stale_temp_files(tmp_path) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["coco.jsonl"]


def test_a_failed_block_leaves_no_file_and_no_temp_file(tmp_path):
    target = tmp_path / "out.json"
    try:
        with atomic_open(target) as f:
            f.write("{")
            raise ValueError("stop")
    except ValueError:
        pass
    assert list(tmp_path.iterdir()) == []


_MEMORY_WRITER = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from translators.memory import TranslationMemory
from translators.protocol import Verdict

class KilledBeforeCommit:
    # the connection as `with self._db:` sees it, except that leaving the block is a SIGKILL
    def __init__(self, db):
        self.db = db
    def __getattr__(self, name):
        return getattr(self.db, name)
    def __enter__(self):
        return self.db.__enter__()
    def __exit__(self, *exc):
        os.kill(os.getpid(), signal.SIGKILL)

memory = TranslationMemory({path!r})
for t in range(3):
    rows = [(f"sentence {{t}}-{{i}}", f"句子 {{t}}-{{i}}", Verdict(True)) for i in range(100)]
    memory.put_many(rows, source_lang="en", target_lang="zh", model="m", prompt_version="v1")
memory._db = KilledBeforeCommit(memory._db)
big = [(f"long sentence {{i}} " + "x" * 300, "长句" + "y" * 300, Verdict(True)) for i in range(20000)]
memory.put_many(big, source_lang="en", target_lang="zh", model="m", prompt_version="v1")
"""


def test_a_memory_write_killed_before_its_commit_leaves_only_the_committed_rows(tmp_path):
    path = tmp_path / "tm.sqlite"
    child = subprocess.run([sys.executable, "-c", _MEMORY_WRITER.format(repo=str(REPO), path=str(path))],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 1 << 20, "the uncommitted 20,000 rows had reached the write-ahead log"

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM tm").fetchone()[0] == 300, "only the 3 committed transactions"
    db.close()
    with TranslationMemory(path) as memory:  # the next run opens it and goes on
        memory.put_many([("one more", "再来一个", Verdict(True))], source_lang="en", target_lang="zh",
                        model="m", prompt_version="v1")
        assert memory.lookup_many(["one more", "sentence 0-0"], "zh", "m", "v1").keys() == {"one more", "sentence 0-0"}


def test_an_img2dataset_shard_marker_cut_off_by_a_kill_makes_the_shard_fetch_again(tmp_path):
    """img2dataset writes `<shard>_stats.json` in place; a kill between creating and filling it (seen
    once in the download crash chain) left an empty marker that counted the shard as done."""
    from pipelines.steps.download.download import drop_broken_shard_markers

    (tmp_path / "00000_stats.json").write_text("")
    (tmp_path / "00001_stats.json").write_text('{"count": 16, "successes"')
    (tmp_path / "00002_stats.json").write_text('{"count": 16, "successes": 16}')
    drop_broken_shard_markers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00002_stats.json"]
