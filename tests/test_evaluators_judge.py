"""`Judge` + `ChatClient` + `ResponseCache` against a loopback judge (`support.judge_server`): each
item's scores are the server's, the relative score per category is mean(ours) / mean(reference) x
100, a rerun over the same cache sends nothing, a malformed reply gets exactly one stricter retry
and, malformed again, is the error `parse_failed` (counted, not scored), 429's Retry-After is
honoured, a failed request is an error with its reason, and the key is written and logged nowhere."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest
from support.judge_server import (ANSWER_END, ANSWER_START, REFERENCE_END, REFERENCE_SCORE, REFERENCE_START,
                                  STRICT_MARK, JudgeServer, score_answer)

from evaluators.judge import (SHIPPED, STRICT_NOTE, Judge, JudgeConfig, JudgeItem, JudgeLedger, JudgePromptError,
                              JudgeVerdict, VerdictError, judge_all, load_judge_prompt, parse_verdict, prompt_id,
                              relative_scores)
from llm.cache import ResponseCache
from llm.client import ChatClient
from llm.errors import EndpointError
from llm.estimate import Estimate

API_KEY = "sk-judge-test-3f2e1d0c9b8a-never-in-any-file"
WRONG_KEY = "sk-judge-wrong-11aa22bb33cc-never-in-any-file"
KEY_ENV = "VCLA_TEST_JUDGE_KEY"
MODEL = "test-judge"
CONTEXT = ("描述：一只猫趴在沙发上睡觉。\nA cat sleeps on a couch.\n\n物体与位置\ncat: [0.10, 0.30, 0.35, 0.60]\n"
           "couch: [0.00, 0.20, 1.00, 0.90]")

ITEMS = [
    JudgeItem("q0", "conv", "图中有什么动物？", CONTEXT, "图中有一只猫，它趴在沙发上睡觉。", "图中有一只猫在沙发上睡觉。"),
    JudgeItem("q1", "conv", "猫在做什么？", CONTEXT, "猫正趴在沙发上睡觉。", "它在玩毛线球。"),
    JudgeItem("q2", "detail", "请详细描述这张图片。", CONTEXT,
              "一只猫蜷缩在画面左边的沙发上安静地睡觉，沙发占满了整个画面，气氛温馨。",
              "画面左边的沙发上有一只猫在睡觉，沙发很大，整个场景安静温馨。"),
    JudgeItem("q3", "detail", "描述一下画面。", CONTEXT, "沙发上有一只熟睡的猫。", "A cat {sleeps} on a sofa."),
    JudgeItem("q4", "complex", "为什么猫会在沙发上睡觉？", CONTEXT,
              "沙发柔软舒适，猫喜欢在温暖柔软的地方休息，所以它选择在沙发上睡觉。",
              "因为沙发很软，猫觉得舒服，就在上面睡着了。"),
    JudgeItem("q5", "complex", "这张照片可能在哪里拍的？", CONTEXT, "很可能是在家里的客厅拍的，因为有沙发。",
              "可能在客厅。"),
]


def config(base_url: str, **extra) -> JudgeConfig:
    settings = {"base_url": base_url, "api_key_env": KEY_ENV, "model": MODEL, "max_retries": 3,
                "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 10.0, "concurrency": 4, **extra}
    return JudgeConfig.model_validate(settings)


def judge(cfg: JudgeConfig, cache_path: Path, items: list[JudgeItem] = ITEMS) -> tuple[list[JudgeVerdict], JudgeLedger]:
    """One run: a new ledger, cache handle, client and Judge; the client and cache closed after."""
    ledger = JudgeLedger(cfg)

    async def go() -> list[JudgeVerdict]:
        client = ChatClient(cfg, ledger, kept="every verdict received is kept in the judge cache")
        try:
            return await judge_all(Judge(cfg, cache, client, ledger), items)
        finally:
            await client.aclose()

    cache = ResponseCache(cache_path, section="judge")
    try:
        return asyncio.run(go()), ledger
    finally:
        cache.close()


def expected(item: JudgeItem) -> tuple[int, int]:
    return REFERENCE_SCORE, score_answer(item.reference, item.answer)


def scores(verdicts: list[JudgeVerdict]) -> list:
    return [(v.item_id, v.reference_score, v.answer_score, v.error) for v in verdicts]


@pytest.fixture(autouse=True)
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)


@pytest.fixture
def server():
    with JudgeServer(api_key=API_KEY, latency_s=0.02, seed=5) as s:
        yield s


# the prompt -----------------------------------------------------------------------------------
def test_the_prompt_is_chinese_versioned_and_carries_the_servers_markers():
    prompt = load_judge_prompt("v1")
    text = (SHIPPED / "judge_v1.md").read_text(encoding="utf-8")
    assert prompt.prompt_id == prompt_id("v1", text) and re.fullmatch(r"v1-[0-9a-f]{12}", prompt.prompt_id)
    assert prompt_id("v1", text + " ") != prompt.prompt_id
    letters = re.findall(r"\w", prompt.system)
    assert len(re.findall(r"[\u4e00-\u9fff]", prompt.system)) > 0.6 * len(letters)
    assert '"scores"' in prompt.system and "位置偏见" in prompt.system
    for mark in (REFERENCE_START, REFERENCE_END, ANSWER_START, ANSWER_END):
        assert mark in prompt.user_template
    assert STRICT_NOTE.startswith(STRICT_MARK)
    messages = prompt.messages(ITEMS[3])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert ITEMS[3].answer in messages[1]["content"] and "{answer}" not in messages[1]["content"]
    with pytest.raises(JudgePromptError, match="shipped versions"):
        load_judge_prompt("v999")


def test_parse_verdict_is_strict():
    assert parse_verdict('{"scores": [8, 6], "reason": "好"}') == (8, 6, "好")
    assert parse_verdict('```json\n{"scores": [7, 9]}\n```') == (7, 9, "")
    assert parse_verdict('<think>...</think>{"scores": [1, 10], "reason": ""}') == (1, 10, "")
    for bad in ("", "8 分", '{"scores": [8]}', '{"scores": [8, 11]}', '{"scores": [0, 5]}', '{"scores": [8, 6.5]}',
                '{"scores": [true, 6]}', '{"scores": "8, 6"}', '[8, 6]', '{"scores": [8, 6], "reason": 3}',
                '{"scores": [8, 6]} trailing'):
        with pytest.raises(VerdictError):
            parse_verdict(bad)


# scores ---------------------------------------------------------------------------------------
def test_each_item_gets_the_servers_scores_and_relative_scores_per_category(server, tmp_path):
    verdicts, ledger = judge(config(server.base_url), tmp_path / "cache.sqlite")
    assert [v.item_id for v in verdicts] == [i.id for i in ITEMS]
    for item, v in zip(ITEMS, verdicts):
        assert v.error is None, (v.item_id, v.error, v.detail)
        assert (v.reference_score, v.answer_score) == expected(item)
        assert v.category == item.category and v.reason and not v.cached and v.requests == 1
    assert len({v.answer_score for v in verdicts}) > 2  # the items do differ
    assert server.stats.requests == len(ITEMS) == ledger.counts["requests"]
    assert server.stats.strict_requests == 0 and ledger.counts["strict_retries"] == 0
    assert 2 <= server.stats.peak_active <= 4  # all in flight, bounded by the client's concurrency

    report = relative_scores(verdicts)
    assert list(report["categories"]) == ["conv", "detail", "complex"]
    for category, stats in report["categories"].items():
        mine = [expected(i) for i in ITEMS if i.category == category]
        ref, ans = sum(r for r, _ in mine) / len(mine), sum(a for _, a in mine) / len(mine)
        assert stats == pytest.approx({"n": 2, "errors": 0, "reference_mean": ref, "answer_mean": ans,
                                       "relative": ans / ref * 100})
    all_scores = [expected(i) for i in ITEMS]
    overall = report["overall"]
    assert overall["n"] == len(ITEMS) and overall["errors"] == 0
    assert overall["relative"] == pytest.approx(sum(a for _, a in all_scores) / sum(r for r, _ in all_scores) * 100)

    # what was sent: temperature 0, max_tokens, JSON mode, the item's text in the user message
    body = server.log[0].body
    assert body["temperature"] == 0.0 and body["max_tokens"] == 512 and body["response_format"]["type"] == "json_object"
    assert ledger.usage[MODEL].prompt_tokens == server.stats.prompt_tokens
    assert ledger.usage[MODEL].completion_tokens == server.stats.completion_tokens


def test_a_rerun_over_the_same_cache_sends_nothing(server, tmp_path):
    cfg, cache = config(server.base_url), tmp_path / "cache.sqlite"
    first, _ = judge(cfg, cache)
    server.reset_stats()
    again, ledger = judge(cfg, cache, [replace(i) for i in ITEMS])  # equal, not the same objects
    assert server.stats.requests == 0 and ledger.counts["requests"] == 0
    assert ledger.counts["cache_hits"] == len(ITEMS)
    assert scores(again) == scores(first) and all(v.cached for v in again)
    assert relative_scores(again) == relative_scores(first)

    # a changed answer is a new item: only it is sent
    changed = [*ITEMS[:-1], JudgeItem("q5", "complex", ITEMS[5].question, CONTEXT, ITEMS[5].reference, "在卧室。")]
    more, _ = judge(cfg, cache, changed)
    assert server.stats.requests == 1 and [v.cached for v in more] == [True] * 5 + [False]

    # offline (no client) the cache still answers; a miss is an error, counted
    estimate = Estimate()
    cache_handle = ResponseCache(cache, section="judge")
    try:
        j = Judge(cfg, cache_handle, None, JudgeLedger(cfg))
        offline = asyncio.run(judge_all(j, [*ITEMS, JudgeItem("q6", "conv", "新问题？", CONTEXT, "甲", "乙")]))
        j.estimate([*ITEMS, JudgeItem("q6", "conv", "新问题？", CONTEXT, "甲", "乙")], estimate)
    finally:
        cache_handle.close()
    assert scores(offline[:-1]) == scores(first) and offline[-1].error == "cache_miss"
    assert relative_scores(offline)["categories"]["conv"]["errors"] == 1
    assert (estimate.items, estimate.cache_hits, estimate.requests) == (7, 6, 1)


def test_a_malformed_first_reply_gets_one_strict_retry(server, tmp_path):
    server.add_fault("malformed", on_strict=False)
    cfg, cache = config(server.base_url), tmp_path / "cache.sqlite"
    verdicts, ledger = judge(cfg, cache)
    for item, v in zip(ITEMS, verdicts):
        assert v.error is None and (v.reference_score, v.answer_score) == expected(item)
        assert v.requests == 2
    assert server.stats.requests == 2 * len(ITEMS) and server.stats.strict_requests == len(ITEMS)
    assert ledger.counts["strict_retries"] == len(ITEMS)
    strict = [r for r in server.log if r.strict]
    assert all(r.fault is None and STRICT_MARK in r.text for r in strict)

    server.reset_stats()
    again, ledger2 = judge(cfg, cache)
    assert server.stats.requests == 0 and scores(again) == scores(verdicts) and all(v.cached for v in again)
    assert ledger2.counts["cache_hits"] == 2 * len(ITEMS)


def test_fenced_replies_are_read_and_out_of_range_ones_retried(server, tmp_path):
    server.add_fault("fenced", match=ITEMS[0].question)
    server.add_fault("out_of_range", match=ITEMS[1].question, on_strict=False)
    verdicts, ledger = judge(config(server.base_url), tmp_path / "cache.sqlite")
    assert [v.error for v in verdicts] == [None] * len(ITEMS)
    assert scores(verdicts) == [(i.id, *expected(i), None) for i in ITEMS]
    assert [v.requests for v in verdicts[:2]] == [1, 2] and ledger.counts["strict_retries"] == 1


def test_a_reply_malformed_every_time_is_parse_failed_and_counted(server, tmp_path):
    server.add_fault("malformed", match=ITEMS[2].question)
    cfg, cache = config(server.base_url), tmp_path / "cache.sqlite"
    verdicts, ledger = judge(cfg, cache)
    bad = verdicts[2]
    assert bad.error == "parse_failed" and bad.detail and bad.requests == 2
    assert bad.reference_score is None and bad.answer_score is None
    assert all(v.error is None for i, v in enumerate(verdicts) if i != 2)
    assert server.stats.requests == len(ITEMS) + 1 and ledger.counts["strict_retries"] == 1

    report = relative_scores(verdicts)
    detail = report["categories"]["detail"]
    assert (detail["n"], detail["errors"]) == (1, 1)
    assert detail["relative"] == pytest.approx(expected(ITEMS[3])[1] / REFERENCE_SCORE * 100)
    assert (report["overall"]["n"], report["overall"]["errors"]) == (len(ITEMS) - 1, 1)

    server.reset_stats()
    again, _ = judge(cfg, cache)
    assert server.stats.requests == 0 and scores(again) == scores(verdicts)


def test_a_failed_request_is_an_error_with_its_reason(server, tmp_path):
    server.add_fault("server_error", match=ITEMS[4].question)
    cfg, cache = config(server.base_url, max_retries=1), tmp_path / "cache.sqlite"
    verdicts, ledger = judge(cfg, cache)
    assert verdicts[4].error == "http_500" and verdicts[4].answer_score is None
    assert ledger.failed_requests["http_500"] == 1 and ledger.counts["strict_retries"] == 0
    assert relative_scores(verdicts)["categories"]["complex"]["errors"] == 1

    server.faults.clear()  # not cached: the next run asks again, only for it
    server.reset_stats()
    again, _ = judge(cfg, cache)
    assert server.stats.requests == 1 and again[4].error is None
    assert (again[4].reference_score, again[4].answer_score) == expected(ITEMS[4])


def test_rate_limit_waits_for_retry_after(server, tmp_path):
    server.add_fault("rate_limit", times=1, retry_after="0.3")
    verdicts, ledger = judge(config(server.base_url), tmp_path / "cache.sqlite", ITEMS[:2])
    assert [v.error for v in verdicts] == [None, None]
    limited = [r for r in server.log if r.status == 429]
    assert len(limited) == 1
    again = [r for r in server.log if r.status == 200 and r.messages == limited[0].messages]
    assert len(again) == 1 and again[0].at - limited[0].at >= 0.3
    assert ledger.counts["retries"] == 1 and server.stats.requests == 3


# the key --------------------------------------------------------------------------------------
def _files_hold(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_the_key_is_in_no_file_and_no_log(server, tmp_path, caplog, capsys, monkeypatch):
    caplog.set_level(logging.DEBUG)
    server.echo_auth = True  # error bodies repeat the Authorization header
    server.add_fault("rate_limit", times=1, retry_after="0.05")
    server.add_fault("server_error", times=1)
    server.add_fault("malformed", match=ITEMS[0].question, on_strict=False)
    verdicts, _ = judge(config(server.base_url), tmp_path / "cache.sqlite")
    assert all(v.error is None for v in verdicts)
    (tmp_path / "report.json").write_text(json.dumps(relative_scores(verdicts)))

    monkeypatch.setenv(KEY_ENV, WRONG_KEY)
    with pytest.raises(EndpointError) as caught:
        judge(config(server.base_url), tmp_path / "cache2.sqlite")
    assert server.stats.statuses[401] >= 1
    message = str(caught.value)
    assert "401" in message and KEY_ENV in message and "judge." in message and "***" in message
    captured = capsys.readouterr()
    for secret in (API_KEY, WRONG_KEY):
        assert secret not in message
        assert secret not in caplog.text
        assert secret not in captured.out + captured.err
        assert _files_hold(tmp_path, secret) == []
    assert {p.name for p in tmp_path.iterdir()} >= {"cache.sqlite", "cache2.sqlite", "report.json"}
