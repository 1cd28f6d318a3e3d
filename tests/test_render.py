"""Render end to end on a small translated corpus built here: shards load through both HF paths
with the declared features, reruns are byte-identical, and mixing, split-by-image, dedup and
rejections come out as counted."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from common.files import iter_jsonl, read_json, sha256_file
from pipelines.recipe import PublishConfig, RenderConfig, load_recipe
from pipelines.steps.render.render import SPILL_SCHEMA, plan_mix, run_render
from pipelines.steps.render.shards import KEY, BucketSpill, ShardWriter, bucket_files, finalize, sorted_bucket
from pipelines.core.errors import StepFailed
from templates.image import IMAGE_BLOCK
from templates.rows import ROW_SCHEMA, row_features
from templates.schema import make_id

RATIO = 0.5
N_IMAGES = 20
EXPECTED_REJECTS = {
    "bad_record": 6, "image_not_found": 1, "image_unreadable": 1, "duplicate_id": 1, "image_marker_count": 1,
    "image_on_text_record": 1, "reserved_token": 1,
}


# ---- the corpus ------------------------------------------------------------------------------

def _rec(source, oid, task, pairs, image=None, **meta):
    return {
        "id": make_id(source, oid), "source": source, "task": task, "lang": "zh", "image": image,
        "messages": [m for q, a in pairs for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})],
        "messages_en": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "meta": {"original_id": oid, "image_url": f"https://img.example/{oid}.jpg", **meta},
        "translation": {"model": "mt-1", "prompt_version": "v3", "qa": {"cjk_ratio": "pass"}},
    }


def _write(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")


def build_corpus(root: Path) -> None:
    """20 images; captions, VQA (one OCR), conversations, text, and one bad record per reason."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / "images" / f"{i:03d}.jpg")
    (root / "images" / "broken.jpg").write_bytes(b"<html>not an image</html>")
    img = lambda i: f"images/{i:03d}.jpg"  # noqa: E731 (relative to in_dir, as the loader resolves)
    records = root / "records"
    records.mkdir()
    caps = [_rec("caps", i, "caption", [("<image>", f"第{i}张图，彩色噪点。")], img(i)) for i in range(N_IMAGES)]
    caps += [_rec("caps", "gone", "caption", [("<image>", "丢失")], "images/missing.jpg"),
             _rec("caps", "broken", "caption", [("<image>", "坏图")], "images/broken.jpg")]
    vqa = [_rec("vqa", i, "vqa", [("<image>\n这是什么颜色？", "红色" if i % 5 else "一片很多颜色混杂在一起的噪点")], img(i % N_IMAGES))
           for i in range(40)]
    vqa += [_rec("vqa", "ocr", "vqa", [("<image>\n牌子上写着什么？", " STOP  ")], img(3), kind="ocr"),
            vqa[0],  # exact duplicate line
            _rec("vqa", "two", "vqa", [("<image><image>\n问", "答")], img(1))]
    llava = [_rec("llava", i, "conversation", [("<image>\n描述这张图。", f"第{i}张图。"), ("颜色多吗？", "很多。")], img(i))
             for i in range(10)]
    text = [_rec("alpaca", i, "text", [(f"问题{i}", f"回答{i}")]) for i in range(50)]
    text += [_rec("alpaca", "img", "text", [("问", "答")], img(2)),
             _rec("alpaca", "tok", "text", [("问 <img_token>", "答")])]
    broken = ["{not json", json.dumps({"id": "x", "source": "s", "task": "vqa", "messages": [], "extra": 1}),
              json.dumps({"id": "y", "source": "s", "task": "ocr", "messages": []}),
              json.dumps(_rec("text", "surrogate", "text", [("\ud800", "答")])),
              json.dumps({**_rec("text", "int-id", "text", [("问", "答")]), "id": 7}),
              json.dumps({**_rec("text", "en", "text", [("问", "答")]), "messages_en": [{"role": "user"}]})]
    for name, rows in [("caps", caps), ("vqa", vqa), ("llava", llava), ("text", text), ("zz-broken", broken)]:
        _write(records / f"{name}.jsonl", rows)


def recipe_for(**render):
    recipe = load_recipe("demo", run_dir="/nonexistent")
    cfg = RenderConfig(text_per_multimodal=RATIO, validation_fraction=0.25, row_group_rows=8, **render)
    return recipe.model_copy(update={"render": cfg, "publish": PublishConfig(license="cc-by-4.0", pretty_name="Tiny")})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("translate")
    build_corpus(root)
    return root


@pytest.fixture(scope="module")
def rendered(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("render")
    stats = run_render(recipe_for(), corpus, out)
    return out, stats


def shard_paths(out: Path, stage: str, split: str) -> list[Path]:
    return sorted((out / "data" / stage / split).glob("*.parquet"))


def read_rows(out: Path, stage: str, split: str, columns=None) -> list[dict]:
    return [r for p in shard_paths(out, stage, split) for r in pq.read_table(p, columns=columns).to_pylist()]


# ---- the shard set ---------------------------------------------------------------------------

def test_stage_files_and_counts_add_up(rendered, corpus):
    out, stats = rendered
    for name in ("manifest.json", "README.md", "dataset_info.json", "stats.json", "_SUCCESS", "rejected/render.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "_work").exists()
    lines = sum(1 for p in (corpus / "records").glob("*.jsonl") for _ in open(p, encoding="utf-8"))
    assert stats.read == lines == 22 + 43 + 10 + 52 + 6
    assert stats.read == stats.kept + stats.rejected_total
    rows = sum(len(read_rows(out, st, sp, ["id"])) for st in ("pretrain", "sft") for sp in ("train", "validation"))
    assert rows == stats.kept
    assert read_json(out / "stats.json") == stats.to_dict()


def test_rejections_are_rows_with_reasons(rendered):
    out, stats = rendered
    rejected = list(iter_jsonl(out / "rejected" / "render.jsonl"))
    reasons = Counter(r["reason"] for r in rejected)
    mix = reasons.pop("mix_ratio")
    assert dict(reasons) == EXPECTED_REJECTS
    assert mix == 50 - stats.extra["rows_sft_text"]
    assert dict(stats.rejected) == {**EXPECTED_REJECTS, "mix_ratio": mix}
    assert all(r["stage"] == "render" and ":" in r["location"] for r in rejected)
    dup = next(r for r in rejected if r["reason"] == "duplicate_id")
    assert dup["location"] == "vqa.jsonl:42" and dup["detail"] == "same id as vqa.jsonl:1"


def test_dedup_keeps_one_row_per_id(rendered):
    out, _ = rendered
    ids = [r["id"] for st in ("pretrain", "sft") for sp in ("train", "validation") for r in read_rows(out, st, sp, ["id"])]
    assert len(ids) == len(set(ids))
    assert make_id("vqa", 0) in ids


def test_text_rows_follow_the_mixing_ratio_per_split(rendered):
    out, stats = rendered
    for split in ("train", "validation"):
        rows = read_rows(out, "sft", split, ["task", "image"])
        multimodal = sum(r["image"] is not None for r in rows)
        text = sum(r["task"] == "text" for r in rows)
        assert multimodal == stats.extra[f"sft_multimodal_{split}"] > 0
        assert text == int(RATIO * multimodal + 0.5)


def test_train_and_validation_never_share_an_image(rendered):
    out, _ = rendered
    seen = {}
    for split in ("train", "validation"):
        seen[split] = {r["lineage"]["image_sha256"] for st in ("pretrain", "sft")
                       for r in read_rows(out, st, split, ["lineage"]) if r["lineage"]["image_sha256"]}
    assert seen["validation"] and seen["train"]
    assert not seen["train"] & seen["validation"]
    assert len(seen["train"] | seen["validation"]) == N_IMAGES


def test_rows_carry_rendered_turns_and_lineage(rendered):
    out, _ = rendered
    rows = {r["id"]: r for sp in ("train", "validation") for r in read_rows(out, "sft", sp)}
    vqa = rows[make_id("vqa", 1)]
    assert vqa["turns"][0]["prompt"].endswith(f"{IMAGE_BLOCK}\n这是什么颜色？\n请用一个词或短语回答。\n\n### Response:")
    assert vqa["turns"][0]["response"] == "红色" and vqa["template"] == "visualcla" and vqa["stage"] == "sft"
    assert vqa["messages"][0]["content"] == "<image>\n这是什么颜色？\n请用一个词或短语回答。"
    lineage = vqa["lineage"]
    assert lineage["image_sha256"] == hashlib.sha256(vqa["image"]["bytes"]).hexdigest()
    assert vqa["image"]["path"] == "001.jpg"
    assert (lineage["original_id"], lineage["image_url"]) == ("1", "https://img.example/1.jpg")
    assert (lineage["translator_model"], lineage["prompt_version"]) == ("mt-1", "v3")
    assert json.loads(lineage["qa"]) == {"cjk_ratio": "pass"} and json.loads(vqa["meta"])["original_id"] == 1
    assert rows[make_id("vqa", "ocr")]["turns"][0]["response"] == " STOP  "
    assert len(rows[make_id("llava", 0)]["turns"]) == 2
    caption = next(r for sp in ("train", "validation") for r in read_rows(out, "pretrain", sp))
    assert caption["turns"][0]["prompt"] == IMAGE_BLOCK and caption["template"] == "none"


def test_every_image_row_has_one_marker_for_llamafactory(rendered):
    out, _ = rendered
    for st in ("pretrain", "sft"):
        for r in read_rows(out, st, "train", ["messages", "image", "turns"]):
            markers = sum(m["content"].count("<image>") for m in r["messages"])
            blocks = sum(t["prompt"].count(IMAGE_BLOCK) for t in r["turns"])
            assert markers == blocks == (r["image"] is not None)


def test_shards_are_zstd_named_and_in_small_row_groups(rendered):
    out, _ = rendered
    manifest = read_json(out / "manifest.json")
    for entry in manifest["shards"]:
        path = out / entry["path"]
        assert sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows == entry["rows"]
        assert all(meta.row_group(i).num_rows <= 8 for i in range(meta.num_row_groups))
        assert meta.row_group(0).column(0).compression == "ZSTD"
        assert path.name.startswith(f"{entry['config']}-{entry['split']}-00000-of-0000")
    assert sum(manifest["counts"]["by_stage_split"].values()) == sum(e["rows"] for e in manifest["shards"])
    assert set(manifest["counts"]["by_source"]) == {"caps", "vqa", "llava", "alpaca"}
    assert manifest["recipe"]["render"]["text_per_multimodal"] == RATIO
    assert manifest["versions"]["pyarrow"] == pa.__version__


def test_parquet_files_load_with_the_declared_features(rendered, tmp_path):
    import datasets

    out, _ = rendered
    files = [str(p) for p in shard_paths(out, "sft", "train")]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path))
    assert ds.features == row_features()
    image_row = next(r for r in ds if r["image"] is not None)
    assert isinstance(image_row["image"], Image.Image) and image_row["image"].size == (48, 48)


def test_folder_loads_through_the_card_configs(rendered, tmp_path):
    import datasets

    out, _ = rendered
    card = yaml.safe_load((out / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert [c["config_name"] for c in card["configs"]] == ["pretrain", "sft"]
    assert card["license"] == "cc-by-4.0" and card["pretty_name"] == "Tiny"
    manifest = read_json(out / "manifest.json")
    for config in ("pretrain", "sft"):
        dd = datasets.load_dataset(str(out), config, cache_dir=str(tmp_path))
        for split in ("train", "validation"):
            assert dd[split].features == row_features()
            assert dd[split].num_rows == manifest["counts"]["by_stage_split"][f"{config}/{split}"]
        assert isinstance(dd["train"][0]["image"], Image.Image)


def test_llamafactory_entries_point_at_one_split_each(rendered):
    out, _ = rendered
    info = read_json(out / "dataset_info.json")
    assert set(info) == {"demo_pretrain", "demo_pretrain_validation", "demo_sft", "demo_sft_validation"}
    for entry in info.values():
        assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "messages", "images": "image"}
        files = list((out / entry["file_name"]).iterdir())
        assert files and all(f.suffix == ".parquet" for f in files)
        assert set(entry["columns"].values()) <= set(pq.read_schema(files[0]).names)


# ---- determinism and reruns ------------------------------------------------------------------

def _checksums(out: Path) -> dict[str, str]:
    return {e["path"]: e["sha256"] for e in read_json(out / "manifest.json")["shards"]}


def test_rerun_gives_identical_shards_whatever_the_bucketing(rendered, corpus, tmp_path):
    out, _ = rendered
    again = tmp_path / "again"
    run_render(recipe_for(bucket_mb=1), corpus, again)  # several buckets instead of one
    assert _checksums(again) == _checksums(out)
    for name in ("README.md", "dataset_info.json", "rejected/render.jsonl"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_rerun_of_a_finished_stage_does_nothing(rendered, corpus):
    out, stats = rendered
    shard = out / next(iter(_checksums(out)))
    before = shard.stat().st_mtime_ns
    assert run_render(recipe_for(), corpus, out).to_dict() == stats.to_dict()
    assert shard.stat().st_mtime_ns == before


def test_a_different_seed_gives_a_different_order(rendered, corpus, tmp_path):
    out, _ = rendered
    other = run_render(recipe_for(seed=1), corpus, tmp_path / "a")
    assert other.read == other.kept + other.rejected_total
    order = lambda folder: [r["id"] for r in read_rows(folder, "sft", "train", ["id"])]  # noqa: E731
    assert order(tmp_path / "a") != order(out)


def test_missing_records_is_a_clear_error(tmp_path):
    with pytest.raises(StepFailed, match="no \\*.jsonl records to render; run `vcla translate` first"):
        run_render(recipe_for(), tmp_path, tmp_path / "out")


# ---- the building blocks ---------------------------------------------------------------------

def _spill_row(i: int, key: int, image: bytes | None) -> dict:
    row = {name: None for name in SPILL_SCHEMA.names}
    row.update(id=f"r{i:04d}", source="s", task="vqa", lang="zh", stage="sft", template="visualcla",
               turns=[{"prompt": "p", "response": "r"}], messages=[], _key=key, _sel=key, _split="train",
               _mix=False, _order=i, _loc=f"f:{i}", image={"bytes": image, "path": "x.jpg"} if image else None,
               lineage={})
    return row


def test_buckets_split_when_too_big_and_keep_global_key_order(tmp_path):
    rng = random.Random(0)
    keys = [rng.getrandbits(64) for _ in range(300)]
    spill = BucketSpill(tmp_path, SPILL_SCHEMA, 2, buffer_bytes=4096)
    for i, k in enumerate(keys):
        spill.add(_spill_row(i, k, bytes(200)), 200)
    buckets = spill.close()
    parts = list(bucket_files(buckets, max_bytes=8_000))
    assert len(parts) > len(buckets)
    got = [k for p in parts for k in sorted_bucket(p)[KEY].to_pylist()]
    assert got == sorted(keys)


def _table(n: int, offset: int = 0) -> pa.Table:
    rng = random.Random(offset)  # incompressible, like JPEG bytes
    rows = [_spill_row(offset + i, i, rng.randbytes(3000)) for i in range(n)]
    return pa.Table.from_pylist(rows, schema=SPILL_SCHEMA)


def test_shard_writer_rolls_files_and_cuts_row_groups_independently_of_chunking(tmp_path):
    table = _table(30)
    results = []
    for chunks in ([table], [table.slice(i, 7) for i in range(0, 30, 7)]):
        folder = tmp_path / f"c{len(chunks)}"
        writer = ShardWriter(folder / "work", "sft-train", ROW_SCHEMA, shard_bytes=20_000, row_group_rows=4,
                             row_group_bytes=10_000)
        for chunk in chunks:
            writer.write(chunk)
        files = finalize(writer.close(), folder / "data", "sft-train")
        results.append([f.sha256 for f in files])
        assert len(files) > 1 and sum(f.rows for f in files) == 30
        assert files[0].path.name == f"sft-train-00000-of-{len(files):05d}.parquet"
        groups = [pq.ParquetFile(f.path).metadata.row_group(0).num_rows for f in files]
        assert max(groups) <= 3  # 3 rows of ~4 KB reach the 10 KB row-group cap before 4 rows
        ids = [i for f in files for i in pq.read_table(f.path, columns=["id"])["id"].to_pylist()]
        assert ids == [f"r{i:04d}" for i in range(30)]
        assert not list((folder / "work").iterdir())
    assert results[0] == results[1]


def test_mix_cutoff_is_exact_when_many_hashes_share_a_histogram_bin(tmp_path):
    rng = random.Random(1)
    crowded = [(7 << 48) + rng.getrandbits(40) for _ in range(40)]  # 40 text rows in one 16-bit bin
    sels = crowded + [rng.getrandbits(64) | (1 << 63) for _ in range(20)]
    text = [{**_spill_row(i, rng.getrandbits(64), None), "task": "text", "_mix": True, "_sel": sel}
            for i, sel in enumerate(sels)]
    spill = BucketSpill(tmp_path, SPILL_SCHEMA, 3)
    for row in [*text, {**text[0], "_order": 999}]:  # the last one repeats an id
        spill.add(row, 100)
    for j in range(30):
        spill.add(_spill_row(100 + j, rng.getrandbits(64), bytes(10)), 100)
    plan = plan_mix(list(bucket_files(spill.close(), 1 << 30)), ratio=1.0)
    assert plan.multimodal["train"] == 30 and plan.text["train"] == 60  # the repeated id counts once
    kept = sorted(s for s in sels if s < plan.cutoff["train"])
    assert kept == sorted(sels)[:30] and all(s >> 48 == 7 for s in kept)
