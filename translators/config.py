"""The `translator:` section of a recipe. Owned here so `translators/` stays usable alone; the
endpoint fields (URL, model, key variable, limits, retries, prices) come from `llm.config`."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from llm.config import EndpointConfig, PriceConfig, Section, unset_api_key_message

__all__ = ["PriceConfig", "QAConfig", "TranslatorConfig", "unset_api_key_message"]


class QAConfig(Section):
    min_cjk_ratio: float = Field(0.3, ge=0, le=1, description="share of CJK characters a segment needs")
    min_length_ratio: float = Field(0.15, gt=0, description="len(zh) / len(en), lower bound")
    max_length_ratio: float = Field(3.0, gt=0, description="len(zh) / len(en), upper bound")
    max_short_answer_chars: int = Field(16, gt=0, description="a one-word VQA answer must stay this short")


class TranslatorConfig(EndpointConfig):
    SECTION: ClassVar[str] = "translator"

    backend: Literal["memory", "openai"] = "memory"
    """`memory`: translation memory only (offline; a miss is a recorded rejection).
    `openai`: any OpenAI-compatible chat-completions endpoint, memory consulted first."""
    source_lang: str = "en"
    target_lang: str = "zh"
    prompt_version: str = "v1"
    memory_path: str = "${run_dir}/translation-memory.sqlite"
    memory_import: list[str] = Field(default_factory=list, description="JSONL files merged into the memory first")
    glossary: dict[str, str] = Field(default_factory=dict)
    batch_segments: int = Field(32, gt=0)
    max_batch_chars: int = Field(8000, gt=0, description="cap on the source text packed into one request")
    window_records: int = Field(2000, gt=0, description="records translated together; bounds memory")
    qa: QAConfig = Field(default_factory=QAConfig)
