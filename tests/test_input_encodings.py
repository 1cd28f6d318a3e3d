"""Text files the user hands us that are not plain UTF-8: Windows tools save UTF-8 with a
byte-order mark (Notepad, Excel "CSV UTF-8") or UTF-16 (PowerShell 5's `Out-File`).

The source readers are covered in test_sources_readers.py (every kind, with a BOM and in
UTF-16); these are the other files a recipe names: translation-memory imports and the eval split.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from translators.memory import MemoryImportError, TranslationMemory

ROWS = [{"source": "What color is the star?", "target": "星星是什么颜色？", "source_lang": "en", "target_lang": "zh"},
        {"source": "A red circle.", "target": "一个红色的圆。", "source_lang": "en", "target_lang": "zh"}]


def _write(path: Path, rows: list[dict], encoding: str) -> Path:
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(encoding))
    return path


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_memory_import_reads_a_file_with_a_byte_order_mark(tmp_path, encoding):
    """Was: a BOM made line 1 "not valid JSON (Unexpected UTF-8 BOM)" and stopped the import (and
    with it the translate stage); UTF-16 raised a bare UnicodeDecodeError."""
    src = _write(tmp_path / "tm.jsonl", ROWS, encoding)
    with TranslationMemory(tmp_path / "m.sqlite") as tm:
        assert tm.import_jsonl(src).rows == 2
        hits = tm.lookup_many([r["source"] for r in ROWS], "zh", "any-model", "v1")
    assert sorted(e.target for e in hits.values()) == sorted(r["target"] for r in ROWS)


def test_memory_import_of_a_file_in_another_encoding_names_the_line_and_what_to_do(tmp_path):
    """A GBK file (Chinese Windows' default): one clear MemoryImportError naming the first line with
    a GBK character (line 1 is ASCII), not a traceback."""
    src = _write(tmp_path / "tm.jsonl", [{"source": "OK", "target": "OK"}, *ROWS], "gbk")
    with TranslationMemory(tmp_path / "m.sqlite") as tm, pytest.raises(MemoryImportError) as err:
        tm.import_jsonl(src)
    assert f"{src}:2: not UTF-8 text (byte 0xd0)" in str(err.value) and "save the file as UTF-8" in str(err.value)


def test_eval_split_with_a_byte_order_mark_is_read(tmp_path):
    from training.evaluate import read_split

    items = [{"id": "1", "image": "images/000001.jpg", "question": "颜色？", "answer": "红色"}]
    split = _write(tmp_path / "eval_zh.jsonl", items, "utf-8-sig")
    assert read_split(split) == items
