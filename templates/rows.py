"""The row of a shard: one Arrow schema, and the matching Hugging Face `datasets.Features`.

A row is a `Record` after rendering (DESIGN.md, "Records and rows"):

| column        | type                                | what                                                   |
|---------------|-------------------------------------|--------------------------------------------------------|
| `id`          | string                              | the record id (stable content hash)                    |
| `source`      | string                              | source name from the recipe                            |
| `task`        | string                              | caption, vqa, conversation, text                       |
| `lang`        | string                              | language of `messages`                                 |
| `stage`       | string                              | the subset: `pretrain` or `sft` (`Subset`)             |
| `template`    | string                              | the registry name the turns were rendered with         |
| `turns`       | list<{prompt, response}>            | rendered; prompts are masked from the loss             |
| `messages`    | list<{role, content}>               | the instructions before templating, `<image>` leading the first user turn (LLaMA-Factory's sharegpt view) |
| `messages_en` | list<{role, content}> or null       | the English original                                   |
| `image`       | {bytes, path} or null               | HF `Image` struct, JPEG/PNG bytes embedded: the image of a one-image row |
| `images`      | list<{bytes, path}> or null         | HF `List(Image)`: the images of a row with several, in the order of their image blocks |
| `lineage`     | struct (below)                      | where the row came from                                |
| `meta`        | string (JSON)                       | the record's free-form source fields                   |

A row has at most one of `image` and `images`: one-image rows (every 2023 recipe) keep the single
`Image` column that LLaMA-Factory and earlier readers know, rows with several images hold them in
`images` (so no image is stored twice); `row_images` reads either. Shards written before `images`
existed have no such column and read the same.

`lineage`: `original_id`, `image_url`, `image_sha256` (of the embedded bytes; comma-separated, in
order, for several images), `translator_model`, `prompt_version`, `qa` (JSON of the QA verdicts).
Absent values are null.

The schema is written by hand (pyarrow only) so that importing `templates` stays cheap;
`row_features()` builds the `datasets.Features` from the same description and a test checks
that both give the same Arrow types. The HF feature dict travels in the Parquet schema metadata
(key ``huggingface``), which is how `load_dataset("parquet", ...)` knows `image` is an image.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pyarrow as pa

Subset = Literal["pretrain", "sft"]
SUBSETS: tuple[Subset, ...] = ("pretrain", "sft")
"""The shard subsets: stage-1 captioning rows and stage-2 instruction rows. Their column is named
`stage` (the schema below): renaming it would change the bytes of every shard, the demo's included."""
SPLITS = ("train", "validation")

_STR = {"dtype": "string", "_type": "Value"}
_MESSAGE = {"role": _STR, "content": _STR}
LINEAGE_FIELDS = ("original_id", "image_url", "image_sha256", "translator_model", "prompt_version", "qa")

HF_FEATURES: dict[str, Any] = {
    "id": _STR,
    "source": _STR,
    "task": _STR,
    "lang": _STR,
    "stage": _STR,
    "template": _STR,
    "turns": {"feature": {"prompt": _STR, "response": _STR}, "_type": "List"},
    "messages": {"feature": _MESSAGE, "_type": "List"},
    "messages_en": {"feature": _MESSAGE, "_type": "List"},
    "image": {"_type": "Image"},
    "images": {"feature": {"_type": "Image"}, "_type": "List"},
    "lineage": {name: _STR for name in LINEAGE_FIELDS},
    "meta": _STR,
}
"""`datasets.Features.to_dict()` form of a row (what goes into the Parquet metadata)."""

_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("task", pa.string()),
        ("lang", pa.string()),
        ("stage", pa.string()),
        ("template", pa.string()),
        ("turns", pa.list_(pa.struct([("prompt", pa.string()), ("response", pa.string())]))),
        ("messages", _MESSAGE_TYPE),
        ("messages_en", _MESSAGE_TYPE),
        ("image", _IMAGE_TYPE),
        ("images", pa.list_(_IMAGE_TYPE)),
        ("lineage", pa.struct([(name, pa.string()) for name in LINEAGE_FIELDS])),
        ("meta", pa.string()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": HF_FEATURES}})},
)
"""Arrow schema of a shard row, HF features included as metadata."""

ROW_COLUMNS = tuple(ROW_SCHEMA.names)


def yaml_features(features: dict[str, Any] = HF_FEATURES) -> list[dict[str, Any]]:
    """The features as a dataset card lists them (`dataset_info.features`), without importing datasets."""
    out = []
    for name, feature in features.items():
        kind = feature.get("_type")
        if kind == "Value":
            out.append({"name": name, "dtype": feature["dtype"]})
        elif kind == "Image":
            out.append({"name": name, "dtype": "image"})
        elif kind == "List" and feature["feature"].get("_type") == "Image":
            out.append({"name": name, "list": "image"})
        elif kind == "List":
            out.append({"name": name, "list": yaml_features(feature["feature"])})
        elif kind is None:
            out.append({"name": name, "struct": yaml_features(feature)})
        else:
            raise ValueError(f"feature {name!r}: no card form for {kind!r}")
    return out


def row_features():
    """The `datasets.Features` of a row (imports `datasets`, hence a function)."""
    from datasets import Features

    return Features.from_dict(HF_FEATURES)


def row_images(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The `{bytes, path}` images of a shard row, in order: its `images`, else its `image` (rows of
    shards written before `images` existed have only `image`)."""
    many = row.get("images")
    if many:
        return [im for im in many if im is not None and im.get("bytes") is not None]
    one = row.get("image")
    return [one] if one is not None and one.get("bytes") is not None else []
