"""The demo recipe's curation finds the noise the corpus injected (pipelines/demo/noise.py writes what it
injected to noise/injected.json): recall and precision >= 0.95 for duplicate images and off-language
captions, the held-out split untouched, and the generate step then served from the corpus's replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.translate_fixtures import read_jsonl

from pipelines.recipe import load_recipe
from pipelines.steps.curate.curate import run_curate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> tuple[Path, object]:
    from pipelines.steps.demo_data import STEP as DEMO
    from pipelines.steps.download.download import run_download

    run = tmp_path_factory.mktemp("curate-demo") / "run"
    recipe = load_recipe("recipes/demo.yaml", ["demo.num_images=700", "demo.vision_encoder=null"], run)
    DEMO.run(recipe, DEMO.make_options())
    run_download(recipe, run / "download")
    run_curate(recipe, run / "download", run / "curate")
    return run, recipe


def rows(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.glob("*.jsonl")) for r in read_jsonl(p)]


def test_injected_duplicates_are_found_and_nothing_else(curated):
    run, _ = curated
    truth = json.loads((run / "demo-data" / "noise" / "injected.json").read_text())
    kept = [r for r in rows(run / "curate" / "records") if r["source"] == "shapes-captions"]
    image_of = {r["meta"]["image_id"]: r["image"] for r in kept}
    copies = truth["exact_copies"] + truth["near_copies"]
    assert len(copies) >= 30
    found = [c for c in copies if image_of[c["image_id"]] == image_of[c["original_image_id"]]]
    assert len(found) / len(copies) >= 0.95
    # every image the step called a duplicate is an injected copy or its original
    moved = {r["meta"]["image_id"] for r in kept if "duplicate_of" in r["meta"]["curate"]}
    injected = {c["image_id"] for c in copies} | {c["original_image_id"] for c in copies}
    assert moved and len(moved & injected) / len(moved) >= 0.95
    # the captions of duplicates are not lost: they stand beside the original's, on one image
    assert {c["image_id"] for c in found} <= set(image_of)


def test_off_language_captions_are_found_and_nothing_else(curated):
    run, _ = curated
    truth = json.loads((run / "demo-data" / "noise" / "injected.json").read_text())
    by_id = {r["id"]: r for r in rows(run / "download" / "records")}
    wrong = [r for r in read_jsonl(run / "curate" / "rejected" / "curate.jsonl") if r["reason"] == "wrong_language"]
    caught = {by_id[r["id"]]["meta"]["image_id"] for r in wrong}
    off = {r["image_id"] for r in truth["off_language"]}
    assert len(off) >= 10
    assert len(caught & off) / len(off) >= 0.95 and len(caught & off) / len(caught) >= 0.95
    boiler = {r["image_id"] for r in truth["boilerplate"]}
    dropped = {by_id[r["id"]]["meta"]["image_id"] for r in read_jsonl(run / "curate" / "rejected" / "curate.jsonl")}
    assert len(boiler & dropped) / len(boiler) >= 0.95


def test_the_heldout_split_stays_clean_and_the_report_shows_the_noise(curated):
    run, _ = curated
    heldout = {json.loads(x)["image"].split("/")[-1] for x in
               (run / "demo-data" / "heldout" / "eval_zh.jsonl").read_text().splitlines()}
    urls = {r["meta"].get("image_url", "").rsplit("/", 1)[-1] for r in rows(run / "curate" / "records")}
    assert not heldout & urls
    report = (run / "curate" / "report" / "report.md").read_text()
    stats = json.loads((run / "curate" / "stats.json").read_text())
    assert f"wrong_language={stats['rejected']['wrong_language']}" in report
    assert stats["extra"]["duplicate_images"] + stats["extra"]["near_duplicate_images"] >= 30
    assert (run / "curate" / "report" / "duplicate_clusters.png").is_file()


def test_generate_after_curation_is_served_by_the_corpus_replies(curated):
    from pipelines.steps.generate.generate import run_generate

    run, recipe = curated
    stats = run_generate(recipe, run / "curate", run / "generate")
    generated = read_jsonl(run / "generate" / "records" / "generated.jsonl")
    rejected = read_jsonl(run / "generate" / "rejected" / "generate.jsonl")
    assert generated and stats.extra["requests"] == 0
    assert len(rejected) <= 0.02 * (len(generated) + len(rejected))  # a copy curate missed: its own context
