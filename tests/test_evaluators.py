"""The metric library under the eval suites (evaluators/): VQAv2 accuracy and its normalisation, caption
BLEU-4 / CIDEr-D on our tokenisation, MMBench TSVs and CircularEval. Pure functions, no model."""

from __future__ import annotations

import base64
import csv
import io

import pytest

from evaluators.caption import caption_scores, tokenize
from evaluators.choice import (
    ChoiceFileError, ChoiceItem, circular_eval, extract_choice, prompt_for, read_mmbench_tsv, rotations, score_circular,
)
from evaluators.vqa import exact_match, normalize_answer, summarise, vqa_accuracy

# --- VQA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Two", "2"),
    ("the cat.", "cat"),
    ("A dog", "dog"),
    ("an apple", "apple"),
    ("dont", "don't"),
    ("Yes", "yes"),
    ("10,000", "10000"),              # a comma between digits: every listed mark is deleted
    ("3.5", "3.5"),                   # a period followed by a digit stays
    ("yes, sir", "yes sir"),          # ", " in the text: the comma is deleted
    ("yes/no", "yes no"),             # no space next to it: the mark becomes a space
    ("red-orange", "red orange"),
    ("none", "0"),                    # as the official number table has it
    ("ten", "10"),
    ("  left\tside\n", "left side"),
    ("what's", "what's"),             # apostrophes are kept
    ("whats", "what's"),
    ("ＴＷＯ", "2"),                   # NFKC: full-width letters
    ("14:30", "14:30"),               # ':' is not in the official punctuation list
])
def test_the_official_vqa_normalisation(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("a, b", [("红色。", "红色"), ("红 色", "红色"), ("「是的」！", "是的"), ("T恤", "t恤"),
                                  ("３.５米", "3.5米")])
def test_chinese_answers_compare_character_by_character(a, b):
    assert exact_match(a, b)
    assert normalize_answer(b) == b.lower().replace("３.５", "3.5")


def test_chinese_does_not_match_a_different_answer():
    assert not exact_match("蓝色", "红色")
    assert vqa_accuracy("红色。", ["红色"]) == 1.0


@pytest.mark.parametrize("matching, expected", [(10, 1.0), (4, 1.0), (3, 0.9), (2, 0.6), (1, 0.3), (0, 0.0)])
def test_vqa_accuracy_is_the_leave_one_annotator_out_mean(matching, expected):
    answers = ["2"] * matching + ["3"] * (10 - matching)
    assert vqa_accuracy("Two.", answers) == pytest.approx(expected)


def test_vqa_accuracy_with_fewer_answers():
    assert vqa_accuracy("the cat", ["cat"]) == 1.0        # one answer: exact match
    assert vqa_accuracy("dog", ["cat"]) == 0.0
    assert vqa_accuracy("cat", ["cat", "cat"]) == 1.0     # all the others agree
    assert vqa_accuracy("cat", ["cat", "dog"]) == 0.5
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("cat", [])


def test_summarise_breaks_down_by_question_and_answer_type():
    rows = [
        {"accuracy": 1.0, "exact": True, "question_type": "what color", "answer_type": "other"},
        {"accuracy": 0.3, "exact": False, "question_type": "what color", "answer_type": "other"},
        {"accuracy": 0.9, "exact": True, "question_type": "how many", "answer_type": "number"},
        {"accuracy": 0.0, "exact": False},
    ]
    out = summarise(rows)
    assert out["n"] == 4
    assert out["accuracy"] == pytest.approx(2.2 / 4)
    assert out["exact_match"] == 0.5
    assert out["by_question_type"]["what color"] == {"n": 2, "accuracy": pytest.approx(0.65), "exact_match": 0.5}
    assert out["by_question_type"]["how many"] == {"n": 1, "accuracy": 0.9, "exact_match": 1.0}
    assert out["by_answer_type"]["number"]["n"] == 1 and out["by_answer_type"]["other"]["n"] == 2
    assert summarise([]) == {"n": 0, "accuracy": 0.0, "exact_match": 0.0, "by_question_type": {}, "by_answer_type": {}}
    with pytest.raises(ValueError, match="row 0 has no 'accuracy'"):
        summarise([{"exact": True}])


# --- captions ----------------------------------------------------------------------------------

REFS = {
    "1": ["A cat sits on a mat.", "a cat on the mat"],
    "2": ["A dog runs in the park.", "dog running in a park"],
    "3": ["Two birds on a wire.", "birds sitting on a wire"],
    "4": ["A red car parked on the street.", "a red car on a street"],
}
REFS_ZH = {
    "1": ["一只猫坐在垫子上。", "垫子上有一只猫"],
    "2": ["一只狗在公园里奔跑。", "公园里有一只狗在跑"],
    "3": ["电线上有两只鸟。", "两只鸟停在电线上"],
}


def test_tokenize():
    assert tokenize("A dog's ball, well-known!") == "a dogs ball well known"
    assert tokenize("一只猫，坐在垫子上。") == "一 只 猫 坐 在 垫 子 上"
    assert tokenize("穿着NBA T恤的人") == "穿 着 nba t 恤 的 人"        # Latin runs stay whole in auto
    assert tokenize("穿着NBA T恤", "chars") == "穿 着 n b a t 恤"
    assert tokenize("一只猫 坐着", "whitespace") == "一只猫 坐着"
    with pytest.raises(ValueError, match="unknown segmenter"):
        tokenize("x", "jieba")  # type: ignore[arg-type]


def test_identical_captions_score_high_and_a_wrong_one_lower():
    perfect = caption_scores({i: refs[0] for i, refs in REFS.items()}, REFS)
    assert perfect["n"] == 4
    assert perfect["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["cider_d"] > 1.0
    wrong = caption_scores({**{i: refs[0] for i, refs in REFS.items()}, "2": "a red car on a street"}, REFS)
    assert wrong["bleu_4"] < perfect["bleu_4"] and wrong["cider_d"] < perfect["cider_d"]


def test_chinese_captions_are_scored_on_characters():
    perfect = caption_scores({i: refs[1] for i, refs in REFS_ZH.items()}, REFS_ZH)
    assert perfect["bleu_4"] == pytest.approx(1.0, abs=1e-6) and perfect["cider_d"] > 1.0
    wrong = caption_scores({"1": "一辆红色的汽车", "2": "公园里有一只狗在跑", "3": "两只鸟停在电线上"}, REFS_ZH)
    assert wrong["cider_d"] < perfect["cider_d"]


def test_caption_ids_without_references_are_named():
    with pytest.raises(ValueError, match=r"no references: '9', 'x'"):
        caption_scores({"1": "a cat", "9": "a dog", "x": "a bird"}, REFS)
    with pytest.raises(ValueError, match="non-empty list"):
        caption_scores({"1": "a cat"}, {"1": []})


# --- multiple choice ---------------------------------------------------------------------------

PNG = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + b"\0" * 200_000
).decode()
"""A PNG header padded out to ~270 kB of base64: more than csv's default field limit."""


def _write_tsv(path, rows, header=("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image",
                                   "l2-category")):
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def test_an_mmbench_tsv_round_trips(tmp_path):
    path = _write_tsv(tmp_path / "mmb.tsv", [
        [1, "图中是什么动物？", "nan", "猫", "狗", "鸟", "鱼", "A", "识别", PNG, "感知"],
        [2, 'He said "hi"\tthen?', "一段提示", "是", "否", "", "", "b", "推理", "", "nan"],
        [1000001, "图中是什么动物？", "", "狗", "鸟", "鱼", "猫", "D", "识别", "1", "感知"],  # a stored copy
    ])
    items = read_mmbench_tsv(path)
    assert [it.index for it in items] == [1, 2]
    first, second = items
    assert first == ChoiceItem(1, "图中是什么动物？", "", [("A", "猫"), ("B", "狗"), ("C", "鸟"), ("D", "鱼")], "A", "识别",
                               PNG, "感知")
    assert base64.b64decode(first.image_b64).startswith(b"\x89PNG")
    assert second.question == 'He said "hi"\tthen?' and second.hint == "一段提示"
    assert second.options == [("A", "是"), ("B", "否")] and second.answer == "B" and second.image_b64 is None
    copies = read_mmbench_tsv(path, keep_copies=True)
    assert copies[2].index == 1000001 and copies[2].image_b64 == PNG   # the copy's image is its original's


@pytest.mark.parametrize("row, message", [
    ([3, "q", "", "x", "", "z", "", "A", "c", "", ""], r"line 2: options A, C are filled"),
    ([3, "q", "", "x", "", "", "", "A", "c", "", ""], r"line 2: 1 option\(s\)"),
    ([3, "q", "", "x", "y", "", "", "C", "c", "", ""], r"line 2: answer 'C' is not one of the options A, B"),
    ([3, "", "", "x", "y", "", "", "A", "c", "", ""], r"line 2: empty question"),
    ([3, "q", "", "x", "y"], r"line 2: 5 fields, the header has 11"),
    ([3, "q", "", "x", "y", "", "", "A", "c", "77", ""], r"line 2: image refers to row index 77"),
])
def test_a_bad_tsv_row_names_the_file_and_line(tmp_path, row, message):
    path = _write_tsv(tmp_path / "bad.tsv", [row])
    with pytest.raises(ChoiceFileError, match=message) as err:
        read_mmbench_tsv(path)
    assert str(path) in str(err.value)


def test_a_tsv_without_the_columns_says_which(tmp_path):
    path = _write_tsv(tmp_path / "bad.tsv", [[1, "q", "x"]], header=("index", "question", "A"))
    with pytest.raises(ChoiceFileError, match=r"line 1: header lacks column\(s\) answer, B"):
        read_mmbench_tsv(path)


ITEM = ChoiceItem(7, "哪个是红色？", "", [("A", "苹果"), ("B", "香蕉"), ("C", "葡萄")], "A", "颜色", None)


def test_rotations_move_the_texts_and_the_answer_with_them():
    rots = rotations(ITEM)
    assert [r.rotation for r in rots] == [0, 1, 2]
    assert rots[0] == ITEM
    assert rots[1].options == [("A", "香蕉"), ("B", "葡萄"), ("C", "苹果")] and rots[1].answer == "C"
    assert rots[2].options == [("A", "葡萄"), ("B", "苹果"), ("C", "香蕉")] and rots[2].answer == "B"
    assert all(dict(r.options)[r.answer] == "苹果" for r in rots)


@pytest.mark.parametrize("reply, expected", [
    ("B", "B"), ("B.", "B"), ("B、香蕉", "B"), ("(B)", "B"), ("（B）", "B"), ("选B", "B"), ("答案是B", "B"),
    ("答案：B", "B"), ("Answer: B", "B"), ("The answer is C.", "C"), ("**A**", "A"), ("B 香蕉", "B"),
    ("我认为是香蕉。", "B"),        # an option's text
    ("苹果和香蕉都不是", None),      # two options' texts: no choice
    ("D", None),                   # not one of the options, no text either
    ("A cat", None),               # an English sentence, not the letter A
    ("", None),
])
def test_extract_choice(reply, expected):
    assert extract_choice(reply, ITEM.options) == expected


def test_an_option_inside_a_longer_one_is_not_a_second_match():
    assert extract_choice("是红色", [("A", "红"), ("B", "红色"), ("C", "蓝色")]) == "B"


def test_prompt_for():
    hinted = ChoiceItem(1, "选哪个？", "看图。", [("A", "一"), ("B", "二")], "A", "", None)
    assert prompt_for(hinted) == "看图。\n选哪个？\nA. 一\nB. 二\n请直接回答选项字母。"
    assert prompt_for(ITEM) == "哪个是红色？\nA. 苹果\nB. 香蕉\nC. 葡萄\n请直接回答选项字母。"
    assert prompt_for(ITEM, "option") == "哪个是红色？\nA. 苹果\nB. 香蕉\nC. 葡萄\n请直接回答正确选项的内容。"
    with pytest.raises(ValueError, match="answer_with must be one of"):
        prompt_for(ITEM, "text")


def test_answers_with_the_option_text_score_circular_like_letters():
    """Asked for the option's text, a reply naming the right text is right in every rotation; one that
    names the text standing at letter A is right only where the answer moved there."""
    right_text = dict(ITEM.options)[ITEM.answer]
    by_text = score_circular([ITEM], lambda rot: f"{right_text}。")
    assert by_text["circular_accuracy"] == 1.0
    first = score_circular([ITEM], lambda rot: rot.options[0][1])
    assert first["circular_accuracy"] == 0.0


def test_circular_eval_catches_a_model_that_always_says_a():
    items = [ITEM, ChoiceItem(8, "q", "", [("A", "x"), ("B", "y")], "B", "其他", None)]
    always_a = score_circular(items, lambda rot: "A")
    assert always_a["vanilla_accuracy"] == 0.5 and always_a["circular_accuracy"] == 0.0 and always_a["n"] == 2

    log: list[dict] = []
    perfect = score_circular(items, lambda rot: f"答案是{rot.answer}", log)
    assert perfect["circular_accuracy"] == 1.0 and perfect["vanilla_accuracy"] == 1.0
    assert perfect["by_category"] == {"其他": {"n": 1, "circular_accuracy": 1.0, "vanilla_accuracy": 1.0},
                                      "颜色": {"n": 1, "circular_accuracy": 1.0, "vanilla_accuracy": 1.0}}
    assert len(log) == 5 and all(row["correct"] for row in log)

    knows_apples = score_circular(items, lambda rot: "苹果")  # right on item 7 in every rotation, no text on item 8
    assert knows_apples["circular_accuracy"] == 0.5
    assert knows_apples["by_category"]["颜色"]["circular_accuracy"] == 1.0


def test_circular_eval_of_given_results():
    out = circular_eval({1: [True, True], 2: [True, False], 3: [False, True]}, {1: "a", 2: "a", 3: "b"})
    assert out["circular_accuracy"] == pytest.approx(1 / 3) and out["vanilla_accuracy"] == pytest.approx(2 / 3)
    assert out["by_category"]["a"] == {"n": 2, "circular_accuracy": 0.5, "vanilla_accuracy": 1.0}
    with pytest.raises(ValueError, match="have no results"):
        circular_eval({1: []})


def test_reading_a_tsv_leaves_csvs_field_limit_as_it_was(tmp_path):
    """The limit is process-wide: the url_list reader rejects over-long captions by it."""
    import csv

    from evaluators.choice import read_mmbench_tsv

    path = tmp_path / "mc.tsv"
    path.write_text("index\tquestion\tA\tB\tanswer\tcategory\n1\tq?\tx\ty\tA\tc\n", encoding="utf-8")
    before = csv.field_size_limit()
    assert len(read_mmbench_tsv(path)) == 1
    assert csv.field_size_limit() == before
