"""The demo recipe's sources read cleanly from a generated demo corpus: every item becomes a
record, and every image resolves to an existing file the download stage may fetch."""

from __future__ import annotations

import json
import os
from urllib.parse import urlparse
from urllib.request import url2pathname

from pipelines.steps.download.download import image_url
from pipelines.recipe import load_recipe
from pipelines.core.rejects import RejectWriter
from pipelines.sources import read_source
from pipelines.core.stats import StepStats


def test_demo_recipe_sources_read_without_rejections(tiny_demo, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "demo-data").symlink_to(tiny_demo)
    recipe = load_recipe("recipes/demo.yaml", run_dir=run_dir)
    counts = json.loads((tiny_demo / "demo_manifest.json").read_text())["counts"]
    roots = [os.path.realpath(r) for r in recipe.download.allowed_file_roots]
    stats = StepStats("read")
    by_source = {}
    with RejectWriter(tmp_path / "rejected", "read", stats) as rejects:
        for cfg in recipe.sources:
            by_source[cfg.name] = list(read_source(cfg, rejects))
    assert stats.rejected_total == 0, (tmp_path / "rejected" / "read.jsonl").read_text()[:2000]
    assert len(by_source["shapes-captions"]) == counts["captions"]
    assert len(by_source["shapes-vqa"]) == counts["vqa_questions"]
    assert len(by_source["shapes-llava"]) == counts["llava_items"]
    assert len(by_source["shapes-choice"]) == counts["choice_items"]
    assert len(by_source["zh-alpaca"]) == counts["text_items"]
    assert {r.lang for r in by_source["zh-alpaca"]} == {"zh"} == {r.lang for r in by_source["shapes-choice"]}
    images = {r.image for name in ("shapes-captions", "shapes-vqa", "shapes-llava", "shapes-choice")
              for r in by_source[name]}
    for ref in images:
        path = url2pathname(urlparse(image_url(ref, roots)).path)
        assert os.path.isfile(path), ref
