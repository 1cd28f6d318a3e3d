"""Replies as real endpoints write them: reasoning models (vLLM, Ollama, DeepSeek-R1, Qwen3) put a
`<think>` block before the JSON or the whole answer in `reasoning_content`; others add notes and
fences around it. Each must be read as the same translation, not as `parse_failed`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.chat_server import ChatServer, dictionary_translate
from support.translate_fixtures import API_KEY, KEY_ENV

from translators.batching import ReplyError, decode_reply, reasoning_regions
from translators.config import TranslatorConfig
from translators.memory import TranslationMemory
from translators.openai_backend import OpenAITranslator
from translators.protocol import Segment, SegmentResult

ANSWER = '{"t":["红色",["猫是白色的。","狗在车上。"]]}'
SHAPES = [1, 2]
EXPECTED = [["红色"], ["猫是白色的。", "狗在车上。"]]


@pytest.mark.parametrize("reply", [
    # a reasoning block with brackets (and a draft) before the answer
    '<think>The user sends ["red", ["The cat is white.", "The dog is on the car."]]; '
    'I keep ⟦0⟧ and reply {"t": [...]}.</think>\n' + ANSWER,
    '<thinking>\nInput: [1 string, 1 conversation of 2 turns]\n</thinking>\n\n' + ANSWER,
    '<reasoning>Shape [1, 2], so {"t": ["草稿"]} is wrong.</reasoning>' + ANSWER,
    # DeepSeek-R1 / Qwen3: the template opened <think> in the prompt, only the close tag comes back
    'Okay, the array ["red", [...]] has two items.\n</think>\n\n' + ANSWER,
    # a note after the answer, with brackets, with a bracketed array, with valid JSON
    ANSWER + '\n\nNote: I kept the placeholders [⟦0⟧] unchanged.',
    ANSWER + '\n(Alternative for item [0]: "赤色")',
    ANSWER + '\nAlternatives: ["赤色", ["猫是白的。", "狗在汽车上。"]]',
    # a code fence, after reasoning and before a note
    '<think>[draft]</think>\n```json\n' + ANSWER + '\n```\nHope this helps [:',
])
def test_reasoning_notes_and_fences_around_the_reply_are_ignored(reply):
    assert decode_reply(reply, SHAPES) == EXPECTED


def test_the_candidate_that_lines_up_is_the_reply():
    """Of several JSON values, the one with the right number of items wins, then one outside the
    reasoning, then the asked-for `{"t": [...]}` over an echo of the request, then the last."""
    assert decode_reply('Draft: {"t":["草稿"]}\nFinal: ' + ANSWER, SHAPES) == EXPECTED
    assert decode_reply('Input was ["red", ["a", "b"]], output: ' + ANSWER, SHAPES) == EXPECTED
    assert decode_reply('<think>{"t":["草稿",["x","y"]]}</think>["红色",["猫是白色的。","狗在车上。"]]', SHAPES) == EXPECTED
    assert decode_reply('{"t":["一"]} no, better: {"t":["二"]}', [1]) == [["二"]]
    assert decode_reply(f"[{ANSWER}]", SHAPES) == EXPECTED  # wrapped in an array
    assert decode_reply(f'{{"reasoning": "[x]", "answer": {ANSWER}}}', SHAPES) == EXPECTED
    with pytest.raises(ReplyError, match="count_mismatch: sent 2 items, got 1"):
        decode_reply('<think>[1, 2, 3]</think>{"t":["红色"]}', SHAPES)


def test_a_reply_left_in_reasoning_content_is_used_and_none_at_all_is_a_clear_failure():
    assert decode_reply(None, SHAPES, reasoning="<think>done</think>" + ANSWER) == EXPECTED
    assert decode_reply("", SHAPES, reasoning=ANSWER) == EXPECTED
    assert decode_reply(ANSWER, SHAPES, reasoning='{"t":["别的",["x","y"]]}') == EXPECTED, "content comes first"
    with pytest.raises(ReplyError, match="parse_failed: reply content is empty; its reasoning"):
        decode_reply(None, SHAPES, reasoning="I am still thinking about [the shape")
    with pytest.raises(ReplyError, match="parse_failed: no JSON translation array"):
        decode_reply("<think>cut off before any answer [", SHAPES)


def test_raw_newlines_inside_the_strings_are_accepted():
    assert decode_reply('{"t":["第一行\n第二行\t完"]}', [1]) == [["第一行\n第二行\t完"]]


def test_brackets_nested_too_deep_are_skipped_not_raised():
    """json raises RecursionError (not JSONDecodeError) past ~1000 levels; it must not escape
    decode_reply, where nothing would catch it and the whole batch would crash."""
    assert decode_reply("[" * 3000 + ANSWER, SHAPES) == EXPECTED
    with pytest.raises(ReplyError, match="parse_failed"):
        decode_reply("[" * 3000, SHAPES)


def test_reasoning_regions():
    assert reasoning_regions("<THINK>a</THINK> x <thinking>b</thinking>y") == [(0, 16), (19, 41)]
    assert reasoning_regions("opened in the prompt</think>answer") == [(0, 28)]
    assert reasoning_regions("answer <reasoning>cut off") == [(7, 25)]
    assert reasoning_regions("<think>a</think>b</think>c") == [(0, 16), (0, 25)]
    # a tag inside the answer's strings makes only what follows it suspect: the answer still wins
    assert decode_reply('{"t":["<thinking> is a word"]}', [1]) == [["<thinking> is a word"]]


NOISE = list("ab []{}(),:01\n<>/`")


@settings(max_examples=300, deadline=None)
@given(translations=st.lists(st.text(alphabet=list('ab[]{}<>/"\\\' 红⟦0⟧\n'), max_size=10), min_size=1, max_size=4),
       thought=st.text(alphabet=NOISE, max_size=30), before=st.text(alphabet=NOISE, max_size=20),
       after=st.text(alphabet=NOISE, max_size=30))
def test_any_text_around_the_reply_is_ignored(translations, thought, before, after):
    """Reasoning, prose and notes around `{"t": [...]}` (brackets, stray JSON, fences: anything
    without a quote, so no second `{"t": ...}`) never change what is read."""
    reply = f"<think>{thought}</think>{before}{json.dumps({'t': translations}, ensure_ascii=False)}{after}"
    assert decode_reply(reply, [1] * len(translations)) == [[t] for t in translations]


# through the translate path, against the loopback server -------------------------------------

QUESTIONS = [f"What color is the car at gate {i}?" for i in range(8)]


def translate(
    reply_as: Callable[[str], dict[str, Any]], tmp_path: Path
) -> tuple[list[list[SegmentResult]], dict, ChatServer]:
    with ChatServer(api_key=API_KEY, reply_as=reply_as) as server:
        cfg = TranslatorConfig(backend="openai", base_url=server.base_url, api_key_env=KEY_ENV, model="test-model",
                               memory_path=str(tmp_path / "tm.sqlite"), backoff_base_s=0.01, timeout_s=5.0)

        async def go() -> tuple[list[list[SegmentResult]], dict]:
            with TranslationMemory(cfg.memory_path) as memory:
                translator = OpenAITranslator(cfg, memory)
                try:
                    return await translator.translate([[Segment(q)] for q in QUESTIONS]), translator.report()
                finally:
                    await translator.aclose()

        results, report = asyncio.run(go())
    return results, report, server


@pytest.mark.parametrize("reply_as", [
    lambda c: {"content": f'<think>The user wants ["What color..."] in Chinese; keep ⟦0⟧.</think>\n\n{c}'},
    lambda c: {"content": f"Okay, I translate [{len(c)} chars].\n</think>\n\n{c}\n\nNote: numbers [⟦0⟧] kept."},
    lambda c: {"content": None, "reasoning_content": c},  # vLLM whose reasoning parser kept the answer
    lambda c: {"content": "", "reasoning": f"<think>draft</think>{c}"},  # newer vLLM, OpenRouter name it so
], ids=["think-block", "r1-close-tag-and-note", "reasoning-content-only", "reasoning-only"])
def test_a_reasoning_model_is_translated_in_one_request(monkeypatch, tmp_path, reply_as):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    results, report, server = translate(reply_as, tmp_path)
    assert [r[0].text for r in results] == [dictionary_translate(q) for q in QUESTIONS]
    assert all(r[0].ok for r in results)
    assert report.get("reply_errors", 0) == 0 and server.stats.ok == 1, "one request, read as it came"


# replies that are almost JSON ------------------------------------------------------------------

@pytest.mark.parametrize("reply", [
    '{"t": ["红色", ["猫是白色的。", "狗在车上。"],]}',  # trailing commas
    '{"t": ["红色", ["猫是白色的。", "狗在车上。",],],}',
    "['红色', ['猫是白色的。', '狗在车上。']]",  # a Python list
    "{'t': ['红色', ['猫是白色的。', '狗在车上。']]}",  # a Python dict
    "<think>[draft]</think>\n```python\n{'t': ['红色', ['猫是白色的。', '狗在车上。'],]}\n```\nDone [ok].",
    '{"t": ["红色, [不是]", ["猫是白色的。", "狗在车上。"],]}',  # a comma and brackets inside a string stay
])
def test_trailing_commas_and_python_quotes_are_read(reply):
    expected = [["红色, [不是]"] if "不是" in reply else ["红色"], EXPECTED[1]]
    assert decode_reply(reply, SHAPES) == expected


@pytest.mark.parametrize("reply", [
    "[红色, [猫, 狗]]",  # names, not strings
    "['红色', 1]",  # a number where a translation goes is no translation
    "{'红色', '猫'}",  # a set
    "[__import__('os').getcwd(), 'x']",  # never evaluated
    "['红色', ['猫' + '狗', 'x']]",  # an expression
    "['红色', ['猫是白色的。', '狗在车上。']",  # brackets that do not close
])
def test_garbage_that_only_looks_like_a_literal_is_refused(reply):
    with pytest.raises(ReplyError):
        if decode_reply(reply, SHAPES) == [None, None] or None in decode_reply(reply, SHAPES):
            raise ReplyError("misshapen", reply)
