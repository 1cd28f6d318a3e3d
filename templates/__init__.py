"""Prompt templates, the record type and the shard row schema. Imports nothing else of ours.

    from templates import get_template, render_turns, chat_prompt, expand_image_block

Modules: `schema` (Record), `image` (the image-block convention), `template` (Template and the
one rendering code path), `registry` (the named templates), `instructions` (record -> pairs),
`rows` (Arrow schema and HF features of a shard row; imports pyarrow).
"""

from templates.image import IMAGE_BLOCK, expand_image_block, image_tokens
from templates.registry import TEMPLATES, get_template, register_template
from templates.template import Template, TemplateError, Turn, chat_prompt, join_turns, render_turns

__all__ = [
    "IMAGE_BLOCK", "TEMPLATES", "Template", "TemplateError", "Turn", "chat_prompt", "expand_image_block",
    "get_template", "image_tokens", "join_turns", "register_template", "render_turns",
]
