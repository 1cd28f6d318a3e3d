"""The curate step end to end on a small download folder: duplicates (exact, near, across sources),
bounds, caption rules and language, duplicate text-only records, CLIP scores, annotate mode, hostile
images, the report and the pass-through."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from support.translate_fixtures import read_jsonl

from common.layout import DONE_FILE
from pipelines.recipe import load_recipe
from pipelines.steps.curate.curate import run_curate
from templates.schema import Record, make_id

CAPTIONS = "shapes-captions"
VQA = "shapes-vqa"


def scene(seed: int, size: int = 96) -> Image.Image:
    """A distinct picture per seed: a gradient and a few shapes placed by the seed."""
    im = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(im)
    for y in range(size):
        draw.line([(0, y), (size, y)], fill=((seed * 37 + y) % 256, (seed * 91) % 256, (255 - y) % 256))
    for k in range(3):
        x, y = (seed * (17 + 13 * k)) % (size - 30), (seed * (29 + 7 * k)) % (size - 30)
        draw.ellipse([x, y, x + 24, y + 24], fill=((seed * 53 * (k + 1)) % 256, 40 * k, 200 - 50 * k))
    return im


def jpeg(im: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def caption(n: int, image: Path, text: str, source: str = CAPTIONS, lang: str = "en") -> Record:
    return Record(id=make_id(source, n), source=source, task="caption", image=str(image), lang=lang,
                  messages=[{"role": "user", "content": "<image>"}, {"role": "assistant", "content": text}],
                  meta={"image_id": n})


def write_run(run: Path) -> dict[str, Path]:
    images = run / "download" / "images"
    images.mkdir(parents=True)
    files = {}
    for i in range(1, 9):
        files[f"s{i}"] = images / f"s{i}.jpg"
        files[f"s{i}"].write_bytes(jpeg(scene(i)))
    files["exact"] = images / "exact.jpg"
    files["exact"].write_bytes(files["s1"].read_bytes())
    files["near"] = images / "near.jpg"
    files["near"].write_bytes(jpeg(scene(2), quality=55))
    files["tiny"] = images / "tiny.jpg"
    files["tiny"].write_bytes(jpeg(Image.new("RGB", (1, 1), "red")))
    files["wide"] = images / "wide.jpg"
    files["wide"].write_bytes(jpeg(scene(9).resize((400, 40))))
    files["broken"] = images / "broken.jpg"
    files["broken"].write_bytes(b"not an image at all")
    files["truncated"] = images / "truncated.jpg"
    files["truncated"].write_bytes(jpeg(scene(10))[:300])
    recs = [caption(i, files[f"s{i}"], f"A picture of a red ball number {i} on the grass.") for i in range(1, 9)]
    recs += [
        caption(101, files["exact"], "The same ball photographed again on green grass."),
        caption(102, files["near"], "Another copy of the second picture, a bit blurry."),
        caption(103, files["tiny"], "A single red pixel that is far too small."),
        caption(104, files["wide"], "A very long and thin banner with circles on it."),
        caption(105, files["broken"], "A file that claims to be a picture of a ball."),
        caption(106, files["truncated"], "A picture that stops halfway through its bytes."),
        caption(201, files["s3"], "Une balle rouge sur l'herbe verte du jardin."),
        caption(202, files["s4"], "Stock photo - a ball"),
        caption(203, files["s5"], "https://example.com/images/ball.jpg"),
        caption(204, files["s6"], "soooooooooooooo cute!!!!!!!!!!!!"),
    ]
    vqa = Record(id=make_id(VQA, 1), source=VQA, task="vqa", image=str(files["exact"]),
                 messages=[{"role": "user", "content": "<image>\nWhat color is the ball?"},
                           {"role": "assistant", "content": "red"}], meta={"image_id": 101})
    texts = [Record(id=make_id("zh-alpaca", i), source="zh-alpaca", task="text", lang="zh",
                    messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}])
             for i, (q, a) in enumerate([("請介紹一下長城。", "長城是中國古代的軍事防禦工程。"),
                                         ("一加一等于几？", "一加一等于二。"),
                                         ("一加一等于几？", "一加一等于二。")])]
    out = run / "download" / "records"
    out.mkdir(parents=True)
    for name, rows in ((CAPTIONS, recs), (VQA, [vqa]), ("zh-alpaca", texts)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rows),
                                           encoding="utf-8")
    return files


def curate(run: Path, *overrides: str):
    recipe = load_recipe("recipes/demo.yaml", ["curate={}", "curate.near.threshold=8", *overrides], run)
    return run_curate(recipe, run / "download", run / "curate")


def kept(run: Path, source: str = CAPTIONS) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(run / "curate" / "records" / f"{source}.jsonl")}


def rejected(run: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(run / "curate" / "rejected" / "curate.jsonl")}


def test_every_filter_finds_its_records_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    files = write_run(run)
    stats = curate(run)
    gone = rejected(run)
    reasons = {n: gone[make_id(CAPTIONS, n)]["reason"] for n in (103, 104, 105, 106, 201, 202, 203, 204)}
    assert reasons == {103: "too_small", 104: "extreme_aspect", 105: "undecodable_image", 106: "undecodable_image",
                       201: "wrong_language", 202: "boilerplate", 203: "url_only", 204: "repeated_chars"}
    assert gone[make_id(CAPTIONS, 201)]["record"]["lang"] == "fr"  # the figures travel with the rejection
    assert gone[make_id("zh-alpaca", 2)]["reason"] == "duplicate_text"
    assert len(gone) == 9 and stats.read == 22 and stats.kept == 13
    # duplicates keep their text, pointed at the representative: the image whose records hold the lowest id
    records = kept(run)
    keys = {"s1": make_id(CAPTIONS, 1), "exact": min(make_id(CAPTIONS, 101), make_id(VQA, 1)),
            "s2": make_id(CAPTIONS, 2), "near": make_id(CAPTIONS, 102)}
    for a, b, recs in (("s1", "exact", (1, 101)), ("s2", "near", (2, 102))):
        rep, dup = (a, b) if keys[a] < keys[b] else (b, a)
        for n in recs:
            r = records[make_id(CAPTIONS, n)]
            assert r["image"] == str(files[rep])  # both captions kept, on the representative
        movers = [records[make_id(CAPTIONS, n)]["meta"]["curate"]["duplicate_of"] for n in recs
                  if "duplicate_of" in records[make_id(CAPTIONS, n)]["meta"]["curate"]]
        assert [Path(m["image"]).name for m in movers] == [f"{dup}.jpg"]
        assert (movers[0]["distance"] == 0) == (a == "s1") and movers[0]["distance"] <= 8
    vqa = kept(run, VQA)[make_id(VQA, 1)]
    assert vqa["image"] == str(files["s1" if keys["s1"] < keys["exact"] else "exact"])  # across sources
    assert stats.extra["duplicate_images"] == 1 and stats.extra["near_duplicate_images"] == 1
    # traditional Chinese normalised to simplified
    zh = kept(run, "zh-alpaca")[make_id("zh-alpaca", 0)]
    assert zh["messages"][0]["content"] == "请介绍一下长城。"
    assert (run / "curate" / DONE_FILE).is_file()
    report = (run / "curate" / "report" / "report.md").read_text(encoding="utf-8")
    for picture in ("image_sizes.png", "caption_lengths.png", "languages.png", "duplicate_clusters.png"):
        assert picture in report and (run / "curate" / "report" / picture).stat().st_size > 1000


def test_annotate_mode_tags_and_drops_nothing(tmp_path):
    run = tmp_path / "run"
    write_run(run)
    modes = [f"curate.{f}.mode=annotate" for f in ("exact", "near", "image", "text")]
    stats = curate(run, *modes)
    gone = rejected(run)
    assert {r["reason"] for r in gone.values()} == {"undecodable_image"}  # nothing else is dropped
    records = kept(run)
    assert "wrong_language" in records[make_id(CAPTIONS, 201)]["meta"]["curate"]["flags"]
    assert "too_small" in records[make_id(CAPTIONS, 103)]["meta"]["curate"]["flags"]
    pair = [records[make_id(CAPTIONS, n)] for n in (2, 102)]
    assert sorted("near_duplicate_image" in r["meta"]["curate"].get("flags", []) for r in pair) == [False, True]
    assert [Path(r["image"]).name for r in pair] == ["s2.jpg", "near.jpg"]  # not re-pointed when annotating
    assert stats.kept == stats.read - 2


def test_without_keep_text_duplicates_are_rejected_with_representative_and_distance(tmp_path):
    run = tmp_path / "run"
    files = write_run(run)
    curate(run, "curate.near.keep_text=false")
    gone = rejected(run)
    # the image whose records hold the higher id is the duplicate (near.jpg's caption 102 has the lower)
    rep, dup = (files["near"], 2) if make_id(CAPTIONS, 102) < make_id(CAPTIONS, 2) else (files["s2"], 102)
    near = gone[make_id(CAPTIONS, dup)]
    assert near["reason"] == "near_duplicate_image" and str(rep) in near["detail"]
    assert near["record"]["duplicate_of"] == str(rep) and 0 < near["record"]["distance"] <= 8
    assert make_id(CAPTIONS, 2 if dup == 102 else 102) in kept(run)


def test_without_a_curate_section_records_pass_through(tmp_path):
    run = tmp_path / "run"
    write_run(run)
    recipe = load_recipe("recipes/demo.yaml", ["curate=null"], run)
    stats = run_curate(recipe, run / "download", run / "curate")
    for name in (CAPTIONS, VQA, "zh-alpaca"):
        assert (run / "curate" / "records" / f"{name}.jsonl").read_bytes() == \
            (run / "download" / "records" / f"{name}.jsonl").read_bytes()
    assert stats.read == 0 and not (run / "curate" / "rejected").exists()


def test_clip_scores_are_kept_and_a_second_run_reuses_them(tmp_path):
    from support.tiny_clip import make_tiny_clip

    run = tmp_path / "run"
    write_run(run)
    model = make_tiny_clip(tmp_path / "clip")
    sets = [f"curate.clip.path={model}", "curate.clip.mode=filter", "curate.clip.quantile=0.25"]
    stats = curate(run, *sets)
    scored = [r for r in kept(run).values() if "clip" in r["meta"]["curate"]]
    low = [r for r in rejected(run).values() if r["reason"] == "low_clip_score"]
    assert scored and low and len(low) <= len(scored)
    assert all(r["record"]["clip"] <= min(s["meta"]["curate"]["clip"] for s in scored) for r in low)
    assert (run / "curate" / "report" / "clip_lowest.png").is_file()
    cache = tmp_path / "run" / "clip-scores.sqlite"
    assert cache.is_file()
    import shutil

    shutil.rmtree(run / "curate")
    again = curate(run, *sets[:2], "curate.clip.threshold=-1.0")  # another cut, the same scores
    assert again.rejected.get("low_clip_score", 0) == 0
    assert {r["id"]: r["meta"]["curate"]["clip"] for r in kept(run).values() if "clip" in r["meta"]["curate"]} \
        .items() >= {r["id"]: r["meta"]["curate"]["clip"] for r in scored}.items()
    assert stats.read == again.read
