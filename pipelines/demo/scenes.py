"""The synthetic shapes world: what a scene contains and how it is drawn.

A scene is 1-3 shapes, each of a distinct kind and a distinct colour, placed in distinct cells
of a 3x3 grid over a pale (or dark) background. Distinct kinds and colours keep every question
("what colour is the circle?", "what shape is the red one?") unambiguous, so a tiny model can
learn the answers and an evaluation can score them exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFilter

# (English, Chinese, RGB). Six colours: chance on a colour question is 1/6.
COLORS = [
    ("red", "红色", (214, 39, 40)),
    ("orange", "橙色", (247, 137, 20)),
    ("yellow", "黄色", (240, 212, 30)),
    ("green", "绿色", (44, 160, 44)),
    ("blue", "蓝色", (31, 88, 214)),
    ("purple", "紫色", (128, 60, 180)),
]
SHAPES = [
    ("circle", "圆形"),
    ("square", "正方形"),
    ("triangle", "三角形"),
    ("star", "星形"),
    ("diamond", "菱形"),
    ("hexagon", "六边形"),
]
BACKGROUNDS = [
    ("white", "白色", (248, 248, 246)),
    ("light gray", "浅灰色", (212, 212, 212)),
    ("beige", "米色", (238, 226, 200)),
    ("light blue", "浅蓝色", (214, 230, 244)),
    ("mint", "薄荷绿色", (218, 240, 224)),
    ("dark gray", "深灰色", (58, 58, 62)),
]
# Grid cell (row, col) -> position words. Row 0 is the top.
POSITIONS = {
    (0, 0): ("top left", "左上角"), (0, 1): ("top", "上方"), (0, 2): ("top right", "右上角"),
    (1, 0): ("left", "左侧"), (1, 1): ("center", "中间"), (1, 2): ("right", "右侧"),
    (2, 0): ("bottom left", "左下角"), (2, 1): ("bottom", "下方"), (2, 2): ("bottom right", "右下角"),
}


@dataclass(frozen=True)
class Shape:
    kind: int  # index into SHAPES
    color: int  # index into COLORS
    cell: tuple[int, int]

    @property
    def kind_en(self) -> str:
        return SHAPES[self.kind][0]

    @property
    def kind_zh(self) -> str:
        return SHAPES[self.kind][1]

    @property
    def color_en(self) -> str:
        return COLORS[self.color][0]

    @property
    def color_zh(self) -> str:
        return COLORS[self.color][1]

    @property
    def position_en(self) -> str:
        return POSITIONS[self.cell][0]

    @property
    def position_zh(self) -> str:
        return POSITIONS[self.cell][1]


@dataclass(frozen=True)
class Scene:
    image_id: int
    width: int
    height: int
    background: int  # index into BACKGROUNDS
    shapes: tuple[Shape, ...]
    draw_seed: int

    @property
    def background_en(self) -> str:
        return BACKGROUNDS[self.background][0]

    @property
    def background_zh(self) -> str:
        return BACKGROUNDS[self.background][1]


def sample_scene(image_id: int, rng: random.Random, min_size: int = 96, max_size: int = 160) -> Scene:
    n = rng.choice((1, 1, 2, 2, 2, 3, 3))
    kinds = rng.sample(range(len(SHAPES)), n)
    colors = rng.sample(range(len(COLORS)), n)
    cells = rng.sample(sorted(POSITIONS), n)
    shapes = tuple(Shape(k, c, cell) for k, c, cell in zip(kinds, colors, cells))
    side = rng.randint(min_size, max_size)  # square: letterboxing and centre-cropping then agree
    return Scene(
        image_id=image_id,
        width=side,
        height=side,
        background=rng.randrange(len(BACKGROUNDS)),
        shapes=tuple(sorted(shapes, key=lambda s: s.cell)),
        draw_seed=rng.getrandbits(32),
    )


@dataclass(frozen=True, slots=True)
class Placement:
    """Where and how one shape is drawn: centre and radius in pixels, fill, rotation in degrees.

    `points` are the polygon's vertices exactly as they are drawn (None for a circle), so `bbox`
    is the drawn shape's extent, not an estimate; COCO-layout boxes of the demo corpus use it."""

    shape: Shape
    cx: float
    cy: float
    radius: float
    fill: tuple[int, int, int]
    rotation: float

    @property
    def points(self) -> list[tuple[float, float]] | None:
        return _polygon(self.shape.kind_en, self.cx, self.cy, self.radius, self.rotation)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(left, top, width, height) in pixels of the drawn polygon or circle (may reach past
        the image edge by a few pixels: a shape can overhang its border cell)."""
        points = self.points
        if points is None:
            r = self.radius
            return (self.cx - r, self.cy - r, 2 * r, 2 * r)
        xs, ys = [x for x, _ in points], [y for _, y in points]
        return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))


class _Layout(NamedTuple):
    """Every random draw of one image, in the order they are made."""

    top: tuple[int, int, int]
    bottom: tuple[int, int, int]
    placements: list[Placement]
    blur: bool


def _layout(scene: Scene) -> _Layout:
    """Replay the scene's draws: background jitter, then per shape radius, cx, cy, fill, rotation,
    then blur. Changing this order changes every image of the corpus."""
    rng = random.Random(scene.draw_seed)
    top = _jitter(BACKGROUNDS[scene.background][2], rng, 8)
    bottom = _jitter(BACKGROUNDS[scene.background][2], rng, 8)
    placed = [_place(scene, shape, rng) for shape in scene.shapes]
    return _Layout(top, bottom, placed, rng.random() < 0.3)


def _place(scene: Scene, shape: Shape, rng: random.Random) -> Placement:
    cell_w, cell_h = scene.width / 3, scene.height / 3
    row, col = shape.cell
    radius = min(cell_w, cell_h) * rng.uniform(0.34, 0.46)
    cx = (col + 0.5) * cell_w + rng.uniform(-0.08, 0.08) * cell_w
    cy = (row + 0.5) * cell_h + rng.uniform(-0.08, 0.08) * cell_h
    fill = _jitter(COLORS[shape.color][2], rng, 14)
    return Placement(shape, cx, cy, radius, fill, rng.uniform(-12, 12))


def placements(scene: Scene) -> list[Placement]:
    """The shapes of `scene` as `draw_scene` draws them (same draws, same order)."""
    return _layout(scene).placements


def draw_scene(scene: Scene) -> Image.Image:
    """Render a scene: a slightly tinted gradient background, then each shape in its cell."""
    layout = _layout(scene)
    image = _background(scene, layout.top, layout.bottom)
    draw = ImageDraw.Draw(image)
    for placement in layout.placements:
        _draw_shape(draw, placement)
    if layout.blur:
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    return image


def _background(scene: Scene, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    column = Image.new("RGB", (1, scene.height))
    for y in range(scene.height):
        t = y / max(1, scene.height - 1)
        column.putpixel((0, y), tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
    return column.resize((scene.width, scene.height))


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _draw_shape(draw: ImageDraw.ImageDraw, placement: Placement) -> None:
    points = placement.points
    if points is None:
        r, cx, cy = placement.radius, placement.cx, placement.cy
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=placement.fill)
    else:
        draw.polygon(points, fill=placement.fill)


def _polygon(kind: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]] | None:
    """The vertices of a shape (None for the circle, drawn as an ellipse)."""
    if kind == "circle":
        return None
    if kind == "square":
        return _regular_polygon(cx, cy, r * 1.2, 4, rotation)
    if kind == "triangle":
        return _regular_polygon(cx, cy, r * 1.15, 3, rotation)
    if kind == "diamond":
        return [(cx, cy - r * 1.1), (cx + r * 0.7, cy), (cx, cy + r * 1.1), (cx - r * 0.7, cy)]
    if kind == "hexagon":
        return _regular_polygon(cx, cy, r, 6, rotation)
    if kind == "star":
        points = []
        for i in range(10):
            radius = r * 1.1 if i % 2 == 0 else r * 0.45
            angle = math.radians(rotation - 90 + 36 * i)
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape kind {kind!r}")


def _regular_polygon(cx: float, cy: float, r: float, n_sides: int, rotation: float) -> list[tuple[float, float]]:
    """The vertices `ImageDraw.regular_polygon((cx, cy, r), n_sides, rotation)` draws, computed
    the way Pillow computes them (same operations, same rounding), so drawing them with
    `polygon` gives the same pixels and their extent is the drawn extent."""
    step = 360 / n_sides
    angle = (270 - 0.5 * step) + rotation
    points = []
    for _ in range(n_sides):
        phi = math.radians(360 - angle)
        points.append((round(r * math.cos(phi) - 0 * math.sin(phi) + cx, 2),
                       round(0 * math.cos(phi) + r * math.sin(phi) + cy, 2)))
        angle += step
        if angle > 360:
            angle -= 360
    return points


def coco_bbox(placement: Placement, scene: Scene) -> list[float]:
    """A drawn shape's COCO box [x, y, w, h] in pixels, clipped to the image (a shape may overhang a
    border cell), 2 decimals: what the corpus's instances file says and the demo's contexts read."""
    left, top, w, h = placement.bbox
    x1, y1 = round(max(0.0, left), 2), round(max(0.0, top), 2)
    x2, y2 = round(min(float(scene.width), left + w), 2), round(min(float(scene.height), top + h), 2)
    return [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)]


def image_name(image_id: int) -> str:
    return f"{image_id:06d}.jpg"
