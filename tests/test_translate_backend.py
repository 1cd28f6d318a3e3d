"""The `openai` backend against a real loopback chat-completions server, with injected faults."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from support.chat_server import REFUSAL, ChatServer
from support.translate_fixtures import API_KEY, KEY_ENV

from translators.batching import encode_units
from translators.config import TranslatorConfig
from translators.memory import TranslationMemory
from translators.openai_backend import OpenAITranslator
from translators.prompts import STRICT
from translators.protocol import Segment, SegmentResult, TranslatorError

NAMES = [f"q{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(40)]  # qaa, qab, ...: one unique word each
QUESTIONS = [f"What color is the car of {name} at gate {i}?" for i, name in enumerate(NAMES)]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with ChatServer(api_key=API_KEY) as srv:
        yield srv


def translate(server: ChatServer, tmp_path: Path, units: list[list[Segment]], **config: Any) -> tuple[list[list[SegmentResult]], dict]:
    settings = {"backoff_base_s": 0.01, "timeout_s": 5.0, **config}
    cfg = TranslatorConfig(
        backend="openai", base_url=server.base_url, api_key_env=KEY_ENV, model="test-model",
        memory_path=str(tmp_path / "tm.sqlite"), **settings,
    )

    async def go():
        with TranslationMemory(cfg.memory_path) as memory:
            translator = OpenAITranslator(cfg, memory)
            try:
                return await translator.translate(units), translator.report()
            finally:
                await translator.aclose()

    return asyncio.run(go())


def singles(texts: list[str]) -> list[list[Segment]]:
    return [[Segment(t)] for t in texts]


def user_payloads(server: ChatServer) -> list[list]:
    return [json.loads(entry["body"]["messages"][-1]["content"]) for entry in server.log]


def test_many_segments_per_request_and_a_conversation_travels_whole(server, tmp_path):
    chat = [Segment("<image>\nWhat color is the cat?"), Segment("The cat is white."),
            Segment("Where is the dog?"), Segment("The dog is on the car.")]
    units = singles(QUESTIONS) + [chat]
    results, report = translate(server, tmp_path, units, batch_segments=16)
    assert [len(r) for r in results] == [len(u) for u in units]
    assert all(r.ok for unit in results for r in unit)
    assert server.stats.ok == report["requests"] == 3  # 16 + 16 + (8 singles + the 4-turn chat)
    turns = ["What color is the cat?", "The cat is white.", "Where is the dog?", "The dog is on the car."]
    assert sum(turns in payload for payload in user_payloads(server)) == 1
    assert [r.text for r in results[-1]] == ["<image>\n什么颜色是猫？", "猫是白色。", "哪里是狗？", "狗是在汽车。"]
    assert results[13][0].text.startswith("什么颜色是汽车的") and results[13][0].text.endswith("13？")


def test_duplicates_and_memory_hits_are_never_sent_twice(server, tmp_path):
    units = singles(QUESTIONS[:10] * 3)
    results, report = translate(server, tmp_path, units)
    assert server.stats.segments == 10 and report["duplicates"] == 20
    again, report2 = translate(server, tmp_path, units)
    assert server.stats.segments == 10, "the second run must be served from the memory"
    assert report2["memory_hits"] == 10 and [r[0].text for r in again] == [r[0].text for r in results]
    assert {r[0].origin for r in again} == {"memory"}


def test_concurrent_batches_share_segments_in_flight(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    cfg = TranslatorConfig(backend="openai", api_key_env=KEY_ENV, memory_path=str(tmp_path / "tm.sqlite"))
    with ChatServer(api_key=API_KEY, latency_s=0.2) as srv:
        cfg.base_url = srv.base_url

        async def go():
            with TranslationMemory(cfg.memory_path) as memory:
                translator = OpenAITranslator(cfg, memory)
                try:
                    return await asyncio.gather(translator.translate(singles(QUESTIONS[:10])),
                                                translator.translate(singles(QUESTIONS[5:15]))), translator.report()
                finally:
                    await translator.aclose()

        (first, second), report = asyncio.run(go())
    assert srv.stats.segments == 15 and report["duplicates"] == 5
    assert [r[0].text for r in first[5:]] == [r[0].text for r in second[:5]]
    assert all(r[0].ok for r in first + second)
    assert sum(r[0].usage.total for r in first + second) == srv.stats.prompt_tokens + srv.stats.completion_tokens


def test_rate_limit_waits_for_retry_after(server, tmp_path):
    server.add_fault("rate_limit", times=1, retry_after="1")
    start = time.monotonic()
    results, report = translate(server, tmp_path, singles(QUESTIONS[:5]))
    assert time.monotonic() - start >= 1.0
    assert all(r[0].ok for r in results)
    assert report["retries"] == 1 and server.stats.statuses == {429: 1, 200: 1}


def test_server_errors_and_hanging_requests_are_retried(server, tmp_path):
    server.add_fault("server_error", times=2)
    server.add_fault("hang", times=1)
    results, report = translate(server, tmp_path, singles(QUESTIONS[:5]), timeout_s=0.5)
    assert all(r[0].ok for r in results)
    assert report["retries"] == 3 and server.stats.statuses[500] == 2


def test_exhausted_retries_fail_the_segments_with_the_reason(server, tmp_path):
    server.add_fault("server_error", times=None)
    results, _ = translate(server, tmp_path, singles(QUESTIONS[:3]), max_retries=2)
    assert [r[0].verdict.reason for r in results] == ["http_500"] * 3
    assert all(r[0].text is None and "3 attempts" in r[0].verdict.detail for r in results)
    assert server.stats.requests == 3


def test_unusable_replies_are_split_until_they_line_up(server, tmp_path):
    server.add_fault("malformed_json", times=1)
    server.add_fault("wrong_length", times=1)
    results, report = translate(server, tmp_path, singles(QUESTIONS[:8]))
    assert all(r[0].ok for r in results)
    assert report["reply_errors"] == 2 and report["requests"] >= 4


def test_a_qa_failure_is_retried_once_with_the_strict_prompt(server, tmp_path):
    server.add_fault("drop_mask", match=NAMES[7], times=1)
    results, report = translate(server, tmp_path, singles(QUESTIONS[:10]))
    assert all(r[0].ok for r in results)
    assert report["strict_retries"] == 1 and results[7][0].attempts == 2
    strict = [e for e in server.log if STRICT[:30] in e["body"]["messages"][0]["content"]]
    assert len(strict) == 1 and json.loads(strict[0]["body"]["messages"][1]["content"]) == [f"What color is the car of {NAMES[7]} at gate ⟦0⟧?"]


@pytest.mark.parametrize("fault, match, reason", [
    ("drop_mask", NAMES[7], "numbers_changed"),
    ("english_echo", NAMES[7], "untranslated"),
    ("refusal", NAMES[7], "refusal"),
])
def test_persistent_bad_output_is_a_failure_with_its_reason_and_a_rerun_fixes_it(server, tmp_path, fault, match, reason):
    server.add_fault(fault, match=match, times=None)
    results, report = translate(server, tmp_path, singles(QUESTIONS[:10]))
    bad = results[7][0]
    assert not bad.ok and reason in bad.verdict.reasons and bad.attempts == 2
    assert bad.text is not None and (bad.text != REFUSAL or reason == "refusal")
    assert all(r[0].ok for i, r in enumerate(results) if i != 7)
    assert report[f"failed_{bad.verdict.reason}"] == 1
    server.clear_faults()
    sent_before = server.stats.segments
    again, _ = translate(server, tmp_path, singles(QUESTIONS[:10]))
    assert all(r[0].ok for r in again)
    assert server.stats.segments - sent_before == 1, "only the failed segment is sent again"


def test_glossary_is_in_the_prompt_only_when_needed_and_is_checked(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with ChatServer(api_key=API_KEY, dictionary={"starbucks": "斯塔巴克斯"}) as srv:
        units = singles(["Is this a Starbucks cup on the table?"]) + singles(QUESTIONS[:2])
        results, _ = translate(srv, tmp_path, units, glossary={"Starbucks": "星巴克"}, batch_segments=1)
        prompts = {e["body"]["messages"][1]["content"]: e["body"]["messages"][0]["content"] for e in srv.log}
    assert "Starbucks=星巴克" in prompts[encode_units([["Is this a Starbucks cup on the table?"]])]
    assert "Glossary" not in prompts[encode_units([[QUESTIONS[0].replace("gate 0", "gate ⟦0⟧")]])]
    assert results[0][0].verdict.reason == "glossary"
    assert results[1][0].ok


def test_endpoint_without_json_mode_is_used_without_it(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with ChatServer(api_key=API_KEY, reject_json_mode=True) as srv:
        results, report = translate(srv, tmp_path, singles(QUESTIONS[:20]), batch_segments=5, concurrency=1)
        with_format = [e for e in srv.log if "response_format" in e["body"]]
    assert all(r[0].ok for r in results)
    assert report["json_mode_disabled"] == 1 and len(with_format) == 1 and srv.stats.ok == 4


def test_a_wrong_key_stops_the_run_and_is_never_shown(monkeypatch, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with ChatServer(api_key="sk-the-right-one") as srv:  # echoes the wrong key back, like OpenAI
        with pytest.raises(TranslatorError, match=rf"HTTP 401.*\${KEY_ENV}") as err:
            translate(srv, tmp_path, singles(QUESTIONS[:3]))
    out = capsys.readouterr()
    assert API_KEY not in str(err.value)
    assert API_KEY not in caplog.text and API_KEY not in out.out + out.err
    assert caplog.text, "debug logging was captured, so the check above means something"


def test_missing_key_variable_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = TranslatorConfig(backend="openai", api_key_env=KEY_ENV, memory_path=str(tmp_path / "tm.sqlite"))
    with TranslationMemory(cfg.memory_path) as memory, pytest.raises(TranslatorError, match=f"{KEY_ENV} is not set"):
        OpenAITranslator(cfg, memory)
