"""What describes a shard set: `manifest.json`, the Hub dataset card `README.md`, and a
LLaMA-Factory `dataset_info.json`.

Nothing here holds a timestamp or an absolute path, so a rerun on the same input writes the
same bytes. The card's YAML `configs` (pretrain, sft) and `dataset_info` (features, split
sizes) come from the same `templates.rows` description as the Parquet schema, so
`load_dataset(<folder>, "sft")` and `load_dataset("parquet", data_files=...)` agree.
"""

from __future__ import annotations

import json
import platform
from collections import Counter, defaultdict
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from common.files import atomic_open, write_json
from common.layout import MANIFEST_FILE, MANIFEST_FORMAT
from pipelines.core.stats import StepStats
from pipelines.steps.render.shards import ShardFile
from templates.image import IMAGE_BLOCK
from templates.instructions import PROMPT_RECORD, HintPolicy
from templates.registry import get_template
from templates.rows import ROW_COLUMNS, SPLITS, SUBSETS, yaml_features

MANIFEST_VERSION = 1
PACKAGES = ("visualcla-forge", "pyarrow", "datasets", "pillow", "numpy")
SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}

Shards = dict[tuple[str, str], list[ShardFile]]


def write_card_files(out_dir: Path, recipe: Any, shards: Shards, counts: Counter, stats: StepStats,
                     templates: dict[str, str] | None = None, lengths: dict | None = None) -> None:
    """`templates`: {subset: name} with `auto` resolved; `lengths`: the manifest's `token_lengths`."""
    manifest = build_manifest(out_dir, recipe, shards, counts, stats, templates, lengths)
    write_json(out_dir / MANIFEST_FILE, manifest)
    write_json(out_dir / "dataset_info.json", llamafactory_info(recipe, shards))
    with atomic_open(out_dir / "README.md", "w", encoding="utf-8") as f:
        f.write(dataset_card(recipe, shards, manifest))


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _relative(out_dir: Path, shard: ShardFile) -> str:
    return shard.path.relative_to(out_dir).as_posix()


def build_manifest(out_dir: Path, recipe: Any, shards: Shards, counts: Counter, stats: StepStats,
                   templates: dict[str, str] | None = None, lengths: dict | None = None) -> dict:
    by_split, by_source, by_task = Counter(), defaultdict(Counter), defaultdict(Counter)
    for (subset, split, source, task), n in sorted(counts.items()):
        by_split[f"{subset}/{split}"] += n
        by_source[source][f"{subset}/{split}"] += n
        by_task[task][f"{subset}/{split}"] += n
    render = recipe.render
    templates = templates or {"pretrain": render.pretrain_template, "sft": render.sft_template}
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "name": recipe.name,
        "columns": list(ROW_COLUMNS),
        "templates": {
            "pretrain": asdict(get_template(templates["pretrain"])),
            "sft": asdict(get_template(templates["sft"])),
        },
        "image_block": {"marker": IMAGE_BLOCK, "expands_to": "<img> + N x <img_token> + </img>"},
        PROMPT_RECORD: prompt_record(render, templates),
        "shards": [
            {"path": _relative(out_dir, f), "config": subset, "split": split, "rows": f.rows, "bytes": f.bytes,
             "sha256": f.sha256}
            for (subset, split), files in sorted(shards.items()) for f in files
        ],
        "counts": {
            "by_stage_split": dict(sorted(by_split.items())),
            "by_source": {k: dict(sorted(v.items())) for k, v in sorted(by_source.items())},
            "by_task": {k: dict(sorted(v.items())) for k, v in sorted(by_task.items())},
            "read": stats.read,
            "rejected": dict(sorted(stats.rejected.items())),
        },
        "curation": curation_counts(recipe),
        "recipe": recipe.model_dump(mode="json") if hasattr(recipe, "model_dump") else None,
        "versions": package_versions(),
    }
    if lengths is not None:
        manifest["token_lengths"] = lengths
    return manifest


def curation_counts(recipe: Any) -> dict | None:
    """What the curate step kept and dropped (its stats.json), for the manifest and the card; None
    when the run has no curation."""
    path = Path(getattr(recipe, "run_dir", "")) / "curate" / "stats.json"
    if getattr(recipe, "curate", None) is None or not path.is_file():
        return None
    stats = json.loads(path.read_text(encoding="utf-8"))
    images = {k: v for k, v in sorted(stats.get("extra", {}).items()) if "image" in k and isinstance(v, int)}
    return {"read": stats["read"], "kept": stats["kept"], "rejected": stats["rejected"], "images": images}


def prompt_record(render: Any, templates: dict[str, str] | None = None) -> dict:
    """How the rows ask: the short-answer VQA hint, its length rule and the template of each subset.
    Training copies it into the stage folder (stage.json), where eval and chat read it."""
    policy = HintPolicy(render.vqa_hint, render.vqa_hint_max_chars)
    templates = templates or {"pretrain": render.pretrain_template, "sft": render.sft_template}
    return {**policy.to_record(), "templates": dict(templates)}


def _glob(subset: str, split: str) -> str:
    return f"data/{subset}/{split}/*.parquet"


def card_metadata(recipe: Any, shards: Shards) -> dict:
    """The YAML header: licence, `configs` (only non-empty splits) and `dataset_info`."""
    features = yaml_features()
    configs, infos = [], []
    for subset in SUBSETS:
        splits = [(split, shards[(subset, split)]) for split in SPLITS if shards.get((subset, split))]
        if not splits:
            continue
        data_files = [{"split": sp, "path": _glob(subset, sp)} for sp, _ in splits]
        configs.append({"config_name": subset, "data_files": data_files})
        infos.append({
            "config_name": subset,
            "features": features,
            "splits": [{"name": sp, "num_bytes": sum(f.bytes for f in fs), "num_examples": sum(f.rows for f in fs)}
                       for sp, fs in splits],
        })
    if configs:
        configs[-1]["default"] = True  # sft when there is one
    publish = recipe.publish
    meta = {"license": publish.license, "language": ["zh"], "pretty_name": publish.pretty_name or recipe.name,
            "task_categories": ["image-to-text", "visual-question-answering"],
            "tags": ["visualcla", "multimodal", "instruction-tuning"], "configs": configs, "dataset_info": infos}
    return {k: v for k, v in meta.items() if v is not None}


def llamafactory_info(recipe: Any, shards: Shards) -> dict:
    """LLaMA-Factory `dataset_info.json` entries (sharegpt, `image` as the images column).

    LLaMA-Factory loads every file of a folder as one split, which is why each (config, split)
    has its own folder. Use: ``--dataset_dir <this folder> --dataset <name>_sft``.
    """
    entry = {"formatting": "sharegpt", "columns": {"messages": "messages", "images": "image"},
             "tags": SHAREGPT_TAGS}
    out = {}
    for (subset, split), files in sorted(shards.items()):
        if files:
            name = f"{recipe.name}_{subset}" + ("" if split == "train" else f"_{split}")
            out[name] = {"file_name": f"data/{subset}/{split}", **entry}
            if recipe.publish.repo_id:
                out[f"{name}_hub"] = {"hf_hub_url": recipe.publish.repo_id, "subset": subset, "split": split, **entry}
    return out


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated feature lists out in full: no `&id001` anchors in the card header."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dataset_card(recipe: Any, shards: Shards, manifest: dict) -> str:
    header = yaml.dump(card_metadata(recipe, shards), Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n" + "\n\n".join([
        _intro(recipe, manifest), _usage(recipe), _statistics(manifest), *_curation(manifest), _lineage(),
        _provenance(manifest),
    ]) + "\n"


def _intro(recipe: Any, manifest: dict) -> str:
    t = manifest["templates"]
    return (
        f"# {recipe.publish.pretty_name or recipe.name}\n\n"
        f"{recipe.description or 'Chinese multimodal instruction data built with visualcla-forge.'}\n\n"
        f"- `pretrain`: stage-1 captioning rows, template `{t['pretrain']['name']}`.\n"
        f"- `sft`: stage-2 instruction rows (VQA, conversations, OCR, text-only), template `{t['sft']['name']}`.\n\n"
        f"{_hint_line(manifest[PROMPT_RECORD])}\n\n"
        "Each row holds `turns`, a list of `{prompt, response}` already rendered with the template: "
        "the full text is `prompt_1 + response_1 + prompt_2 + ...`, prompts are masked from the loss, "
        "the tokenizer adds BOS before and EOS after. An image appears in a prompt as the "
        f"marker `{IMAGE_BLOCK}`; a trainer replaces it with `<img>` + N x `<img_token>` + `</img>` "
        "(N = number of connector outputs). A row with one image has it in `image`, its marker in the first "
        "prompt; a row with several has them in `images` (a list of images), the k-th marker in text order "
        "being the k-th image, in any user turn. `messages` holds the same conversation before templating, "
        "with `<image>` where each image goes (leading the first user turn for one image). Rows are "
        "fitted to the training max_length: whole trailing turns are dropped, never a part of one "
        "(`manifest.json` `token_lengths`)."
    )


def _hint_line(prompt: dict) -> str:
    if not prompt["vqa_hint"]:
        return "VQA questions carry no short-answer hint."
    return (f"A VQA question whose answer is at most {prompt['vqa_hint_max_chars']} characters ends with the hint "
            f"`{prompt['vqa_hint']}` on a line of its own; ask a model trained on these rows for a short answer "
            "the same way (`manifest.json` `prompt`).")


def _usage(recipe: Any) -> str:
    return (
        "## Loading\n\n```python\nfrom datasets import load_dataset\n"
        f'sft = load_dataset("path/to/this/folder", "sft", split="train")  # or the Hub repo id\n'
        'row = sft[0]; row["image"]  # a PIL image\n```\n\n'
        "LLaMA-Factory: `dataset_info.json` is included; train with "
        f"`--dataset_dir <folder> --dataset {recipe.name}_sft`."
    )


def _table(title: str, rows: dict[str, dict[str, int]], columns: list[str]) -> str:
    lines = [f"| {title} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(str(cells.get(c, 0)) for c in columns) + " |")
    return "\n".join(lines)


def _statistics(manifest: dict) -> str:
    counts = manifest["counts"]
    columns = sorted(counts["by_stage_split"])
    rejected = "\n".join(f"| {reason} | {n} |" for reason, n in counts["rejected"].items()) or "| - | 0 |"
    return (
        "## Statistics\n\n"
        + _table("split", {"rows": counts["by_stage_split"]}, columns) + "\n\n"
        + _table("source", counts["by_source"], columns) + "\n\n"
        + _table("task", counts["by_task"], columns) + "\n\n"
        + f"Records read: {counts['read']}. Dropped (one row each in `rejected/render.jsonl`):\n\n"
        + "| reason | records |\n|---|---|\n" + rejected
    )


def _curation(manifest: dict) -> list[str]:
    c = manifest.get("curation")
    if not c:
        return []
    rejected = "\n".join(f"| {reason} | {n} |" for reason, n in c["rejected"].items()) or "| - | 0 |"
    images = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in c["images"].items())
    return ["## Curation\n\n"
            f"Before translation the curate step read {c['read']} records and kept {c['kept']} ({images}). "
            "Dropped (one row each, with its figures, in the run's `curate/rejected/curate.jsonl`; pictures in "
            "`curate/report/report.md`):\n\n| reason | records |\n|---|---|\n" + rejected]


def _lineage() -> str:
    return (
        "## Lineage\n\n"
        "Every row keeps `source`, its record `id` (a hash of source and original id), `messages_en` "
        "(the English original), `meta` (the source's own fields, JSON) and `lineage`: `original_id`, "
        "`image_url`, `image_sha256` (of the embedded bytes), `translator_model`, `prompt_version` and `qa` "
        "(the translation QA verdicts, JSON). Train and validation never share an image (split by image hash)."
    )


def _provenance(manifest: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in manifest["versions"].items() if v)
    licence = (manifest.get("recipe") or {}).get("publish", {}).get("license", "other")
    return (
        "## Licence and provenance\n\n"
        f"Licence: `{licence}`. The images and texts keep the licences of their sources; check each "
        "source before redistribution.\n\n"
        f"Built by visualcla-forge ({versions}). `manifest.json` lists every shard with its sha256, "
        "the counts and the full recipe."
    )
