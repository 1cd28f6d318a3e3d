"""One reading of an image reference for every stage (common.image_refs): the readers, the download
policy and render agree on what a path or a file:// URL names. Render once took a file:// URL's
path as it was written, so `my%20image.jpg` (a file named "my image.jpg") was not found."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.image_refs import ImageRefError, check_scheme, parse_image_ref
from pipelines.recipe import RenderConfig, load_recipe
from pipelines.steps.download.download import image_url
from pipelines.steps.render.render import run_render
from templates.schema import make_id


@pytest.mark.parametrize("ref, path", [
    ("file:///data/my%20image.jpg", "/data/my image.jpg"),
    ("file://localhost/data/%E5%9B%BE%E5%83%8F.jpg", "/data/图像.jpg"),
    ("file:///data/100%25.jpg", "/data/100%.jpg"),
    ("/data/my%20image.jpg", "/data/my%20image.jpg"),  # a plain path is taken as written
    ("images/a.jpg", "images/a.jpg"),
])
def test_local_references_become_decoded_paths(ref, path):
    assert parse_image_ref(ref).path == path and parse_image_ref(ref).url is None


@pytest.mark.parametrize("ref, reason", [
    ("file://evil.example/data/a.jpg", "image_url_unsupported"),
    ("ftp://h.example/a.jpg", "image_url_unsupported"),
    ("javascript:alert(1)", "image_url_unsupported"),
    ("file:///data/a.jpg%00.png", "image_url_invalid"),
    ("https://", "image_url_invalid"),
    ("http://[::1/a.jpg", "image_url_invalid"),
    (None, "image_url_invalid"),
])
def test_references_no_stage_reads_are_one_error(ref, reason):
    with pytest.raises(ImageRefError) as err:
        parse_image_ref(ref)
    assert err.value.reason == reason


def test_readers_are_lenient_where_the_stages_decide():
    assert check_scheme("C:/images/a.jpg") == "C:/images/a.jpg"  # a Windows drive: the stage's policy decides
    with pytest.raises(ImageRefError, match="scheme 'data'"):
        check_scheme("data:image/jpeg;base64,/9j/")
    assert parse_image_ref("https://h.example/a.jpg?x=1").url == "https://h.example/a.jpg?x=1"


def test_download_and_render_read_a_percent_encoded_file_url_alike(tmp_path):
    images = tmp_path / "translate" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [images / "my image.jpg", images / "图像 1.jpg"]
    for f in files:
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(f)
    urls = [f.as_uri() for f in files]
    assert "%20" in urls[0] and "%E5" in urls[1]
    assert [image_url(u, [str(images.resolve())]) for u in urls] == [f.resolve().as_uri() for f in files]

    records = tmp_path / "translate" / "records"
    records.mkdir()
    rows = [{"id": make_id("caps", str(i)), "source": "caps", "task": "caption", "lang": "zh", "image": url,
             "messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": f"第{i}张图。"}],
             "meta": {"original_id": str(i)}} for i, url in enumerate(urls)]
    (records / "caps.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recipe = load_recipe("demo", run_dir="/nonexistent")
    recipe = recipe.model_copy(update={"render": RenderConfig(validation_fraction=0)})
    out = tmp_path / "render"
    stats = run_render(recipe, tmp_path / "translate", out)

    assert stats.rejected_total == 0, (out / "rejected" / "render.jsonl").read_text()
    got = {r["id"]: r["image"] for p in sorted((out / "data" / "pretrain").rglob("*.parquet"))
           for r in pq.read_table(p, columns=["id", "image"]).to_pylist()}
    assert {i: (im["path"], im["bytes"]) for i, im in got.items()} == {
        row["id"]: (f.name, f.read_bytes()) for row, f in zip(rows, files)}
