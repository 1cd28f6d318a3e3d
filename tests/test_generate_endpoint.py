"""`Generator` + `ChatClient` + `ResponseCache` against a loopback generation endpoint
(`support.gen_server`): every job ends as a record or a rejection with a reason, transient
failures are retried (429's Retry-After honoured), a bad reply gets exactly one stricter retry, a
rerun over the same cache sends nothing and gives the same result, the key is written and logged
nowhere, the image travels as a data URL when the context includes it, prefix-cached tokens reach
the ledger, and objects the context lacks are counted, not rejected."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
from pathlib import Path

import pytest
from PIL import Image
from support.gen_server import REFUSAL_ZH, STRICT_MARK, GenServer, parse_objects, reply_en, reply_zh

from generators.checks import Bounds, check_record, unsupported_objects
from generators.config import KINDS, GenerateConfig, KindConfig
from generators.context import Box, Context
from generators.generator import IMAGE, GenerateLedger, Generator, Job, Outcome, run_all
from generators.objects import vocabulary
from generators.prompt_set import STRICT_NOTE, load_prompts
from generators.reply import parse_reply
from llm.cache import ResponseCache
from llm.client import ChatClient
from llm.errors import EndpointError

API_KEY = "sk-gen-test-5e4d3c2b1a09-never-in-any-file"
WRONG_KEY = "sk-gen-wrong-77aa88bb99cc-never-in-any-file"
KEY_ENV = "VCLA_TEST_GENERATE_KEY"
MODEL = "test-gen"
_CJK = re.compile(r"[\u4e00-\u9fff]")

SCENES = [
    ("A man walks past a parked car.", [("person", (0.30, 0.20, 0.45, 0.90)), ("car", (0.55, 0.40, 0.95, 0.80))]),
    ("Two cats sleep on a couch.", [("cat", (0.10, 0.30, 0.35, 0.60)), ("cat", (0.40, 0.32, 0.62, 0.58)),
                                     ("couch", (0.00, 0.20, 1.00, 0.90))]),
    ("A bowl of oranges on a dining table.", [("bowl", (0.10, 0.30, 0.45, 0.70)), ("orange", (0.15, 0.32, 0.25, 0.45)),
                                              ("orange", (0.25, 0.30, 0.35, 0.44)),
                                              ("dining table", (0.00, 0.25, 1.00, 1.00))]),
    ("A red bus stops at a traffic light.", [("bus", (0.05, 0.30, 0.70, 0.85)),
                                             ("traffic light", (0.80, 0.05, 0.88, 0.25))]),
    ("A laptop and a cup on a desk.", [("laptop", (0.20, 0.40, 0.60, 0.80)), ("cup", (0.70, 0.50, 0.80, 0.70))]),
    ("A kite flies above a beach.", [("kite", (0.40, 0.05, 0.55, 0.20)), ("person", (0.45, 0.60, 0.52, 0.95))]),
    ("A clock hangs above a bed.", [("clock", (0.45, 0.05, 0.55, 0.15)), ("bed", (0.10, 0.50, 0.90, 1.00))]),
    ("A horse stands in a field.", [("horse", (0.30, 0.35, 0.70, 0.90))]),
    ("Books and a vase on a shelf.", [("book", (0.05, 0.20, 0.15, 0.40)), ("book", (0.16, 0.21, 0.26, 0.41)),
                                      ("vase", (0.70, 0.10, 0.85, 0.45))]),
    ("A widget next to a bench in a park.", [("widget", (0.05, 0.60, 0.20, 0.80)),
                                             ("bench", (0.40, 0.55, 0.95, 0.85))]),
]


def contexts(n: int = len(SCENES)) -> list[Context]:
    return [Context(f"{i:06d}.jpg", captions=[caption, f"Scene number {i}."],
                    boxes=[Box(name, box) for name, box in boxes])
            for i, (caption, boxes) in enumerate(SCENES[:n])]


def jobs_for(ctxs: list[Context], kinds=KINDS, image_url: str | None = None) -> list[Job]:
    return [Job(c, k, 0, image_url) for c in ctxs for k in kinds]


def config(base_url: str, **extra) -> GenerateConfig:
    settings = {"backend": "openai", "base_url": base_url, "api_key_env": KEY_ENV, "model": MODEL, "max_retries": 3,
                "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 10.0, "concurrency": 8, **extra}
    return GenerateConfig.model_validate(settings)


def generate(cfg: GenerateConfig, cache_path: Path, jobs: list[Job]) -> tuple[list[Outcome], GenerateLedger]:
    """One run: a new ledger, cache handle, client and Generator; the client and cache closed after."""
    ledger = GenerateLedger(cfg)
    prompts = load_prompts(cfg)

    async def go() -> list[Outcome]:
        client = ChatClient(cfg, ledger, kept="every reply received is kept in the response cache")
        try:
            return await run_all(Generator(cfg, prompts, cache, client, ledger), jobs)
        finally:
            await client.aclose()

    cache = ResponseCache(cache_path)
    try:
        return asyncio.run(go()), ledger
    finally:
        cache.close()


def assert_record(out: Outcome) -> None:
    assert out.messages is not None, f"{out.job.kind}: rejected {out.reason}: {out.detail}"
    assert out.reason is None
    msgs = out.messages
    assert msgs and len(msgs) % 2 == 0
    assert msgs[0]["content"].startswith(f"{IMAGE}\n")
    assert all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(msgs))
    assert all(IMAGE not in m["content"] for m in msgs[1:])
    for m in msgs:
        text = m["content"].removeprefix(f"{IMAGE}\n")
        assert len(_CJK.findall(text)) > 0.5 * len(re.findall(r"\w", text)), text


def texts(outcomes: list[Outcome]) -> list:
    return [(o.messages, o.reason) for o in outcomes]


@pytest.fixture(autouse=True)
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)


@pytest.fixture
def server():
    with GenServer(api_key=API_KEY, latency_s=0.002, hang_s=5.0, seed=3) as s:
        yield s


# the server's own replies ----------------------------------------------------------------------
def test_the_servers_replies_pass_the_checks():
    """A good model's replies: every kind, Chinese and English, pass `check_record` with the default
    bounds and name no object the context lacks."""
    names = vocabulary()
    defaults = KindConfig()
    for ctx in [*contexts(), Context("empty.jpg", captions=["Just a picture."])]:
        objects = parse_objects(ctx.text())
        assert len(objects) == len(ctx.boxes)
        for kind in KINDS:
            for language, build in (("zh", reply_zh), ("en", reply_en)):
                reply = build(kind, objects)
                turns = parse_reply(kind, json.dumps(reply, ensure_ascii=False), defaults.max_turns)
                if kind == "detail":
                    if language == "zh":
                        assert 60 <= len(turns[0][1]) <= 200
                    turns = [("请详细描述这张图片。" if language == "zh" else "Describe this image.", turns[0][1])]
                if kind == "conversation":
                    assert 2 <= len(turns) <= 4
                bounds = Bounds(defaults.min_chars, defaults.max_chars, 0.5, language)
                assert check_record(turns, ctx, bounds) is None, (kind, language, reply)
                assert unsupported_objects(turns, ctx, names) == [], (kind, language, reply)


# 1. nothing lost ------------------------------------------------------------------------------
def test_every_job_is_a_record_and_one_request(server, tmp_path):
    jobs = jobs_for(contexts())
    outcomes, ledger = generate(config(server.base_url), tmp_path / "cache.sqlite", jobs)
    assert len(outcomes) == len(jobs)
    assert [o.job for o in outcomes] == jobs
    for out in outcomes:
        assert_record(out)
        assert (out.requests, out.cached) == (1, 0)
    assert server.stats.requests == len(jobs) == ledger.counts["requests"]
    assert server.stats.requests / sum(o.messages is not None for o in outcomes) == 1.0
    assert dict(server.stats.kinds) == {k: len(SCENES) for k in KINDS}
    assert ledger.counts["strict_retries"] == ledger.counts["retries"] == 0
    assert server.stats.image_parts == 0 and not any(r.has_image for r in server.log)
    assert not ledger.unsupported
    conversation = [o for o in outcomes if o.job.kind == "conversation"]
    assert all(2 <= len(o.messages) // 2 <= 4 for o in conversation)


def test_english_prompts_get_english_records(server, tmp_path):
    jobs = jobs_for(contexts(2))
    outcomes, ledger = generate(config(server.base_url, language="en"), tmp_path / "cache.sqlite", jobs)
    for out in outcomes:
        assert out.messages is not None, (out.reason, out.detail)
        assert not any(_CJK.search(m["content"]) for m in out.messages)
    assert server.stats.english_requests == len(jobs) and ledger.counts["strict_retries"] == 0


# 2. faults ------------------------------------------------------------------------------------
def test_rate_limit_waits_for_retry_after(server, tmp_path):
    server.add_fault("rate_limit", times=1, retry_after="0.3")
    jobs = jobs_for(contexts(2))
    outcomes, ledger = generate(config(server.base_url), tmp_path / "cache.sqlite", jobs)
    for out in outcomes:
        assert_record(out)
    limited = [r for r in server.log if r.status == 429]
    assert len(limited) == 1
    again = [r for r in server.log if r.status == 200 and r.messages == limited[0].messages]
    assert len(again) == 1
    assert again[0].at - limited[0].at >= 0.3
    assert ledger.counts["retries"] == 1
    assert server.stats.requests == len(jobs) + 1


def test_server_errors_are_retried(server, tmp_path):
    server.add_fault("server_error", times=2)
    jobs = jobs_for(contexts(2))
    outcomes, ledger = generate(config(server.base_url), tmp_path / "cache.sqlite", jobs)
    for out in outcomes:
        assert_record(out)
    assert server.stats.statuses[500] == 2 and ledger.counts["retries"] == 2
    assert server.stats.requests == len(jobs) + 2
    assert not ledger.failed_requests


def test_a_hang_times_out_and_is_retried(server, tmp_path):
    server.add_fault("hang", times=1, only_kind="detail")
    jobs = jobs_for(contexts(1))
    outcomes, ledger = generate(config(server.base_url, timeout_s=1.0), tmp_path / "cache.sqlite", jobs)
    for out in outcomes:
        assert_record(out)
    assert server.stats.faults["hang"] == 1
    assert ledger.counts["retries"] == 1 and not ledger.failed_requests
    assert server.stats.kinds["detail"] == 2


def test_a_dropped_connection_is_retried(server, tmp_path):
    server.add_fault("disconnect", times=1)
    jobs = jobs_for(contexts(1))
    outcomes, ledger = generate(config(server.base_url), tmp_path / "cache.sqlite", jobs)
    for out in outcomes:
        assert_record(out)
    assert server.stats.faults["disconnect"] == 1 and ledger.counts["retries"] == 1


def test_a_request_over_the_context_length_is_not_retried_strictly(server, tmp_path):
    server.add_fault("context_length", only_kind="reasoning")
    jobs = jobs_for(contexts(1), kinds=("reasoning",))
    outcomes, ledger = generate(config(server.base_url), tmp_path / "cache.sqlite", jobs)
    assert [o.reason for o in outcomes] == ["too_long"]
    assert server.stats.requests == 1 and server.stats.strict_requests == 0
    assert ledger.counts["strict_retries"] == 0


CONTENT_FAULTS = [("truncated_json", "parse_failed"), ("wrong_shape", "wrong_shape"), ("english", "not_chinese"),
                  ("refusal", "refusal"), ("bounding_box", "gives_away_context")]


@pytest.mark.parametrize("fault, reason", CONTENT_FAULTS)
def test_a_bad_first_reply_gets_one_strict_retry(server, tmp_path, fault, reason):
    server.add_fault(fault, on_strict=False)
    jobs = jobs_for(contexts(1))
    cfg, cache = config(server.base_url), tmp_path / "cache.sqlite"
    outcomes, ledger = generate(cfg, cache, jobs)
    for out in outcomes:
        assert_record(out)
        assert (out.requests, out.cached) == (2, 0)
    assert ledger.counts["strict_retries"] == len(jobs)
    assert server.stats.requests == 2 * len(jobs) and server.stats.strict_requests == len(jobs)
    assert server.stats.faults[fault] == len(jobs)
    strict = [r for r in server.log if r.strict]
    assert all(r.text.endswith(STRICT_NOTE.format(reason=reason)) for r in strict)
    assert all(r.fault is None for r in strict)

    # 3. the rerun replays both replies of each job from the cache
    server.reset_stats()
    again, ledger2 = generate(cfg, cache, jobs)
    assert server.stats.requests == 0
    assert texts(again) == texts(outcomes)
    assert [(o.requests, o.cached) for o in again] == [(0, 2)] * len(jobs)
    assert ledger2.counts["cache_hits"] == 2 * len(jobs) and ledger2.counts["strict_retries"] == len(jobs)


@pytest.mark.parametrize("fault, reason", CONTENT_FAULTS)
def test_a_reply_bad_every_time_is_rejected_with_its_reason(server, tmp_path, fault, reason):
    server.add_fault(fault)
    jobs = jobs_for(contexts(1))
    cfg, cache = config(server.base_url), tmp_path / "cache.sqlite"
    outcomes, ledger = generate(cfg, cache, jobs)
    for out in outcomes:
        assert out.messages is None and out.reason == reason and out.detail, (out.job.kind, out.reason)
        assert out.requests == 2
    assert server.stats.requests == 2 * len(jobs) and ledger.counts["strict_retries"] == len(jobs)

    server.reset_stats()
    again, _ = generate(cfg, cache, jobs)
    assert server.stats.requests == 0
    assert [(o.reason, o.detail) for o in again] == [(o.reason, o.detail) for o in outcomes]


# 3. rerun -------------------------------------------------------------------------------------
def test_a_rerun_over_the_same_cache_sends_nothing(server, tmp_path):
    ctxs = contexts()
    server.add_fault("truncated_json", match="Scene number 1.", on_strict=False)
    server.add_fault("refusal", match="Scene number 2.")
    server.add_fault("server_error", times=2)
    jobs = jobs_for(ctxs)
    cfg, cache = config(server.base_url), tmp_path / "cache.sqlite"
    first, ledger = generate(cfg, cache, jobs)
    by_ctx = {i: [o for o in first if o.job.context is ctxs[i]] for i in range(len(ctxs))}
    assert all(o.reason == "refusal" for o in by_ctx[2])
    for i, outs in by_ctx.items():
        if i != 2:
            for out in outs:
                assert_record(out)
    assert ledger.counts["strict_retries"] == 2 * len(KINDS)
    sent = server.stats.requests
    assert sent == len(jobs) + 2 * len(KINDS) + 2

    server.reset_stats()
    again, ledger2 = generate(cfg, tmp_path / "cache.sqlite", jobs_for(contexts()))  # equal, not the same objects
    assert server.stats.requests == 0 and ledger2.counts["requests"] == 0
    assert texts(again) == texts(first)
    assert ledger2.counts["cache_hits"] == len(jobs) + 2 * len(KINDS)


# 4. the key -----------------------------------------------------------------------------------
def _files_hold(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_the_key_is_in_no_file_and_no_log(server, tmp_path, caplog, capsys, monkeypatch):
    caplog.set_level(logging.DEBUG)
    server.echo_auth = True  # error bodies repeat the Authorization header, as a careless proxy might
    server.add_fault("rate_limit", times=1, retry_after="0.05")
    server.add_fault("server_error", times=1)
    server.add_fault("refusal", match="Scene number 0.", on_strict=False)
    jobs = jobs_for(contexts(3))
    outcomes, _ = generate(config(server.base_url), tmp_path / "cache.sqlite", jobs)
    assert all(o.messages is not None for o in outcomes)

    monkeypatch.setenv(KEY_ENV, WRONG_KEY)
    with pytest.raises(EndpointError) as caught:
        generate(config(server.base_url), tmp_path / "cache2.sqlite", jobs)
    assert server.stats.statuses[401] >= 1
    message = str(caught.value)
    assert "401" in message and KEY_ENV in message
    captured = capsys.readouterr()
    for secret in (API_KEY, WRONG_KEY):
        assert secret not in message
        assert secret not in caplog.text
        assert secret not in captured.out + captured.err
        assert _files_hold(tmp_path, secret) == []
    assert any(p.suffix == ".sqlite" for p in tmp_path.iterdir())


# 5. the image ---------------------------------------------------------------------------------
def _jpeg_data_url() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 60, 30)).save(buf, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("context", ["image", "both"])
def test_the_image_is_sent_as_a_data_url(server, tmp_path, context):
    url = _jpeg_data_url()
    jobs = jobs_for(contexts(2), image_url=url)
    outcomes, _ = generate(config(server.base_url, context=context), tmp_path / "cache.sqlite", jobs)
    for out in outcomes:
        assert_record(out)
    assert server.stats.image_parts == len(jobs)
    for r in server.log:
        assert r.image_urls == [url] and r.image_urls[0].startswith("data:image/jpeg;base64,")
        assert ("物体与位置" in r.text) == (context == "both")


def test_no_image_is_sent_with_annotations_only(server, tmp_path):
    jobs = jobs_for(contexts(2))
    outcomes, _ = generate(config(server.base_url, context="annotations"), tmp_path / "cache.sqlite", jobs)
    assert all(o.messages is not None for o in outcomes)
    assert server.stats.image_parts == 0 and all("物体与位置" in r.text for r in server.log)


def test_annotations_only_never_sends_an_image_even_if_a_job_has_one(server, tmp_path):
    jobs = jobs_for(contexts(1), image_url=_jpeg_data_url())
    outcomes, _ = generate(config(server.base_url, context="annotations"), tmp_path / "cache.sqlite", jobs)
    assert all(o.messages is not None for o in outcomes)
    assert server.stats.image_parts == 0


# 6. cached tokens -----------------------------------------------------------------------------
def test_prefix_cached_tokens_reach_the_ledger(server, tmp_path):
    jobs = jobs_for(contexts(4))
    _, ledger = generate(config(server.base_url), tmp_path / "cache.sqlite", jobs)
    usage = ledger.usage[MODEL]
    assert usage.cached_tokens > 0
    assert usage.cached_tokens == server.stats.cached_tokens
    assert usage.prompt_tokens == server.stats.prompt_tokens > usage.cached_tokens
    assert usage.completion_tokens == server.stats.completion_tokens
    # the prefix (system + examples) of each kind is cached from its second request on
    assert sum(r.cached_tokens > 0 for r in server.log) >= len(jobs) - len(KINDS)
    assert ledger.to_dict()[f"cached_tokens[{MODEL}]"] == usage.cached_tokens


# 7. unsupported objects -----------------------------------------------------------------------
def test_objects_the_context_lacks_are_counted_not_rejected(server, tmp_path):
    server.add_fault("hallucinate", only_kind="conversation")
    ctxs = contexts(4)
    jobs = jobs_for(ctxs)
    outcomes, ledger = generate(config(server.base_url), tmp_path / "cache.sqlite", jobs)
    for out in outcomes:
        assert_record(out)
        assert out.unsupported == (["dog"] if out.job.kind == "conversation" else [])
    assert any("狗" in m["content"] for o in outcomes for m in o.messages)
    assert dict(ledger.unsupported) == {"conversation": len(ctxs)}
    assert dict(ledger.unsupported_records) == {"conversation": len(ctxs)}
    assert ledger.counts["strict_retries"] == 0
    assert ledger.to_dict()["unsupported_objects[conversation]"] == len(ctxs)


def test_ordinary_words_are_not_unsupported_objects():
    ctx = Context("lake.jpg", captions=["A boat on a quiet lake."], boxes=[Box("boat", (0.1, 0.4, 0.5, 0.7))])
    turns = [("湖面上有什么？", "湖面上漂着一艘船，整个画面给人一种宁静的感觉，看起来马上就要日出了。")]
    assert unsupported_objects(turns, ctx, vocabulary()) == []


def test_the_strict_mark_is_the_generators_note():
    """The server tells a strict retry by the start of the generator's note."""
    assert STRICT_NOTE.startswith(STRICT_MARK)
    assert REFUSAL_ZH.startswith("抱歉")
