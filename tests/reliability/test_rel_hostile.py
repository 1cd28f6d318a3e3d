"""Hostile input: ids and image references that try to leave the allowed folders, odd URL
schemes, oversized fields. Complements tests/test_download_units.py (the basic URL policy) and
tests/test_sources_validation.py (the basic checks); what is new here:

* reference forms those tests do not try (javascript:, file:// with a host, percent-encoded
  `..`, NUL bytes, unparsable URLs, symlinked folders, a symlinked allowed root);
* one hostile corpus through the real download (img2dataset), translate and render stages:
  every file any stage writes stays in the run folder and is named by us, never by the data;
* size limits: an oversized turn, conversation, image reference or meta is rejected with
  `field_too_long`, and the rejection row holds a cut copy, not the megabytes.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest
from support.image_server import jpeg_bytes

from pipelines.steps.download.download import ImageRefError, image_url, run_download
from pipelines.recipe import Recipe, RecipeError
from pipelines.steps.render.render import run_render
from pipelines.sources.validation import MAX_IMAGE_REF_CHARS, MAX_META_CHARS, MAX_TURN_CHARS, MAX_TURNS
from pipelines.steps.translate import run_translate

SAFE_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9._-]*$")  # _SUCCESS, .stale folders, shard names
OK_TURNS = [{"from": "human", "value": "<image>\n这是什么？"}, {"from": "gpt", "value": "一只猫。"}]


# -- the reference policy: forms the basic tests do not cover ---------------------------------
@pytest.fixture
def tree(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "imgs").mkdir(parents=True)
    outside.mkdir()
    for folder in (data / "imgs", outside):
        (folder / "a.jpg").write_bytes(b"x")
    os.symlink(outside, data / "imgs" / "dirlink")             # a folder inside that leads out
    os.symlink(data / "imgs" / "dirlink", data / "imgs" / "chain")  # a link to that link
    os.symlink(data, tmp_path / "data-link")                   # an allowed root given via a symlink
    return tmp_path


@pytest.mark.parametrize("ref, reason", [
    ("javascript:alert(1)", "image_url_unsupported"),
    ("JaVaScRiPt:alert(document.cookie)", "image_url_unsupported"),
    ("vbscript:msgbox", "image_url_unsupported"),
    ("data:image/jpeg;base64,/9j/4AAQ", "image_url_unsupported"),
    ("file://evil.example{tmp}/data/imgs/a.jpg", "image_url_unsupported"),  # a host: not a local file
    ("file://127.0.0.1{tmp}/data/imgs/a.jpg", "image_url_unsupported"),
    ("file://{tmp}/data/imgs/%2e%2e/%2e%2e/outside/a.jpg", "image_url_not_allowed"),
    ("file://{tmp}/data/imgs/%2E%2E%2F%2E%2E%2Foutside%2Fa.jpg", "image_url_not_allowed"),
    ("{tmp}/data/imgs/dirlink/a.jpg", "image_url_not_allowed"),
    ("{tmp}/data/imgs/chain/a.jpg", "image_url_not_allowed"),
    ("{tmp}/data/imgs/a.jpg\x00.png", "image_url_invalid"),
    ("file://{tmp}/data/imgs/a.jpg%00.png", "image_url_invalid"),
    ("http://[::1/a.jpg", "image_url_invalid"),
    ("https://", "image_url_invalid"),
])
def test_hostile_references_are_refused_with_their_reason(tree, ref, reason):
    with pytest.raises(ImageRefError) as err:
        image_url(ref.format(tmp=tree), [os.path.realpath(tree / "data")])
    assert err.value.reason == reason
    assert "{tmp}" not in str(err.value) and str(err.value)


def test_references_that_only_look_hostile_stay_inside(tree):
    root = [os.path.realpath(tree / "data")]
    real = (tree / "data" / "imgs" / "a.jpg").resolve().as_uri()
    assert image_url(f"file://localhost{tree}/data/imgs/a.jpg", root) == real
    assert image_url(f"file://{tree}/data/imgs/x/%2e%2e/a.jpg", root) == real  # `..` that stays inside
    # double-encoded: one decoding gives a folder literally named "%2e%2e", inside the root
    assert image_url(f"file://{tree}/data/imgs/%252e%252e/a.jpg", root).endswith("/imgs/%252e%252e/a.jpg")
    # the allowed root itself may be a symlink: what counts is where it leads
    linked = [os.path.realpath(tree / "data-link")]
    assert image_url(str(tree / "data-link" / "imgs" / "a.jpg"), linked) == real


def test_non_text_references_are_refused_not_crashed():
    for ref in (None, 7, ["a.jpg"], {"url": "a.jpg"}):
        with pytest.raises(ImageRefError) as err:
            image_url(ref, ["/tmp"])  # type: ignore[arg-type]
        assert err.value.reason == "image_url_invalid"


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", ".hidden", "a\x00b", "a b"])
def test_source_names_that_become_file_names_are_validated(name):
    with pytest.raises(Exception, match="name"):
        Recipe.model_validate({"name": "r", "model": {"vision": {"init": {}}, "llm": {"init": {}}}, "stages": {},
                               "sources": [{"name": name, "kind": "alpaca", "path": "x.json"}]})


# -- one hostile corpus through download, translate and render ---------------------------------
def hostile_corpus(tmp: Path) -> tuple[Recipe, dict[str, str]]:
    """A LLaVA file and a URL list (both already Chinese, so translate passes them through) full
    of hostile ids and references. Returns the recipe and {original id: expected reason or "kept"}."""
    data, outside = tmp / "data", tmp / "outside"
    (data / "images").mkdir(parents=True)
    outside.mkdir()
    (data / "images" / "ok1.jpg").write_bytes(jpeg_bytes(colour=(200, 30, 30)))
    (data / "images" / "ok2.jpg").write_bytes(jpeg_bytes(colour=(30, 200, 30)))
    (outside / "secret.jpg").write_bytes(jpeg_bytes(colour=(1, 2, 3)))
    os.symlink(outside / "secret.jpg", data / "images" / "link.jpg")
    os.symlink(outside, data / "images" / "dirlink")
    secret = (outside / "secret.jpg").resolve()
    jpeg_b64 = base64.b64encode(jpeg_bytes()).decode()
    cases = [  # (original id, image reference, turns, expected)
        ("../../../../pwned", "ok1.jpg", OK_TURNS, "kept"),
        ("/etc/passwd", "ok2.jpg", OK_TURNS, "kept"),
        ("C:\\Windows\\win.ini", "ok1.jpg", OK_TURNS, "kept"),
        ("x" * 5000, "ok2.jpg", OK_TURNS, "kept"),
        ("rel-escape", "../../outside/secret.jpg", OK_TURNS, "image_url_not_allowed"),
        ("absolute", str(secret), OK_TURNS, "image_url_not_allowed"),
        ("file-url", secret.as_uri(), OK_TURNS, "image_url_not_allowed"),
        ("file-host", f"file://evil.example{data}/images/ok1.jpg", OK_TURNS, "image_url_unsupported"),
        ("pct-dotdot", f"file://{data}/images/%2e%2e/%2e%2e/outside/secret.jpg", OK_TURNS, "image_url_not_allowed"),
        ("symlink-file", "link.jpg", OK_TURNS, "image_url_not_allowed"),
        ("symlink-dir", "dirlink/secret.jpg", OK_TURNS, "image_url_not_allowed"),
        ("javascript", "javascript:alert(1)", OK_TURNS, "image_url_unsupported"),
        ("data-url", f"data:image/jpeg;base64,{jpeg_b64}", OK_TURNS, "image_url_unsupported"),
        ("nul", "ok1.jpg\x00../../outside/secret.jpg", OK_TURNS, "image_url_invalid"),
        ("ipv6", "http://[::1/x.jpg", OK_TURNS, "image_url_invalid"),
        ("long-turn", "ok1.jpg", [OK_TURNS[0], {"from": "gpt", "value": "猫" * (MAX_TURN_CHARS + 1)}],
         "field_too_long"),
        ("many-turns", "ok1.jpg", OK_TURNS + [{"from": "human", "value": "再说一遍"}, {"from": "gpt", "value": "猫"}]
         * (MAX_TURNS // 2), "field_too_long"),
        ("long-image", "a" * (MAX_IMAGE_REF_CHARS + 1) + ".jpg", OK_TURNS, "field_too_long"),
    ]
    (tmp / "llava.json").write_text(json.dumps(
        [{"id": i, "image": image, "conversations": turns} for i, image, turns, _ in cases], ensure_ascii=False))
    rows = [{"url": (data / "images" / "ok1.jpg").as_uri(), "caption": "一只猫。", "key": "../../../pwned-url"},
            {"url": "file:///etc/passwd", "caption": "密码", "key": "passwd"},
            {"url": (data / "images" / "ok2.jpg").as_uri(), "caption": "两只猫。", "key": "huge-meta",
             "extra": "x" * (MAX_META_CHARS + 1)}]
    (tmp / "urls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = {i: want for i, _, _, want in cases}
    expected.update({"../../../pwned-url": "kept", "passwd": "image_url_not_allowed", "huge-meta": "field_too_long"})
    recipe = Recipe.model_validate({
        "name": "hostile", "model": {"vision": {"init": {}}, "llm": {"init": {}}}, "stages": {},
        "sources": [
            {"name": "llava", "kind": "llava", "path": str(tmp / "llava.json"), "image_root": str(data / "images"),
             "lang": "zh"},
            {"name": "urls", "kind": "zh_pairs", "path": str(tmp / "urls.jsonl"), "id_col": "key"},
        ],
        "download": {"image_size": 32, "processes": 1, "threads": 2, "retries": 0, "timeout_s": 5,
                     "allowed_file_roots": [str(data)]},
        "translator": {"backend": "memory", "memory_path": str(tmp / "run" / "tm.sqlite")},
        "render": {"validation_fraction": 0.0},
    })
    recipe.run_dir = tmp / "run"
    return recipe, expected


def snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    recipe, expected = hostile_corpus(tmp)
    before = snapshot(tmp)
    run = tmp / "run"
    download = run_download(recipe, run / "download")
    translate = run_translate(recipe, run / "download", run / "translate")
    render = run_render(recipe, run / "translate", run / "render")
    return {"tmp": tmp, "run": run, "before": before, "expected": expected,
            "stats": {"download": download, "translate": translate, "render": render}}


def _original_id(row: dict) -> str:
    """The id the data gave: from the record's meta, or from the raw item for reader rejections."""
    record = row["record"]
    meta = record.get("meta", {})
    return meta.get("original_id") or meta.get("key") or record["id"]


def test_every_hostile_record_is_kept_safely_or_rejected_with_its_reason(hostile_run):
    run, expected = hostile_run["run"], hostile_run["expected"]
    rejected_file = run / "download" / "rejected" / "download.jsonl"
    rejected = [json.loads(line) for line in rejected_file.read_text().splitlines()]
    got = {_original_id(r): r["reason"] for r in rejected}
    kept = [json.loads(line) for f in ("llava", "urls")
            for line in (run / "download" / "records" / f"{f}.jsonl").read_text().splitlines()]
    got.update({r["meta"].get("original_id") or r["meta"]["key"]: "kept" for r in kept})
    assert got == expected
    images = (run / "download" / "images").resolve()
    for r in kept:  # every kept image is img2dataset's copy, inside the run folder, made from an allowed file
        assert Path(r["image"]).resolve().is_relative_to(images)
        assert r["meta"]["image_url"].rsplit("/", 1)[1] in ("ok1.jpg", "ok2.jpg")
    stats = hostile_run["stats"]["download"]
    assert stats.extra["images_requested"] == stats.extra["images_fetched"] == 2


def test_no_stage_writes_outside_the_run_folder_or_names_a_file_after_the_data(hostile_run):
    tmp, run = hostile_run["tmp"], hostile_run["run"]
    created = snapshot(tmp) - hostile_run["before"]
    outside_run = sorted(p for p in created if not p.is_relative_to(run))
    assert created and not outside_run, outside_run
    for p in created:
        for part in p.relative_to(run).parts:
            assert SAFE_NAME.match(part), f"{p}: a file name the data could have chosen"
            assert not re.search(r"pwned|passwd|win\.ini|Windows|xxxxx|secret|evil", part), p
    assert {p.name for p in (tmp / "outside").iterdir()} == {"secret.jpg"}
    assert not list(Path("/").glob("pwned*")) and not list(tmp.parent.glob("pwned*"))
    shards = list((run / "render" / "data").rglob("*.parquet"))
    assert shards and hostile_run["stats"]["render"].kept == 5  # 4 LLaVA + 1 URL-list record


def test_oversized_fields_are_rejected_with_a_reason_and_a_cut_copy(hostile_run):
    path = hostile_run["run"] / "download" / "rejected" / "download.jsonl"
    rows = {_original_id(json.loads(line)): (json.loads(line), len(line)) for line in path.read_text().splitlines()}
    details = {"long-turn": f"messages[1]: {MAX_TURN_CHARS + 1:,} characters",
               "many-turns": f"messages: {MAX_TURNS + 2:,} turns", "long-image": "image: reference of",
               "huge-meta": "meta: "}
    for key, detail in details.items():
        row, size = rows[key]
        assert row["reason"] == "field_too_long" and row["detail"].startswith(detail), row["detail"]
        assert size < 40_000, f"{key}: a {size:,}-byte rejection row; the oversized field must be cut"
    assert "more characters]" in rows["long-turn"][0]["record"]["messages"][1]["content"]
    assert rows["many-turns"][0]["record"]["messages"][-1].startswith("...[cut:")
