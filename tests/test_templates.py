"""Templates render the reference strings byte for byte (../shared/reference/models.md), history
renders the same at training and chat time, and records become the right instructions."""

from __future__ import annotations

import pytest

from templates import (
    IMAGE_BLOCK,
    TEMPLATES,
    TemplateError,
    chat_prompt,
    expand_image_block,
    get_template,
    image_tokens,
    join_turns,
    register_template,
    render_turns,
)
from templates.instructions import HintPolicy, InstructionError, caption_of, instruction_pairs, sharegpt_messages
from templates.rows import ROW_SCHEMA, row_features, yaml_features
from templates.schema import Record
from templates.template import pairs_from_visualcla_history

# models.md, VisualCLA "Prompt (first turn)", with the image as <img> + N x <img_token> + </img>.
VISUALCLA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
N = 32


def visualcla_first(text: str, n: int = N) -> str:
    return f"{VISUALCLA_PREAMBLE}\n\n### Instruction: \n<img>{'<img_token>' * n}</img>\n{text}\n\n### Response:"


def visualcla_later(text: str) -> str:
    return f"### Instruction: \n{text}\n\n### Response:"


def test_visualcla_first_turn_is_the_reference_string():
    turns = render_turns(get_template("visualcla"), [("图中有什么？", "一只猫。")], image=True)
    assert expand_image_block(turns[0]["prompt"], N) == visualcla_first("图中有什么？")
    assert turns[0]["response"] == "一只猫。"


def test_visualcla_history_closes_past_answers_with_a_blank_line():
    pairs = [("图中有什么？", "一只猫。"), ("它是什么颜色？", "橘色。"), ("它在做什么？", "睡觉。")]
    turns = render_turns(get_template("visualcla"), pairs, image=True)
    expected = (
        visualcla_first("图中有什么？") + "一只猫。" + "\n\n"
        + visualcla_later("它是什么颜色？") + "橘色。" + "\n\n"
        + visualcla_later("它在做什么？") + "睡觉。"
    )
    assert expand_image_block(join_turns(turns), N) == expected
    assert turns[1]["prompt"] == "\n\n" + visualcla_later("它是什么颜色？")  # the close is masked with the prompt
    assert [t["prompt"].count(IMAGE_BLOCK) for t in turns] == [1, 0, 0]


def test_visualcla_chat_history_format_renders_like_training():
    history = [{"type": "instruction", "value": "图中有什么？"}, {"type": "response", "value": "一只猫。"}]
    prompt = chat_prompt(get_template("visualcla"), pairs_from_visualcla_history(history), "它是什么颜色？", image=True)
    assert expand_image_block(prompt, 4) == visualcla_first("图中有什么？", 4) + "一只猫。\n\n" + visualcla_later("它是什么颜色？")
    with pytest.raises(TemplateError):
        pairs_from_visualcla_history([{"type": "response", "value": "x"}])


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_chat_prompt_is_the_training_text_up_to_the_answer(name):
    """One code path: the prompt at chat time is byte-identical to the training text before the answer."""
    template = get_template(name)
    image = template.supports_image
    history = [("第一问", "第一答"), ("第二问", "第二答")]
    turns = render_turns(template, [*history, ("第三问", "第三答")], image=image)
    prompt = chat_prompt(template, history, "第三问", image=image)
    assert join_turns(turns) == prompt + turns[-1]["response"]
    assert turns[-1]["response"] == template.response.format(text="第三答")
    assert "第三答" in turns[-1]["response"] and turns[-1]["response"].strip().endswith(template.stop if not
                                                                                     template.eos else "第三答")


def test_llava_v1_matches_the_vicuna_v1_conversation():
    system = ("A chat between a curious human and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the human's questions.")
    turns = render_turns(get_template("llava_v1"), [("What is it?", "A cat."), ("Colour?", "Orange.")], image=True)
    assert join_turns(turns) == f"{system} USER: {IMAGE_BLOCK}\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT: Orange."


def test_llama2_chat_puts_the_system_inside_the_first_inst():
    t = get_template("llama2_chat")
    turns = render_turns(t, [("图里是什么？", "猫。"), ("颜色？", "橘色。")], image=True)
    assert join_turns(turns) == (
        f"[INST] <<SYS>>\n{t.system}\n<</SYS>>\n\n{IMAGE_BLOCK}\n图里是什么？ [/INST] 猫。 </s><s>[INST] 颜色？ [/INST] 橘色。"
    )


def test_ziya_roles_and_image_before_the_prompt():
    turns = render_turns(get_template("ziya"), [("图里是什么？", "猫。"), ("颜色？", "橘色。")], image=True)
    assert join_turns(turns) == f"{IMAGE_BLOCK}<human>:图里是什么？\n<bot>:猫。\n<human>:颜色？\n<bot>:橘色。"


def test_none_is_the_image_then_the_caption():
    turns = render_turns(get_template("none"), [("ignored instruction", "一只猫在睡觉。")], image=True)
    assert turns == [{"prompt": IMAGE_BLOCK, "response": "一只猫在睡觉。"}]
    assert expand_image_block(join_turns(turns), 2) == "<img><img_token><img_token></img>一只猫在睡觉。"


def test_alpaca_is_visualcla_without_the_image_and_refuses_one():
    pairs = [("介绍一下长城。", "长城是……"), ("多长？", "两万多公里。")]
    alpaca = join_turns(render_turns(get_template("alpaca"), pairs, image=False))
    assert alpaca == join_turns(render_turns(get_template("visualcla"), pairs, image=False))
    assert alpaca.startswith(f"{VISUALCLA_PREAMBLE}\n\n{visualcla_later('介绍一下长城。')}长城是……\n\n")
    with pytest.raises(TemplateError, match="no place for an image"):
        render_turns(get_template("alpaca"), pairs, image=True)


def test_registry_names_and_errors():
    assert set(TEMPLATES) == {"none", "alpaca", "visualcla", "llava_v1", "ziya", "llama2_chat", "mistral", "chatml",
                              "llama3"}
    with pytest.raises(KeyError, match="known: alpaca, chatml, llama2_chat"):
        get_template("vicuna")
    with pytest.raises(ValueError, match="already registered"):
        register_template(get_template("ziya"))
    with pytest.raises(TemplateError):
        render_turns(get_template("visualcla"), [], image=False)


def test_image_block_expansion_checks_the_count():
    assert image_tokens(3) == "<img><img_token><img_token><img_token></img>"
    with pytest.raises(ValueError, match="found 0"):
        expand_image_block("no image here", 4)
    with pytest.raises(ValueError, match="found 2"):
        expand_image_block(IMAGE_BLOCK * 2, 4)
    assert expand_image_block(IMAGE_BLOCK * 2, 1, expected=None) == image_tokens(1) * 2
    with pytest.raises(ValueError):
        image_tokens(0)


# ---- records -> instructions -----------------------------------------------------------------

def record(task="vqa", messages=(("<image>\n图中的球是什么颜色？", "红色"),), image="a.jpg", **meta) -> Record:
    msgs = [m for q, a in messages for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    return Record(id="x", source="s", task=task, messages=msgs, image=image, lang="zh", meta=meta)


def test_short_vqa_answers_get_the_hint_long_ones_do_not():
    policy = HintPolicy("请用一个词或短语回答。", 16)
    assert instruction_pairs(record(), policy) == [("图中的球是什么颜色？\n请用一个词或短语回答。", "红色")]
    long_answer = "球是红色的，放在一张木桌上，旁边还有一本书。"
    assert instruction_pairs(record(messages=(("<image>\n描述球。", long_answer),)), policy) == [("描述球。", long_answer)]
    hinted = "图中的球是什么颜色？\n请用一个词或短语回答。"
    assert instruction_pairs(record(messages=((hinted, "红色"),)), policy)[0][0] == hinted  # not twice
    assert instruction_pairs(record(), HintPolicy("", 16))[0][0] == "图中的球是什么颜色？"  # hint switched off
    conv = record(task="conversation", messages=(("<image>\n这是什么？", "猫"),))
    assert instruction_pairs(conv, policy) == [("这是什么？", "猫")]  # only VQA gets the hint


def test_ocr_items_keep_their_text_verbatim():
    rec = record(messages=(("<image>\n  牌子上写着什么？ ", " STOP  "),), kind="ocr")
    assert instruction_pairs(rec, HintPolicy("", 16)) == [("  牌子上写着什么？ ", " STOP  ")]
    trailing = record(messages=(("What does it say?\n<image>", "Open 24h"),), kind="ocr")
    assert instruction_pairs(trailing, HintPolicy("", 16)) == [("What does it say?", "Open 24h")]


@pytest.mark.parametrize("rec, reason", [
    (record(messages=(("<image><image>\n问", "答"),)), "image_marker_count"),
    (record(messages=(("问", "答<image>"),)), "image_marker_position"),  # a marker in an answer
    (record(messages=(("<image>问", "答"), ("<image>\n问", "答"))), "image_marker_count"),  # two markers, one image
    (record(task="text", messages=(("<image>\n问", "答"),), image=None), "image_marker_without_image"),
    (record(messages=(("<image>\n问 <img_token>", "答"),)), "reserved_token"),
    (record(messages=(("<image>\n问", "</img>"),)), "reserved_token"),
    (record(messages=(("<image>\n问", "  "),)), "empty_turn"),
    (record(task="text", messages=(("  ", "答"),), image=None), "empty_turn"),
])
def test_bad_conversations_are_refused_with_a_reason(rec, reason):
    with pytest.raises(InstructionError) as err:
        instruction_pairs(rec)
    assert err.value.reason == reason


def test_roles_must_alternate_user_then_assistant():
    rec = record()
    rec.messages = [{"role": "assistant", "content": "答"}, {"role": "user", "content": "问"}]
    with pytest.raises(InstructionError, match="bad_roles"):
        instruction_pairs(rec)
    rec.messages = rec.messages[:1]
    with pytest.raises(InstructionError, match="bad_roles"):
        instruction_pairs(rec)


def test_caption_and_sharegpt_views():
    cap = record(task="caption", messages=(("<image>", "一只猫在窗台上睡觉。"),))
    assert caption_of(cap) == "一只猫在窗台上睡觉。"
    with pytest.raises(InstructionError, match="caption_not_single_turn"):
        caption_of(record(task="caption", messages=(("<image>", "a"), ("b", "c"))))
    assert sharegpt_messages([("", "猫")], image=True)[0] == {"role": "user", "content": "<image>"}
    msgs = sharegpt_messages([("问一", "答一"), ("问二", "答二")], image=True)
    assert [m["content"] for m in msgs] == ["<image>\n问一", "答一", "问二", "答二"]
    assert sharegpt_messages([("问", "答")], image=False)[0]["content"] == "问"


def test_row_schema_matches_the_hf_features():
    features = row_features()
    assert features.arrow_schema.remove_metadata().equals(ROW_SCHEMA.remove_metadata())
    assert yaml_features() == features._to_yaml_list()
    assert type(features["image"]).__name__ == "Image"
