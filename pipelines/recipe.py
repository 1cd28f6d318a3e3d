"""Recipes: one validated YAML file describes a whole run, from sources to checkpoints.

    recipe = load_recipe("recipes/demo.yaml", overrides=["stages.stage1.epochs=2"])

Loading is strict: an unknown key, a wrong type or an out-of-range value is a `RecipeError`
naming the file and the dotted key. Paths may use `${run_dir}` and `${recipe_dir}`; other
relative paths are taken from the working directory. Files are checked for existence by the
step that needs them (`require_files`), so a preset can be validated before its model
weights are on disk.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.env import check_env_name
from curators.config import CurateConfig
from generators.config import GenerateConfig
from evaluators.config import JudgeConfig, SuiteConfig
from training.config import EvalConfig, ModelConfig, StageConfig
from translators.config import TranslatorConfig

BUNDLED_RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = "recipes/demo.yaml"
SOURCE_KINDS = (
    "url_list", "coco_captions", "vqav2", "gqa", "textvqa", "llava", "sharegpt", "alpaca", "zh_pairs",
)


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DemoVisionConfig(_Section):
    """The corpus's small "pretrained" vision encoder (pipelines/demo/vision.py explains why)."""
    image_size: int = Field(96, gt=0)
    patch_size: int = Field(16, gt=0)
    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    epochs: int = Field(8, gt=0)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(32, gt=0)


class DemoConfig(_Section):
    """When present, the run first generates the synthetic shapes corpus (`vcla demo-data`)."""
    output_dir: str = "${run_dir}/demo-data"
    num_images: int = Field(3000, ge=10)
    heldout_fraction: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 0
    vision_encoder: DemoVisionConfig | None = Field(
        None, description="also pretrain a tiny CLIP vision encoder on the training images into vision_encoder/")


class SourceConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: Literal[SOURCE_KINDS]  # type: ignore[valid-type]
    path: str
    annotations: str | None = Field(None, description="second file of two-file layouts (VQAv2, COCO)")
    image_root: str | None = Field(None, description="folder that relative image names resolve against")
    image_template: str | None = Field(
        None, description="how an image id becomes a file name or URL, e.g. 'COCO_train2014_{image_id:012d}.jpg'"
    )
    url_col: str = "url"
    caption_col: str = "caption"
    id_col: str | None = None
    columns: list[str] | None = Field(
        None, description="url_list/zh_pairs CSV/TSV without a header row: its column names in order "
                          "(CC3M: [caption, url]; CC12M: [url, caption]); the first line is then data"
    )
    lang: str = "en"
    limit: int | None = Field(None, gt=0)
    task: Literal["caption", "vqa", "conversation", "text"] | None = Field(
        None, description="override the task the reader infers (e.g. caption for a LLaVA pre-training file)"
    )

    @model_validator(mode="after")
    def _columns_name_the_needed_ones(self):
        if self.columns is None:
            return self
        if self.kind not in ("url_list", "zh_pairs"):
            raise ValueError(f"columns: only url_list and zh_pairs sources read CSV/TSV files (this is {self.kind})")
        dupes = sorted({c for c in self.columns if self.columns.count(c) > 1})
        needed = [c for c in (self.url_col, self.caption_col, self.id_col) if c and c not in self.columns]
        if dupes or needed:
            problem = f"repeats {dupes}" if dupes else f"must name url_col/caption_col/id_col {needed}"
            raise ValueError(f"columns: {problem} (the file's columns in order, e.g. [caption, url] for CC3M)")
        return self


class DownloadConfig(_Section):
    image_size: int = Field(224, gt=0)
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border"] = "border"
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=1, le=100)
    processes: int = Field(2, gt=0)
    threads: int = Field(16, gt=0)
    retries: int = Field(1, ge=0)
    timeout_s: float = Field(10.0, gt=0)
    incremental: bool = True
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    samples_per_shard: int = Field(1000, gt=0)
    max_image_pixels: int = Field(80_000_000, gt=0, description="larger images are rejected (decompression bombs)")
    allowed_file_roots: list[str] = Field(default_factory=list, description="only these folders may be read via file://")


class RenderConfig(_Section):
    pretrain_template: str = "none"
    sft_template: str = "visualcla"
    text_per_multimodal: float = Field(1.0, ge=0, description="text-only rows per multimodal sft row (VisualCLA: ~3.7)")
    vqa_hint: str = "请用一个词或短语回答。"
    vqa_hint_max_chars: int = Field(16, gt=0, description="a VQA answer this short gets `vqa_hint` after its question")
    validation_fraction: float = Field(0.05, ge=0, lt=1)
    shard_size_mb: int = Field(256, gt=0)
    row_group_rows: int = Field(1000, gt=0)
    bucket_mb: int = Field(32, gt=0, description="size of one external-shuffle bucket; peak memory is a few of these")
    seed: int = 0


class PublishConfig(_Section):
    repo_id: str | None = None
    private: bool = True
    revision: str = "main"
    token_env: str = "HF_TOKEN"
    """The NAME of the environment variable holding the Hub token; the token never enters a recipe."""
    commit_message: str = "Upload shards with visualcla-forge"
    files_per_commit: int = Field(50, gt=0)
    delete_stale: bool = Field(
        True, description="delete data/*.parquet files on the Hub revision that the manifest no longer lists"
    )
    license: str = "other"
    pretty_name: str | None = None

    @field_validator("token_env")
    @classmethod
    def _is_env_name(cls, v: str) -> str:
        return check_env_name(v, "publish.token_env", "HF_TOKEN")


class ScheduleConfig(_Section):
    flow: Literal["download", "translate", "render", "publish", "build-and-train"]
    cron: str | None = None
    interval_s: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_trigger(self):
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("give exactly one of `cron` or `interval_s`")
        return self


class TaskRunnerConfig(_Section):
    kind: Literal["threads", "dask", "ray"] = "threads"
    max_workers: int | None = Field(None, gt=0)
    address: str | None = Field(None, description="existing Dask/Ray cluster; a local one is started if empty")


class RecipeEvalConfig(EvalConfig):
    """`eval:`: the trainer's short-answer split and generation settings, plus named suites."""

    suites: dict[str, SuiteConfig] = Field(default_factory=dict)
    judge: JudgeConfig | None = None
    """The LLM judge of `judge` suites: any OpenAI-compatible endpoint (key from the environment)."""


class Recipe(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    seed: int = 0
    demo: DemoConfig | None = None
    sources: list[SourceConfig] = Field(default_factory=list)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    curate: CurateConfig | None = None
    """None: the curate step passes the records through and drops nothing."""
    generate: GenerateConfig | None = None
    """None: the generate step passes the records through and generates nothing."""
    translator: TranslatorConfig = Field(default_factory=TranslatorConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    model: ModelConfig
    stages: dict[str, StageConfig]
    eval: RecipeEvalConfig = Field(default_factory=RecipeEvalConfig)
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    task_runner: TaskRunnerConfig = Field(default_factory=TaskRunnerConfig)

    # Set by load_recipe, not by the YAML.
    file: Path = Field(Path("<memory>"), exclude=True)
    run_dir: Path = Field(Path("runs"), exclude=True)

    @field_validator("sources")
    @classmethod
    def _unique_source_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        return sources

    @field_validator("stages")
    @classmethod
    def _stage_names_are_folder_names(cls, stages: dict[str, StageConfig]) -> dict[str, StageConfig]:
        bad = [n for n in stages if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", n)]
        if bad:
            raise ValueError(f"stage names become folder names (train/<name>): use letters, digits, _ and -; got {bad}")
        return stages

    @model_validator(mode="after")
    def _generate_names_sources(self):
        if self.generate is None:
            return self
        names = {s.name for s in self.sources}
        if self.generate.source_name in names:
            raise ValueError(f"generate.source_name: {self.generate.source_name!r} is already a source's name; "
                             "generated records need their own")
        named = [("generate.context_sources", n) for n in self.generate.context_sources or []]
        named += [(f"generate.boxes[{i}].sources", n) for i, b in enumerate(self.generate.boxes) for n in b.sources or []]
        for key, n in named:
            if n not in names:
                raise ValueError(f"{key}: {n!r} is not a source of this recipe (sources: {sorted(names)})")
        return self

    @model_validator(mode="after")
    def _stage_order(self):
        seen: list[str] = []
        for name, stage in self.stages.items():
            if stage.init_from is not None and stage.init_from not in seen:
                raise ValueError(
                    f"stages.{name}.init_from: {stage.init_from!r} is not an earlier stage (earlier: {seen})"
                )
            seen.append(name)
        return self

    def require_files(self, *prefixes: str) -> None:
        """Raise RecipeError for the first file-valued key under `prefixes` that does not exist."""
        for key, value in _file_fields(self):
            if (prefixes and not key.startswith(prefixes)) or "://" in value:
                continue  # URLs are checked by the step that fetches them
            if not Path(value).exists():
                dotted = re.sub(r"\[(\d+)\]", r".\1", key)
                raise RecipeError(
                    f"{self.file}: {key}: file not found: {value} "
                    f"(fix the recipe or pass --set {dotted}=PATH)"
                )


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A path as given if it exists, else a bundled recipe by file or bare name ('demo')."""
    path = Path(recipe)
    if path.exists():
        return path
    for candidate in (BUNDLED_RECIPES / path.name, BUNDLED_RECIPES / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    bundled = ", ".join(sorted(p.stem for p in BUNDLED_RECIPES.glob("*.yaml")))
    raise RecipeError(f"{recipe}: recipe file not found (bundled recipes: {bundled})")


def load_recipe(
    recipe: str | Path = DEFAULT_RECIPE,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
) -> Recipe:
    """The recipe at `recipe` (a path or a bundled name) with `overrides` applied, validated.

    The CLI, the flow and its step task all ask for the same recipe: it is parsed once per process
    for each (file content, overrides, run folder) and handed out as a copy."""
    path = resolve_recipe_path(recipe)
    text = path.read_text(encoding="utf-8")
    parsed = _parse(path, text, tuple(overrides or ()), None if run_dir is None else str(run_dir))
    return parsed.model_copy(deep=True)


@lru_cache(maxsize=32)
def _parse(path: Path, text: str, overrides: tuple[str, ...], run_dir: str | None) -> Recipe:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping, got {type(raw).__name__}")
    for item in overrides or []:
        _apply_override(raw, item, path)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{path}: name: required (a short lowercase name; the run folder is runs/<name>)")
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / name
    try:
        # Validate, then interpolate the full model (defaults such as translator.memory_path
        # use ${run_dir} too), then validate the interpolated values.
        filled = Recipe.model_validate(raw).model_dump()
        variables = {"run_dir": str(run_dir), "recipe_dir": str(path.resolve().parent)}
        parsed = Recipe.model_validate(_interpolate(filled, variables, path))
    except ValidationError as e:
        raise RecipeError(_format_errors(path, e)) from None
    parsed.file = path
    parsed.run_dir = run_dir
    return parsed


def _apply_override(raw: dict[str, Any], item: str, path: Path) -> None:
    """`a.b.c=value`; the value is parsed as YAML, so `2`, `true`, `[a, b]` get their types.

    A numeric part indexes a list (`sources.0.path=...`)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"--set {item!r}: expected dotted.key=value")
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"{path}: --set {key}: {'.'.join(parts[:i])} has no item {part}")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise RecipeError(f"{path}: --set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
    last = parts[-1]
    parsed = yaml.safe_load(value) if value else ""
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"{path}: --set {key}: no list item {last}")
        node[int(last)] = parsed
    else:
        node[last] = parsed


_VAR = re.compile(r"\$\{([a-z_]+)\}")


def _interpolate(value: Any, variables: dict[str, str], path: Path, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, variables, path, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, variables, path, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise RecipeError(f"{path}: {key}: unknown variable ${{{m.group(1)}}} (known: {sorted(variables)})")
            return variables[m.group(1)]
        return _VAR.sub(sub, value)
    return value


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = _dotted(e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: {key}: unknown key (check the spelling; see the recipe reference in recipes/)")
        elif e["type"] == "missing":
            lines.append(f"{path}: {key}: required key is missing")
        else:
            lines.append(f"{path}: {key}: {e['msg']}{_shown_input(key, e.get('input'))}")
    return "\n".join(lines)


def _shown_input(key: str, value: Any) -> str:
    """The rejected value, except where it may be a secret pasted into the wrong field."""
    if key.endswith(("_env", "base_url", "token")):
        return " (value not shown: it may be a secret)"
    return f" (got {value!r})"


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _file_fields(recipe: Recipe) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for i, s in enumerate(recipe.sources):
        for attr in ("path", "annotations", "image_root"):
            if getattr(s, attr):
                fields.append((f"sources[{i}].{attr}", getattr(s, attr)))
    for i, f in enumerate(recipe.translator.memory_import):
        fields.append((f"translator.memory_import[{i}]", f))
    if recipe.curate is not None and recipe.curate.clip.path:
        fields.append(("curate.clip.path", recipe.curate.clip.path))
    if recipe.generate is not None:
        fields += [(f"generate.cache_import[{i}]", f) for i, f in enumerate(recipe.generate.cache_import)]
        fields += [(f"generate.boxes[{i}].path", b.path) for i, b in enumerate(recipe.generate.boxes)]
        if recipe.generate.prompts_dir:
            fields.append(("generate.prompts_dir", recipe.generate.prompts_dir))
    for part in ("vision", "llm"):
        cfg = getattr(recipe.model, part)
        if cfg.path:
            fields.append((f"model.{part}.path", cfg.path))
    if recipe.model.connector.path:
        fields.append(("model.connector.path", recipe.model.connector.path))
    if recipe.model.llm.tokenizer:
        fields.append(("model.llm.tokenizer", recipe.model.llm.tokenizer))
    if recipe.eval.split:
        fields.append(("eval.split", recipe.eval.split))
    fields += [(f"eval.suites.{name}.path", s.path) for name, s in recipe.eval.suites.items()]
    return fields
