"""The incremental JSON reader: same values as json.load, at any chunk size, without
reading the whole file; malformed input is an error with a location."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.sources import jsonstream
from pipelines.sources.jsonstream import JsonStreamError, iter_json_array, iter_json_items, iter_json_object

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(items=st.lists(values, max_size=8), chunk=st.integers(1, 9), indent=st.sampled_from([None, 0, 2]))
def test_array_items_match_json_load_at_any_chunk_size(tmp_path_factory, items, chunk, indent):
    path = tmp_path_factory.mktemp("js") / "a.json"
    path.write_text(json.dumps(items, indent=indent, ensure_ascii=False), encoding="utf-8")
    old = jsonstream.CHUNK_CHARS
    jsonstream.CHUNK_CHARS = chunk
    try:
        got = [item for _, item in iter_json_array(path)]
    finally:
        jsonstream.CHUNK_CHARS = old
    assert got == items


def test_number_split_across_chunks_is_not_cut(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonstream, "CHUNK_CHARS", 3)
    path = tmp_path / "n.json"
    path.write_text("[123456789, 1.5e10, true, null]")
    assert [v for _, v in iter_json_array(path)] == [123456789, 1.5e10, True, None]


def test_streams_without_reading_the_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonstream, "CHUNK_CHARS", 4096)
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"id": i, "text": "x" * 100} for i in range(20000)]))  # ~2.4 MB
    reads: list[int] = []
    real_open = jsonstream.open_text

    def counting_open(p):
        f = real_open(p)
        read = f.read
        f.read = lambda n=-1: reads.append(n) or read(n)  # type: ignore[method-assign]
        return f

    monkeypatch.setattr(jsonstream, "open_text", counting_open)
    items = iter_json_array(path)
    first = next(items)
    assert first == (0, {"id": 0, "text": "x" * 100})
    assert len(reads) <= 2 and all(0 < n <= 4096 for n in reads)
    assert sum(1 for _ in items) == 19999


def test_array_under_a_key_with_header_and_skipped_arrays(tmp_path):
    doc = {"info": {"v": 1}, "license": [{"x": 1}] * 3, "data_subtype": "train2014",
           "questions": [{"q": 1}, {"q": 2}], "tail": [1, 2]}
    path = tmp_path / "q.json"
    path.write_text(json.dumps(doc))
    header: dict = {}
    assert [v for _, v in iter_json_array(path, key="questions", header=header)] == [{"q": 1}, {"q": 2}]
    assert header == {"info": {"v": 1}, "data_subtype": "train2014"}  # arrays are stepped over, not kept
    with pytest.raises(JsonStreamError, match="no top-level key 'answers'"):
        list(iter_json_array(path, key="answers"))


def test_object_pairs_stream_in_file_order(tmp_path):
    path = tmp_path / "gqa.json"
    path.write_text('{"b": {"x": 1}, "a": [1, 2], "c": "s"}')
    assert list(iter_json_object(path)) == [("b", {"x": 1}), ("a", [1, 2]), ("c", "s")]


@pytest.mark.parametrize("text, index", [
    ('[{"a": 1}, {"a": 2,, }, {"a": 3}]', 1),
    ('[{"a": 1}, {"a": 2} {"a": 3}]', None),
    ('[{"a": 1}, {"a": "unterminated}]', 1),
])
def test_malformed_arrays_raise_with_location(tmp_path, text, index):
    path = tmp_path / "bad.json"
    path.write_text(text)
    got = []
    with pytest.raises(JsonStreamError) as err:
        for _, item in iter_json_array(path):
            got.append(item)
    assert got == [{"a": 1}] + ([{"a": 2}] if index is None else [])
    assert err.value.location.startswith(str(path))
    if index is not None:
        assert err.value.location == f"{path}[{index}]"


def test_items_from_jsonl_keep_going_after_a_bad_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{oops\n\n{"a": 3}\n')
    got = list(iter_json_items(path))
    assert got[0] == (f"{path}:1", {"a": 1})
    assert isinstance(got[1][1], JsonStreamError) and got[1][0] == f"{path}:2"
    assert got[2] == (f"{path}:4", {"a": 3})


def test_bad_utf8_bytes_survive_as_surrogates(tmp_path):
    path = tmp_path / "u.json"
    path.write_bytes(b'[{"t": "ok"}, {"t": "bad \xff byte"}]')
    items = [v for _, v in iter_json_array(path)]
    assert items[0] == {"t": "ok"} and items[1]["t"] == "bad \udcff byte"
