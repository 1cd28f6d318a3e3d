"""Recipe fields that name an environment variable (`publish.token_env`, `translator.api_key_env`):
one rule for what a name is, and one message when a value is not one, which never repeats the
value (a field like that is where a token or key gets pasted by mistake)."""

from __future__ import annotations

import re

ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
"""A variable name as POSIX shells write them, upper case only: `HF_TOKEN`, `OPENAI_API_KEY`. Tokens
and keys have lower-case letters or dashes (`hf_...`, `sk-...`), so none passes for a name."""


def check_env_name(value: str, key: str, example: str = "HF_TOKEN") -> str:
    """`value` if it is an environment variable's name; ValueError otherwise, naming `key` (the
    recipe field) but not the value, which may be a secret: only its length is given."""
    if isinstance(value, str) and ENV_NAME.fullmatch(value):
        return value
    size = f"the {len(value)}-character value given" if isinstance(value, str) else "the value given"
    raise ValueError(f"{key} must be the NAME of an environment variable (e.g. {example}) that holds the secret, "
                     f"not the secret itself ({size} is not shown)")
