"""The generate step end to end: records and rejections files, nothing lost, reruns, kill -9, held-out
images, the estimate, the image as a data URL, the key in no file; against the loopback generation
server (tests/support/gen_server.py) and, offline, the demo corpus's response cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from support.gen_server import GenServer
from support.translate_fixtures import read_jsonl

from common.layout import DONE_FILE
from pipelines.recipe import load_recipe
from pipelines.steps.generate.generate import run_generate
from templates.schema import Record, make_id

KEY_ENV = "VCLA_TEST_GENERATE_KEY"
API_KEY = "sk-gen-5e4d3c2b1a-never-in-any-file"
SOURCE = "shapes-captions"  # a source of the demo recipe (generate.boxes names it)
CATEGORIES = ["person", "dog", "car", "bicycle", "cat"]
REPO = Path(__file__).resolve().parent.parent


def write_download(run: Path, n: int) -> None:
    """A download folder of `n` caption records with real images, plus a COCO instances file."""
    images = run / "download" / "images"
    images.mkdir(parents=True)
    records, ann, imgs = [], [], []
    for i in range(1, n + 1):
        path = images / f"{i:06d}.jpg"
        Image.new("RGB", (64, 48), (20 * i % 255, 90, 160)).save(path)
        name = CATEGORIES[i % len(CATEGORIES)]
        records.append(Record(
            id=make_id(SOURCE, i), source=SOURCE, task="caption", image=str(path),
            messages=[{"role": "user", "content": "<image>"}, {"role": "assistant", "content": f"A {name} on a street {i}."}],
            meta={"image_id": i, "image_url": f"https://example.org/{i:06d}.jpg"}))
        imgs.append({"id": i, "file_name": f"{i:06d}.jpg", "width": 64, "height": 48})
        ann.append({"id": i, "image_id": i, "category_id": i % len(CATEGORIES) + 1, "bbox": [4, 4, 20, 30],
                    "area": 600, "iscrowd": 0})
    out = run / "download" / "records" / f"{SOURCE}.jsonl"
    out.parent.mkdir(parents=True)
    out.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records), encoding="utf-8")
    cats = [{"id": k + 1, "name": c} for k, c in enumerate(CATEGORIES)]
    (run / "instances.json").write_text(json.dumps({"images": imgs, "categories": cats, "annotations": ann}))
    (run / "download" / DONE_FILE).write_text(json.dumps({"output_digest": "d1"}))


def overrides(run: Path, base_url: str, *extra: str) -> list[str]:
    return ["generate.backend=openai", f"generate.base_url={base_url}", f"generate.api_key_env={KEY_ENV}",
            "generate.model=test-gen", "generate.cache_import=[]", "generate.max_retries=2",
            "generate.backoff_base_s=0.01", "generate.timeout_s=5", "eval.split=null",
            f"generate.boxes=[{{path: {run / 'instances.json'}, sources: [{SOURCE}]}}]",
            "generate.kinds={conversation: {}, detail: {}, reasoning: {}}", *extra]


def recipe_for(run: Path, base_url: str, *extra: str):
    return load_recipe("recipes/demo.yaml", overrides(run, base_url, *extra), run)


def generate(run: Path, base_url: str, *extra: str):
    return run_generate(recipe_for(run, base_url, *extra), run / "download", run / "generate")


def outputs(run: Path) -> tuple[list[dict], list[dict]]:
    return (read_jsonl(run / "generate" / "records" / "generated.jsonl"),
            read_jsonl(run / "generate" / "rejected" / "generate.jsonl"))


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with GenServer(api_key=API_KEY) as srv:
        yield srv


def test_every_image_and_kind_is_a_record_or_a_rejection_and_a_rerun_sends_nothing(server, tmp_path):
    run = tmp_path / "run"
    write_download(run, 12)
    server.add_fault("server_error", match="street 3.")  # always: a request failure, left for the next run
    server.add_fault("refusal", match="street 5.", only_kind="detail")  # on both attempts: final
    stats = generate(run, server.base_url)
    records, rejected = outputs(run)
    assert len(records) + len(rejected) == 12 * 3 == stats.read
    assert sorted(r["reason"] for r in rejected) == ["http_500"] * 3 + ["refusal"]
    marker = json.loads((run / "generate" / DONE_FILE).read_text())
    assert marker["retry_pending"] == 3  # the 500s; a refusal replays from the cache: not pending
    assert {r["meta"]["generated"]["kind"] for r in records} == {"conversation", "detail", "reasoning"}
    first = records[0]
    assert first["messages"][0]["content"].startswith("<image>\n") and first["lang"] == "zh"
    assert first["meta"]["generated"]["model"] == "test-gen" and first["meta"]["generated"]["usage"]["prompt_tokens"] > 0
    passed = sorted(p.name for p in (run / "generate" / "records").iterdir())
    assert passed == ["generated.jsonl", f"{SOURCE}.jsonl"]  # the download records passed through for translate

    server.clear_faults()
    sent = server.stats.requests
    generate(run, server.base_url)  # pending: runs again, sends only the three that failed
    assert server.stats.requests - sent == 3
    records2, rejected2 = outputs(run)
    assert len(records2) == len(records) + 3 and [r["reason"] for r in rejected2] == ["refusal"]
    assert json.loads((run / "generate" / DONE_FILE).read_text())["retry_pending"] == 0

    (run / "generate" / DONE_FILE).unlink()  # even a full rerun is served from the cache
    sent = server.stats.requests
    generate(run, server.base_url)
    assert server.stats.requests == sent and outputs(run)[0] == records2


def test_the_key_is_in_no_file_and_no_output(server, tmp_path, capfd):
    run = tmp_path / "run"
    write_download(run, 4)
    generate(run, server.base_url)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    out, err = capfd.readouterr()
    assert API_KEY not in out + err


def test_the_image_is_sent_as_a_data_url_when_the_context_includes_it(server, tmp_path):
    run = tmp_path / "run"
    write_download(run, 3)
    generate(run, server.base_url, "generate.context=both", "generate.image_max_side=32")
    assert server.stats.image_parts == 9
    assert all(url.startswith("data:image/jpeg;base64,") for r in server.log for url in r.image_urls)
    records, _ = outputs(run)
    assert len(records) == 9 and records[0]["meta"]["generated"]["context"] == "both"


def test_estimate_sends_nothing_and_matches_the_run(server, tmp_path):
    run = tmp_path / "run"
    write_download(run, 5)
    recipe = recipe_for(run, server.base_url, "generate.price.input_per_million=2.0")
    est = run_generate(recipe, run / "download", run / "generate", estimate=True).extra
    assert server.stats.requests == 0 and not (run / "generate" / DONE_FILE).exists()
    assert est["estimate_requests"] == 15 and est["estimate_cache_hits"] == 0
    assert est["estimate_cost_usd"] == pytest.approx(est["estimate_input_tokens"] * 2.0 / 1e6)
    stats = run_generate(recipe, run / "download", run / "generate")
    assert server.stats.requests == 15 and stats.extra["estimate_requests"] == 15
    billed = stats.extra["actual_input_tokens"]
    assert 0.5 * billed <= est["estimate_input_tokens"] <= 2 * billed
    again = run_generate(recipe, run / "download", run / "generate", estimate=True).extra
    assert again["estimate_requests"] == 0 and again["estimate_cache_hits"] == 15


def test_heldout_images_get_no_generated_data(server, tmp_path):
    """An image of the eval split that a source also lists is skipped (the split names it by path)."""
    run = tmp_path / "run"
    write_download(run, 4)
    rows = [json.loads(x) for x in (run / "download" / "records" / f"{SOURCE}.jsonl").read_text().splitlines()]
    heldout = tmp_path / "corpus" / "images" / "000002.jpg"
    heldout.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(heldout)
    rows[1]["meta"]["image_url"] = heldout.as_uri()
    (run / "download" / "records" / f"{SOURCE}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = tmp_path / "corpus" / "heldout" / "eval_zh.jsonl"
    split.parent.mkdir()
    split.write_text(json.dumps({"image": "images/000002.jpg", "question": "q", "answer": "a"}) + "\n")
    stats = generate(run, server.base_url, f"eval.split={split}")
    records, rejected = outputs(run)
    assert stats.extra["heldout_images_skipped"] == 1 and len(records) == 9 and not rejected
    assert rows[1]["image"] not in {r["image"] for r in records}


KILL_SCRIPT = """
import sys
from pipelines.recipe import load_recipe
from pipelines.steps.generate.generate import run_generate
run = sys.argv[1]
recipe = load_recipe("recipes/demo.yaml", sys.argv[2:], run)
run_generate(recipe, recipe.run_dir / "download", recipe.run_dir / "generate")
"""


def test_kill_9_mid_run_then_rerun_gives_the_records_of_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with GenServer(api_key=API_KEY, latency_s=0.05) as server:
        clean, killed = tmp_path / "clean", tmp_path / "killed"
        for run in (clean, killed):
            write_download(run, 20)
        generate(clean, server.base_url, "generate.concurrency=4")
        expected, _ = outputs(clean)
        server.reset_stats()

        args = [sys.executable, "-c", KILL_SCRIPT, str(killed), *overrides(killed, server.base_url, "generate.concurrency=4")]
        child = subprocess.Popen(args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while server.stats.ok < 25 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        time.sleep(0.3)  # requests in flight at the kill finish on the server's side
        answered_before = server.stats.ok
        assert 25 <= answered_before < 60 and not (killed / "generate" / DONE_FILE).exists()
        assert not (killed / "generate" / "records" / "generated.jsonl").exists()  # never half-written

        generate(killed, server.base_url, "generate.concurrency=4")
        records, rejected = outputs(killed)
        assert not rejected
        def content(rows: list[dict]) -> list[dict]:
            """All but the image path (it names the run folder) and the billed usage (the server's prefix
            cache answers the two runs differently)."""
            out = [{k: v for k, v in r.items() if k != "image"} for r in rows]
            for r in out:
                r["meta"]["generated"].pop("usage")
            return out

        assert len(records) == 60 and content(records) == content(expected)
        # only what the killed run had not stored is sent again (at most 4 were in flight at the kill)
        resent = server.stats.ok - answered_before
        assert 60 - answered_before <= resent <= 60 - answered_before + 4


def test_demo_recipe_generates_offline_from_the_corpus_cache(tmp_path):
    """`make demo`'s generate step, after its curate step: every request served by the corpus's replies,
    no endpoint, nothing for held-out images. (Without curation, off-language and boilerplate captions
    join their image's context, which the corpus wrote no reply for: they are the curate step's to drop.)"""
    from pipelines.steps.curate.curate import run_curate
    from pipelines.steps.demo_data import STEP as DEMO
    from pipelines.steps.download.download import run_download

    run = tmp_path / "run"
    recipe = load_recipe("recipes/demo.yaml", ["demo.num_images=40", "demo.vision_encoder=null"], run)
    DEMO.run(recipe, DEMO.make_options())
    run_download(recipe, run / "download")
    run_curate(recipe, run / "download", run / "curate")
    stats = run_generate(recipe, run / "curate", run / "generate")
    records, rejected = outputs(run)
    assert records and not rejected and stats.extra["requests"] == 0
    assert stats.extra["cache_hits"] == len(records)
    heldout = {json.loads(x)["image"].split("/")[-1]
               for x in (run / "demo-data" / "heldout" / "eval_zh.jsonl").read_text().splitlines()}
    urls = {}
    for line in (run / "curate" / "records" / "shapes-captions.jsonl").read_text().splitlines():
        row = json.loads(line)
        urls[row["image"]] = row["meta"]["image_url"].rsplit("/", 1)[-1]
    assert not {urls[r["image"]] for r in records} & heldout
    kinds = {r["meta"]["generated"]["kind"] for r in records}
    assert kinds == {"conversation", "detail", "reasoning"}


def test_context_gathers_captions_boxes_vqa_answers_and_ocr_per_image(tmp_path):
    from pipelines.steps.generate.contexts import collect_contexts

    run = tmp_path / "run"
    write_download(run, 2)
    image = str(run / "download" / "images" / "000001.jpg")
    vqa = Record(id="q1", source="shapes-vqa", task="vqa", image=image,
                 messages=[{"role": "user", "content": "<image>\nWhat does the sign say?"},
                           {"role": "assistant", "content": "stop"}],
                 meta={"image_id": 1, "kind": "ocr", "ocr_tokens": ["STOP", "Main St"]})
    (run / "download" / "records" / "shapes-vqa.jsonl").write_text(json.dumps(vqa.to_dict()) + "\n")
    recipe = recipe_for(run, "http://127.0.0.1:9/v1", "generate.context_sources=null")  # every source
    contexts, _ = collect_contexts(recipe, run / "download" / "records", None)
    ctx = contexts[image]
    assert ctx.captions == ["A dog on a street 1."]
    assert [(b.name, b.box) for b in ctx.boxes] == [("dog", (0.062, 0.083, 0.375, 0.708))]  # [4, 4, 20, 30] of 64x48
    assert ctx.qa == [("What does the sign say?", "stop")] and ctx.ocr == ["STOP", "Main St"]
    text = ctx.text()
    assert "dog: [0.062, 0.083, 0.375, 0.708]" in text and "Q: What does the sign say?" in text and "STOP" in text


def test_english_generation_goes_through_the_translate_step(server, tmp_path):
    """`generate.language: en`: English records, which translate turns into Chinese like any source."""
    from support.chat_server import ChatServer

    from pipelines.steps.translate import run_translate

    run = tmp_path / "run"
    write_download(run, 2)
    generate(run, server.base_url, "generate.language=en", "generate.kinds={detail: {}}")
    records, rejected = outputs(run)
    assert len(records) == 2 and not rejected and {r["lang"] for r in records} == {"en"}
    question = records[0]["messages"][0]["content"]
    assert question.startswith("<image>\n") and "describe" in question.lower()  # the English instructions
    with ChatServer(api_key=API_KEY) as chat:
        recipe = recipe_for(run, server.base_url, "generate.language=en", "generate.kinds={detail: {}}",
                            "translator.backend=openai", f"translator.base_url={chat.base_url}",
                            f"translator.api_key_env={KEY_ENV}", "translator.memory_import=[]")
        run_translate(recipe, run / "generate", run / "translate")
    translated = read_jsonl(run / "translate" / "records" / "generated.jsonl")
    assert len(translated) == 2 and {r["lang"] for r in translated} == {"zh"}
    assert translated[0]["messages_en"] == records[0]["messages"]
