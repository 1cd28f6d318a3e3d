"""Read-time validation: each bad record is a rejection row with reason, file and index."""

from __future__ import annotations

import json

import pytest

from pipelines.recipe import SourceConfig
from pipelines.core.rejects import RejectWriter
from pipelines.sources import read_source
from pipelines.sources.validation import validate
from pipelines.core.stats import StepStats
from templates.schema import Record


def llava(i, turns, image="x.jpg"):
    item = {"id": str(i), "conversations": [{"from": r, "value": v} for r, v in turns]}
    if image is not None:
        item["image"] = image
    return item


GOOD = [("human", "<image>\nWhat colour?"), ("gpt", "Red.")]
CASES = [
    ("good", llava(0, GOOD), None),
    ("two placeholders", llava(1, [("human", "<image> and <image>"), ("gpt", "ok")]), "image_count_mismatch"),
    ("no placeholder", llava(2, [("human", "What colour?"), ("gpt", "Red.")]), "image_count_mismatch"),
    ("placeholder, no image", llava(3, GOOD, image=None), "image_count_mismatch"),
    ("assistant first", llava(4, [("gpt", "Hello"), ("human", "<image>hi")]), "bad_turn_order"),
    ("two user turns", llava(5, [("human", "<image>a"), ("human", "b"), ("gpt", "c")]), "bad_turn_order"),
    ("ends with user", llava(6, GOOD + [("human", "and?")]), "bad_turn_order"),
    ("empty turn", llava(7, [("human", "<image>q"), ("gpt", "   ")]), "empty_turn"),
    ("unknown role", llava(8, [("human", "<image>q"), ("bot", "a")]), "unknown_role"),
    ("no turns", llava(9, []), "no_messages"),
    ("missing conversations", {"id": "10", "image": "x.jpg"}, "missing_field"),
    ("missing id", {"image": "x.jpg", "conversations": llava(0, GOOD)["conversations"]}, "missing_field"),
    ("turn without value", {"id": "12", "image": "x.jpg", "conversations": [{"from": "human"}]}, "missing_field"),
    ("duplicate id", llava(0, GOOD), "duplicate_id"),
    ("not an object", "just a string", "missing_field"),
]


@pytest.fixture
def result(tmp_path):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([item for _, item, _ in CASES]))
    stats = StepStats("read")
    with RejectWriter(tmp_path / "rejected", "read", stats) as rejects:
        records = list(read_source(SourceConfig(name="llava", kind="llava", path=str(path)), rejects))
    rows = [json.loads(line) for line in (tmp_path / "rejected" / "read.jsonl").read_text().splitlines()]
    return path, records, rows, stats


def test_each_case_is_kept_or_rejected_with_its_reason_and_index(result):
    path, records, rows, stats = result
    assert [r.meta["original_id"] for r in records] == ["0"]
    expected = [(reason, f"{path}[{i}]") for i, (_, _, reason) in enumerate(CASES) if reason]
    assert [(r["reason"], r["location"]) for r in rows] == expected
    assert all(r["source"] == "llava" and r["detail"] for r in rows)
    assert stats.read == len(CASES) and stats.read == len(records) + stats.rejected_total
    assert stats.per_source["llava"].rejected["image_count_mismatch"] == 3


def test_details_say_what_is_wrong(result):
    _, _, rows, _ = result
    detail = {r["location"].rsplit("[", 1)[1].rstrip("]"): r["detail"] for r in rows}
    assert detail["1"] == "2 <image> placeholder(s) for 1 image(s)"
    assert "messages[0] is 'assistant', expected 'user'" in detail["4"]
    assert "role 'bot'" in detail["8"]
    assert "was already read" in detail["13"]


def test_invalid_utf8_is_rejected_and_the_row_is_still_written(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_bytes(b'{"instruction": "fine", "output": "ok"}\n{"instruction": "bad \xff\xfe bytes", "output": "x"}\n')
    stats = StepStats("read")
    with RejectWriter(tmp_path / "rejected", "read", stats) as rejects:
        records = list(read_source(SourceConfig(name="a", kind="alpaca", path=str(path)), rejects))
    assert [r.messages[0]["content"] for r in records] == ["fine"]
    (row,) = [json.loads(line) for line in (tmp_path / "rejected" / "read.jsonl").read_text(encoding="utf-8").splitlines()]
    assert (row["reason"], row["location"]) == ("invalid_utf8", f"{path}:2")
    assert "0xff" in row["detail"]
    assert row["record"]["messages"][0]["content"].startswith("bad \ufffd")


def test_invalid_json_in_a_json_array_is_one_rejection_with_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": }]')
    stats = StepStats("read")
    with RejectWriter(tmp_path / "rejected", "read", stats) as rejects:
        records = list(read_source(SourceConfig(name="a", kind="alpaca", path=str(path)), rejects))
    assert len(records) == 1 and stats.rejected == {"invalid_json": 1}
    row = json.loads((tmp_path / "rejected" / "read.jsonl").read_text())
    assert row["location"] == f"{path}[1]" and "invalid JSON" in row["detail"]


@pytest.mark.parametrize("messages, image, reason", [
    ([{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}], "i.jpg", None),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], None, None),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "i.jpg", "image_count_mismatch"),
    ([{"role": "user", "content": "q\udcff"}, {"role": "assistant", "content": "a"}], None, "invalid_utf8"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], None, "empty_turn"),
])
def test_validate_directly(messages, image, reason):
    verdict = validate(Record(id="x", source="s", task="text", messages=messages, image=image))
    assert (verdict[0] if verdict else None) == reason


@pytest.mark.parametrize("name, data, encoding", [
    ("pairs.csv", "url,caption\nhttp://x/0.jpg,a plain caption\nhttp://x/1.jpg,一只红色的猫\n"
                  "http://x/2.jpg,蓝色的天空下有一座山\n".encode("gbk"), "GBK"),
    ("pairs.jsonl", '{"url": "http://x/0.jpg", "caption": "plain"}\n{"url": "http://x/1.jpg", "caption": "café crème"}\n'
                    '{"url": "http://x/2.jpg", "caption": "naïve façade"}\n'.encode("cp1252"), "cp1252"),
], ids=["gbk-csv", "cp1252-jsonl"])
def test_a_legacy_encoded_file_is_rejected_with_what_to_do_not_guess_decoded(tmp_path, name, data, encoding):
    """A GBK / cp1252 file without a BOM: its non-ASCII lines are rejected (never decoded by guessing, a wrong
    guess corrupts silently), each rejection naming the file and saying to save it as UTF-8."""
    path = tmp_path / name
    path.write_bytes(data)
    stats = StepStats("read")
    with RejectWriter(tmp_path / "rejected", "read", stats) as rejects:
        records = list(read_source(SourceConfig(name="p", kind="zh_pairs", path=str(path)), rejects))
    rows = [json.loads(line) for line in (tmp_path / "rejected" / "read.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 1 and [r["reason"] for r in rows] == ["invalid_utf8", "invalid_utf8"]
    assert stats.read == 3 == len(records) + stats.rejected_total
    for row in rows:
        assert str(path) in row["detail"] and "save it as UTF-8" in row["detail"], row["detail"]
        assert f"iconv -f {encoding} -t UTF-8" in row["detail"], row["detail"]


def test_bad_bytes_that_look_like_no_legacy_encoding_get_no_encoding_hint(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"instruction": "bad \x81 \x9d bytes", "output": "x"}\n')  # undefined in cp1252, not GBK
    stats = StepStats("read")
    with RejectWriter(tmp_path / "rejected", "read", stats) as rejects:
        assert list(read_source(SourceConfig(name="a", kind="alpaca", path=str(path)), rejects)) == []
    row = json.loads((tmp_path / "rejected" / "read.jsonl").read_text(encoding="utf-8"))
    assert row["reason"] == "invalid_utf8" and "iconv" not in row["detail"]
