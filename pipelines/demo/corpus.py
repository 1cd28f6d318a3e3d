"""`vcla demo-data`: write the whole shapes corpus (layout in docs/ARCHITECTURE.md).

The corpus is built in a staging folder beside the target and renamed into place, so a killed
run never leaves a half corpus behind. A complete corpus with the same settings is left as it
is (checked against the sha256 list of its manifest), so `make demo` reruns are instant.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common.files import atomic_folder, sha256_file
from generators.config import GenerateConfig, sampling_of
from generators.prompt_set import load_prompts
from pipelines.demo import alpaca, noise, suites, texts
from pipelines.demo.generated import write_responses
from pipelines.demo.scenes import SHAPES, Scene, coco_bbox, draw_scene, image_name, placements, sample_scene
from pipelines.demo.texts import Pair, VQAItem
from pipelines.recipe import DemoConfig

GENERATOR_VERSION = 6  # 4: noise rows in the URL list (noise.py); 5: held-out suites (suites.py); 6: choice answers by text
MANIFEST = "demo_manifest.json"
JPEG_QUALITY = 92
LLAVA_FRACTION = 0.35  # share of training images that also get a LLaVA item
MIN_TEXT_ITEMS = 300


class Memory:
    """Collects (en, zh) pairs; one English segment must always get the same Chinese."""

    def __init__(self) -> None:
        self.pairs: dict[str, str] = {}

    def add(self, pair: Pair) -> str:
        known = self.pairs.setdefault(pair.en, pair.zh)
        if known != pair.zh:
            raise AssertionError(f"segment {pair.en!r} translated two ways: {known!r} and {pair.zh!r}")
        return pair.en

    def rows(self) -> list[dict[str, str]]:
        return [{"source": en, "target": zh, "source_lang": "en", "target_lang": "zh"}
                for en, zh in sorted(self.pairs.items())]


def generate_demo(out_dir: str | Path, settings: DemoConfig | None = None,
                  generate: GenerateConfig | None = None) -> dict[str, Any]:
    """Write the corpus to `out_dir` (or keep it if already complete); return its manifest. With
    `generate` (the recipe's section), also the replies its generate step will ask for."""
    settings = settings or DemoConfig()
    out_dir = Path(out_dir).absolute()
    existing = _valid_manifest(out_dir, settings, generate)
    if existing is not None:
        return existing
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists():
        raise FileExistsError(f"{out_dir} exists and is not a demo corpus; choose an empty folder or remove it")
    with atomic_folder(out_dir) as staging:  # modes as the umask says (safetensors writes 0600), fsynced
        manifest = _write_corpus(staging, out_dir, settings, generate)
    return manifest


def _write_corpus(staging: Path, final_dir: Path, settings: DemoConfig,
                  generate: GenerateConfig | None) -> dict[str, Any]:
    train, heldout = split_scenes(settings)
    scenes = train + heldout
    memory = Memory()
    _write_images(staging / "images", scenes)
    rng = random.Random(f"{settings.seed}:text")
    captions, noise_rows = _write_captions(staging, final_dir, train, rng, memory, settings.seed)
    counts = {
        "images": len(scenes),
        "train_images": len(train),
        "heldout_images": len(heldout),
        "captions": len(captions) + len(noise_rows),  # rows of the URL list
        "noise": noise.noise_counts(len(train)),  # of them, noise rows by kind (noise/injected.json)
        "vqa_questions": _write_vqa(staging / "vqa", train, rng, memory, lambda s, r: texts.vqa_items(s, r)),
        "llava_items": _write_llava(staging, train, rng, memory, LLAVA_FRACTION),
        "text_items": _write_alpaca(staging, rng, max(MIN_TEXT_ITEMS, len(train) // 8)),
        "heldout_questions": _write_vqa(staging / "heldout", heldout, rng, memory,
                                        lambda s, r: [texts.color_question(x) for x in s.shapes]),
        "instances": _write_instances(staging / "instances", train),
    }
    _write_eval_jsonl(staging / "heldout", heldout)
    counts.update(suites.write_heldout_suites(staging / "heldout", heldout))
    counts["choice_items"] = suites.write_choice_training(staging / "choice" / "choice_instruct.json", train,
                                                          settings.seed)
    if generate is not None:
        truth = json.loads((staging / noise.GROUND_TRUTH).read_text(encoding="utf-8"))
        counts["generated_replies"] = write_responses(staging / "generate" / "responses.jsonl", train,
                                                      captions, generate, settings.seed, truth)
    if settings.vision_encoder is not None:
        from pipelines.demo.vision import pretrain_vision_encoder  # torch: imported only when it is needed

        counts["vision_encoder"] = pretrain_vision_encoder(
            staging / "images", train, heldout, staging / "vision_encoder", settings.vision_encoder, settings.seed)
    _write_jsonl(staging / "translation_memory.jsonl", memory.rows())
    counts["memory_segments"] = len(memory.pairs)
    files = {str(p.relative_to(staging)): sha256_file(p)
             for p in sorted(staging.rglob("*")) if p.is_file()}
    manifest = {"generator_version": GENERATOR_VERSION, "settings": _settings(settings, generate),
                "counts": counts, "files": files}
    _write_json(staging / MANIFEST, manifest, indent=2)
    return manifest


def split_scenes(settings: DemoConfig) -> tuple[list[Scene], list[Scene]]:
    """The corpus's scenes, (training, held-out): image ids 1..num_images, the last ones held out."""
    scenes = [sample_scene(i, random.Random(f"{settings.seed}:scene:{i}"))
              for i in range(1, settings.num_images + 1)]
    num_heldout = max(1, round(settings.num_images * settings.heldout_fraction))
    return scenes[:-num_heldout], scenes[-num_heldout:]


def _settings(cfg: DemoConfig, generate: GenerateConfig | None) -> dict[str, Any]:
    """What determines the corpus bytes (the output folder does not, bar the URL list); with a
    `generate` section, what keys the replies (model, prompt id, sampling settings)."""
    out = cfg.model_dump(exclude={"output_dir"})
    if generate is not None:
        out["generate"] = {"model": generate.model, "prompt_id": load_prompts(generate).prompt_id,
                           "sampling": sampling_of(generate, None, 0)}
    return out


def _valid_manifest(out_dir: Path, settings: DemoConfig, generate: GenerateConfig | None) -> dict[str, Any] | None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    expected = _settings(settings, generate)
    if manifest.get("generator_version") != GENERATOR_VERSION or manifest.get("settings") != expected:
        return None
    for rel, digest in manifest["files"].items():
        f = out_dir / rel
        if not f.is_file() or sha256_file(f) != digest:
            return None
    return manifest


def _write_images(folder: Path, scenes: list[Scene]) -> None:
    folder.mkdir(parents=True)
    for scene in scenes:
        buf = io.BytesIO()
        draw_scene(scene).save(buf, format="JPEG", quality=JPEG_QUALITY)
        (folder / image_name(scene.image_id)).write_bytes(buf.getvalue())


def _write_captions(staging: Path, final_dir: Path, scenes: list[Scene], rng: random.Random,
                    memory: Memory, seed: int) -> tuple[list[str], list[noise.NoiseRow]]:
    """img2dataset URL list; URLs point at the final folder, where the images will be. One row per
    training scene, in scene order, then the noise rows (pipelines/demo/noise.py, which also writes
    the copies and the ground truth). Returns the scenes' own captions, in scene order, and the
    noise rows."""
    captions = [memory.add(texts.caption(s, rng)) for s in scenes]
    rows = noise.inject_noise(staging, scenes, seed, memory.add, JPEG_QUALITY)
    files = [image_name(s.image_id) for s in scenes] + [r.file for r in rows]
    table = pa.table({
        "url": [(final_dir / "images" / f).as_uri() for f in files],
        "caption": captions + [r.caption for r in rows],
        "image_id": pa.array([s.image_id for s in scenes] + [r.image_id for r in rows], pa.int64()),
    })
    (staging / "captions").mkdir()
    pq.write_table(table, staging / "captions" / "urls.parquet", compression="zstd")
    return captions, rows


def _write_vqa(folder: Path, scenes: list[Scene], rng: random.Random, memory: Memory, make_items) -> int:
    """VQAv2 layout: questions file + annotations file, ten human answers per question."""
    questions, annotations = [], []
    for scene in scenes:
        for k, item in enumerate(make_items(scene, rng)):
            qid = scene.image_id * 100 + k
            questions.append({"image_id": scene.image_id, "question": memory.add(item.question),
                              "question_id": qid})
            memory.add(item.answer)
            annotations.append({
                "question_id": qid, "image_id": scene.image_id, "question_type": item.question_type,
                "answer_type": item.answer_type, "multiple_choice_answer": item.answer.en,
                "answers": _ten_answers(item, rng),
            })
    header = {"info": {"description": "visualcla-forge synthetic shapes (VQAv2 layout)", "version": "1.0"},
              "license": {"name": "CC0-1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
              "data_subtype": folder.name, "task_type": "Open-Ended", "data_type": "shapes"}
    folder.mkdir()
    _write_json(folder / "questions.json", {**header, "questions": questions})
    _write_json(folder / "annotations.json", {**header, "annotations": annotations})
    return len(questions)


def _ten_answers(item: VQAItem, rng: random.Random) -> list[dict[str, Any]]:
    """Ten annotator answers: the right one at least 8 times, the distractor at most twice."""
    wrong = rng.choice((0, 0, 0, 1, 2)) if item.distractor else 0
    answers = [item.answer.en] * (10 - wrong) + [item.distractor] * wrong
    rng.shuffle(answers)
    return [{"answer": a, "answer_confidence": "yes" if a == item.answer.en else "maybe", "answer_id": i + 1}
            for i, a in enumerate(answers)]


def _write_llava(staging: Path, scenes: list[Scene], rng: random.Random, memory: Memory, fraction: float) -> int:
    builders = [("conversation", texts.conversation), ("detail", texts.detail), ("complex_reasoning", texts.reasoning)]
    items = []
    chosen = [s for s in scenes if rng.random() < fraction]
    for n, scene in enumerate(chosen):
        kind, build = builders[n % len(builders)]
        turns = build(scene, rng)
        items.append({
            "id": f"{scene.image_id:06d}_{kind}",
            "image": image_name(scene.image_id),
            "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": memory.add(t)}
                              for i, t in enumerate(turns)],
        })
    (staging / "llava").mkdir()
    _write_json(staging / "llava" / "llava_instruct.json", items)
    return len(items)


def _write_alpaca(staging: Path, rng: random.Random, n: int) -> int:
    (staging / "text").mkdir()
    _write_json(staging / "text" / "alpaca_zh.json", alpaca.alpaca_items(n, rng), indent=1)
    return n


def _write_instances(folder: Path, scenes: list[Scene]) -> int:
    """COCO `instances_train.json`: one box per drawn shape, training images only (held-out
    images get no generated data, boxes included)."""
    images, annotations = [], []
    for scene in scenes:
        images.append({"id": scene.image_id, "file_name": image_name(scene.image_id),
                       "width": scene.width, "height": scene.height})
        for placement in placements(scene):
            x, y, w, h = coco_bbox(placement, scene)
            annotations.append({"id": len(annotations) + 1, "image_id": scene.image_id,
                                "category_id": placement.shape.kind + 1, "bbox": [x, y, w, h],
                                "area": round(w * h, 2), "iscrowd": 0})
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, (name, _) in enumerate(SHAPES)]
    data = {"info": {"description": "visualcla-forge synthetic shapes (COCO instances layout)", "version": "1.0"},
            "licenses": [{"id": 1, "name": "CC0-1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
            "images": images, "categories": categories, "annotations": annotations}
    folder.mkdir()
    _write_json(folder / "instances_train.json", data)
    return len(annotations)


def _write_eval_jsonl(folder: Path, scenes: list[Scene]) -> None:
    rows = []
    for scene in scenes:
        for k, shape in enumerate(scene.shapes):
            item = texts.color_question(shape)
            rows.append({"id": scene.image_id * 100 + k, "image": f"images/{image_name(scene.image_id)}",
                         "question": item.question.zh, "answer": item.answer.zh,
                         "question_en": item.question.en, "answer_en": item.answer.en, "type": "color"})
    _write_jsonl(folder / "eval_zh.jsonl", rows)


def _write_json(path: Path, data: Any, indent: int | None = None) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
