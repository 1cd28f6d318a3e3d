"""The demo corpus's COCO-layout boxes: exact (from the drawn geometry), training images only, and
drawing through `placements` leaves every image as it was."""

import json
import math
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from pipelines.demo.corpus import generate_demo, split_scenes
from pipelines.demo.scenes import BACKGROUNDS, COLORS, SHAPES, Scene, _background, _layout, draw_scene, \
    image_name, placements, sample_scene
from pipelines.recipe import DemoConfig
from pipelines.sources.coco_instances import read_coco_instances

SCENES = [sample_scene(i, random.Random(f"instances:{i}")) for i in range(1, 121)]


def old_draw_scene(scene: Scene) -> Image.Image:
    """`draw_scene` as it was before `placements` existed (generator version 2), kept verbatim."""
    rng = random.Random(scene.draw_seed)

    def jitter(rgb, amount):
        return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)

    top, bottom = jitter(BACKGROUNDS[scene.background][2], 8), jitter(BACKGROUNDS[scene.background][2], 8)
    column = Image.new("RGB", (1, scene.height))
    for y in range(scene.height):
        t = y / max(1, scene.height - 1)
        column.putpixel((0, y), tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
    image = column.resize((scene.width, scene.height))
    draw = ImageDraw.Draw(image)
    cell_w, cell_h = scene.width / 3, scene.height / 3
    for shape in scene.shapes:
        row, col = shape.cell
        r = min(cell_w, cell_h) * rng.uniform(0.34, 0.46)
        cx = (col + 0.5) * cell_w + rng.uniform(-0.08, 0.08) * cell_w
        cy = (row + 0.5) * cell_h + rng.uniform(-0.08, 0.08) * cell_h
        fill, rotation, kind = jitter(COLORS[shape.color][2], 14), rng.uniform(-12, 12), SHAPES[shape.kind][0]
        if kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif kind in ("square", "triangle", "hexagon"):
            sides, scale = {"square": (4, 1.2), "triangle": (3, 1.15), "hexagon": (6, 1.0)}[kind]
            draw.regular_polygon((cx, cy, r * scale), sides, rotation=rotation, fill=fill)
        elif kind == "diamond":
            draw.polygon([(cx, cy - r * 1.1), (cx + r * 0.7, cy), (cx, cy + r * 1.1), (cx - r * 0.7, cy)], fill=fill)
        else:
            points = [(cx + (r * 1.1 if i % 2 == 0 else r * 0.45) * math.cos(math.radians(rotation - 90 + 36 * i)),
                       cy + (r * 1.1 if i % 2 == 0 else r * 0.45) * math.sin(math.radians(rotation - 90 + 36 * i)))
                      for i in range(10)]
            draw.polygon(points, fill=fill)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    return image


def test_images_are_drawn_exactly_as_before():
    assert {s.kind for scene in SCENES for s in scene.shapes} == set(range(len(SHAPES)))
    assert any(_layout(s).blur for s in SCENES) and not all(_layout(s).blur for s in SCENES)
    for scene in SCENES:
        assert draw_scene(scene).tobytes() == old_draw_scene(scene).tobytes(), scene.image_id


def test_placements_follow_the_scene():
    for scene in SCENES:
        placed = placements(scene)
        assert [p.shape for p in placed] == list(scene.shapes)
        assert placed == _layout(scene).placements  # the same draws as draw_scene's


def shape_mask(scene: Scene) -> np.ndarray:
    """Pixels that differ strongly from the bare background (the shapes, blurred edges aside)."""
    layout = _layout(scene)
    background = np.asarray(_background(scene, layout.top, layout.bottom), dtype=int)
    return np.abs(np.asarray(draw_scene(scene), dtype=int) - background).max(axis=2) > 40


def test_boxes_hold_every_drawn_pixel_and_are_tight():
    for scene in SCENES:
        mask = shape_mask(scene)
        inside = np.zeros_like(mask)
        for p in placements(scene):
            left, top, w, h = p.bbox
            # the box clipped to the image, in whole pixels, expanded by 1 px
            x0, y0 = max(0, math.floor(left) - 1), max(0, math.floor(top) - 1)
            x1, y1 = min(scene.width, math.ceil(left + w) + 1), min(scene.height, math.ceil(top + h) + 1)
            inside[y0:y1, x0:x1] = True
            ys, xs = np.nonzero(mask[y0:y1, x0:x1])
            assert len(xs), (scene.image_id, p.shape.kind_en)
            # every side of the box (clipped to the image) is within 1 px of a drawn pixel
            right, bottom = min(scene.width, left + w), min(scene.height, top + h)
            assert xs.min() + x0 <= max(0.0, left) + 1 and xs.max() + x0 + 1 >= right - 1, scene.image_id
            assert ys.min() + y0 <= max(0.0, top) + 1 and ys.max() + y0 + 1 >= bottom - 1, scene.image_id
        assert not (mask & ~inside).any(), scene.image_id


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    settings = DemoConfig(num_images=30, vision_encoder=None)
    out = tmp_path_factory.mktemp("demo") / "corpus"
    manifest = generate_demo(out, settings)
    return out, manifest, settings


def test_instances_cover_the_training_images_only(corpus):
    out, manifest, settings = corpus
    train, heldout = split_scenes(settings)
    index = read_coco_instances(out / "instances" / "instances_train.json")
    assert index.problems == []
    assert sorted(index.images) == [s.image_id for s in train]
    heldout_names = {json.loads(line)["image"].rsplit("/", 1)[-1]
                     for line in (out / "heldout" / "eval_zh.jsonl").read_text(encoding="utf-8").splitlines()}
    assert heldout_names == {image_name(s.image_id) for s in heldout}
    assert not heldout_names & set(index.by_file)
    assert manifest["counts"]["instances"] == sum(len(s.shapes) for s in train)
    assert "instances/instances_train.json" in manifest["files"] and manifest["generator_version"] >= 4


def test_each_box_is_its_shape_in_its_cell(corpus):
    out, _, settings = corpus
    index = read_coco_instances(out / "instances" / "instances_train.json")
    for scene in split_scenes(settings)[0]:
        image = index.find(None, f"images/{image_name(scene.image_id)}")
        assert (image.width, image.height) == (scene.width, scene.height)
        assert [b.name for b in image.boxes] == [s.kind_en for s in scene.shapes]
        for box, shape in zip(image.boxes, scene.shapes):
            x1, y1, x2, y2 = box.box
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert (int((y1 + y2) / 2 * 3), int((x1 + x2) / 2 * 3)) == shape.cell
            assert 0.15 < x2 - x1 < 0.45 and 0.15 < y2 - y1 < 0.45  # about one cell, never two


def test_coco_layout(corpus):
    out, _, _ = corpus
    data = json.loads((out / "instances" / "instances_train.json").read_text(encoding="utf-8"))
    assert data["categories"] == [{"id": k + 1, "name": name, "supercategory": "shape"}
                                  for k, (name, _) in enumerate(SHAPES)]
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01
        assert all(v == round(v, 2) for v in a["bbox"]) and a["area"] == round(w * h, 2) and a["iscrowd"] == 0
