"""The `curate:` section of a recipe: one block per filter, each `filter` (drop and record why),
`annotate` (score and tag in `meta.curate`, drop nothing: look before cutting) or `off`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["filter", "annotate", "off"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExactConfig(_Section):
    mode: Mode = "filter"


class NearConfig(_Section):
    mode: Mode = "filter"
    threshold: int = Field(6, ge=0, le=15, description="largest pHash Hamming distance (of 64 bits) called a duplicate")
    max_thumbnail_diff: float | None = Field(None, gt=0, le=255, description=(
        "also require the mean absolute difference of the two images' 8x8 RGB thumbnails (0-255) to be at most "
        "this: pHash sees luminance layout only, so flat synthetic images of other colours can share one"))
    keep_text: bool = True
    """A duplicate image's records stay, pointed at the representative image (its captions are not
    lost); false: they are rejected with the representative's id and the distance."""


class ImageConfig(_Section):
    mode: Mode = "filter"
    min_side: int = Field(32, ge=1, description="the original image's shorter side, pixels")
    max_side: int | None = Field(None, ge=1)
    max_aspect: float = Field(4.0, ge=1, description="longer side / shorter side")


class TextConfig(_Section):
    mode: Mode = "filter"
    min_chars: dict[str, int] | None = Field(None, description="per language (`*`: the others); None: zh/ja/ko 4, "
                                             "others 8 (CJK characters and Latin words for zh/ja/ko, characters else)")
    max_chars: dict[str, int] | None = Field(None, description="per language; None: zh/ja/ko 1000, others 2000")
    language: bool = True
    """Records must be in their source's language (`sources[].lang`, English by default)."""
    traditional: Literal["normalise", "reject", "keep"] = "normalise"
    """Traditional Chinese in a Chinese record: converted to simplified, rejected, or kept as it is."""


class ClipConfig(_Section):
    mode: Mode = "off"
    path: str | None = Field(None, description="a CLIPModel or ChineseCLIPModel folder (safetensors)")
    threshold: float | None = Field(None, ge=-1, le=1, description="drop caption pairs scoring below this cosine")
    quantile: float | None = Field(None, gt=0, lt=1, description="... or the lowest share of them")
    batch_size: int = Field(64, gt=0)
    cache_path: str = "${run_dir}/clip-scores.sqlite"

    @model_validator(mode="after")
    def _needs_a_model(self) -> "ClipConfig":
        if self.mode != "off" and not self.path:
            raise ValueError("curate.clip.path: a CLIP model folder is needed unless curate.clip.mode is off")
        if self.mode == "filter" and self.threshold is None and self.quantile is None:
            raise ValueError("curate.clip: set threshold or quantile to filter (or mode: annotate)")
        return self


class CurateConfig(_Section):
    exact: ExactConfig = Field(default_factory=ExactConfig)
    near: NearConfig = Field(default_factory=NearConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    report: bool = True
    """Write `report/`: histograms, contact sheets of duplicate clusters and of the lowest / highest
    CLIP pairs, `report.md`."""
    images_per_task: int = Field(1000, gt=0, description="images decoded and hashed per task on the task runner")
