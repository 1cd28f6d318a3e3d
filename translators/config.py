"""The `translator:` section of a recipe. Owned here so `translators/` stays usable alone."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.env import check_env_name

_SECRET_PARAM = re.compile(r"key|token|secret|password|passwd|auth|sig", re.I)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QAConfig(_Section):
    min_cjk_ratio: float = Field(0.3, ge=0, le=1, description="share of CJK characters a segment needs")
    min_length_ratio: float = Field(0.15, gt=0, description="len(zh) / len(en), lower bound")
    max_length_ratio: float = Field(3.0, gt=0, description="len(zh) / len(en), upper bound")
    max_short_answer_chars: int = Field(16, gt=0, description="a one-word VQA answer must stay this short")


class PriceConfig(_Section):
    input_per_million: float = 0.0
    output_per_million: float = 0.0


class TranslatorConfig(_Section):
    backend: Literal["memory", "openai"] = "memory"
    """`memory`: translation memory only (offline; a miss is a recorded rejection).
    `openai`: any OpenAI-compatible chat-completions endpoint, memory consulted first."""
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    """The NAME of the environment variable holding the key; the key itself never enters a recipe."""
    source_lang: str = "en"
    target_lang: str = "zh"
    prompt_version: str = "v1"
    memory_path: str = "${run_dir}/translation-memory.sqlite"
    memory_import: list[str] = Field(default_factory=list, description="JSONL files merged into the memory first")
    glossary: dict[str, str] = Field(default_factory=dict)
    batch_segments: int = Field(32, gt=0)
    max_batch_chars: int = Field(8000, gt=0, description="cap on the source text packed into one request")
    concurrency: int = Field(16, gt=0)
    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_base_s: float = Field(0.5, gt=0, description="first retry waits up to this long (full jitter)")
    backoff_max_s: float = Field(30.0, gt=0, description="cap on one backoff wait without Retry-After")
    max_retry_after_s: float = Field(300.0, gt=0, description="a longer Retry-After fails the request instead")
    json_mode: bool = True
    """Ask for `response_format={"type": "json_object"}`; switched off for the run if the endpoint rejects it."""
    temperature: float | None = Field(0.0, ge=0, le=2, description="None: do not send (models that refuse it)")
    window_records: int = Field(2000, gt=0, description="records translated together; bounds memory")
    price: PriceConfig = Field(default_factory=PriceConfig)
    qa: QAConfig = Field(default_factory=QAConfig)

    @field_validator("base_url")
    @classmethod
    def _no_credentials_in_url(cls, v: str | None) -> str | None:
        """A key in the URL would be written wherever the recipe is (manifests, cards, logs)."""
        if v is None:
            return v
        parts = urlsplit(v)
        secret_params = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if _SECRET_PARAM.search(k)]
        if parts.username is not None or parts.password is not None or secret_params:
            where = ("user:password@ in the host" if parts.username is not None
                     else f"query parameter {secret_params[0]!r}")
            raise ValueError(
                f"must not carry credentials ({where}); put the key in the environment variable named by "
                "translator.api_key_env"
            )
        return v

    @field_validator("api_key_env")
    @classmethod
    def _is_env_name(cls, v: str) -> str:
        return check_env_name(v, "translator.api_key_env", "OPENAI_API_KEY")


def unset_api_key_message(env_name: str) -> str:
    """What to tell a user whose `translator.api_key_env` variable is not set: one text for the
    backend (openai_backend.py) and `vcla`'s pre-flight."""
    return (f"translator.api_key_env: environment variable {env_name} is not set; export the API key in it "
            f"(for a local endpoint without keys any value works, e.g. {env_name}=EMPTY)")
