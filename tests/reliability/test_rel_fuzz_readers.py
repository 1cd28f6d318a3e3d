"""Every source reader, fed random JSON and random bytes, through the download stage's read step
(`pipelines.download.collect`: reader -> validation -> image reference policy -> spool).

The contract: reading never raises for anything a data file can hold; every item read is
either spooled or a row in `rejected/download.jsonl` with a reason, and that file stays valid
UTF-8 JSONL. (Recipe mistakes, e.g. a missing file, are errors; file *content* never is.)

Hypothesis is derandomized (same examples on every run) with no deadline; the example
counts per test are in RELIABILITY.md.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.steps.download.download import SPOOL, collect
from pipelines.recipe import Recipe
from pipelines.core.rejects import RejectWriter
from pipelines.core.stats import StepStats

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Field names the readers look for, so that random items often get past the first `need`.
FIELDS = ["id", "image", "images", "conversations", "messages", "from", "value", "role", "content", "question",
          "question_id", "image_id", "imageId", "answers", "answer", "multiple_choice_answer", "caption", "url",
          "instruction", "input", "output", "file_name", "coco_url", "flickr_original_url", "data_subtype"]
TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["human", "gpt", "user", "assistant", "system", "<image>", "<image>\nWhat?", "red",
                     "../../etc/passwd", "/etc/passwd", "file:///etc/passwd", "file://evil.example/x.jpg",
                     "javascript:alert(1)", "data:image/png;base64,AAAA", "http://[::1", "a\x00b.jpg",
                     "\udcff", "%2e%2e/%2e%2e/x.jpg", "http://127.0.0.1:9/x.jpg", "{image_id}", "{0}", "{x!r:>{y}}"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), inner, max_size=6),
    ),
    max_leaves=24,
)
ITEMS = st.lists(JSON, max_size=6)

KINDS = ["url_list", "coco_captions", "vqav2", "gqa", "textvqa", "llava", "sharegpt", "alpaca", "zh_pairs"]


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


def layout(kind: str, items: list[Any], extra: Any) -> dict[str, str]:
    """File name -> text: the items placed where the reader of `kind` expects them."""
    if kind in ("url_list", "zh_pairs"):
        return {"data.jsonl": "".join(_dump(i) + "\n" for i in items)}
    if kind in ("llava", "alpaca"):
        return {"data.json": _dump(items)}
    if kind == "sharegpt":
        return {"data.jsonl": "".join(_dump(i) + "\n" for i in items)}
    if kind == "gqa":
        return {"data.json": _dump({str(n): i for n, i in enumerate(items)})}
    if kind == "textvqa":
        return {"data.json": _dump({"extra": extra, "data": items})}
    if kind == "coco_captions":
        return {"data.json": _dump({"images": items[::2], "extra": extra, "annotations": items[1::2]})}
    return {"data.json": _dump({"data_subtype": extra, "questions": items}),  # vqav2
            "ann.json": _dump({"annotations": list(reversed(items))})}


def run_collect(tmp: Path, kind: str, files: dict[str, bytes]) -> tuple[StepStats, list[dict], int]:
    """collect() over one source whose files hold `files`; returns (stats, rejection rows, spooled)."""
    for name, content in files.items():
        (tmp / name).write_bytes(content)
    data = next(n for n in files if n.startswith("data"))
    source = {"name": "fuzz", "kind": kind, "path": str(tmp / data), "image_root": str(tmp / "images")}
    if kind == "vqav2":
        source["annotations"] = str(tmp / "ann.json")
    (tmp / "images").mkdir(exist_ok=True)
    recipe = Recipe.model_validate({
        "name": "fuzz", "model": {"vision": {"init": {}}, "llm": {"init": {}}}, "stages": {}, "sources": [source],
        "download": {"allowed_file_roots": [str(tmp / "images")]},
    })
    out = tmp / "out"
    stats = StepStats("download")
    with RejectWriter(out / "rejected", "download", stats) as rejects:
        collect(recipe, out, rejects)
    raw = (out / "rejected" / "download.jsonl").read_bytes()
    # strict UTF-8 and one JSON object per "\n" (not str.splitlines: U+2028 and U+0085 may be in the text)
    rows = [json.loads(line) for line in raw.decode("utf-8").split("\n") if line]
    spooled = (out / SPOOL / "fuzz.jsonl").read_bytes().count(b"\n")
    return stats, rows, spooled


def check_accounting(stats: StepStats, rows: list[dict], spooled: int) -> None:
    assert stats.read == spooled + len(rows) == spooled + stats.rejected_total
    assert all(r["reason"] and isinstance(r["detail"], str) for r in rows)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(items=ITEMS, extra=JSON)
def test_random_json_items_are_read_or_rejected_never_raised(kind, items, extra):
    files = {name: text.encode("utf-8", "surrogatepass") for name, text in layout(kind, items, extra).items()}
    with tempfile.TemporaryDirectory() as tmp:
        check_accounting(*run_collect(Path(tmp), kind, files))


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(blob=st.one_of(st.binary(max_size=300), st.builds(lambda v: _dump(v).encode("utf-8", "surrogatepass"), JSON)),
       gz=st.booleans())
def test_random_bytes_and_random_top_level_json_never_raise(kind, blob, gz):
    suffix = {"url_list": ".jsonl", "zh_pairs": ".csv", "sharegpt": ".jsonl"}.get(kind, ".json")
    name = "data" + suffix + (".gz" if gz and kind not in ("coco_captions", "vqav2", "gqa", "textvqa") else "")
    files = {name: gzip.compress(blob, mtime=0) if name.endswith(".gz") else blob}
    if kind == "vqav2":
        files["ann.json"] = blob
    with tempfile.TemporaryDirectory() as tmp:
        check_accounting(*run_collect(Path(tmp), kind, files))


@pytest.mark.parametrize("kind", ["llava", "sharegpt", "alpaca", "url_list"])
def test_nesting_deeper_than_the_interpreter_can_recurse_is_a_rejection(tmp_path, kind):
    """json.loads raises RecursionError (not JSONDecodeError) past ~1000 levels; a record's meta
    a little below that breaks copying and serialising it later. Both are rejected, with a reason."""
    good = {"id": 1, "image": "a.jpg", "instruction": "Hi?", "output": "Hello.", "url": "http://h/a.jpg",
            "caption": "A cat.", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                   {"from": "gpt", "value": "A cat."}]}
    very_deep = "[" * 100_000 + "]" * 100_000
    fairly_deep = "[" * 900 + "]" * 900

    def with_x(item: dict, nested: str) -> str:  # the nesting spliced in as text: json.dumps would recurse
        return _dump(item)[:-1] + ', "x": ' + nested + "}"

    rows = [_dump(good), with_x({**good, "id": 2, "caption": "B.", "output": "B."}, fairly_deep),
            with_x({**good, "id": 3, "caption": "C.", "output": "C."}, very_deep)]
    name = "data.jsonl" if kind in ("sharegpt", "url_list") else "data.json"
    text = "\n".join(rows) + "\n" if name.endswith(".jsonl") else "[" + ",".join(rows) + "]"
    stats, rejected, spooled = run_collect(tmp_path, kind, {name: text.encode()})
    check_accounting(stats, rejected, spooled)
    assert spooled == 1 and stats.read == 3
    assert sorted(r["reason"] for r in rejected) == ["invalid_json", "too_deeply_nested"]
    assert any("nested too deeply" in r["detail"] for r in rejected)
