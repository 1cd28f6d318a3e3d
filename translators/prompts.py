"""The system prompt, by version. Its version is part of every memory key: change the wording,
add a version. Kept short on purpose: it is billed with every request."""

from __future__ import annotations

LANGUAGE_NAMES = {
    "en": "English", "zh": "Simplified Chinese", "zh-cn": "Simplified Chinese", "zh-tw": "Traditional Chinese",
    "ja": "Japanese", "ko": "Korean", "fr": "French", "de": "German", "es": "Spanish", "ru": "Russian",
}

PROMPTS = {
    "v1": (
        "Translate each {src} string in the JSON array into {tgt}. Keep every ⟦n⟧ token exactly. "
        "An inner array is one conversation: translate each turn. "
        'Reply with JSON {{"t":[...]}}, same shape and order.'
    ),
}

STRICT = (
    " Output translations only: no notes, quotes or refusals, no {src} left, every ⟦n⟧ once, "
    "numbers unchanged, short answers stay short."
)


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code.lower(), code)


def system_prompt(version: str, source_lang: str, target_lang: str, glossary: dict[str, str], strict: bool) -> str:
    """The system message; `glossary` holds only the terms this request's text contains."""
    if version not in PROMPTS:
        raise KeyError(f"unknown prompt_version {version!r} (known: {sorted(PROMPTS)})")
    src, tgt = language_name(source_lang), language_name(target_lang)
    text = PROMPTS[version].format(src=src, tgt=tgt)
    if strict:
        text += STRICT.format(src=src)
    if glossary:
        text += " Glossary: " + "; ".join(f"{k}={v}" for k, v in sorted(glossary.items())) + "."
    return text
