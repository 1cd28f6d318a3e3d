"""Tokenisation, label masking, fitting whole turns, shard assignment and length grouping."""

from __future__ import annotations

import pytest

from templates import get_template, render_turns
from training.data import (
    IGNORE,
    RowTooLong,
    encode_turns,
    fitting_turns,
    shard_units,
    subset_files,
    turn_lengths,
)
from training.stream import Collator, ShardStream, StreamConfig
from training.synthetic import write_synthetic_shards
from training.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    texts = ["图中是什么形状？", "它是什么颜色？", "红色", "圆形。", "Below is an instruction ### Response:"] * 5
    return build_tokenizer(texts, vocab_size=400)


def _decode_segments(tok, ids, labels):
    trained = tok.decode([i for i, l in zip(ids, labels) if l != IGNORE])
    masked = tok.decode([i for i, l in zip(ids, labels) if l == IGNORE])
    return trained, masked


def test_labels_cover_exactly_the_responses(tok):
    turns = render_turns(get_template("visualcla"), [("图中是什么形状？", "圆形。"), ("它是什么颜色？", "红色")], image=True)
    enc = encode_turns(tok, turns, images=1, num_image_tokens=3)
    trained, masked = _decode_segments(tok, enc.input_ids, enc.labels)
    assert trained == "圆形。红色</s>"
    assert tok.decode(enc.input_ids) == "<s>" + "".join(t["prompt"] + t["response"] for t in turns).replace(
        "<img><image></img>", "<img>" + "<img_token>" * 3 + "</img>") + "</s>"
    img = tok.convert_tokens_to_ids("<img_token>")
    assert enc.input_ids.count(img) == 3 and all(l == IGNORE for i, l in zip(enc.input_ids, enc.labels) if i == img)
    assert enc.labels[0] == IGNORE and enc.input_ids[0] == tok.bos_token_id


def test_fitting_keeps_whole_leading_turns_and_never_cuts(tok):
    turns = render_turns(get_template("visualcla"), [("图中是什么形状？", "圆形。" * 20), ("它是什么颜色？", "红色")], image=True)
    lengths = turn_lengths(tok, turns, images=1, num_image_tokens=8)
    full = encode_turns(tok, turns, images=1, num_image_tokens=8)
    assert sum(lengths) + 1 == len(full.input_ids)  # + EOS
    assert fitting_turns(lengths, len(full.input_ids)) == 2
    assert fitting_turns(lengths, len(full.input_ids) - 1) == 1  # the last turn goes whole, never a part of it
    assert fitting_turns(lengths, lengths[0]) == 0  # the first turn + EOS does not fit: render rejects the row
    start = full.input_ids.index(tok.convert_tokens_to_ids("<img_token>"))
    assert full.image_spans == [(start, start + 8)]


def test_a_row_that_does_not_fit_stops_training_naming_it(tmp_path, tok):
    from transformers import CLIPImageProcessorPil

    write_synthetic_shards(tmp_path, num_images=8)
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    stream = ShardStream(shard_units(subset_files(tmp_path, "sft")), tok, Collator(tok.pad_token_id, proc),
                         StreamConfig(batch_size=2, max_length=12, num_image_tokens=4, batches_per_rank=1))
    with pytest.raises(RowTooLong, match=r"row sft-\d+: \d+ tokens, max_length is 12.*render the shards again"):
        next(iter(stream))


def test_consumers_read_disjoint_units_and_grouping_cuts_padding(tmp_path, tok):
    from transformers import CLIPImageProcessorPil

    write_synthetic_shards(tmp_path, num_images=48, row_group_rows=8)
    files = subset_files(tmp_path, "sft")
    units = shard_units(files, consumers=4)
    ids = []
    for consumer in range(4):
        ids.append({u.key for u in units[consumer::4]})
    assert set.union(*ids) == {u.key for u in units} and sum(map(len, ids)) == len(units)
    tiny = shard_units(files[:1], consumers=16)  # fewer row groups than consumers: row slices
    assert len(tiny) >= 16 and sum(u.rows for u in tiny) == sum(u.rows for u in shard_units(files[:1]))

    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})

    def padding(grouping):
        collator = Collator(pad_token_id=tok.pad_token_id, image_processor=proc)
        stream = ShardStream(units, tok, collator, StreamConfig(batch_size=4, max_length=256, num_image_tokens=4,
                                                                batches_per_rank=14, length_grouping=grouping))
        stats = [b["padding_stats"] for b in stream]
        assert len(stats) == 14
        return sum(int(s[0]) for s in stats) / sum(int(s[1]) for s in stats)

    assert padding(True) < padding(False)


def test_batches_carry_one_image_per_image_row(tmp_path, tok):
    from transformers import CLIPImageProcessorPil

    write_synthetic_shards(tmp_path, num_images=16)
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    collator = Collator(pad_token_id=tok.pad_token_id, image_processor=proc)
    stream = ShardStream(shard_units(subset_files(tmp_path, "sft")), tok, collator,
                         StreamConfig(batch_size=8, max_length=256, num_image_tokens=4, batches_per_rank=3))
    img = tok.convert_tokens_to_ids("<img_token>")
    for batch in stream:
        n_images = int((batch["input_ids"] == img).sum()) // 4
        if n_images:
            assert batch["pixel_values"].shape == (n_images, 3, 32, 32)
        else:
            assert "pixel_values" not in batch
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
        padding, total, trained, images, samples = batch["padding_stats"].tolist()
        assert (padding, total) == (int((batch["attention_mask"] == 0).sum()), batch["input_ids"].numel())
        assert (trained, images) == (int((batch["labels"] != IGNORE).sum()), n_images)
