"""Every reader on small files in the real layouts (written here), through `read_source`."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.recipe import SourceConfig
from pipelines.core.rejects import RejectWriter
from pipelines.sources import READERS, read_source
from pipelines.core.stats import StepStats
from templates.schema import make_id


def read(tmp_path: Path, **cfg) -> tuple[list, list[dict], StepStats]:
    """(records, rejection rows, stats) of one source."""
    cfg.setdefault("name", "src")
    stats = StepStats("read")
    with RejectWriter(tmp_path / "rejected", "read", stats) as rejects:
        records = list(read_source(SourceConfig(**cfg), rejects))
    rows = [json.loads(line) for line in (tmp_path / "rejected" / "read.jsonl").read_text().splitlines()]
    return records, rows, stats


def write_json(path: Path, data) -> str:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_registry_covers_every_kind():
    from pipelines.recipe import SOURCE_KINDS

    assert set(READERS) == set(SOURCE_KINDS)


# -- URL lists ----------------------------------------------------------------------------------
URL_ROWS = [
    {"URL": "https://img.example/a.jpg", "TEXT": "a red square", "key": "k1", "similarity": 0.31},
    {"URL": "https://img.example/b.jpg", "TEXT": "", "key": "k2", "similarity": 0.2},  # empty caption
    {"URL": "https://img.example/c.jpg", "TEXT": "a blue circle", "key": "k3", "similarity": 0.4},
]


def _write_table(path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(URL_ROWS), path, row_group_size=1)
    elif fmt in ("csv", "tsv"):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(URL_ROWS[0]), delimiter="\t" if fmt == "tsv" else ",")
            w.writeheader()
            w.writerows(URL_ROWS)
    elif fmt == "jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in URL_ROWS)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in URL_ROWS))


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl", "jsonl.gz"])
def test_url_list_formats_with_custom_columns(tmp_path, fmt):
    path = tmp_path / f"urls.{fmt}"
    _write_table(path, fmt)
    records, rows, stats = read(tmp_path, kind="url_list", path=str(path), url_col="URL", caption_col="TEXT", id_col="key")
    assert [r.image for r in records] == ["https://img.example/a.jpg", "https://img.example/c.jpg"]
    assert records[0].messages == [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "a red square"}]
    assert records[0].id == make_id("src", "k1") and records[0].task == "caption" and records[0].lang == "en"
    assert float(records[0].meta["similarity"]) == pytest.approx(0.31)  # other columns kept for lineage
    assert [(r["reason"], r["location"]) for r in rows] == [
        ("missing_field", f"{path}[1]" if fmt == "parquet" else f"{path}:{3 if fmt in ('csv', 'tsv') else 2}")
    ]
    assert (stats.read, stats.rejected) == (3, {"missing_field": 1})


def test_url_list_folder_reads_files_in_order_and_ids_are_content_hashes(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "b.jsonl").write_text(json.dumps({"url": "http://h/2.jpg", "caption": "two"}) + "\n")
    (folder / "a.jsonl").write_text(json.dumps({"url": "http://h/1.jpg", "caption": "one"}) + "\n")
    (folder / "notes.txt").write_text("ignored")
    records, _, _ = read(tmp_path, kind="url_list", path=str(folder))
    assert [r.messages[1]["content"] for r in records] == ["one", "two"]
    again, _, _ = read(tmp_path, kind="url_list", path=str(folder))
    assert [r.id for r in records] == [r.id for r in again]  # stable, not a counter
    assert records[0].id != records[1].id


def test_url_list_parquet_is_read_in_batches(tmp_path, monkeypatch):
    from pipelines.sources import url_list

    monkeypatch.setattr(url_list, "PARQUET_BATCH_ROWS", 2)
    path = tmp_path / "u.parquet"
    pq.write_table(pa.table({"url": [f"http://h/{i}.jpg" for i in range(5)], "caption": ["c"] * 5}), path)
    records, _, _ = read(tmp_path, kind="url_list", path=str(path))
    assert len({r.image for r in records}) == 5


def test_url_list_relative_urls_resolve_against_image_root(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"url": "sub/1.jpg", "caption": "c"}) + "\n" + json.dumps({"url": "2.jpg", "caption": "d"}))
    records, _, _ = read(tmp_path, kind="url_list", path=str(path), image_root="https://cdn.example/imgs")
    assert [r.image for r in records] == ["https://cdn.example/imgs/sub/1.jpg", "https://cdn.example/imgs/2.jpg"]


def test_zh_pairs_are_chinese_unless_the_recipe_says_otherwise(tmp_path):
    path = tmp_path / "wukong.csv"
    path.write_text("url,caption\nhttp://h/1.jpg,一只红色的猫\n", encoding="utf-8")
    records, _, _ = read(tmp_path, kind="zh_pairs", path=str(path))
    assert (records[0].lang, records[0].messages[1]["content"], records[0].task) == ("zh", "一只红色的猫", "caption")
    records, _, _ = read(tmp_path, kind="zh_pairs", path=str(path), lang="zh-Hant")
    assert records[0].lang == "zh-Hant"


# -- COCO captions --------------------------------------------------------------------------------
COCO = {
    "info": {"year": 2014}, "licenses": [{"id": 1}],
    "images": [
        {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "coco_url": "http://images.cocodataset.org/val2014/COCO_val2014_000000000009.jpg"},
        {"id": 25, "file_name": "COCO_val2014_000000000025.jpg", "coco_url": "http://images.cocodataset.org/val2014/COCO_val2014_000000000025.jpg"},
    ],
    "annotations": [
        {"id": 101, "image_id": 9, "caption": "A plate of food. "},
        {"id": 102, "image_id": 9, "caption": "Broccoli on a plate."},
        {"id": 103, "image_id": 25, "caption": "A giraffe."},
        {"id": 104, "image_id": 77, "caption": "An image the file does not list."},
    ],
}


def test_coco_captions_with_image_root(tmp_path):
    path = write_json(tmp_path / "captions_val2014.json", COCO)
    records, rows, _ = read(tmp_path, kind="coco_captions", path=path, image_root="/data/coco/val2014")
    assert [(r.image, r.messages[1]["content"]) for r in records] == [
        ("/data/coco/val2014/COCO_val2014_000000000009.jpg", "A plate of food."),
        ("/data/coco/val2014/COCO_val2014_000000000009.jpg", "Broccoli on a plate."),
        ("/data/coco/val2014/COCO_val2014_000000000025.jpg", "A giraffe."),
    ]
    assert records[0].id == make_id("src", 101) and records[0].meta == {"image_id": 9, "annotation_id": 101}
    assert [(r["reason"], r["location"]) for r in rows] == [("missing_field", f"{path}[3]")]


def test_coco_captions_without_root_use_coco_url_or_template(tmp_path):
    path = write_json(tmp_path / "captions.json", COCO)
    records, _, _ = read(tmp_path, kind="coco_captions", path=path)
    assert records[2].image == "http://images.cocodataset.org/val2014/COCO_val2014_000000000025.jpg"
    records, _, _ = read(tmp_path, kind="coco_captions", path=path, image_root="/x", image_template="{image_id:012d}.jpg")
    assert records[2].image == "/x/000000000025.jpg"


# -- VQAv2 ----------------------------------------------------------------------------------------
def _vqa_files(tmp_path: Path, shuffle: bool = False) -> tuple[str, str]:
    questions = [{"image_id": 9, "question": "What is on the plate?", "question_id": 9000},
                 {"image_id": 9, "question": "Is it hot?", "question_id": 9001},
                 {"image_id": 25, "question": "What animal?", "question_id": 25000},
                 {"image_id": 30, "question": "Unanswered?", "question_id": 30000}]
    def ann(qid, image_id, answers, mc):
        return {"question_id": qid, "image_id": image_id, "question_type": "what", "answer_type": "other",
                "multiple_choice_answer": mc,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}
    annotations = [
        ann(9000, 9, ["broccoli"] * 6 + ["food"] * 4, "broccoli"),
        ann(9001, 9, ["yes"] * 5 + ["no"] * 5, "no"),  # tie: the official answer decides
        ann(25000, 25, ["giraffe"] * 9 + ["zebra"], "giraffe"),
    ]
    if shuffle:
        annotations = annotations[::-1]
    q = write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json",
                   {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
                    "data_subtype": "val2014", "questions": questions})
    a = write_json(tmp_path / "v2_mscoco_val2014_annotations.json",
                   {"info": {}, "license": {}, "data_subtype": "val2014", "annotations": annotations})
    return q, a


@pytest.mark.parametrize("shuffle", [False, True])
def test_vqav2_joins_keeps_majority_and_all_answers(tmp_path, shuffle):
    q, a = _vqa_files(tmp_path, shuffle)
    records, rows, stats = read(tmp_path, kind="vqav2", path=q, annotations=a, image_root="/coco/val2014")
    by_qid = {r.meta["question_id"]: r for r in records}
    assert set(by_qid) == {9000, 9001, 25000}
    assert by_qid[9000].messages == [{"role": "user", "content": "<image>\nWhat is on the plate?"},
                                     {"role": "assistant", "content": "broccoli"}]
    assert by_qid[9001].messages[1]["content"] == "no"
    assert len(by_qid[25000].meta["answers"]) == 10 and by_qid[25000].meta["answers"][9]["answer"] == "zebra"
    assert by_qid[9000].image == "/coco/val2014/COCO_val2014_000000000009.jpg"  # official name by default
    assert by_qid[9000].task == "vqa" and by_qid[9000].id == make_id("src", 9000)
    assert [(r["reason"], r["location"]) for r in rows] == [("missing_annotation", f"{q}[3]")]
    assert stats.read == 4


def test_vqav2_picks_the_file_naming_that_exists(tmp_path):
    q, a = _vqa_files(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    (images / "000009.jpg").write_bytes(b"x")  # the demo corpus names images {image_id:06d}.jpg
    records, _, _ = read(tmp_path, kind="vqav2", path=q, annotations=a, image_root=str(images))
    assert records[0].image == str(images / "000009.jpg")
    assert records[2].image == str(images / "000025.jpg")
    records, _, _ = read(tmp_path, kind="vqav2", path=q, annotations=a, image_root=str(images),
                         image_template="http://cdn/{image_id}.png")
    assert records[0].image == "http://cdn/9.png"


def test_vqav2_without_annotations_is_a_config_error(tmp_path):
    q, _ = _vqa_files(tmp_path)
    with pytest.raises(ValueError, match="annotations"):
        read(tmp_path, kind="vqav2", path=q)


# -- GQA and TextVQA ----------------------------------------------------------------------------
def test_gqa_object_keyed_by_question_id(tmp_path):
    path = write_json(tmp_path / "val_balanced_questions.json", {
        "201307251": {"imageId": "2354786", "question": "Is the sky dark?", "answer": "yes",
                      "fullAnswer": "Yes, the sky is dark.", "types": {"structural": "verify"}, "isBalanced": True},
        "201640614": {"imageId": "n161313", "question": "Who is wearing a shirt?", "answer": "girl",
                      "fullAnswer": "The girl is wearing a shirt."},
        "201640615": {"imageId": "n161313", "answer": "no question"},
    })
    records, rows, _ = read(tmp_path, kind="gqa", path=path, image_root="/gqa/images")
    assert [(r.id, r.image, r.messages[1]["content"]) for r in records] == [
        (make_id("src", "201307251"), "/gqa/images/2354786.jpg", "yes"),
        (make_id("src", "201640614"), "/gqa/images/n161313.jpg", "girl"),
    ]
    assert records[0].meta["fullAnswer"] == "Yes, the sky is dark." and records[0].task == "vqa"
    assert [(r["reason"], r["location"]) for r in rows] == [("missing_field", f"{path}['201640615']")]


def test_textvqa_is_vqa_tagged_ocr(tmp_path):
    path = write_json(tmp_path / "TextVQA_0.5.1_val.json", {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
        "data": [{"question": "what brand is this?", "image_id": "003a8ae2ef43b901", "image_classes": ["Bottle"],
                  "flickr_original_url": "https://farm2.staticflickr.com/1/x_o.jpg", "flickr_300k_url": "https://x",
                  "image_width": 1024, "image_height": 664,
                  "answers": ["nokia"] * 7 + ["toshiba"] * 3, "question_tokens": ["what"], "question_id": 34602,
                  "set_name": "val", "ocr_tokens": ["NOKIA", "", 3, "Connecting"]}],
    })
    records, _, _ = read(tmp_path, kind="textvqa", path=path, image_root="/textvqa/train_images")
    r = records[0]
    assert (r.task, r.meta["kind"], r.messages[1]["content"]) == ("vqa", "ocr", "nokia")
    assert r.image == "/textvqa/train_images/003a8ae2ef43b901.jpg" and len(r.meta["answers"]) == 10
    assert r.meta["ocr_tokens"] == ["NOKIA", "Connecting"]  # context for the generate step
    records, _, _ = read(tmp_path, kind="textvqa", path=path)
    assert records[0].image == "https://farm2.staticflickr.com/1/x_o.jpg"


# -- LLaVA, ShareGPT, Alpaca -----------------------------------------------------------------------
LLAVA = [
    {"id": "000000033471", "image": "000000033471.jpg", "conversations": [
        {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features an advertisement."}]},
    {"id": "GCC_train_002582585", "image": ["GCC_train_002582585.jpg"], "conversations": [
        {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
        {"from": "gpt", "value": "olive oil is a healthy ingredient used liberally ."}]},
    {"id": "sharegpt_1", "conversations": [
        {"from": "human", "value": "Tell me a joke."}, {"from": "gpt", "value": "No."}]},
    {"id": "two", "image": ["a.jpg", "b.jpg"], "conversations": [  # LLaVA-Interleave: images in any user turn
        {"from": "human", "value": "<image> first"}, {"from": "gpt", "value": "ok"},
        {"from": "human", "value": "and <image>, compare"}, {"from": "gpt", "value": "same"}]},
    {"id": "three", "image": ["a.jpg", "b.jpg"], "conversations": [
        {"from": "human", "value": "<image> compare"}, {"from": "gpt", "value": "same"}]},
    {"id": "many", "image": [f"{i}.jpg" for i in range(17)], "conversations": [
        {"from": "human", "value": "<image>" * 17}, {"from": "gpt", "value": "many"}]},
]


def test_llava_layout(tmp_path):
    path = write_json(tmp_path / "llava_instruct_150k.json", LLAVA)
    records, rows, _ = read(tmp_path, kind="llava", path=path, image_root="/coco/train2017")
    conv, cap, text, two = records
    assert conv.task == "conversation" and len(conv.messages) == 4 and conv.image == "/coco/train2017/000000033471.jpg"
    assert two.task == "conversation" and two.image == ["/coco/train2017/a.jpg", "/coco/train2017/b.jpg"]
    assert [m["role"] for m in conv.messages] == ["user", "assistant", "user", "assistant"]
    assert conv.id == make_id("src", "000000033471")
    assert cap.task == "caption" and cap.image == "/coco/train2017/GCC_train_002582585.jpg"
    assert text.task == "text" and text.image is None
    assert [(r["reason"], r["location"]) for r in rows] == [("image_count_mismatch", f"{path}[4]"),
                                                             ("too_many_images", f"{path}[5]")]
    assert "1 <image> placeholder(s) for 2 image(s)" in rows[0]["detail"]


def test_llava_image_template_rewrites_the_file_name(tmp_path):
    path = write_json(tmp_path / "llava_instruct_150k.json", LLAVA[:2])
    records, _, _ = read(tmp_path, kind="llava", path=path, image_root="/coco/train2014",
                         image_template="COCO_train2014_{image}")
    assert records[0].image == "/coco/train2014/COCO_train2014_000000033471.jpg"
    records, rows, _ = read(tmp_path, kind="llava", path=path, image_template="{image_id:06d}.jpg")
    assert records == [] and {r["reason"] for r in rows} == {"image_template_error"}
    assert "available fields: ['image']" in rows[0]["detail"]


def test_template_integer_specs_on_string_ids(tmp_path):
    path = write_json(tmp_path / "q.json", {
        "1": {"imageId": "2354786", "question": "q?", "answer": "a"},
        "2": {"imageId": "000123", "question": "q?", "answer": "a"},
        "3": {"imageId": "n161313", "question": "q?", "answer": "a"},
    })
    records, rows, _ = read(tmp_path, kind="gqa", path=path, image_template="{image_id:08d}.jpg")
    assert [r.image for r in records] == ["02354786.jpg", "00000123.jpg"]
    assert [(r["reason"], r["location"]) for r in rows] == [("image_template_error", f"{path}['3']")]
    records, _, _ = read(tmp_path, kind="gqa", path=path)
    assert [r.image for r in records] == ["2354786.jpg", "000123.jpg", "n161313.jpg"]  # zeros kept


def test_llava_task_override_and_part_from_file_name(tmp_path):
    path = write_json(tmp_path / "detail_23k.json", LLAVA[:1])
    records, _, _ = read(tmp_path, kind="llava", path=path, task="vqa")
    assert records[0].task == "vqa" and records[0].meta["part"] == "detail"


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_sharegpt_messages_and_images(tmp_path, suffix):
    items = [
        {"messages": [{"role": "system", "content": "You are helpful."},
                      {"role": "user", "content": "<image>What is shown?"},
                      {"role": "assistant", "content": "A cat."}], "images": ["imgs/cat.jpg"]},
        {"id": "t1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    path = tmp_path / f"sharegpt{suffix}"
    path.write_text(json.dumps(items) if suffix == ".json" else "\n".join(json.dumps(i) for i in items))
    records, rows, _ = read(tmp_path, kind="sharegpt", path=str(path), image_root="/data")
    assert rows == []
    cat, hi = records
    assert (cat.task, cat.image, cat.meta["system"]) == ("conversation", "/data/imgs/cat.jpg", "You are helpful.")
    assert cat.messages[0] == {"role": "user", "content": "<image>What is shown?"}
    assert (hi.task, hi.id) == ("text", make_id("src", "t1"))


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_alpaca_text_only(tmp_path, suffix):
    items = [{"instruction": "把这句话翻译成英文", "input": "你好", "output": "Hello"},
             {"instruction": "说出三种颜色", "input": "", "output": "红、绿、蓝"},
             {"instruction": "说出三种颜色", "input": "", "output": "红、绿、蓝"},  # duplicate
             {"instruction": "缺少输出"}]
    path = tmp_path / f"alpaca_zh{suffix}"
    path.write_text(json.dumps(items, ensure_ascii=False) if suffix == ".json"
                    else "\n".join(json.dumps(i, ensure_ascii=False) for i in items), encoding="utf-8")
    records, rows, stats = read(tmp_path, kind="alpaca", path=str(path), lang="zh")
    assert [r.messages[0]["content"] for r in records] == ["把这句话翻译成英文\n你好", "说出三种颜色"]
    assert all(r.task == "text" and r.image is None and r.lang == "zh" for r in records)
    assert stats.rejected == {"duplicate_id": 1, "missing_field": 1}
    where = {r["reason"]: r["location"] for r in rows}
    assert where["duplicate_id"] == (f"{path}[2]" if suffix == ".json" else f"{path}:3")


def test_limit_caps_items_read(tmp_path):
    path = write_json(tmp_path / "a.json", [{"instruction": f"i{n}", "output": "o"} for n in range(10)])
    records, _, stats = read(tmp_path, kind="alpaca", path=path, limit=3)
    assert len(records) == 3 and stats.read == 3


# -- files saved by Windows tools: byte-order marks, UTF-16 ---------------------------------------
def _reencode(path: Path, encoding: str) -> None:
    """Rewrite a UTF-8 file (gzipped or not) in `encoding`; "utf-8-sig" and "utf-16" write a BOM."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        text = f.read().decode("utf-8")
    with opener(path, "wb") as f:
        f.write(text.encode(encoding))


def _layout(tmp_path: Path, case: str) -> dict:
    """A small valid-and-invalid source of each kind in plain UTF-8: the SourceConfig fields."""
    if case.startswith("url_list."):
        fmt = case.split(".", 1)[1]
        _write_table(path := tmp_path / f"urls.{fmt}", fmt)
        return {"kind": "url_list", "path": str(path), "url_col": "URL", "caption_col": "TEXT", "id_col": "key"}
    if case == "zh_pairs.csv":
        (path := tmp_path / "wukong.csv").write_text("url,caption\nhttp://h/1.jpg,一只红色的猫\nhttp://h/2.jpg,\n",
                                                     encoding="utf-8")
        return {"kind": "zh_pairs", "path": str(path)}
    if case == "vqav2":
        q, a = _vqa_files(tmp_path)
        return {"kind": "vqav2", "path": q, "annotations": a}
    data = {
        "coco_captions": COCO, "llava": LLAVA, "alpaca": [{"instruction": "说出三种颜色", "output": "红、绿、蓝"},
                                                          {"instruction": "缺少输出"}],
        "gqa": {"1": {"imageId": "2354786", "question": "Is the sky dark?", "answer": "yes"}, "2": {"imageId": "x"}},
        "textvqa": {"data": [{"question": "what brand?", "image_id": "003a", "answers": ["nokia"] * 3,
                              "question_id": 34602}]},
    }
    if case == "sharegpt.jsonl":
        (path := tmp_path / "chats.jsonl").write_text("\n".join(json.dumps(i) for i in LLAVA) + "\n")
        return {"kind": "sharegpt", "path": str(path)}
    return {"kind": case, "path": write_json(tmp_path / f"{case}.json", data[case])}


ENCODING_CASES = ["url_list.csv", "url_list.tsv", "url_list.jsonl", "url_list.jsonl.gz", "zh_pairs.csv", "vqav2",
                  "coco_captions", "llava", "alpaca", "gqa", "textvqa", "sharegpt.jsonl"]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le"])
@pytest.mark.parametrize("case", ENCODING_CASES)
def test_every_reader_reads_files_with_a_byte_order_mark_or_in_utf16_as_it_reads_utf8(tmp_path, case, encoding):
    """Notepad, Excel and PowerShell save UTF-8 with a BOM or UTF-16 (with a BOM; "utf-16-le": without,
    found from the NULs). Was: a JSON file was one `invalid_json` row ("found '\\ufeff'"), a CSV's first
    column was named '\\ufeffurl' so every row was `missing_field`, a JSONL lost its first line."""
    cfg = _layout(tmp_path, case)
    plain, plain_rows, plain_stats = read(tmp_path / "plain", **cfg)
    assert plain, "the UTF-8 layout must hold records for the comparison to mean something"
    for key in ("path", "annotations"):
        if key in cfg:
            _reencode(Path(cfg[key]), encoding)
    records, rows, stats = read(tmp_path / "bom", **cfg)
    assert [r.to_dict() for r in records] == [r.to_dict() for r in plain]
    assert [(r["reason"], r["location"]) for r in rows] == [(r["reason"], r["location"]) for r in plain_rows]
    assert stats.read == plain_stats.read


def test_a_utf16_file_with_a_bad_last_byte_is_read_up_to_it_and_the_byte_is_a_rejection(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(json.dumps({"instruction": "甲", "output": "乙"}).encode("utf-16") + "\n".encode("utf-16-le")
                     + json.dumps({"instruction": "丙", "output": "丁"}).encode("utf-16-le") + b"\x00")
    records, rows, stats = read(tmp_path, kind="alpaca", path=str(path))
    assert [r.messages[0]["content"] for r in records] == ["甲"]
    assert [(r["reason"], r["location"]) for r in rows] == [("invalid_json", f"{path}:2")]
    assert stats.read == 2


def test_files_with_a_byte_order_mark_concatenated_keep_every_line(tmp_path):
    """`type a.jsonl b.jsonl > all.jsonl` on Windows: the second file's BOM starts a line mid-file.
    Was: that line was `invalid_json` ("Unexpected UTF-8 BOM")."""
    part = lambda i: "\ufeff" + json.dumps({"url": f"http://h/{i}.jpg", "caption": f"c{i}"}) + "\n"  # noqa: E731
    (jsonl := tmp_path / "all.jsonl").write_text(part(1) + part(2), encoding="utf-8")
    (tsv := tmp_path / "all.tsv").write_text("\ufeffc1\thttp://h/1.jpg\n\ufeffc2\thttp://h/2.jpg\n", encoding="utf-8")
    for path, columns in ((jsonl, None), (tsv, ["caption", "url"])):
        records, rows, _ = read(tmp_path, kind="url_list", path=str(path), columns=columns)
        assert rows == [] and [r.image for r in records] == ["http://h/1.jpg", "http://h/2.jpg"]


# -- CSV/TSV: header or not, one line one row -----------------------------------------------------
CC3M = "a very typical bus station\thttp://lh6.ggpht.com/bus.jpg\nsleeping cat on a sofa\thttps://i.example/cat.jpg\n" \
       "the player \"scores\" a goal\thttp://x.example/goal.png\n"
"""Conceptual Captions' official TSV: no header, `caption<TAB>url` (CC12M: `url<TAB>caption`)."""


@pytest.mark.parametrize("columns", [None, ["caption", "url"]])
@pytest.mark.parametrize("order", ["cc3m", "cc12m"])
def test_cc3m_and_cc12m_tsv_without_a_header_are_read_whole(tmp_path, capfd, order, columns):
    """Was: line 1 silently became the header (neither kept nor rejected) and every other line was
    rejected "column 'url' is missing"."""
    lines = CC3M.splitlines()
    if order == "cc12m":
        lines = ["\t".join(line.split("\t")[::-1]) for line in lines]
        columns = columns and columns[::-1]
    path = tmp_path / "Train_GCC-training.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records, rows, stats = read(tmp_path, kind="url_list", path=str(path), columns=columns)
    assert [(r.messages[1]["content"], r.image) for r in records] == [
        ("a very typical bus station", "http://lh6.ggpht.com/bus.jpg"), ("sleeping cat on a sofa", "https://i.example/cat.jpg"),
        ('the player "scores" a goal', "http://x.example/goal.png"),  # TSV has no quoting: quotes are text
    ]
    assert rows == [] and stats.read == 3
    if columns is None:
        assert "no header row" in capfd.readouterr().err


def test_a_headerless_file_that_cannot_be_guessed_rejects_every_line_saying_to_set_columns(tmp_path):
    path = tmp_path / "cc.tsv"
    path.write_text("".join(f"caption {i}\thttp://h/{i}.jpg\tkey{i}\n" for i in range(3)))
    records, rows, stats = read(tmp_path, kind="url_list", path=str(path))
    assert records == [] and stats.read == 3 and stats.rejected == {"unknown_columns": 3}
    assert [r["location"] for r in rows] == [f"{path}:{n}" for n in (1, 2, 3)]
    assert "set `columns:` on source 'src'" in rows[0]["detail"] and "no header row" in rows[0]["detail"]
    records, rows, _ = read(tmp_path, kind="url_list", path=str(path), columns=["caption", "url", "key"])
    assert [(r.image, r.meta) for r in records] == [(f"http://h/{i}.jpg", {"key": f"key{i}"}) for i in range(3)]


def test_a_header_naming_none_of_the_columns_is_itself_a_rejection_row(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("link,text\nhttp://h/1.jpg,one\n")
    records, rows, stats = read(tmp_path, kind="url_list", path=str(path))
    assert records == [] and stats.read == 2 and [r["location"] for r in rows] == [f"{path}:1", f"{path}:2"]
    assert "names neither url_col 'url' nor caption_col 'caption'" in rows[0]["detail"]
    records, _, _ = read(tmp_path, kind="url_list", path=str(path), url_col="link", caption_col="text")
    assert len(records) == 1


def test_columns_on_a_file_that_has_a_header_rejects_the_header_line(tmp_path):
    path = tmp_path / "u.tsv"
    path.write_text("caption\turl\na cat\thttp://h/1.jpg\n")
    records, rows, stats = read(tmp_path, kind="url_list", path=str(path), columns=["caption", "url"])
    assert len(records) == 1 and [(r["reason"], r["location"]) for r in rows] == [("header_row", f"{path}:1")]
    assert "remove `columns:`" in rows[0]["detail"] and stats.read == 2


def test_every_csv_line_is_one_row_kept_or_rejected(tmp_path):
    """read == kept + rejected, line for line. Was: an unclosed quote swallowed every line after it
    into one caption; an unquoted comma cut the caption and kept the record; a caption over
    131,072 characters raised csv.Error and stopped the source."""
    big = "x" * 140_000
    csv_path = tmp_path / "u.csv"
    csv_path.write_text(f'url,caption\nhttp://h/1.jpg,"a cat, sitting"\nhttp://h/2.jpg,a red car, parked\n'
                        f'http://h/3.jpg,"unclosed\nhttp://h/4.jpg,{big}\n\nhttp://h/5.jpg,five\n'
                        f'http://h/6.jpg,"say ""hi"""\n')
    records, rows, stats = read(tmp_path, kind="url_list", path=str(csv_path))
    assert [r.messages[1]["content"] for r in records] == ["a cat, sitting", "five", 'say "hi"']
    assert [(r["reason"], r["location"]) for r in rows] == [
        ("invalid_row", f"{csv_path}:3"), ("invalid_row", f"{csv_path}:4"), ("invalid_row", f"{csv_path}:5")]
    assert "3 values but 2 columns" in rows[0]["detail"] and "131,072" in rows[2]["detail"]
    assert stats.read == 6 == len(records) + stats.rejected_total
    tsv_path = tmp_path / "u.tsv"
    tsv_path.write_text('url\tcaption\nhttp://h/1.jpg\t"unclosed quote\nhttp://h/2.jpg\ttwo\nhttp://h/3.jpg\t3\textra\n')
    records, rows, stats = read(tmp_path, kind="url_list", path=str(tsv_path))
    assert [r.messages[1]["content"] for r in records] == ['"unclosed quote', "two"]
    assert [(r["reason"], r["location"]) for r in rows] == [("invalid_row", f"{tsv_path}:4")]
    assert stats.read == 3


def test_columns_is_checked_when_the_recipe_is_loaded_and_read(tmp_path):
    from pydantic import ValidationError

    from pipelines.recipe import RecipeError

    with pytest.raises(ValidationError, match=r"must name url_col/caption_col/id_col \['url'\]"):
        SourceConfig(name="s", kind="url_list", path="x.tsv", columns=["caption", "link"])
    with pytest.raises(ValidationError, match="only url_list and zh_pairs"):
        SourceConfig(name="s", kind="llava", path="x.json", columns=["caption", "url"])
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"url": "http://h/1.jpg", "caption": "c"}) + "\n")
    with pytest.raises(RecipeError, match="remove `columns:`"):
        read(tmp_path, kind="url_list", path=str(path), columns=["caption", "url"])
