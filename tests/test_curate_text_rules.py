"""curators/text_rules.py: each check's reason code on texts it is meant to catch, and the
texts it must let through (COCO-like captions, Chinese captions, short texts)."""

from __future__ import annotations

import random
import time

import pytest

from curators.text_rules import TextRules, TextVerdict, check_text, check_texts, length_of, to_simplified

RULES = TextRules()

COCO_LIKE = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs playing with a frisbee in the grass.",
    "A plate of food with broccoli and rice.",
    "A red double decker bus driving down a street.",
    "A woman holding an umbrella in the rain.",
    "A kitchen with a stove, a sink and a refrigerator.",
    "A giraffe standing next to a tall tree.",
    "A cat sleeping on a laptop keyboard.",
    "A laptop computer on a wooden desk.",  # lingua: German 0.36, English 0.33: still English enough
    "A bowl of soup next to a sandwich.",
    "The man and the woman and the child and the dog.",
    "a photo by the lake at dawn",  # "photo by" only counts as a credit line
    "Fill in the blank: the cat is ______ the table.",
    "A sign that says 欢迎光临 on a building",
]

CHINESE = ["这是一只猫在沙发上睡觉", "一个男人在街上骑自行车。", "一个iPhone手机放在桌子上"]


def _reasons(texts: list[str], lang: str, rules: TextRules = RULES) -> list[str | None]:
    return [check_text(t, lang, rules).reason for t in texts]


def test_english_captions_pass_for_en():
    verdicts = [check_text(t, "en", RULES) for t in COCO_LIKE]
    assert [(t, v.reason, v.detail) for t, v in zip(COCO_LIKE, verdicts) if not v.ok] == []
    assert all(v.normalised is None for v in verdicts)
    assert check_text(COCO_LIKE[0], "en", RULES).lang == "en"


def test_chinese_caption_fails_en_and_passes_zh():
    v = check_text("这是一只猫在沙发上睡觉", "en", RULES)
    assert v.reason == "wrong_language"
    assert (v.lang, v.lang_confidence) == ("zh", pytest.approx(1.0))
    assert "expected en, detected zh (confidence 1.00)" in v.detail
    assert _reasons(CHINESE, "zh") == [None] * len(CHINESE)
    assert _reasons(CHINESE, "zh-CN") == [None] * len(CHINESE)


@pytest.mark.parametrize("text, lang", [
    ("Un chat dort sur le canapé.", "fr"),
    ("Deux chiens jouent dans le parc.", "fr"),
    ("Eine Katze schläft auf dem Sofa.", "de"),
    ("Ein Mann fährt Fahrrad auf der Straße.", "de"),
    ("Un perro corre en la playa.", "es"),
])
def test_european_captions_fail_en(text, lang):
    v = check_text(text, "en", RULES)
    assert (v.reason, v.lang) == ("wrong_language", lang), v.detail
    assert f"detected {lang}" in v.detail and "en confidence" in v.detail
    assert check_text(text, lang, RULES).ok


def test_text_in_no_known_language_fails():
    v = check_text("แมวนอนอยู่บนโซฟาในห้องนั่งเล่น สวยงาม มาก", "en", RULES)  # Thai: not in the set
    assert (v.reason, v.lang, v.lang_confidence) == ("wrong_language", None, 0.0)
    assert "detected none of TextRules.languages" in v.detail


def test_english_fails_zh():
    v = check_text("A cat sleeping on the sofa", "zh", RULES)
    assert v.reason == "wrong_language" and "expected zh" in v.detail


@pytest.mark.parametrize("text", [
    "Stock Photo - a dog",
    "IMG_20190101_123456.jpg",
    "IMG_1234.JPG",
    "DSC0001",
    "Click here to view larger image",
    "Image may contain: one or more people and outdoor",
    "No description available.",
    "Untitled",
    "Sunset over the bay | Photo by Jane Doe",
    "Copyright 2019 Example Ltd. All rights reserved.",
    "© 2020 a dog on the beach",
    "图片来源：网络",
    "点击查看大图",
    "免费下载高清壁纸",
    "版权所有，翻印必究",
])
def test_boilerplate(text):
    v = check_text(text, "zh" if any("\u4e00" <= c <= "\u9fff" for c in text) else "en", RULES)
    assert v.reason == "boilerplate", (text, v)
    assert "matches" in v.detail and "pattern" in v.detail


@pytest.mark.parametrize("text", [
    "https://example.com/a.jpg",
    "www.example.com",
    "example.com/images/cat.png",
    "see https://example.com/gallery/2019/summer/beach.html",
])
def test_url_only(text):
    v = check_text(text, "en", RULES)
    assert v.reason == "url_only", (text, v)


def test_a_url_inside_a_caption_passes():
    assert check_text("A cat on a sofa, from https://t.co/x1 today", "en", RULES).ok
    assert check_text("An Amazon.com box on the porch", "en", RULES).ok


@pytest.mark.parametrize("text, lang, reason", [
    ("soooooooooo cute!!!!!!!!!!", "en", "repeated_chars"),
    ("What a view!!!!!!!!", "en", "repeated_chars"),
    ("哈哈哈哈哈哈哈哈太好笑了", "zh", "repeated_chars"),
    ("buy now buy now buy now buy now", "en", "repeated_ngrams"),
    ("buy now buy now buy now", "en", "repeated_ngrams"),
    ("cat cat cat cat cat cat", "en", "repeated_ngrams"),
    ("好看好看好看好看", "zh", "repeated_ngrams"),
])
def test_repeats(text, lang, reason):
    v = check_text(text, lang, RULES)
    assert v.reason == reason, (text, v)


def test_repeat_details_and_what_is_not_a_repeat():
    assert "'o' 10 times in a row > max 5" in check_text("soooooooooo cute", "en", RULES).detail
    assert "'buy now' x4 covers 100%" in check_text("buy now buy now buy now buy now", "en", RULES).detail
    # layout runs, numbers, a word said twice
    for text in ["Wait...... what is this?", "A cheque for 1000000 dollars", "It is very very cold today",
                 "Zzzzz, a cat sleeping", "Title\n==========\nA cat on a mat"]:
        assert check_text(text, "en", RULES).ok, text
    assert check_text("哈哈哈，一只可爱的小猫", "zh", RULES).ok


def test_lengths():
    assert check_text("a dog", "en", RULES).reason == "too_short"
    assert check_text("Two dogs", "en", RULES).ok
    assert check_text("", "en", RULES).reason == "too_short"
    assert check_text("一只猫", "zh", RULES).reason == "too_short"
    assert check_text("一只小猫", "zh", RULES).ok
    long_en = "A dog runs on the grass. " * 100
    v = check_text(long_en, "en", RULES)
    assert (v.reason, v.detail) == ("too_long", "2499 characters > max 2000 for en")
    rules = TextRules(min_chars={"zh": 2, "*": 3}, max_chars={"zh": 10, "*": 30})
    assert check_text("一只猫", "zh", rules).ok
    assert check_text("这是一只猫在沙发上睡觉", "zh", rules).reason == "too_long"
    assert check_text("A cat on a sofa in a sunny living room", "en", rules).reason == "too_long"


def test_one_limit_for_all_languages_and_checks_switched_off():
    rules = TextRules(min_chars=3, max_chars=12)
    assert check_text("一只猫", "zh", rules).ok
    assert check_text("a dog", "en", rules).ok
    assert check_text("A cat on the sofa", "en", rules).reason == "too_long"
    assert check_text("https://example.com/a.jpg", "en", TextRules(url_only=False, max_chars=100)).ok


def test_no_expected_language():
    """None: every check but language and script, lengths by the `*` limits (characters)."""
    for text in ["Un chat dort sur le canapé.", "這是一隻貓在沙發上睡覺", "这是一只猫在沙发上睡觉"]:
        v = check_text(text, None, RULES)
        assert (v.reason, v.detail, v.lang, v.normalised) == (None, "passed", None, None), text
    assert check_text("Stock Photo - a dog", None, RULES).reason == "boilerplate"
    assert check_text("一只小猫", None, RULES).reason == "too_short"  # 4 characters < 8
    assert check_texts(["Un chat dort sur le canapé.", "a dog"], None, RULES)[1].detail == "5 characters < min 8"


def test_to_simplified():
    assert to_simplified("這是一隻貓在沙發上睡覺") == "这是一只猫在沙发上睡觉"
    assert to_simplified("这是一只猫 on a sofa") == "这是一只猫 on a sofa"


def test_length_units():
    assert length_of("iPhone 手机", "zh") == 3
    assert length_of("一只猫在2楼", "zh") == 6
    assert length_of("  A   cat\n on a sofa ", "en") == len("A cat on a sofa")
    assert length_of("A cat", "fr") == 5


def test_short_texts_never_rejected_on_language():
    for text, lang in [("Pizza Margherita", "en"), ("Vintage Porsche 911", "en"), ("Sushi platter", "en"),
                       ("一只猫 cat", "en"), ("Bonjour Paris", "en"), ("New York", "zh")]:
        rules = TextRules(min_chars={"*": 1})
        v = check_text(text, lang, rules)
        assert v.ok and v.lang is None, (text, v)
        assert "too short to judge its language" in v.detail


def test_traditional_chinese_normalised_by_default():
    v = check_text("這是一隻貓在沙發上睡覺", "zh", RULES)
    assert v.ok
    assert v.normalised == "这是一只猫在沙发上睡觉"
    assert "5 of 11 CJK characters" in v.detail
    assert check_text("臺灣的夜市很熱鬧", "zh", RULES).normalised == "台湾的夜市很热闹"


def test_simplified_chinese_kept_as_is():
    for text in CHINESE + ["他的头发很干燥", "乾隆皇帝的画像", "皇后站在后面"]:
        v = check_text(text, "zh", RULES)
        assert v.ok and v.normalised is None, (text, v)


def test_traditional_chinese_reject_and_keep():
    v = check_text("這是一隻貓在沙發上睡覺", "zh", TextRules(traditional="reject"))
    assert v.reason == "traditional_chinese"
    assert "change under OpenCC t2s" in v.detail and v.normalised is None
    kept = check_text("這是一隻貓在沙發上睡覺", "zh", TextRules(traditional="keep"))
    assert kept.ok and kept.normalised is None
    # only zh is held to simplified script: a Japanese text's kanji are its own
    assert check_text("猫がソファで寝ている写真", "ja", TextRules(traditional="reject")).ok


def test_first_failing_check_wins():
    # boilerplate before length: "untitled" is also too short
    assert check_text("untitled", "en", RULES).reason == "boilerplate"
    # URL before boilerplate: a URL ending in .jpg is not reported as a file name
    assert check_text("https://example.com/IMG_1234.jpg", "en", RULES).reason == "url_only"
    # repeats before language: French spam is spam first
    assert check_text("achetez achetez achetez achetez maintenant", "en", RULES).reason == "repeated_ngrams"


def test_bad_configuration_and_arguments_are_named():
    with pytest.raises(ValueError, match="TextRules.traditional"):
        TextRules(traditional="convert")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="TextRules.languages: 'xx'"):
        TextRules(languages=("en", "xx"))
    with pytest.raises(ValueError, match="TextRules.boilerplate: pattern"):
        TextRules(boilerplate=("(unclosed",))
    with pytest.raises(ValueError, match="expected_lang 'nl' is not one of TextRules.languages"):
        check_text("Een kat slaapt op de bank.", "nl", RULES)
    with pytest.raises(ValueError, match="TextRules.min_chars has no entry for 'en'"):
        check_text("A cat on a sofa", "en", TextRules(min_chars={"zh": 4}))


def _captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    subjects = ["A man", "A woman", "Two dogs", "A young girl", "A group of people", "An old man",
                "A black cat", "A brown horse", "Three children", "A chef"]
    verbs = ["riding", "sitting on", "standing next to", "walking past", "looking at", "holding",
             "playing with", "leaning against"]
    objects = ["a red bicycle", "a wooden bench", "a large elephant", "a kite on the beach",
               "a plate of food", "a white truck", "an umbrella in the rain", "a surfboard near the water",
               "a pile of books", "a street sign"]
    tails = ["", ".", " at night.", " in a park.", " on a sunny day.", " near a busy road."]
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}" for _ in range(n)]


def _same(batch: list[TextVerdict], single: list[TextVerdict]) -> bool:
    """Equal verdicts; lingua's parallel call may differ from the single one in the last bits."""
    fields = lambda v: (v.reason, v.detail, v.lang, v.normalised)  # noqa: E731
    return [fields(v) for v in batch] == [fields(v) for v in single] and all(
        (a.lang_confidence is None) == (b.lang_confidence is None)
        and (a.lang_confidence is None or a.lang_confidence == pytest.approx(b.lang_confidence))
        for a, b in zip(batch, single))


def test_batch_matches_one_by_one_and_is_fast():
    mixed = COCO_LIKE + CHINESE + ["Stock Photo - a dog", "Un chat dort sur le canapé.", "a dog",
                                   "Pizza Margherita", "buy now buy now buy now buy now"]
    assert _same(check_texts(mixed, "en", RULES), [check_text(t, "en", RULES) for t in mixed])
    assert check_texts([], "en", RULES) == []
    zh = CHINESE + ["這是一隻貓在沙發上睡覺", "A cat sleeping on the sofa"]
    assert _same(check_texts(zh, "zh", RULES), [check_text(t, "zh", RULES) for t in zh])

    captions = _captions(1000)
    check_texts(captions[:1], "en", RULES)  # models loaded (they stay for the process)
    start = time.perf_counter()
    verdicts = check_texts(captions, "en", RULES)
    elapsed = time.perf_counter() - start
    print(f"\ncheck_texts: 1,000 captions in {elapsed:.3f} s")
    assert [v.reason for v in verdicts] == [None] * 1000
