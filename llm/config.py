"""The endpoint part of a recipe section: every user of the client layer extends `EndpointConfig`
(`translator:` in translators/config.py, `generate:` in generators/config.py), so both read the
same fields, defaults and checks."""

from __future__ import annotations

import re
from typing import ClassVar
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from common.env import check_env_name
from llm.usage import Prices

_SECRET_PARAM = re.compile(r"key|token|secret|password|passwd|auth|sig", re.I)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PriceConfig(Section):
    input_per_million: float = Field(0.0, ge=0)
    output_per_million: float = Field(0.0, ge=0)
    cached_input_per_million: float | None = Field(None, ge=0, description="unset: cached input costs as any input")

    def prices(self) -> Prices:
        return Prices(self.input_per_million, self.output_per_million, self.cached_input_per_million)


class EndpointConfig(Section):
    """An OpenAI-compatible chat-completions endpoint and how hard to push it."""

    SECTION: ClassVar[str] = "endpoint"
    """The recipe key of the subclass, for messages ("translator.base_url")."""

    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    """The NAME of the environment variable holding the key; the key itself never enters a recipe."""
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
    price: PriceConfig = Field(default_factory=PriceConfig)

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
                f"{cls.SECTION}.api_key_env"
            )
        return v

    @field_validator("api_key_env")
    @classmethod
    def _is_env_name(cls, v: str, info: ValidationInfo) -> str:
        return check_env_name(v, f"{cls.SECTION}.api_key_env", "OPENAI_API_KEY")


def unset_api_key_message(env_name: str, section: str = "translator") -> str:
    """What to tell a user whose `<section>.api_key_env` variable is not set: one text for the
    client and `vcla`'s pre-flight."""
    return (f"{section}.api_key_env: environment variable {env_name} is not set; export the API key in it "
            f"(for a local endpoint without keys any value works, e.g. {env_name}=EMPTY)")


def scrub_url(url: str) -> str:
    """`url` without user:password@, query or fragment: what may appear in a message or a log."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else host + parts.path
