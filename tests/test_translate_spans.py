"""What the model must not touch (tags, format fields, URLs, numbers) and what QA makes of it:
numbers glued to units, short segments that stay as they are, tags with attributes."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.chat_server import ChatServer, dictionary_translate
from support.translate_fixtures import API_KEY, KEY_ENV

from translators.config import TranslatorConfig
from translators.memory import TranslationMemory
from translators.openai_backend import OpenAITranslator
from translators.placeholders import protect, restore
from translators.protocol import Segment, SegmentResult, Verdict
from translators.qa import QARules, check

RULES = QARules()


# numbers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, masked", [
    ("It weighs 3.5kg.", "It weighs 3.5kg."),  # glued to its unit: the model sees it whole
    ("It is 10cm long and goes 60mph.", "It is 10cm long and goes 60mph."),
    ("The 1st and 22nd cars, a 4K TV and an A380.", "The 1st and 22nd cars, a 4K TV and an A380."),
    ("It weighs 3.5 kg.", "It weighs ⟦0⟧ kg."),  # standing alone: masked whole
    ("Costs 1,000 dollars at 10:30, 50% off.", "Costs ⟦0⟧ dollars at ⟦1⟧, ⟦2⟧ off."),
])
def test_a_number_is_masked_whole_or_not_at_all(text, masked):
    m = protect(text)
    assert m.text == masked
    assert restore(m, m.text) == text


@pytest.mark.parametrize("source, translation", [
    ("It weighs 3.5kg.", "它重3.5公斤。"),
    ("The box is 10cm wide.", "盒子宽10厘米。"),
    ("The car goes 60mph on the road.", "汽车在路上以每小时60英里行驶。"),
    ("The 1st car is red.", "第1辆车是红色的。"),
    ("There are 1,000 dogs here.", "这里有1000只狗。"),
    ("About 10,000 people came today.", "今天大约来了1万人。"),
    ("Three cats sit on the 2nd step.", "3只猫坐在第二级台阶上。"),
    ("It was built in 2023-05-01 at 10:30.", "它建于2023年5月1日10点30分。"),
])
def test_numbers_written_another_way_pass(source, translation):
    assert check(source, translation, RULES) == Verdict.passed()


@pytest.mark.parametrize("source, translation", [
    ("The box is 10cm wide.", "盒子宽12厘米。"),
    ("It weighs 3.5kg.", "它重5公斤。"),
    ("The 1st car is red.", "第二辆车是红色的。"),
    ("There are 1,000 dogs here.", "这里有100只狗。"),
    ("A cat sits on the mat.", "2只猫坐在垫子上。"),
])
def test_a_changed_number_fails(source, translation):
    verdict = check(source, translation, RULES)
    assert verdict.reasons == ("numbers_changed",), verdict


# what may stay as it is ---------------------------------------------------------------------

@pytest.mark.parametrize("source, translation, kind", [
    ("OK.", "OK。", "text"),
    ("OK.", "OK。", "short_answer"),
    ("TV", "TV", "text"),
    ("Is this a PlayStation?", "这是PlayStation吗？", "text"),
    ("Is it an iPhone 12 Pro?", "是iPhone 12 Pro吗？", "text"),
])
def test_names_and_codes_kept_as_they_are_pass(source, translation, kind):
    assert check(source, translation, RULES, kind) == Verdict.passed()


@pytest.mark.parametrize("source, translation, kind, reason", [
    ("Hello.", "Hello。", "text", "cjk_ratio"),  # an ordinary word must be translated
    ("TV", "Television", "text", "cjk_ratio"),  # nothing to translate, but English must not be added
    ("WHAT IS THIS?", "WHAT IS THIS?", "text", "untranslated"),  # all capitals is shouting, not a name
    ("red", "red", "short_answer", "untranslated"),
])
def test_ordinary_words_left_in_english_still_fail(source, translation, kind, reason):
    assert reason in check(source, translation, RULES, kind).reasons


# tags ---------------------------------------------------------------------------------------

IMG = '<img src="cat.png" alt="a white cat"/>'
LINK = '<a href="https://x.org/p?id=3&amp;lang=en" title="the page">'


def test_tags_are_masked_whole_with_their_attributes():
    text = f"A cat {IMG} sits on {LINK}the mat</a>.<br/> Done <!-- id 7 --> now."
    m = protect(text)
    assert [s.value for s in m.spans] == [IMG, LINK, "</a>", "<br/>", "<!-- id 7 -->"]
    assert not re.search(r"[<>]|src|alt|href|title|white", m.text), m.text
    assert restore(m, m.text) == text


@pytest.mark.parametrize("translation, reason", [
    ('一只猫<img src="cat.png" 替代文字="一只白猫"/>坐着。', "mask_lost"),  # attribute name translated
    ('一只猫<img src="cat.png" alt="一只白猫"/>坐着。', "mask_lost"),  # attribute value translated
    ('一只猫<img src="cat.png">坐着。', "mask_lost"),
    (f"一只猫{IMG}{IMG}坐着。", "mask_duplicated"),
])
def test_qa_notices_a_changed_tag(translation, reason):
    verdict = check(f"{IMG} A cat sits.", translation, RULES)
    assert reason in verdict.reasons, verdict


def test_tags_may_move_with_the_words_but_keep_their_order():
    assert check(f"{IMG} A cat sits.", f"一只猫坐着。{IMG}", RULES) == Verdict.passed()
    assert check(f"{LINK}Click here</a> to see it.", f"点击{LINK}这里</a>查看。", RULES) == Verdict.passed()
    assert check(f"{LINK}Click here</a> to see it.", f"点击</a>这里{LINK}查看。", RULES).reasons == ("mask_moved",)


# the rest of the placeholder family ---------------------------------------------------------

@pytest.mark.parametrize("text, protected", [
    ("Hello %s, you have %d new messages and %(n)s more.", ["%s", "%d", "%(n)s"]),
    ("Dear {name}, the total is {total:.2f} for {{ user }} and {0}.", ["{name}", "{total:.2f}", "{{ user }}", "{0}"]),
    ("Run ``echo `x` `` and `ls -l` now.", ["``echo `x` ``", "`ls -l`"]),
    ("Open HTTPS://Example.com/a?b=1&c=2 now.", ["HTTPS://Example.com/a?b=1&c=2"]),
    ("Go to https://example.com/search?q=cats&page=2.", ["https://example.com/search?q=cats&page=2"]),
    ("Mail a.b+tag@mail.example.co.uk today.", ["a.b+tag@mail.example.co.uk"]),
    ("Is <image> the same as this one?", ["<image>"]),
    ("Save 50% of it, not 5 % or 100%.", ["50%", "5", "100%"]),  # a percentage is not a %-field
    ("Tom &amp; Jerry say it&#39;s &quot;ok&quot;, R&D; too.", ["&amp;", "&#39;", "&quot;", "&quot;"]),
])
def test_format_fields_code_urls_and_emails_are_masked_whole(text, protected):
    m = protect(text)
    assert [s.value for s in m.spans] == protected
    assert restore(m, m.text) == text


def test_qa_notices_a_decoded_entity():
    assert "mask_lost" in check("Tom &amp; Jerry run.", "汤姆 & 杰瑞跑。", RULES).reasons
    assert check("Tom &amp; Jerry run.", "汤姆&amp;杰瑞跑。", RULES) == Verdict.passed()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab <>/=\"'!-%{}:.0123 sx`&#;⟦⟧\n")), max_size=50))
def test_restore_inverts_protect_with_tags_and_fields(text):
    m = protect(text)
    assert restore(m, m.text) == text


# through the translate path, against the loopback server -------------------------------------

def test_tags_fields_and_glued_numbers_survive_a_real_request(monkeypatch, tmp_path):
    """The loopback model translates every English word it sees, so anything unprotected
    (attribute names and values, `%s`) comes back changed; `10cm` comes back `10` + a CJK unit."""
    monkeypatch.setenv(KEY_ENV, API_KEY)
    texts = [f"A cat {IMG} is on the mat.", f"See {LINK}the page</a> for more.",
             "Hello %s, you have {count} new messages.", "The box is 10cm long."]
    with ChatServer(api_key=API_KEY) as server:
        results = _translate(server, tmp_path, texts)
        sent = "".join(e["body"]["messages"][-1]["content"] for e in server.log)
    assert all(r.ok for r in results), [r.verdict for r in results]
    assert IMG in results[0].text and LINK in results[1].text and "%s" in results[2].text
    assert "10cm" in sent and results[3].text == dictionary_translate("The box is 10cm long.")
    assert not re.search(r"src|alt|href|title|%s|\{count\}", sent)


def _translate(server: ChatServer, tmp_path: Path, texts: list[str]) -> list[SegmentResult]:
    cfg = TranslatorConfig(backend="openai", base_url=server.base_url, api_key_env=KEY_ENV, model="test-model",
                           memory_path=str(tmp_path / "tm.sqlite"), backoff_base_s=0.01, timeout_s=5.0)

    async def go() -> list[list[SegmentResult]]:
        with TranslationMemory(cfg.memory_path) as memory:
            translator = OpenAITranslator(cfg, memory)
            try:
                return await translator.translate([[Segment(t)] for t in texts])
            finally:
                await translator.aclose()

    return [unit[0] for unit in asyncio.run(go())]


# tags without attribute values ------------------------------------------------------------------

@pytest.mark.parametrize("text, protected", [
    ("A <td nowrap>long cell</td> here.", ["<td nowrap>", "</td>"]),
    ("Tick <input type=checkbox checked> or <input disabled> and <OPTION SELECTED>red</OPTION> now.",
     ["<input type=checkbox checked>", "<input disabled>", "<OPTION SELECTED>", "</OPTION>"]),
    ("Line one<br>line two, then <p>a new one.", ["<br>", "<p>"]),
    ("If x<y and y>z then a<b and c>d holds.", []),  # comparisons, not tags
    ("Is <image> the same as this one?", ["<image>"]),
])
def test_attributeless_html_tags_are_masked_and_comparisons_are_not(text, protected):
    m = protect(text)
    assert [s.value for s in m.spans] == protected
    assert restore(m, m.text) == text


@pytest.mark.parametrize("translation, reason", [
    ("一个<td>长单元格</td>在这里。", "mask_lost"),  # the valueless attribute dropped
    ("一个<td 不换行>长单元格</td>在这里。", "mask_lost"),  # or translated
    ("一个<td nowrap>长单元格在这里。", "mask_lost"),
])
def test_qa_notices_a_changed_attributeless_tag(translation, reason):
    assert reason in check("A <td nowrap>long cell</td> here.", translation, RULES).reasons
    assert check("A <td nowrap>long cell</td> here.", "一个<td nowrap>长单元格</td>在这里。", RULES) == Verdict.passed()


def test_attributeless_tags_survive_a_real_request(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    texts = ["A <td nowrap>red cell</td> is here.", "The box <input disabled> is off."]
    with ChatServer(api_key=API_KEY) as server:
        results = _translate(server, tmp_path, texts)
        sent = "".join(e["body"]["messages"][-1]["content"] for e in server.log)
    assert all(r.ok for r in results), [r.verdict for r in results]
    assert "<td nowrap>" in results[0].text and "<input disabled>" in results[1].text
    assert not re.search(r"nowrap|disabled", sent)
