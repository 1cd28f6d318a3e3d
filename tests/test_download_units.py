"""The download stage's parts without img2dataset's processes: URL policy, error reasons,
the image checks, and how recipe options reach img2dataset."""

from __future__ import annotations

import importlib
import io
import os
import time

import pytest
from PIL import Image

from pipelines.steps.download.download import (
    ImageRefError,
    check_distributor,
    checked_resizer,
    classify,
    fetch_fingerprint,
    image_url,
    img2dataset_args,
)
from pipelines.steps.download.images import CheckedResizer, ImageRejected, prepare
from pipelines.recipe import DownloadConfig
from support.image_server import bomb_png, cmyk_jpeg, jpeg_bytes, png_raw, rgb16_png, truncated_jpeg

# -- URL policy ---------------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "data"
    (allowed / "imgs").mkdir(parents=True)
    (allowed / "imgs" / "a.jpg").write_bytes(b"x")
    (tmp_path / "data-private").mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", allowed / "imgs" / "link.jpg")
    return tmp_path, [os.path.realpath(allowed)]


def test_http_passes_and_local_paths_become_file_urls(roots):
    tmp, allowed = roots
    assert image_url("https://h.example/a.jpg?x=1", allowed) == "https://h.example/a.jpg?x=1"
    real = (tmp / "data" / "imgs" / "a.jpg").resolve()
    assert image_url(str(tmp / "data" / "imgs" / "a.jpg"), allowed) == real.as_uri()
    assert image_url(real.as_uri(), allowed) == real.as_uri()
    assert image_url(str(tmp / "data" / "imgs" / ".." / "imgs" / "a.jpg"), allowed) == real.as_uri()


@pytest.mark.parametrize("ref, reason", [
    ("{tmp}/secret.jpg", "image_url_not_allowed"),
    ("{tmp}/data/../secret.jpg", "image_url_not_allowed"),
    ("{tmp}/data/imgs/link.jpg", "image_url_not_allowed"),  # symlink out of the root
    ("{tmp}/data-private/a.jpg", "image_url_not_allowed"),  # a sibling sharing the prefix
    ("file://{tmp}/secret.jpg", "image_url_not_allowed"),
    ("ftp://h/a.jpg", "image_url_unsupported"),
    ("data:image/png;base64,AAAA", "image_url_unsupported"),
    ("s3://bucket/a.jpg", "image_url_unsupported"),
    ("http:///nohost.jpg", "image_url_invalid"),
])
def test_refused_references(roots, ref, reason):
    tmp, allowed = roots
    with pytest.raises(ImageRefError) as err:
        image_url(ref.format(tmp=tmp), allowed)
    assert err.value.reason == reason
    if reason == "image_url_not_allowed":
        assert "download.allowed_file_roots" in str(err.value)


def test_file_urls_with_escaped_characters(tmp_path):
    folder = tmp_path / "my images"
    folder.mkdir()
    (folder / "a b%.jpg").write_bytes(b"x")
    url = (folder / "a b%.jpg").as_uri()
    assert "%20" in url and image_url(url, [os.path.realpath(folder)]) == url


def test_no_allowed_roots_means_no_local_files(roots):
    tmp, _ = roots
    with pytest.raises(ImageRefError):
        image_url(str(tmp / "data" / "imgs" / "a.jpg"), [])


# -- error reasons ------------------------------------------------------------------------------
@pytest.mark.parametrize("message, reason", [
    ("HTTP Error 404: Not Found", "image_http_404"),
    ("HTTP Error 503: Service Unavailable", "image_http_503"),
    ("The read operation timed out", "image_timeout"),
    ("<urlopen error timed out>", "image_timeout"),
    ("<urlopen error [Errno 111] Connection refused>", "image_connection_error"),
    ("<urlopen error [Errno 2] No such file or directory: '/x.jpg'>", "image_missing"),
    ("Remote end closed connection without response", "image_connection_error"),
    ("IncompleteRead(1024 bytes read, 4096 more expected)", "image_connection_error"),
    ("Image decoding error", "image_decode_failed"),
    ("image_truncated: JPEG ...: image file is truncated", "image_truncated"),
    ("Use of image disallowed by X-Robots-Tag directive", "image_disallowed"),
    ("something new", "image_failed"),
])
def test_classify(message, reason):
    assert classify(message) == reason


# -- image checks -------------------------------------------------------------------------------
def test_a_clean_jpeg_is_passed_through_untouched():
    data = jpeg_bytes()
    assert prepare(data, 10**8) is data


def test_cmyk_and_16_bit_become_rgb_bmp():
    for data in (cmyk_jpeg(), rgb16_png()):
        im = Image.open(io.BytesIO(prepare(data, 10**8)))
        assert (im.format, im.mode) == ("BMP", "RGB")


def test_bomb_is_refused_from_its_header_without_decoding():
    data = bomb_png()
    start = time.perf_counter()
    with pytest.raises(ImageRejected) as err:
        prepare(data, 80_000_000)
    assert err.value.reason == "image_too_large"
    assert time.perf_counter() - start < 0.5


def test_pixel_limit_is_the_recipes():
    data = png_raw(300, 300, 8, 0, b"\x80" * 300)  # 90,000 pixels: well under Pillow's own limit
    with pytest.raises(ImageRejected, match="90000 pixels > download.max_image_pixels=89999"):
        prepare(data, 89_999)
    assert Image.open(io.BytesIO(prepare(data, 90_000))).size == (300, 300)


@pytest.mark.parametrize("data, reason", [
    (b"", "image_empty"),
    (b"<html><body>404</body></html>", "image_not_an_image"),
    (b"\x00\x01garbage" * 10, "image_not_an_image"),
    (truncated_jpeg(), "image_truncated"),
    (jpeg_bytes()[:40], "image_truncated"),
    (png_raw(50, 50, 8, 2, b"\x10" * 150)[:-40], "image_truncated"),
])
def test_rejections(data, reason):
    with pytest.raises(ImageRejected) as err:
        prepare(data, 10**8)
    assert err.value.reason == reason


def test_checked_resizer_reports_rejections_as_img2dataset_errors():
    resizer = CheckedResizer(64, "border", False, encode_format="jpg", max_image_pixels=10**8)
    img, *_, error = resizer(io.BytesIO(b""))
    assert img is None and error.startswith("image_empty:")
    img, width, height, original_width, original_height, error = resizer(io.BytesIO(cmyk_jpeg()))
    assert error is None and (width, height, original_width, original_height) == (64, 64, 40, 20)


# -- img2dataset wiring ---------------------------------------------------------------------------
def test_recipe_options_reach_img2dataset():
    cfg = DownloadConfig(image_size=96, resize_mode="center_crop", encode_format="webp", encode_quality=80,
                         processes=3, threads=5, retries=2, timeout_s=2.5, incremental=False,
                         distributor="multiprocessing", samples_per_shard=50)
    args = img2dataset_args(cfg, "urls.parquet", "out/images")
    assert {k: args[k] for k in ("image_size", "resize_mode", "encode_format", "encode_quality", "processes_count",
                                  "thread_count", "retries", "timeout", "distributor", "number_sample_per_shard")} == {
        "image_size": 96, "resize_mode": "center_crop", "encode_format": "webp", "encode_quality": 80,
        "processes_count": 3, "thread_count": 5, "retries": 2, "timeout": 2.5, "distributor": "multiprocessing",
        "number_sample_per_shard": 50}
    assert (args["input_format"], args["output_format"]) == ("parquet", "files")
    assert img2dataset_args(DownloadConfig(encode_format="png"), "u", "o")["encode_quality"] <= 9
    import inspect

    import img2dataset

    assert set(args) <= set(inspect.signature(img2dataset.download).parameters)


def test_finished_shards_are_reused_only_for_the_same_list_and_image_options():
    urls = ["http://h/1.jpg", "http://h/2.jpg"]
    base = fetch_fingerprint(urls, DownloadConfig())
    assert fetch_fingerprint(list(urls), DownloadConfig(processes=7, threads=3, retries=5)) == base
    assert fetch_fingerprint(urls[:1], DownloadConfig()) != base
    assert fetch_fingerprint(urls, DownloadConfig(image_size=96)) != base
    assert fetch_fingerprint(urls, DownloadConfig(samples_per_shard=1)) != base


def test_checked_resizer_is_patched_in_only_for_the_call():
    i2d_main = importlib.import_module("img2dataset.main")
    original = i2d_main.Resizer
    with checked_resizer(1234):
        made = i2d_main.Resizer(image_size=8, resize_mode="border", resize_only_if_bigger=False)
        assert isinstance(made, CheckedResizer) and made.max_image_pixels == 1234
    assert i2d_main.Resizer is original


@pytest.mark.parametrize("distributor", ["pyspark", "ray"])
def test_missing_distributor_package_is_a_clear_error(distributor):
    from pipelines.recipe import RecipeError, load_recipe

    recipe = load_recipe("recipes/demo.yaml", [f"download.distributor={distributor}"])
    try:
        __import__(distributor)
    except ImportError:
        with pytest.raises(RecipeError, match=f"download.distributor: .*pip install {distributor}"):
            check_distributor(recipe)
    else:
        check_distributor(recipe)


# -- recipe checks ------------------------------------------------------------------------------
def _recipe(sources):
    from pipelines.recipe import Recipe

    return Recipe.model_validate({"name": "t", "model": {"vision": {"init": {}}, "llm": {"init": {}}},
                                  "stages": {}, "sources": sources})


def test_missing_source_files_are_named_before_anything_runs(tmp_path):
    from pipelines.steps.download.download import check_source_files
    from pipelines.recipe import RecipeError

    present = tmp_path / "q.json"
    present.write_text("[]")
    check_source_files(_recipe([{"name": "a", "kind": "llava", "path": str(present), "image_root": "https://cdn/x/"}]))
    with pytest.raises(RecipeError, match=r"sources\[1\]\.image_root \(source 'b'\): not found: .*--set sources\.1\.image_root="):
        check_source_files(_recipe([
            {"name": "a", "kind": "llava", "path": str(present)},
            {"name": "b", "kind": "llava", "path": str(present), "image_root": (tmp_path / "nope").as_uri()},
        ]))
    with pytest.raises(RecipeError, match=r"sources\[0\]\.annotations"):
        check_source_files(_recipe([{"name": "a", "kind": "vqav2", "path": str(present),
                                     "annotations": str(tmp_path / "missing.json")}]))
