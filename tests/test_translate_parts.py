"""The parts of translators/ one by one: placeholders, QA, batching, memory, limits."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.batching import (
    Reply,
    ReplyError,
    RequestFailed,
    apportion,
    decode_reply,
    encode_units,
    pack,
    send_with_split,
)
from llm.limits import Limits, RateLimiter, RetryPolicy, parse_retry_after
from translators.memory import WILDCARD, MemoryImportError, TranslationMemory, normalise
from translators.placeholders import protect, restore, spans
from translators.protocol import Usage, Verdict
from translators.qa import QARules, check

RULES = QARules(glossary={"Starbucks": "星巴克"})


# placeholders ---------------------------------------------------------------------------------

def test_protect_masks_every_kind_and_peels_edge_placeholders():
    text = ("<image>\nIs the box [0.1, 0.2, 0.5, 0.9] at https://x.org/a?b=1 or mail a.b@c.com, "
            "run `ls -l`, $x^2$ and 3 cats, not the 2nd <video> one.")
    m = protect(text)
    assert m.prefix == "<image>\n"
    assert [s.kind for s in m.spans] == ["bbox", "url", "email", "code", "latex", "number", "placeholder"]
    assert "2nd" in m.text and "⟦6⟧" in m.text and "http" not in m.text and "<" not in m.text
    assert restore(m, m.text) == text


def test_prices_are_numbers_not_latex_and_untranslatable_segments_are_detected():
    assert [s.kind for s in spans("costs $5 and $10")] == ["number", "number"]
    assert not protect("<image>").translatable
    assert not protect("42").translatable
    assert not protect("https://example.com/x").translatable
    assert not protect("B").translatable
    assert protect("<image>\nred").translatable


def test_text_that_looks_like_a_mask_survives():
    m = protect("literal ⟦3⟧ token and 7")
    assert [s.value for s in m.spans] == ["⟦3⟧", "7"]
    assert restore(m, "字面 ⟦0⟧ 记号和 ⟦1⟧") == "字面 ⟦3⟧ 记号和 7"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab <>image/[]0123456789.,$`:@\n⟦⟧x")), max_size=60))
def test_restore_inverts_protect(text):
    m = protect(text)
    assert restore(m, m.text) == text
    assert len(set(m.spans)) <= len(m.spans) == len(__import__("re").findall("⟦\\d+⟧", m.text))


# QA --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, translation, kind, reason", [
    ("What color is the car?", "", "text", "empty"),
    ("What color is the car?", "作为一个AI语言模型，我无法翻译。", "text", "refusal"),
    ("What color is the car?", "Here is the translation: 汽车是什么颜色？", "text", "meta_text"),
    ("<image>\nWhat color is the car?", "汽车是什么颜色？", "text", "mask_lost"),
    ("What color is the car?", "汽车是什么颜色？<image>", "text", "mask_added"),
    ("<image>\nWhat color is the car?", "<image>\n<image>\n汽车是什么颜色？", "text", "mask_duplicated"),
    ("<image>\nWhat color is the car?", "汽车是什么颜色？\n<image>", "text", "mask_moved"),
    ("There are 3 cats on the mat.", "垫子上有4只猫。", "text", "numbers_changed"),
    ("What color is the car?", "What color is the car?", "text", "untranslated"),
    ("What color is the car in this picture?", "汽车 color is the car 图片", "text", "english_left"),
    ("What is the man holding in his hand?", "abc", "text", "cjk_ratio"),
    ("What is the man holding in his left hand right now?", "男", "text", "length_ratio"),
    ("red", "这是一种非常非常鲜艳而且明亮的红颜色呀", "short_answer", "short_answer_too_long"),
    ("What color is the car?", "“汽车是什么颜色？”", "text", "quoted"),
    ("Is this a Starbucks cup?", "这是星巴客的杯子吗？", "text", "glossary"),
])
def test_each_check_fails_with_its_reason(source, translation, kind, reason):
    verdict = check(source, translation, RULES, kind)
    assert not verdict.ok
    assert reason in verdict.reasons, verdict


@pytest.mark.parametrize("source, translation, kind", [
    ("<image>\nWhat color is the car?", "<image>\n汽车是什么颜色？", "text"),
    ("There are 3 cats and 1,000 dogs.", "有3只猫和1000只狗。", "text"),
    ("Is this a Starbucks cup?", "这是星巴克的杯子吗？", "text"),
    ("I'm sorry, I cannot come today.", "抱歉，我今天不能来。", "text"),
    ("red", "红色", "short_answer"),
    ("TV", "TV", "short_answer"),
    ("Visit https://example.com for more details today.", "访问https://example.com了解更多详情。", "text"),
    ("Write to a.b@c.com today please.", "请今天写信给a.b@c.com。", "text"),
])
def test_good_translations_pass(source, translation, kind):
    assert check(source, translation, RULES, kind) == Verdict.passed()


# batching --------------------------------------------------------------------------------------

def test_wire_format_is_compact_and_replies_are_parsed_tolerantly():
    assert encode_units([["a"], ["b", "c"]]) == '["a",["b","c"]]'
    shapes = [1, 2]
    for reply in ['{"t":["x",["y","z"]]}', '```json\n{"t":["x",["y","z"]]}\n```',
                  'Sure! ["x",["y","z"]] hope that helps', '{"translations":["x",["y","z"]]}']:
        assert decode_reply(reply, shapes) == [["x"], ["y", "z"]]
    assert decode_reply('{"t":["x",["y"]]}', shapes) == [["x"], None]
    assert decode_reply('{"t":["y","z"]}', [2]) == [["y", "z"]]
    with pytest.raises(ReplyError, match="parse_failed"):
        decode_reply('{"t":["x", ', shapes)
    with pytest.raises(ReplyError, match="count_mismatch"):
        decode_reply('{"t":["x"]}', shapes)


def test_pack_respects_both_limits_and_never_cuts_a_unit():
    sizes = [(1, 10)] * 5 + [(6, 10)] + [(1, 500)]
    assert pack(sizes, max_segments=4, max_chars=100) == [[0, 1, 2, 3], [4], [5], [6]]


def test_apportion_adds_up_exactly():
    for total, weights in [(10, [1, 1, 1]), (7, [5, 0, 2]), (0, [3]), (101, [7, 13, 29, 1])]:
        parts = apportion(total, weights)
        assert sum(parts) == total and len(parts) == len(weights)


def test_split_retries_down_to_single_segments_and_keeps_every_segment():
    """The fake endpoint answers correctly only for requests of one segment, except `bad`
    which never parses; request count and per-segment outcomes are exact."""
    calls: list[list[list[str]]] = []

    async def send(units, strict):
        calls.append([list(u) for u in units])
        if sum(len(u) for u in units) > 1:
            raise ReplyError("count_mismatch", "too many", Usage(10, 10))
        if units[0][0] == "bad":
            raise ReplyError("parse_failed", "garbage", Usage(1, 1))
        return Reply([[units[0][0].upper()]], Usage(2, 3))

    out = asyncio.run(send_with_split(send, [["a"], ["b", "c"], ["bad"]]))
    assert [[s.text for s in u] for u in out] == [["A"], ["B", "C"], [None]]
    assert out[2][0].reason == "parse_failed"
    # [a,(b,c),bad] -> [a] ok; [(b,c),bad] -> [(b,c)] -> its turns as units [b,c] -> [b], [c]; [bad]
    assert len(calls) == 8
    assert sum(s.usage.total for u in out for s in u) == sum(
        20 if sum(map(len, c)) > 1 else (2 if c == [["bad"]] else 5) for c in calls
    )


def test_transport_failure_is_an_outcome_not_an_exception():
    async def send(units, strict):
        raise RequestFailed("http_500", "gave up after 6 attempts")

    out = asyncio.run(send_with_split(send, [["a"], ["b"]]))
    assert [s.reason for u in out for s in u] == ["http_500", "http_500"]


# memory ----------------------------------------------------------------------------------------

def test_memory_keys_exact_model_then_imports_and_never_serves_failures(tmp_path):
    src = tmp_path / "tm.jsonl"
    src.write_text(json.dumps({"source": "<image>\nWhat  is it?", "target": "<image>\n这是什么？",
                               "source_lang": "en", "target_lang": "zh"}, ensure_ascii=False) + "\n", encoding="utf-8")
    with TranslationMemory(tmp_path / "m.sqlite") as tm:
        assert tm.import_jsonl(src).rows == 1
        assert tm.import_jsonl(src).skipped_file
        hit = tm.lookup_many(["<image> What is it?"], "zh", "any-model", "v9")
        assert hit[normalise("<image>\nWhat is it?")].origin == "import"
        assert tm.lookup_many(["<image> What is it?"], "ja", "any-model", "v1") == {}
        tm.put_many([("<image>\nWhat is it?", "<image>\n它是什么？", Verdict.passed())],
                    source_lang="en", target_lang="zh", model="m1", prompt_version="v1")
        assert tm.lookup_many(["<image>\nWhat is it?"], "zh", "m1", "v1")["<image> What is it?"].target == "<image>\n它是什么？"
        assert tm.lookup_many(["<image>\nWhat is it?"], "zh", "m2", "v1")["<image> What is it?"].origin == "import"
        tm.put_many([("Hello there", "Hello there", Verdict.failed("untranslated"))],
                    source_lang="en", target_lang="zh", model="m1", prompt_version="v1")
        assert tm.lookup_many(["Hello there"], "zh", "m1", "v1") == {}
        tm.put_many([("Hello there", "你好", Verdict.passed())], source_lang="en", target_lang="zh", model="m1", prompt_version="v1")
        tm.put_many([("Hello there", "Hello", Verdict.failed("untranslated"))], source_lang="en", target_lang="zh", model="m1", prompt_version="v1")
        assert tm.lookup_many(["Hello there"], "zh", "m1", "v1")["Hello there"].target == "你好"
        n = tm.export_jsonl(tmp_path / "out.jsonl", target_lang="zh", model="m1")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert n == 2 and {r["target"] for r in rows} == {"<image>\n它是什么？", "你好"}
    assert all(set(r) == {"source", "target", "source_lang", "target_lang"} for r in rows)
    db = sqlite3.connect(tmp_path / "m.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM tm WHERE model = ?", (WILDCARD,)).fetchone()[0] == 1


def test_memory_serves_the_same_text_with_its_image_marker_elsewhere(tmp_path):
    from translators.config import TranslatorConfig
    from translators.memory_backend import MemoryTranslator
    from translators.protocol import Segment

    with TranslationMemory(tmp_path / "m.sqlite") as tm:
        tm.put_many([("What color is the star?", "星星是什么颜色？", Verdict.passed()),
                     ("<image>\nWhere is it?", "<image>\n它在哪里？", Verdict.passed())],
                    source_lang="en", target_lang="zh", model=WILDCARD, prompt_version=WILDCARD, origin="import")
        translator = MemoryTranslator(TranslatorConfig(model="demo-memory"), tm)
        units = [[Segment("<image>\nWhat color is the star?")], [Segment("Where is it?\n<image>")],
                 [Segment("What color is the star?")]]
        results = asyncio.run(translator.translate(units))
    assert [r[0].text for r in results] == ["<image>\n星星是什么颜色？", "它在哪里？\n<image>", "星星是什么颜色？"]
    assert all(r[0].ok for r in results) and translator.report()["memory_core_hits"] == 2


def test_memory_import_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a", "target": "甲"}\n{"source": 3}\n', encoding="utf-8")
    with TranslationMemory(tmp_path / "m.sqlite") as tm, pytest.raises(MemoryImportError, match=r"bad.jsonl:2"):
        tm.import_jsonl(bad)


def test_memory_backend_is_a_translator_and_reports_misses(tmp_path):
    from translators.config import TranslatorConfig
    from translators.memory_backend import MemoryTranslator
    from translators.protocol import Segment, Translator

    with TranslationMemory(tmp_path / "m.sqlite") as tm:
        tm.put_many([("What is it?", "这是什么？", Verdict.passed())], source_lang="en", target_lang="zh",
                    model="m", prompt_version="v1")
        translator = MemoryTranslator(TranslatorConfig(model="m"), tm)
        assert isinstance(translator, Translator)
        [[hit, miss, image]] = asyncio.run(translator.translate([[Segment("What  is it?"), Segment("Who?"), Segment("<image>")]]))
    assert (hit.text, hit.origin, miss.text, miss.verdict.reason, image.origin) == (
        "这是什么？", "memory", None, "memory_miss", "passthrough")
    assert {k: translator.report()[k] for k in ("memory_hits", "memory_misses", "passthrough")} == {
        "memory_hits": 1, "memory_misses": 1, "passthrough": 1}


# limits ----------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rpm_limiter_allows_a_burst_then_the_steady_rate():
    clock = FakeClock()
    limiter = RateLimiter(60, clock, clock.sleep)  # 1/s, bucket of 10

    async def go():
        for _ in range(15):
            await limiter.acquire()

    asyncio.run(go())
    assert clock.now == pytest.approx(5.0)


def test_tpm_limiter_lets_an_oversized_request_through_into_debt():
    clock = FakeClock()
    limiter = RateLimiter(600, clock, clock.sleep)  # 10 tokens/s, bucket of 100

    async def go():
        await limiter.acquire(500)
        await limiter.acquire(10)

    asyncio.run(go())
    assert clock.now == pytest.approx(41.0)  # 400 of debt + 10 more at 10/s


def test_cool_down_holds_every_slot():
    clock = FakeClock()
    limits = Limits(4, clock=clock, sleep=clock.sleep)
    limits.cool_down(2.5)

    async def go():
        async with limits.slot(1):
            pass

    asyncio.run(go())
    assert clock.now == pytest.approx(2.5)


def test_backoff_grows_with_jitter_and_honours_retry_after():
    policy = RetryPolicy(max_retries=5, base_s=0.5, max_s=4.0)
    rng = random.Random(0)
    delays = [policy.delay(a, None, rng) for a in range(6)]
    for attempt, d in enumerate(delays):
        ceiling = min(4.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= d <= ceiling
    assert 7.0 <= policy.delay(0, 7.0, rng) <= 7.7
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after({}) is None
