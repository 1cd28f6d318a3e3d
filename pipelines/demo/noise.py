"""Noise in the demo's URL list, as a web crawl has it, for the curate step to find.

Only the image-caption URL list (`captions/urls.parquet`) gets noise, and only about training
images: rows are appended after the clean ones (one per training scene, in scene order), with
image ids from `ID_BASE + 1` on, in file order. The noise comes from its own random stream
(`f"{seed}:noise"`), so every other file of the corpus is the same with or without it; only the
URL list, the new images, the translation memory, `noise/injected.json` and the manifest change.

Kinds of noise, each a share of the training images (`SHARES`, rounded half up):

- `exact_copies`: a training image's JPEG bytes under another file name, a new URL and id, and a
  fresh true caption of its scene (so the caption is fine; the image is a repeat).
- `near_copies`: a training image transformed once: re-encoded at JPEG quality 60-75, downscaled
  by 0.80-0.95, or cropped by 1-2 % on one side and scaled back to its size. New file, URL and
  id, a true caption. (Crops of 2-5 % on one or two sides were tried and dropped: at the 96 px the
  demo downloads, pHash and even a colour thumbnail move as far for them as for another scene;
  see the measurements in the docstring of `near_copy`.)
- `off_language`: a new row (the same URL, a new id) for a training image, its caption in French,
  German, Spanish, Italian or Portuguese: a correct description of the scene, in the wrong
  language for an English source. Not in the translation memory (the translate step rejects it
  when curate is off).
- `boilerplate`: a new row for a training image whose caption says nothing about it ("Stock
  photo", "IMG_2041.JPG", "Click here to view larger image", ...). In the memory, so a run
  without curate still translates it.
- `other_image`: a new row for a training image with a true caption of a different training scene
  (different content): English, in the memory; only image-text similarity can tell.

Held-out images get no noise: no noise row points at a held-out image or a copy of one.

`noise/injected.json` is the ground truth: for each kind a list of rows, each with its
`image_id` (the URL list's), `original_image_id` (the training scene the row's image shows) and
`file` (the image, relative to the corpus); near copies add `transform` and `params`, rows with a
caption add `caption`, off-language rows `lang`, other-image rows `caption_of` (the scene the
caption describes).
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.demo import texts
from pipelines.demo.scenes import Scene, image_name
from pipelines.demo.texts import Pair

SHARES: dict[str, float] = {
    "exact_copies": 0.03,
    "near_copies": 0.03,
    "off_language": 0.02,
    "boilerplate": 0.02,
    "other_image": 0.02,
}
"""Share of the training images that get each kind of noise (12 % more URL-list rows in all)."""
ID_BASE = 1_000_000
"""Noise rows get image ids ID_BASE + 1, + 2, ... (above every scene id), in file order; a copy's
image file is named by its id like every other image (`images/<image_id:06d>.jpg`)."""
GROUND_TRUTH = "noise/injected.json"
NEAR_TRANSFORMS = ("jpeg", "resize", "crop")
JPEG_QUALITY_RANGE = (60, 75)
RESIZE_RANGE = (0.80, 0.95)
CROP_RANGE = (0.01, 0.02)  # share of one side cut off, then scaled back to the original size
LANGS = ("fr", "de", "es", "it", "pt")


def noise_counts(num_train: int) -> dict[str, int]:
    """How many rows of each kind a corpus with `num_train` training images gets."""
    return {kind: math.floor(share * num_train + 0.5) for kind, share in SHARES.items()}


@dataclass(frozen=True, slots=True)
class NoiseRow:
    """One URL-list row: its image file (a name under images/), caption and image id."""

    file: str
    caption: str
    image_id: int


def inject_noise(corpus: Path, train: list[Scene], seed: int, add: Callable[[Pair], str],
                 jpeg_quality: int) -> list[NoiseRow]:
    """Write the copies into `corpus/images` (the training images must be there) and the ground
    truth into `corpus/noise/injected.json`; return the rows to append to the URL list. `add` puts
    an English caption and its Chinese into the translation memory and returns the English."""
    rng = random.Random(f"{seed}:noise")
    counts = noise_counts(len(train))
    images = corpus / "images"
    # (kind, scene the row's image shows, caption, extra ground-truth fields, copy bytes or None)
    drafts: list[tuple[str, Scene, str, dict[str, Any], bytes | None]] = []

    copied = rng.sample(train, counts["exact_copies"] + counts["near_copies"])
    for n, scene in enumerate(copied):
        data = (images / image_name(scene.image_id)).read_bytes()
        caption = add(texts.caption(scene, rng))
        if n < counts["exact_copies"]:
            drafts.append(("exact_copies", scene, caption, {}, data))
        else:
            out, transform, params = near_copy(data, rng, jpeg_quality)
            drafts.append(("near_copies", scene, caption, {"transform": transform, "params": params}, out))
    for scene in rng.sample(train, counts["off_language"]):
        lang = rng.choice(LANGS)
        drafts.append(("off_language", scene, foreign_caption(scene, lang, rng), {"lang": lang}, None))
    for scene in rng.sample(train, counts["boilerplate"]):
        drafts.append(("boilerplate", scene, add(boilerplate(rng)), {}, None))
    for scene in rng.sample(train, counts["other_image"]):
        other = _other_scene(scene, train, rng)
        drafts.append(("other_image", scene, add(texts.caption(other, rng)), {"caption_of": other.image_id}, None))
    rng.shuffle(drafts)

    truth: dict[str, Any] = {"id_base": ID_BASE, "shares": SHARES, **{kind: [] for kind in SHARES}}
    rows = []
    for n, (kind, scene, caption, extra, data) in enumerate(drafts, 1):
        image_id = ID_BASE + n
        if data is None:
            file = image_name(scene.image_id)
        else:
            file = image_name(image_id)
            (images / file).write_bytes(data)
        rows.append(NoiseRow(file, caption, image_id))
        truth[kind].append({"image_id": image_id, "original_image_id": scene.image_id, "file": f"images/{file}",
                            "caption": caption, **extra})
    (corpus / GROUND_TRUTH).parent.mkdir()
    (corpus / GROUND_TRUTH).write_text(json.dumps(truth, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return rows


def near_copy(data: bytes, rng: random.Random, jpeg_quality: int) -> tuple[bytes, str, dict[str, Any]]:
    """A near-duplicate of a JPEG: (bytes, transform, its parameters), one transform of
    `NEAR_TRANSFORMS` chosen by `rng`.

    Measured on the 2,700 training images of the demo's 3,000 (seed 0), each image downloaded as
    the demo recipe does (img2dataset, 96 px, `resize_mode: border`), 64-bit pHash distance to
    the original: re-encoding p95 2, p99 6; downscaling p95 2, p99 2; this crop p95 8, p99 20; a
    2-5 % crop of one or two sides p50 6, p95 18 (a distinct scene's nearest neighbour: p50 4,
    19 % of them at 0, so a 64-bit pHash alone cannot separate distinct demo scenes)."""
    with Image.open(io.BytesIO(data)) as im:
        image = im.convert("RGB")
    kind = rng.choice(NEAR_TRANSFORMS)
    if kind == "jpeg":
        quality = rng.randint(*JPEG_QUALITY_RANGE)
        return _jpeg(image, quality), kind, {"quality": quality}
    w, h = image.size
    if kind == "resize":
        scale = round(rng.uniform(*RESIZE_RANGE), 3)
        size = (round(w * scale), round(h * scale))
        return _jpeg(image.resize(size, Image.LANCZOS), jpeg_quality), kind, {"scale": scale, "size": list(size)}
    side = rng.choice(("left", "top", "right", "bottom"))
    cut = max(1, round((w if side in ("left", "right") else h) * rng.uniform(*CROP_RANGE)))
    box = {"left": (cut, 0, w, h), "top": (0, cut, w, h),
           "right": (0, 0, w - cut, h), "bottom": (0, 0, w, h - cut)}[side]
    out = image.crop(box).resize((w, h), Image.LANCZOS)
    return _jpeg(out, jpeg_quality), kind, {"side": side, "pixels": cut}


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _content(scene: Scene) -> tuple:
    return scene.background, frozenset((s.kind, s.color, s.cell) for s in scene.shapes)


def _other_scene(scene: Scene, train: list[Scene], rng: random.Random) -> Scene:
    """A training scene showing something else (the draw is repeated until the content differs)."""
    while True:
        other = rng.choice(train)
        if _content(other) != _content(scene):
            return other


# -- captions that say nothing about the image ------------------------------------------------
_BOILERPLATE = [
    Pair("Stock photo", "图库照片"),
    Pair("Untitled", "无标题"),
    Pair("Click here to view larger image", "点击此处查看大图"),
    Pair("image may contain: shape", "图片可能包含：形状"),
    Pair("No description available.", "暂无描述。"),
    Pair("Image", "图片"),
]
_FILE_NAMES = ("IMG_{:04d}.JPG", "DSC_{:04d}.JPG")


def boilerplate(rng: random.Random) -> Pair:
    """A caption a crawler finds where the alt text should be: a stock phrase or a camera file name."""
    if rng.random() < 0.3:
        name = rng.choice(_FILE_NAMES).format(rng.randrange(10000))
        return Pair(name, f"图片 {name}")
    return rng.choice(_BOILERPLATE)


# -- the same scene described in another language ---------------------------------------------
# Per language: shapes (noun, gender), colours (masculine, feminine) - German: adjective stems -,
# backgrounds as they follow the background phrase, the indefinite articles (m, f[, n]), "and".
_FOREIGN: dict[str, dict[str, Any]] = {
    "fr": {
        "shapes": [("cercle", "m"), ("carré", "m"), ("triangle", "m"), ("étoile", "f"), ("losange", "m"),
                   ("hexagone", "m")],
        "colors": [("rouge", "rouge"), ("orange", "orange"), ("jaune", "jaune"), ("vert", "verte"),
                   ("bleu", "bleue"), ("violet", "violette")],
        "backgrounds": ["blanc", "gris clair", "beige", "bleu clair", "vert menthe", "gris foncé"],
        "articles": {"m": "un", "f": "une"}, "and": "et",
        "templates": ["{things} sur fond {bg}.", "Une image avec {things}.", "{n} {forms} sur fond {bg} : {things}."],
        "forms": ("forme", "formes"),
    },
    "es": {
        "shapes": [("círculo", "m"), ("cuadrado", "m"), ("triángulo", "m"), ("estrella", "f"), ("rombo", "m"),
                   ("hexágono", "m")],
        "colors": [("rojo", "roja"), ("naranja", "naranja"), ("amarillo", "amarilla"), ("verde", "verde"),
                   ("azul", "azul"), ("morado", "morada")],
        "backgrounds": ["blanco", "gris claro", "beige", "azul claro", "verde menta", "gris oscuro"],
        "articles": {"m": "un", "f": "una"}, "and": "y",
        "templates": ["{things} sobre fondo {bg}.", "Una imagen de {things}.",
                      "{n} {forms} sobre fondo {bg}: {things}."],
        "forms": ("forma", "formas"),
    },
    "it": {
        "shapes": [("cerchio", "m"), ("quadrato", "m"), ("triangolo", "m"), ("stella", "f"), ("rombo", "m"),
                   ("esagono", "m")],
        "colors": [("rosso", "rossa"), ("arancione", "arancione"), ("giallo", "gialla"), ("verde", "verde"),
                   ("blu", "blu"), ("viola", "viola")],
        "backgrounds": ["bianco", "grigio chiaro", "beige", "azzurro", "verde menta", "grigio scuro"],
        "articles": {"m": "un", "f": "una"}, "and": "e",
        "templates": ["{things} su sfondo {bg}.", "Un'immagine con {things}.", "{n} {forms} su sfondo {bg}: {things}."],
        "forms": ("forma", "forme"),
    },
    "pt": {
        "shapes": [("círculo", "m"), ("quadrado", "m"), ("triângulo", "m"), ("estrela", "f"), ("losango", "m"),
                   ("hexágono", "m")],
        "colors": [("vermelho", "vermelha"), ("laranja", "laranja"), ("amarelo", "amarela"), ("verde", "verde"),
                   ("azul", "azul"), ("roxo", "roxa")],
        "backgrounds": ["branco", "cinza-claro", "bege", "azul-claro", "verde-menta", "cinza-escuro"],
        "articles": {"m": "um", "f": "uma"}, "and": "e",
        "templates": ["{things} sobre fundo {bg}.", "Uma imagem com {things}.",
                      "{n} {forms} sobre fundo {bg}: {things}."],
        "forms": ("forma", "formas"),
    },
    "de": {  # nominative after "ein/eine", strong dative after "auf ... Hintergrund"
        "shapes": [("Kreis", "m"), ("Quadrat", "n"), ("Dreieck", "n"), ("Stern", "m"), ("Raute", "f"),
                   ("Sechseck", "n")],
        "colors": ["rot", "orangefarben", "gelb", "grün", "blau", "violett"],
        "backgrounds": ["weißem", "hellgrauem", "beigefarbenem", "hellblauem", "mintgrünem", "dunkelgrauem"],
        "articles": {"m": "ein", "f": "eine", "n": "ein"}, "and": "und",
        "templates": ["{things} auf {bg} Hintergrund.", "Auf dem Bild {verb} {things} zu sehen.",
                      "{n} {forms} auf {bg} Hintergrund: {things}."],
        "forms": ("Form", "Formen"),
    },
}
_DE_ENDINGS = {"m": "er", "f": "e", "n": "es"}


def foreign_caption(scene: Scene, lang: str, rng: random.Random) -> str:
    """A correct caption of `scene` in `lang` (one of `LANGS`), in one of three phrasings."""
    spec = _FOREIGN[lang]
    things = []
    for s in scene.shapes:
        noun, gender = spec["shapes"][s.kind]
        if lang == "de":
            things.append(f"{spec['articles'][gender]} {spec['colors'][s.color]}{_DE_ENDINGS[gender]} {noun}")
        else:
            color = spec["colors"][s.color][0 if gender == "m" else 1]
            things.append(f"{spec['articles'][gender]} {noun} {color}")
    listing = things[0] if len(things) == 1 else ", ".join(things[:-1]) + f" {spec['and']} {things[-1]}"
    n = len(scene.shapes)
    text = rng.choice(spec["templates"]).format(
        things=listing, bg=spec["backgrounds"][scene.background], n=n, forms=spec["forms"][n != 1],
        verb="ist" if n == 1 else "sind")
    return text[:1].upper() + text[1:]
