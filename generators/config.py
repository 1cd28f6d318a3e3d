"""The `generate:` section of a recipe: which images get which kinds of generated data, from what
context, through which endpoint (the endpoint fields come from `llm.config.EndpointConfig`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from llm.config import EndpointConfig, Section

Kind = Literal["conversation", "detail", "reasoning"]
KINDS: tuple[Kind, ...] = ("conversation", "detail", "reasoning")


class KindConfig(Section):
    share: float = Field(1.0, ge=0, le=1, description="share of images that get this kind (chosen by a hash: stable)")
    count: int = Field(1, ge=1, le=8, description="records of this kind per chosen image")
    min_chars: int = Field(8, ge=1, description="a reply's answers together must be at least this long")
    max_chars: int = Field(1200, ge=1, description="... and at most this long")
    max_turns: int = Field(8, ge=1, description="conversation: more question-answer pairs is `too_many_turns`")


class BoxSource(Section):
    """A COCO `instances_*.json` whose boxes join the records of `sources` (by `meta.image_id`, else
    by the file name of the image's URL)."""

    path: str
    sources: list[str] | None = Field(None, description="source names whose images it covers (None: all)")


class GenerateConfig(EndpointConfig):
    SECTION: ClassVar[str] = "generate"

    backend: Literal["openai", "cache"] = "openai"
    """`openai`: any OpenAI-compatible endpoint, the response cache consulted first. `cache`: the cache
    only (offline: the demo; a miss is a recorded rejection `cache_miss`)."""
    temperature: float | None = Field(0.7, ge=0, le=2, description="None: do not send")
    seed: int | None = Field(None, description="sent as `seed` where the endpoint takes it; part of the cache key")
    max_tokens: int = Field(1024, gt=0, description="cap on one reply")
    kinds: dict[Kind, KindConfig] = Field(default_factory=lambda: {k: KindConfig() for k in KINDS})
    context: Literal["annotations", "image", "both"] = "annotations"
    """What the model is given: the image's annotations (a text-only model, as LLaVA), the image itself
    (a vision model, as ShareGPT4V / ALLaVA), or both."""
    image_max_side: int = Field(512, ge=32, description="the image is resized to this longest side before sending")
    context_sources: list[str] | None = Field(None, description="sources whose records feed the context (None: all)")
    boxes: list[BoxSource] = Field(default_factory=list)
    language: Literal["zh", "en"] = "zh"
    """`en`: the prompts ask for English, and the translate step turns the records into Chinese."""
    prompts_dir: str | None = Field(None, description="a folder of prompt files replacing the shipped ones")
    prompt_version: str = "v1"
    cache_path: str = "${run_dir}/generate-cache.sqlite"
    cache_import: list[str] = Field(default_factory=list, description="JSONL reply files merged into the cache first")
    source_name: str = Field("generated", description="the `source` of the generated records")
    min_cjk_ratio: float = Field(0.5, ge=0, le=1, description="share of CJK characters in a Chinese reply's letters")
    object_names: dict[str, str] = Field(default_factory=dict, description="more en -> zh object names for "
                                         "`unsupported_objects` (COCO's 80 are built in)")
    window_images: int = Field(500, gt=0, description="images generated together; bounds memory")
    concurrency: int = Field(32, gt=0)

    @model_validator(mode="after")
    def _some_kind(self) -> "GenerateConfig":
        if not self.kinds:
            raise ValueError("generate.kinds: name at least one of conversation, detail, reasoning")
        return self


def sampling_of(config: GenerateConfig, strict_reason: str | None, index: int) -> dict[str, Any]:
    """What besides the prompt and the context decides a reply: part of its cache key."""
    c = config
    return {"temperature": c.temperature, "max_tokens": c.max_tokens, "seed": c.seed, "language": c.language,
            "context": c.context, "image_max_side": c.image_max_side if c.context != "annotations" else None,
            "strict": strict_reason is not None, "n": index}
