"""The translate stage end to end: records in, Chinese records and rejections out, reruns."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.chat_server import ChatServer
from support.translate_fixtures import API_KEY, KEY_ENV, make_recipe, read_jsonl, record, write_records

from pipelines.steps.translate import run_translate

ROOT = Path(__file__).resolve().parent.parent
IMG = "<image>\n"


def corpus() -> dict[str, list]:
    captions = [record("coco", i, "caption", ("user", IMG + "Describe the image briefly."),
                       ("assistant", f"A red car parked near {3 + i} cats on the s{chr(97 + i)} street."))
                for i in range(12)]  # sa, sb, ...: a unique word per caption, to aim faults at
    vqa = [record("vqa", i, "vqa", ("user", IMG + q), ("assistant", a))
           for i, (q, a) in enumerate([("What color is the car?", "red"), ("How many cats are there?", "3"),
                                       ("What color is the car?", "blue"), ("Is there a dog?", "yes"),
                                       ("What color is the car?", "red"), ("Where is the dog?", "on the car")])]
    llava = [record("llava", i, "conversation",
                    ("user", IMG + f"What is the man with {i + 2} dogs doing?"), ("assistant", "He is walking the dogs."),
                    ("user", "Where is he?"), ("assistant", f"He is on a street near gate {i + 10}."))
             for i in range(4)]
    zh = [record("alpaca", i, "text", ("user", "介绍一下北京。"), ("assistant", "北京是中国的首都。"), lang="zh")
          for i in range(3)]
    return {"coco": captions, "vqa": vqa, "llava": llava, "alpaca": zh}


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with ChatServer(api_key=API_KEY) as srv:
        yield srv


def openai_recipe(tmp_path: Path, server: ChatServer, **extra):
    settings = {"batch_segments": 8, "backoff_base_s": 0.01, "timeout_s": 5.0, **extra}
    return make_recipe(tmp_path, backend="openai", base_url=server.base_url, api_key_env=KEY_ENV,
                       model="test-model", **settings)


def write_corpus(in_dir: Path, data: dict[str, list]) -> None:
    for name, records in data.items():
        write_records(in_dir, name, records)
    with open(in_dir / "records" / "vqa.jsonl", "a", encoding="utf-8") as f:
        f.write("{not json\n")
        bad_lang = record("vqa", 99, "vqa", ("user", "Quelle couleur?"), ("assistant", "rouge"), lang="fr")
        f.write(json.dumps(bad_lang.to_dict()) + "\n")


def test_translate_stage_end_to_end_with_faults_rerun_and_no_leaks(server, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    data = corpus()
    in_dir, out_dir = tmp_path / "download", tmp_path / "translate"
    write_corpus(in_dir, data)
    server.add_fault("rate_limit", times=1, retry_after="0")
    server.add_fault("refusal", match="se street", times=None)
    server.add_fault("english_echo", match="on the car", times=None)
    server.add_fault("drop_mask", match="gate", times=None)  # every llava record's last turn
    recipe = openai_recipe(tmp_path, server, price={"input_per_million": 0.5, "output_per_million": 2.0})

    stats = run_translate(recipe, in_dir, out_dir)

    total = sum(map(len, data.values())) + 2
    assert stats.read == total and stats.kept + stats.rejected_total == total
    assert dict(stats.rejected) == {"refusal": 1, "untranslated": 1, "numbers_changed": 4,
                                    "bad_record": 1, "unsupported_lang": 1}
    rejected = read_jsonl(out_dir / "rejected" / "translate.jsonl")
    assert len(rejected) == 8 and all(r["reason"] and r["location"] and r["detail"] for r in rejected)
    assert {r["location"] for r in rejected if r["reason"] == "bad_record"} == {"vqa.jsonl:7"}
    llava_reject = next(r for r in rejected if r["source"] == "llava")
    assert llava_reject["detail"].startswith("messages[3] (assistant): numbers_changed")
    _assert_nothing_lost(data, out_dir, rejected)
    assert json.loads((out_dir / "_SUCCESS").read_text())["retry_pending"] == 6

    vqa_out = read_jsonl(out_dir / "records" / "vqa.jsonl")
    assert [r["messages_en"][1]["content"] for r in vqa_out] == ["red", "3", "blue", "yes", "red"]
    assert vqa_out[0]["messages"] == [{"role": "user", "content": IMG + "什么颜色是汽车？"},
                                      {"role": "assistant", "content": "红色"}]
    assert vqa_out[0]["lang"] == "zh" and vqa_out[0]["translation"]["qa"] == [
        {"ok": True, "origin": "model"}, {"ok": True, "origin": "model"}]
    assert vqa_out[1]["translation"]["qa"][1]["origin"] == "passthrough"
    assert read_jsonl(out_dir / "records" / "alpaca.jsonl") == [r.to_dict() for r in data["alpaca"]]
    assert stats.extra["duplicates"] >= 12 and stats.extra["prompt_tokens[test-model]"] == server.stats.prompt_tokens
    assert stats.extra["completion_tokens[test-model]"] == server.stats.completion_tokens
    assert stats.extra["cost_usd[test-model]"] == pytest.approx(
        (server.stats.prompt_tokens * 0.5 + server.stats.completion_tokens * 2.0) / 1e6, abs=1e-6)
    kept_tokens = sum(s.extra["tokens"] for s in stats.per_source.values())
    assert 0 < kept_tokens < server.stats.prompt_tokens + server.stats.completion_tokens  # rejected ones cost too

    # Rerun with a healthy server: only what failed is sent; everything translatable is kept.
    server.clear_faults()
    sent_before = server.stats.segments
    stats2 = run_translate(recipe, in_dir, out_dir)
    assert server.stats.segments - sent_before == 6  # 1 caption + 1 answer + 4 last turns
    assert stats2.kept == total - 2 and dict(stats2.rejected) == {"bad_record": 1, "unsupported_lang": 1}
    assert len(read_jsonl(out_dir / "rejected" / "translate.jsonl")) == 2
    assert json.loads((out_dir / "_SUCCESS").read_text())["retry_pending"] == 0

    # A complete stage does nothing.
    requests_before = server.stats.requests
    assert run_translate(recipe, in_dir, out_dir).to_dict() == stats2.to_dict()
    assert server.stats.requests == requests_before

    _assert_key_nowhere(tmp_path, capsys, caplog)


def _assert_nothing_lost(data: dict[str, list], out_dir: Path, rejected: list[dict]) -> None:
    """Every input record is either in the output (same roles, Chinese content) or rejected."""
    rejected_ids = {r["id"] for r in rejected}
    for name, records in data.items():
        out = {r["id"]: r for r in read_jsonl(out_dir / "records" / f"{name}.jsonl")}
        for rec in records:
            assert (rec.id in out) != (rec.id in rejected_ids), f"{name} {rec.id} lost or duplicated"
            if rec.id in out:
                got = out[rec.id]
                assert [m["role"] for m in got["messages"]] == [m["role"] for m in rec.messages]
                if rec.lang == "en":
                    assert got["messages_en"] == rec.messages


def _assert_key_nowhere(tmp_path: Path, capsys, caplog) -> None:
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files)
    for p in files:
        assert API_KEY.encode() not in p.read_bytes(), f"API key written to {p}"
    out = capsys.readouterr()
    assert "[translate]" in out.out
    assert API_KEY not in out.out + out.err and API_KEY not in caplog.text


def test_memory_backend_serves_imports_under_any_model_name(tmp_path):
    data = corpus()
    in_dir, out_dir = tmp_path / "download", tmp_path / "translate"
    for name in ("vqa", "alpaca"):
        write_records(in_dir, name, data[name])
    pairs = {IMG + "What color is the car?": IMG + "车是什么颜色？", IMG + "How many cats are there?": IMG + "有几只猫？",
             IMG + "Is there a dog?": IMG + "有狗吗？", "red": "红色", "blue": "蓝色", "yes": "是"}
    tm_file = tmp_path / "demo_tm.jsonl"
    tm_file.write_text("".join(json.dumps({"source": s, "target": t, "source_lang": "en", "target_lang": "zh"},
                                          ensure_ascii=False) + "\n" for s, t in pairs.items()), encoding="utf-8")
    recipe = make_recipe(tmp_path, backend="memory", model="demo-memory", memory_import=[str(tm_file)])

    stats = run_translate(recipe, in_dir, out_dir)

    assert dict(stats.rejected) == {"memory_miss": 1}  # "Where is the dog?" / "on the car"
    miss = read_jsonl(out_dir / "rejected" / "translate.jsonl")[0]
    assert "messages[0] (user)" in miss["detail"] and "messages[1] (assistant)" in miss["detail"]
    assert stats.extra["memory_hits"] == 6 and stats.extra["memory_imported_rows"] == 6
    vqa = read_jsonl(out_dir / "records" / "vqa.jsonl")
    assert [r["messages"][1]["content"] for r in vqa] == ["红色", "3", "蓝色", "是", "红色"]
    assert {q["origin"] for r in vqa for q in r["translation"]["qa"]} == {"memory", "passthrough"}

    more = tmp_path / "more_tm.jsonl"
    more.write_text(json.dumps({"source": IMG + "Where is the dog?", "target": IMG + "狗在哪里？"}, ensure_ascii=False)
                    + "\n" + json.dumps({"source": "on the car", "target": "在车上"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    recipe = make_recipe(tmp_path, backend="memory", model="demo-memory", memory_import=[str(tm_file), str(more)])
    stats2 = run_translate(recipe, in_dir, out_dir)
    assert stats2.rejected_total == 0 and stats2.kept == len(data["vqa"]) + len(data["alpaca"])
    assert stats2.extra["memory_imported_rows"] == 2, "the unchanged first file is not imported again"


_CHILD = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
from pathlib import Path
from support.translate_fixtures import make_recipe
from pipelines.steps.translate import run_translate
recipe = make_recipe(Path({tmp!r}), backend="openai", base_url={url!r}, api_key_env={env!r}, model="test-model",
                     batch_segments=4, concurrency=2)
run_translate(recipe, Path({in_dir!r}), Path({out_dir!r}))
"""


def test_kill_9_loses_only_the_requests_in_flight(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    captions = [record("coco", i, "caption", ("assistant", f"A photo of the {w} near a red car."))
                for i, w in enumerate(f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(48))]
    in_dir, out_dir = tmp_path / "download", tmp_path / "translate"
    write_records(in_dir, "coco", captions)
    with ChatServer(api_key=API_KEY, latency_s=0.15) as srv:
        code = _CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), tmp=str(tmp_path), url=srv.base_url,
                             env=KEY_ENV, in_dir=str(in_dir), out_dir=str(out_dir))
        child = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
        deadline = time.monotonic() + 30
        while srv.stats.ok < 5 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        answered_at_kill = srv.stats.ok
        assert 5 <= answered_at_kill < 12, "the child must be killed mid-run"
        srv.wait_idle()  # what the child had in flight still reaches the server; count it before the rerun
        db = sqlite3.connect(tmp_path / "tm.sqlite")
        committed = db.execute("SELECT COUNT(*) FROM tm WHERE qa_ok = 1").fetchone()[0]
        db.close()
        assert committed >= 4 * (answered_at_kill - 2), "at most the 2 requests in flight may be lost"
        assert not (out_dir / "_SUCCESS").exists()

        sent_before = srv.stats.segments
        stats = run_translate(
            make_recipe(tmp_path, backend="openai", base_url=srv.base_url, api_key_env=KEY_ENV, model="test-model",
                        batch_segments=4, concurrency=2),
            in_dir, out_dir,
        )
        assert srv.stats.segments - sent_before == 48 - committed
    assert stats.kept == 48 and stats.rejected_total == 0
    assert not list(out_dir.rglob(".tmp-*"))
