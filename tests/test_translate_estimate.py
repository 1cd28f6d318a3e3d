"""`vcla translate --estimate`: nothing is sent or written; the counts are those of the prompts a run
builds (requests as a run then sends them), the memory hits, cost at the recipe's prices and time at
its rate limits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from support.chat_server import ChatServer, dictionary_translate
from support.translate_fixtures import API_KEY, KEY_ENV, make_recipe, record, write_records

import pipelines.orchestration.flows  # noqa: F401  (Prefect sets up logging on import: before capsys attaches, not during a test)
from pipelines.steps.translate import STEP, TranslateOptions, run_translate

IMG = "<image>\n"
NOWHERE = "http://127.0.0.1:9/v1"
"""Nothing listens there: a request would fail."""
KNOWN = ["A red car near the wab street.", "What color is the car?", "Describe the image briefly."]
"""Segments the imported memory file holds."""


def corpus() -> list:
    captions = [record("coco", i, "caption", ("user", IMG + "Describe the image briefly."),
                       ("assistant", f"A red car near the w{chr(97 + i // 26)}{chr(97 + i % 26)} street."))
                for i in range(10)]
    captions.append(record("coco", 10, "caption", ("assistant", "A red car near the wab street.")))  # a repeat
    vqa = [record("vqa", i, "vqa", ("user", IMG + q), ("assistant", a))
           for i, (q, a) in enumerate([("What color is the car?", "red"), ("How many cats are there?", "3"),
                                       ("Where is the dog?", "on the car"), ("Is there a dog?", "yes")])]
    zh = record("alpaca", 0, "text", ("user", "介绍一下北京。"), ("assistant", "北京是中国的首都。"), lang="zh")
    fr = record("vqa", 9, "vqa", ("user", "Quelle couleur?"), ("assistant", "rouge"), lang="fr")
    return captions + vqa + [zh, fr]


def write_run(run: Path) -> Path:
    """Records in `<run>/generate/records` (the translate step's upstream) and a memory file to import."""
    data = corpus()
    write_records(run / "generate", "coco", [r for r in data if r.source == "coco"])
    write_records(run / "generate", "mixed", [r for r in data if r.source != "coco"])
    memory = run / "memory.jsonl"
    memory.write_text("".join(json.dumps({"source": s, "target": dictionary_translate(s), "source_lang": "en",
                                          "target_lang": "zh"}, ensure_ascii=False) + "\n" for s in KNOWN),
                      encoding="utf-8")
    return memory


def recipe_for(run: Path, base_url: str, **extra):
    settings = {"batch_segments": 4, "max_retries": 0, "timeout_s": 5.0, "memory_import": [str(run / "memory.jsonl")],
                **extra}
    return make_recipe(run, backend="openai", base_url=base_url, api_key_env=KEY_ENV, model="test-model", **settings)


def unique_segments() -> tuple[int, int]:
    """(records to translate, unique translatable segments of them) of `corpus()`."""
    todo = [r for r in corpus() if r.lang == "en"]
    texts = {m["content"] for r in todo for m in r.messages if m["content"] != "3"}  # "3": nothing to translate
    return len(todo), len(texts)


@pytest.mark.parametrize("window", [2000, 3])
def test_estimate_sends_and_writes_nothing_and_counts_what_the_run_then_sends(tmp_path, monkeypatch, capsys, window):
    monkeypatch.delenv(KEY_ENV, raising=False)  # an estimate needs no key
    write_run(tmp_path)
    out_dir = tmp_path / "translate"

    stats = run_translate(recipe_for(tmp_path, NOWHERE, window_records=window), tmp_path / "generate", out_dir,
                          estimate=True)

    assert not out_dir.exists()  # no records, no _SUCCESS, no stats.json, no rejections
    assert "[translate] 17 records (estimate: nothing sent; model test-model)" in capsys.readouterr().out
    items, unique = unique_segments()
    est = {k.removeprefix("estimate_"): v for k, v in stats.extra.items() if k.startswith("estimate_")}
    assert est["items"] == items == 15
    if window == 2000:  # one window: each memory-known segment is one hit
        assert est["cache_hits"] == len(KNOWN)
    assert est["requests"] > 0 and est["input_tokens"] > est["shared_prefix_tokens"] > 0 and est["output_tokens"] > 0
    assert dict(stats.rejected) == {"unsupported_lang": 1}
    assert stats.extra["memory_imported_rows"] == len(KNOWN)  # the imports are applied (a run uses them)

    monkeypatch.setenv(KEY_ENV, API_KEY)
    with ChatServer(api_key=API_KEY) as server:
        real = run_translate(recipe_for(tmp_path, server.base_url, window_records=window), tmp_path / "generate",
                             out_dir)
    assert real.extra.get("strict_retries", 0) == 0 and real.kept == 16
    assert real.extra["requests"] == server.stats.requests == est["requests"]
    assert real.extra["estimate_requests"] == est["requests"]  # the run's stats: the estimate beside the actual
    assert real.extra["estimate_input_tokens"] == est["input_tokens"]
    if window == 2000:
        assert real.extra["memory_hits"] == est["cache_hits"]
        assert server.stats.segments == unique - len(KNOWN)
    assert est["input_tokens"] == pytest.approx(server.stats.prompt_tokens, rel=0.3)


def test_cost_is_tokens_at_the_prices_and_time_is_at_the_rate_limits(tmp_path):
    write_run(tmp_path)
    prices = {"input_per_million": 150.0, "output_per_million": 600.0}

    by_requests = run_translate(recipe_for(tmp_path, NOWHERE, price=prices, requests_per_minute=2),
                                tmp_path / "generate", tmp_path / "translate", estimate=True).extra
    requests, tokens_in, tokens_out = (by_requests[f"estimate_{k}"] for k in ("requests", "input_tokens",
                                                                             "output_tokens"))
    assert by_requests["estimate_cost_usd"] == pytest.approx((tokens_in * 150.0 + tokens_out * 600.0) / 1e6, abs=1e-6)
    assert by_requests["estimate_minutes_at_limits"] == pytest.approx(requests / 2, abs=0.01)

    by_tokens = run_translate(recipe_for(tmp_path, NOWHERE, requests_per_minute=10_000, tokens_per_minute=100),
                              tmp_path / "generate", tmp_path / "translate", estimate=True).extra
    assert by_tokens["estimate_minutes_at_limits"] == pytest.approx((tokens_in + tokens_out) / 100, abs=0.01)
    assert by_tokens["estimate_cost_usd"] == 0

    unbounded = run_translate(recipe_for(tmp_path, NOWHERE), tmp_path / "generate", tmp_path / "translate",
                              estimate=True).extra
    assert "estimate_minutes_at_limits" not in unbounded  # None: not bounded by limits
    assert not (tmp_path / "translate").exists()


def test_memory_backend_sends_nothing_and_says_what_would_be_rejected(tmp_path, capsys):
    write_run(tmp_path)
    recipe = make_recipe(tmp_path, backend="memory", window_records=4, memory_import=[str(tmp_path / "memory.jsonl")])

    extra = run_translate(recipe, tmp_path / "generate", tmp_path / "translate", estimate=True).extra

    assert extra["estimate_requests"] == 0 and extra["estimate_input_tokens"] == 0
    assert extra["estimate_items"] == 15 and extra["estimate_cache_hits"] >= len(KNOWN)
    notes = [line for line in capsys.readouterr().out.splitlines() if "note:" in line]
    assert len(notes) == 1 and "backend memory:" in notes[0] and "nothing is sent" in notes[0]


def test_the_estimate_option_reaches_the_step_and_is_partial():
    assert STEP.options is TranslateOptions
    assert STEP.make_options({"estimate": True, "stage": "x"}) == TranslateOptions(estimate=True)
    assert STEP.make_options({"estimate": True}).partial and not STEP.make_options({}).partial


@pytest.mark.xdist_group("prefect")
def test_vcla_translate_estimate_prints_the_table_and_writes_nothing(prefect_server, tmp_path, monkeypatch, capsys,
                                                                     caplog):
    from pipelines.cli.main import main

    caplog.set_level(logging.INFO)
    write_run(tmp_path)
    monkeypatch.delenv(KEY_ENV, raising=False)  # --estimate sends nothing: no key needed, not even by the pre-flight
    args = ["translate", "--estimate", "--run-dir", str(tmp_path), "--set", "translator.backend=openai",
            "--set", f"translator.base_url={NOWHERE}", "--set", f"translator.api_key_env={KEY_ENV}",
            "--set", "translator.model=test-model", "--set", "translator.max_retries=0",
            "--set", f"translator.memory_import={json.dumps([str(tmp_path / 'memory.jsonl')])}",
            "--set", "translator.requests_per_minute=60", "--set", "translator.price.input_per_million=1.0"]

    assert main(args) == 0

    captured = capsys.readouterr()
    # the step flows log their prints (`log_prints=True`): the table is a log line of the task run
    out = "\n".join([captured.out, captured.err, *(r.getMessage() for r in caplog.records)])
    assert "[translate] 17 records (estimate: nothing sent; model test-model)" in out
    for row in ("requests to send", "input tokens", "served from cache / memory", "cost (USD)", "time at rate limits"):
        assert row in out
    assert not (tmp_path / "translate" / "_SUCCESS").exists() and not (tmp_path / "translate" / "records").exists()
