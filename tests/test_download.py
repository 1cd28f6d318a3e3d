"""The download stage end to end against a loopback server: bad inputs, distinct fetches,
the join, the report, and reruns. One img2dataset run (~10 s) is shared by the module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.steps.download.download import run_download, step_table
from pipelines.recipe import Recipe
from support.image_server import (
    HTML_PAGE,
    ImageServer,
    Route,
    animated_gif,
    bomb_png,
    cmyk_jpeg,
    encode,
    exif_rotated_jpeg,
    gray16_png,
    jpeg_bytes,
    palette_png,
    rgb16_png,
    rgba_png,
    truncated_jpeg,
    two_colour,
)

pytestmark = pytest.mark.xdist_group("download")

RED, BLUE = (255, 0, 0), (0, 0, 255)
# path -> (route, expected): a rejection reason, or {(x, y): colour} probes on the 64 px result.
# A 40x20 picture becomes 64x32 between white bands (rows 16..47); left half x=16, right x=48.
CASES = {
    "/ok.jpg": (Route(jpeg_bytes(colour=(200, 30, 30))), {(16, 32): (200, 30, 30), (48, 32): (200, 30, 30)}),
    "/cmyk.jpg": (Route(cmyk_jpeg()), {(16, 32): RED, (48, 32): BLUE}),
    "/rgb16.png": (Route(rgb16_png(), content_type="image/png"), {(16, 32): (233, 12, 12)}),
    "/gray16.png": (Route(gray16_png(), content_type="image/png"), {(16, 32): (128, 128, 128)}),
    "/rgba.png": (Route(rgba_png(), content_type="image/png"), {(16, 32): (127, 127, 255)}),
    "/palette.png": (Route(palette_png(), content_type="image/png"), {(16, 32): RED, (48, 32): BLUE}),
    "/anim.gif": (Route(animated_gif(), content_type="image/gif"), {(16, 32): RED, (48, 32): RED}),
    # stored 40x20 red|blue, orientation 6: viewed 20x40, red on top (x 16..47 across)
    "/exif.jpg": (Route(exif_rotated_jpeg()), {(32, 16): RED, (32, 48): BLUE, (4, 32): (255, 255, 255)}),
    "/gray.jpg": (Route(encode(two_colour(mode="L"), "JPEG")), {(16, 32): (76, 76, 76)}),
    "/404.jpg": (None, "image_http_404"),
    "/500.jpg": (Route(b"oops", 500, "text/plain"), "image_http_500"),
    "/slow.jpg": (Route(jpeg_bytes(), delay_s=8.0), "image_timeout"),
    "/html.jpg": (Route(HTML_PAGE), "image_not_an_image"),
    "/truncated.jpg": (Route(truncated_jpeg()), "image_truncated"),
    "/empty.jpg": (Route(b""), "image_empty"),
    "/bomb.png": (Route(bomb_png(), content_type="image/png"), "image_too_large"),
}
TOLERANCE = 40  # JPEG re-encoding at 64 px


def make_recipe(tmp: Path, server: ImageServer) -> Recipe:
    allowed, outside = tmp / "allowed", tmp / "outside"
    for folder in (allowed, outside):
        folder.mkdir()
        (folder / "local.jpg").write_bytes(jpeg_bytes(colour=(20, 200, 20)))
    urls = [server.url(p) for p in CASES]
    urls += [server.url("/ok.jpg"), "http://127.0.0.1:9/refused.jpg", "ftp://example.com/a.jpg",
             (allowed / "local.jpg").as_uri(), (outside / "local.jpg").as_uri(), (allowed / "missing.jpg").as_uri()]
    pq.write_table(pa.table({"url": urls, "caption": [f"caption {i}" for i in range(len(urls))]}), tmp / "urls.parquet")
    # VQAv2 layout whose images come from the server: image 1 has three questions, 2 has two.
    qs = [(1, 10), (1, 11), (1, 12), (2, 20), (2, 21), (3, 30)]
    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": i, "question": f"q{q}?", "question_id": q} for i, q in qs]}
    annotations = {"annotations": [
        {"question_id": q, "image_id": i, "multiple_choice_answer": "yes",
         "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]}
        for i, q in qs]}
    (tmp / "q.json").write_text(json.dumps(questions))
    (tmp / "a.json").write_text(json.dumps(annotations))
    # LLaVA layout over a local image_root that is NOT in allowed_file_roots: the source's own
    # folder is allowed, a name that climbs out of it is not.
    (tmp / "coco").mkdir()
    (tmp / "coco" / "COCO_train2014_000000000001.jpg").write_bytes(jpeg_bytes(colour=(20, 20, 200)))
    turns = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Blue."}]
    (tmp / "llava.json").write_text(json.dumps([
        {"id": "1", "image": "000000000001.jpg", "conversations": turns},
        {"id": "2", "image": "x/../../outside/local.jpg", "conversations": turns},
    ]))
    (tmp / "alpaca.json").write_text(json.dumps([
        {"instruction": "说一个颜色", "input": "", "output": "红色"},
        {"instruction": "empty answer", "input": "", "output": "  "},
    ], ensure_ascii=False))
    return Recipe.model_validate({
        "name": "download-test",
        "model": {"vision": {"init": {}}, "llm": {"init": {}}},
        "stages": {},
        "sources": [
            {"name": "urls", "kind": "url_list", "path": str(tmp / "urls.parquet")},
            {"name": "vqa", "kind": "vqav2", "path": str(tmp / "q.json"), "annotations": str(tmp / "a.json"),
             "image_root": server.url("/coco/"), "image_template": "{image_id:06d}.jpg"},
            {"name": "text", "kind": "alpaca", "path": str(tmp / "alpaca.json"), "lang": "zh"},
            {"name": "llava", "kind": "llava", "path": str(tmp / "llava.json"), "image_root": str(tmp / "coco"),
             "image_template": "COCO_train2014_{image}"},
        ],
        "download": {"image_size": 64, "resize_mode": "border", "processes": 2, "threads": 4, "retries": 0,
                     "timeout_s": 3.0, "samples_per_shard": 8, "allowed_file_roots": [str(allowed)]},
    })


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("download")
    routes = {path: route for path, (route, _) in CASES.items() if route is not None}
    routes["/coco/000001.jpg"] = Route(jpeg_bytes())
    routes["/coco/000002.jpg"] = Route(jpeg_bytes())
    with ImageServer(routes) as server:
        recipe = make_recipe(tmp, server)
        out = tmp / "out"
        stats = run_download(recipe, out)
        yield {"recipe": recipe, "out": out, "stats": stats, "server": server, "hits": dict(server.hits)}


def records(out: Path, source: str) -> list[dict]:
    return [json.loads(line) for line in (out / "records" / f"{source}.jsonl").read_text().splitlines()]


def rejections(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejected" / "download.jsonl").read_text().splitlines()]


def by_url(run) -> tuple[dict[str, dict], dict[str, dict]]:
    kept = {r["meta"]["image_url"]: r for r in records(run["out"], "urls")}
    dropped = {r["record"]["image"]: r for r in rejections(run["out"]) if r["source"] == "urls"}
    return kept, dropped


@pytest.mark.parametrize("path", [p for p, (_, want) in CASES.items() if isinstance(want, dict)])
def test_odd_images_become_rgb(run, path):
    kept, dropped = by_url(run)
    url = run["server"].url(path)
    assert url in kept, f"{path} was rejected: {dropped.get(url, {}).get('detail')}"
    im = Image.open(kept[url]["image"])
    assert (im.mode, im.size) == ("RGB", (64, 64))
    for xy, colour in CASES[path][1].items():
        got = im.getpixel(xy)
        assert all(abs(a - b) <= TOLERANCE for a, b in zip(got, colour)), f"{path} at {xy}: {got} != {colour}"


@pytest.mark.parametrize("path", [p for p, (_, want) in CASES.items() if isinstance(want, str)])
def test_bad_images_are_rejected_with_reason(run, path):
    kept, dropped = by_url(run)
    url = run["server"].url(path)
    assert url not in kept
    row = dropped[url]
    assert row["reason"] == CASES[path][1], row["detail"]
    assert row["detail"].startswith(url) and row["location"].startswith(str(run["out"].parent / "urls.parquet"))


def test_url_policy_and_local_files(run):
    kept, dropped = by_url(run)
    tmp = run["out"].parent
    assert (tmp / "allowed" / "local.jpg").resolve().as_uri() in kept
    assert dropped[(tmp / "outside" / "local.jpg").as_uri()]["reason"] == "image_url_not_allowed"
    assert dropped[(tmp / "allowed" / "missing.jpg").as_uri()]["reason"] == "image_missing"
    assert dropped["ftp://example.com/a.jpg"]["reason"] == "image_url_unsupported"
    assert dropped["http://127.0.0.1:9/refused.jpg"]["reason"] == "image_connection_error"
    assert "Connection refused" in dropped["http://127.0.0.1:9/refused.jpg"]["detail"]  # img2dataset's message


def test_a_sources_own_image_root_is_allowed_but_not_escapes_from_it(run):
    (kept,) = records(run["out"], "llava")
    assert kept["meta"]["original_id"] == "1" and Image.open(kept["image"]).getpixel((32, 32))[2] > 150
    assert kept["meta"]["image_url"].endswith("/coco/COCO_train2014_000000000001.jpg")
    (row,) = [r for r in rejections(run["out"]) if r["source"] == "llava"]
    assert (row["reason"], row["location"]) == ("image_url_not_allowed", f"{run['out'].parent / 'llava.json'}[1]")


def test_each_image_is_fetched_once(run):
    hits = run["hits"]
    assert hits["/coco/000001.jpg"] == 1  # three questions
    assert hits["/coco/000002.jpg"] == 1  # two questions
    assert hits["/ok.jpg"] == 1  # two caption rows
    ok = [r for r in records(run["out"], "urls") if r["meta"]["image_url"] == run["server"].url("/ok.jpg")]
    assert len(ok) == 2 and ok[0]["image"] == ok[1]["image"]


def test_vqa_join_and_text_passthrough(run):
    vqa = records(run["out"], "vqa")
    assert sorted(r["meta"]["question_id"] for r in vqa) == [10, 11, 12, 20, 21]
    assert all(Path(r["image"]).is_file() and r["meta"]["image_url"].endswith(f"{r['meta']['image_id']:06d}.jpg")
               for r in vqa)
    missing = [r for r in rejections(run["out"]) if r["source"] == "vqa"]
    assert [(r["reason"], r["record"]["meta"]["question_id"]) for r in missing] == [("image_http_404", 30)]
    text = records(run["out"], "text")
    assert [(r["image"], r["lang"], r["messages"][1]["content"]) for r in text] == [(None, "zh", "红色")]


def test_counts_add_up(run):
    stats, out = run["stats"], run["out"]
    assert stats.read == stats.kept + stats.rejected_total
    for name, s in stats.per_source.items():
        assert s.read == s.kept + s.rejected_total, name
        assert s.kept == len(records(out, name))
    assert stats.rejected_total == len(rejections(out))
    urls = stats.per_source["urls"]
    assert urls.read == len(CASES) + 6
    assert urls.extra["images_requested"] == urls.extra["images_fetched"] + urls.extra["images_failed"]
    assert urls.extra["images_failed.image_timeout"] == 1
    assert stats.per_source["text"].rejected == {"empty_turn": 1}
    assert stats.extra["images_requested"] == len(CASES) + 3 + 3 + 1  # +refused, 2 local; +3 coco; +1 llava
    assert json.loads((out / "stats.json").read_text())["read"] == stats.read
    assert (out / "_SUCCESS").is_file() and not (out / ".read").exists()


def test_step_table_lists_sources_and_image_failures(run):
    table = step_table(run["stats"])
    lines = table.splitlines()
    urls_image_line = [ln for ln in lines if ln.startswith("urls") and "image_http_404=1" in ln]
    assert len(urls_image_line) == 2  # record rejections and image failures
    assert any(ln.startswith("vqa ") and " 3 " in ln for ln in lines)  # 3 distinct images wanted


def test_only_transient_failures_are_left_to_retry(run):
    """The 500, the timeout and the refused connection may heal; a 404, a page that is not an image, a
    bomb, a cut or empty file, a refused path will not: `_SUCCESS` counts the records of the first kind."""
    done = json.loads((run["out"] / "_SUCCESS").read_text())
    transient = {"image_http_500", "image_timeout", "image_connection_error"}
    assert transient < set(run["stats"].rejected) and len(set(run["stats"].rejected) - transient) >= 8
    assert done["retry_pending"] == sum(run["stats"].rejected[r] for r in transient) == 3
    assert done["reruns"] == 0 and len(done["output_digest"]) == 64


def test_complete_stage_is_not_rerun(run, tmp_path):
    """(The shared run left retryable work; here the marker says there is none.)"""
    out = tmp_path / "out"
    shutil.copytree(run["out"], out)
    done = json.loads((out / "_SUCCESS").read_text())
    (out / "_SUCCESS").write_text(json.dumps({**done, "retry_pending": 0}))
    before = dict(run["server"].hits)
    again = run_download(run["recipe"], out)
    assert again.to_dict() == run["stats"].to_dict()
    assert run["server"].hits == before


def test_rerun_after_crash_fetches_only_unfinished_shards(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run["out"], out)
    (out / "_SUCCESS").unlink()
    shutil.rmtree(out / "records")
    redo = pq.read_table(out / "images" / "00001.parquet").column("url").to_pylist()
    (out / "images" / "00001_stats.json").unlink()  # as if killed while writing shard 1
    before = dict(run["server"].hits)
    stats = run_download(run["recipe"], out)
    fetched_again = {p for p, n in run["server"].hits.items() if n != before.get(p, 0)}
    assert fetched_again == {u.split(str(run["server"].port), 1)[1] for u in redo if str(run["server"].port) in u}
    first, second = run["stats"].to_dict(), stats.to_dict()
    for d in (first, second):
        d["extra"] = {k: v for k, v in d["extra"].items() if not k.startswith("seconds")}
    assert second == first
    for source in ("urls", "vqa", "text", "llava"):
        a, b = records(run["out"], source), records(out, source)
        assert [r["id"] for r in a] == [r["id"] for r in b]
        assert [r["image"] and Path(r["image"]).relative_to(run["out"]) for r in a] == \
            [r["image"] and Path(r["image"]).relative_to(out) for r in b]


def test_rerun_with_all_shards_done_skips_img2dataset(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run["out"], out)
    (out / "_SUCCESS").unlink()
    before = dict(run["server"].hits)
    stats = run_download(run["recipe"], out)
    assert run["server"].hits == before
    assert stats.kept == run["stats"].kept and stats.rejected == run["stats"].rejected
