"""Pick a backend by `TranslatorConfig.backend`. The `openai` package is imported only when used."""

from __future__ import annotations

from translators.base import MemoryFirstTranslator
from translators.config import TranslatorConfig
from translators.memory import TranslationMemory


def build_translator(
    config: TranslatorConfig, memory: TranslationMemory, *, estimate_only: bool = False
) -> MemoryFirstTranslator:
    """A `Translator` for the config. Raises `TranslatorError` when it cannot run (e.g. the
    key's environment variable is unset). Call inside the event loop that will use it.
    `estimate_only`: for `estimate` alone, never `translate` (no client, no key needed)."""
    if config.backend == "memory":
        from translators.memory_backend import MemoryTranslator

        return MemoryTranslator(config, memory)
    if config.backend == "openai":
        from translators.openai_backend import OpenAITranslator

        return OpenAITranslator(config, memory, estimate_only=estimate_only)
    raise ValueError(f"translator.backend: unknown backend {config.backend!r} (known: memory, openai)")
