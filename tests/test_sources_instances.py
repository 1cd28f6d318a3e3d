"""COCO `instances_*.json` -> per-image normalised boxes, with every unusable row reported."""

import json

import pytest

from generators.context import Box
from pipelines.sources.coco_instances import ImageBoxes, read_coco_instances

INSTANCES = {
    "info": {"description": "test"},
    "images": [
        {"id": 1, "file_name": "000000000001.jpg", "width": 200, "height": 100},
        {"id": 2, "file_name": "000000000002.jpg", "width": 50, "height": 80},
    ],
    "categories": [
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 3, "name": "car", "supercategory": "vehicle"},
        {"id": 18, "name": "dog", "supercategory": "animal"},
    ],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 18, "bbox": [20, 10, 50, 40], "area": 2000, "iscrowd": 0},
        {"id": 11, "image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"id": 12, "image_id": 1, "category_id": 99, "bbox": [0, 0, 10, 10]},
        {"id": 13, "image_id": 2, "category_id": 3, "bbox": [5, 5, 0, 10]},
        {"id": 14, "image_id": 1, "category_id": 1, "bbox": [150.5, 60, 100, 70]},
    ],
}


def write(path, data, prefix: bytes = b""):
    path.write_bytes(prefix + json.dumps(data).encode("utf-8"))
    return path


@pytest.fixture
def index(tmp_path):
    return read_coco_instances(write(tmp_path / "instances_val.json", INSTANCES))


def test_boxes_are_normalised_in_file_order(index):
    assert index.images[1] == ImageBoxes(1, "000000000001.jpg", 200, 100, (
        Box("dog", (0.1, 0.1, 0.35, 0.5)),
        Box("person", (0.752, 0.6, 1.0, 1.0)),  # 150.5/200; (150.5+100)/200 and (60+70)/100 clip to 1
    ))


def test_image_without_usable_annotations_has_no_boxes(index):
    assert index.images[2] == ImageBoxes(2, "000000000002.jpg", 50, 80, ())


def test_every_unusable_annotation_is_a_problem(index, tmp_path):
    name = str(tmp_path / "instances_val.json")
    assert [(loc, reason) for loc, reason, _ in index.problems] == [
        (f"{name}[1]", "unknown_image"),
        (f"{name}[2]", "unknown_category"),
        (f"{name}[3]", "bad_box"),
    ]
    assert "7" in index.problems[0][2] and "99" in index.problems[1][2]


def test_find_by_id_then_by_file_name(index):
    assert index.find(1, None).image_id == 1
    assert index.find(None, "000000000002.jpg").image_id == 2
    assert index.find(None, "coco/train2017/000000000002.jpg").image_id == 2
    assert index.find(None, "C:\\coco\\000000000002.jpg").image_id == 2
    assert index.find(404, "000000000001.jpg").image_id == 1  # unknown id: the file name still finds it
    assert index.find(2, "000000000001.jpg").image_id == 2  # the id wins
    assert index.find(None, "missing.jpg") is None
    assert index.find(None, None) is None
    assert index.by_file == {"000000000001.jpg": 1, "000000000002.jpg": 2}


@pytest.mark.parametrize("bbox", [None, [1, 2, 3], [1, 2, "3", 4], [1, 2, -3, 4], [1, 2, 3, 0], [True, 2, 3, 4],
                                  [500, 5, 10, 10]])
def test_bad_boxes(tmp_path, bbox):
    data = {**INSTANCES, "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox}]}
    index = read_coco_instances(write(tmp_path / "i.json", data))
    assert [reason for _, reason, _ in index.problems] == ["bad_box"]
    assert index.images[1].boxes == ()


@pytest.mark.parametrize("image", [
    {"file_name": "a.jpg", "width": 10, "height": 10},
    {"id": "5", "file_name": "a.jpg", "width": 10, "height": 10},
    {"id": 5, "file_name": "a.jpg", "width": 0, "height": 10},
    {"id": 5, "file_name": "a.jpg", "width": 10, "height": 10.5},
    {"id": 5, "width": 10, "height": 10},
    {"id": 1, "file_name": "again.jpg", "width": 10, "height": 10},  # id 1 twice
    "000005.jpg",
])
def test_bad_images(tmp_path, image):
    data = {**INSTANCES, "images": INSTANCES["images"] + [image], "annotations": []}
    index = read_coco_instances(write(tmp_path / "i.json", data))
    assert [(loc, reason) for loc, reason, _ in index.problems] == [(f"{tmp_path / 'i.json'}[2]", "bad_image")]
    assert sorted(index.images) == [1, 2] and index.images[1].file_name == "000000000001.jpg"


def test_invalid_json_is_a_problem_not_an_exception(tmp_path):
    text = json.dumps(INSTANCES)
    cut = text.index('{"id": 14')  # the last annotation is broken
    path = tmp_path / "broken.json"
    path.write_text(text[:cut] + '{"id": 14, "image_id": 1,,}]}', encoding="utf-8")
    index = read_coco_instances(path)
    # the first pass (images) already meets the error while skipping the lists after its own, so
    # it comes first; the later passes meet it again and do not repeat it
    assert [(loc, reason) for loc, reason, _ in index.problems] == [
        (f"{path}[4]", "invalid_json"),
        (f"{path}[1]", "unknown_image"), (f"{path}[2]", "unknown_category"), (f"{path}[3]", "bad_box"),
    ]
    assert index.images[1].boxes == (Box("dog", (0.1, 0.1, 0.35, 0.5)),)  # what came before the error is kept


def test_invalid_json_in_the_images_list_is_reported_once(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}, {"id": ]}',
                    encoding="utf-8")
    index = read_coco_instances(path)
    assert [reason for _, reason, _ in index.problems] == ["invalid_json"]
    assert index.images[1].boxes == ()


def test_not_json_at_all(tmp_path):
    path = tmp_path / "nonsense.json"
    path.write_text("this is not JSON", encoding="utf-8")
    index = read_coco_instances(path)
    assert index.images == {} and [reason for _, reason, _ in index.problems] == ["invalid_json"]


def test_missing_list_is_named(tmp_path):
    data = {"images": INSTANCES["images"], "categories": INSTANCES["categories"]}  # image_info_test layout
    index = read_coco_instances(write(tmp_path / "i.json", data))
    assert [(reason, "annotations" in detail) for _, reason, detail in index.problems] == [("missing_field", True)]
    assert sorted(index.images) == [1, 2]


def test_utf8_bom(tmp_path):
    data = {**INSTANCES, "categories": [{"id": 1, "name": "人"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]}
    index = read_coco_instances(write(tmp_path / "bom.json", data, prefix=b"\xef\xbb\xbf"))
    assert index.images[1].boxes[1] == Box("人", (0.752, 0.6, 1.0, 1.0))
    assert len(index.problems) == 3
