"""`eval.suites` and `eval.judge` in a recipe: named suites, each with its own file and kind, run on the stage
checkpoints that fit them (captions on the first stage, the rest on the last, unless `stages` says)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm.config import EndpointConfig

SuiteKind = Literal["vqa", "caption", "choice", "describe", "judge"]


class SuiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: SuiteKind
    """vqa: JSONL {image, question, answer | answers, question_type?, answer_type?}, VQAv2 accuracy and exact
    match. caption: JSONL {image, references}, BLEU-4 and CIDEr-D. choice: MMBench TSV, CircularEval.
    describe: JSONL {image, question, shapes}, the demo's description check. judge: JSONL {image, question,
    reference, context, category}, an LLM judge's relative score (`eval.judge`)."""
    path: str
    stages: list[str] | None = Field(None, description="stage names to run on (default: caption -> the first "
                                     "stage, every other kind -> the last)")
    required: bool = Field(False, description="a failure of this suite fails the eval step (else it is reported)")
    limit: int | None = Field(None, gt=0, description="the first N items only")
    max_new_tokens: int | None = Field(None, gt=0, description="default: eval.max_new_tokens, 96 for caption, "
                                       "describe and judge")
    answer_with: Literal["letter", "option"] = "letter"
    """choice: what the prompt asks for, the option's letter (MMBench's prompt) or its text; a reply is scored the
    same either way (a leading letter, else the one option whose text it contains)."""
    segmenter: Literal["auto", "chars", "whitespace"] = "auto"
    """caption: how references and predictions are split into tokens (auto: CJK characters, else words)."""


class JudgeConfig(EndpointConfig):
    """The `eval.judge` section: the judge's endpoint (fields of `llm.config.EndpointConfig`) and prompt."""

    SECTION: ClassVar[str] = "judge"

    prompt_version: str = Field("v1", description="the shipped prompt evaluators/prompts/judge_<version>.md")
    cache_path: str = "${run_dir}/judge-cache.sqlite"
    temperature: float | None = Field(0.0, ge=0, le=2, description="None: do not send")
    max_tokens: int = Field(512, gt=0, description="cap on one verdict")
