"""How a shard row looks in the data tab: a table line, and a card with its image and texts.

Rows carry text from the web (captions, model output, translations): every piece goes through
`html.escape` before it reaches the page, so a caption reading `<script>` is shown, not run. The
image is embedded as a small JPEG thumbnail (a data: URL), so the page needs no file route to the
run folder; a row whose image does not decode gets a line saying so.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape as _html_escape
from typing import Any

from PIL import Image

from templates.image import IMAGE_BLOCK

THUMB_SIDE = 256
_TEMPLATE_CHARS = str.maketrans({"$": "&#36;", "{": "&#123;", "}": "&#125;", "`": "&#96;"})


def escape(text: str) -> str:
    """HTML-escaped, and without the characters of Gradio's HTML templates (`${...}`, `{{...}}`), which
    the browser shows the same as entities: the page never reads a row's text as markup or template."""
    return _html_escape(text, quote=True).translate(_TEMPLATE_CHARS)
TABLE_TEXT = 80
"""Characters of an instruction or answer shown in the table (the card shows all)."""


def _first(messages: list[dict] | None, role: str) -> str:
    return next((m.get("content") or "" for m in messages or [] if m.get("role") == role), "")


def instruction_and_response(row: dict[str, Any]) -> tuple[str, str]:
    """The row's first instruction and answer: its messages, else its first rendered turn."""
    if row.get("messages"):
        question = _first(row["messages"], "user").replace("<image>", "").strip()
        return question, _first(row["messages"], "assistant")
    turns = row.get("turns") or [{}]
    return (turns[0].get("prompt") or "").replace(IMAGE_BLOCK, "").strip(), turns[0].get("response") or ""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TABLE_TEXT else text[: TABLE_TEXT - 1] + "…"


def table_row(row: dict[str, Any]) -> list[str]:
    """[id, subset, source, task, instruction, response]: one line of the page's table."""
    question, answer = instruction_and_response(row)
    return [row.get("id") or "", row.get("_subset") or "", row.get("source") or "", row.get("task") or "",
            _short(question), _short(answer)]


def thumbnail_url(image: dict | None) -> str | None:
    """A data: URL of a JPEG thumbnail of the row's embedded image; None if absent or undecodable."""
    data = (image or {}).get("bytes")
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (THUMB_SIDE, THUMB_SIDE))
            rgb = im.convert("RGB")
        rgb.thumbnail((THUMB_SIDE, THUMB_SIDE))
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=85)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _messages_html(messages: list[dict] | None) -> str:
    return "".join(f"<p><b>{escape(m.get('role') or '')}</b>: {escape(m.get('content') or '')}</p>"
                   for m in messages or [])


def _turns_html(turns: list[dict] | None) -> str:
    return "".join(f"<pre class='vcla-prompt'>{escape(t.get('prompt') or '')}</pre>"
                   f"<p class='vcla-response'>{escape(t.get('response') or '')}</p>" for t in turns or [])


def _lineage_html(lineage: dict | None, words: dict[str, str]) -> str:
    items = {k: v for k, v in (lineage or {}).items() if v and k != "qa"}
    lines = "".join(f"<li>{escape(k)}: {escape(str(v))}</li>" for k, v in items.items())
    qa = (lineage or {}).get("qa")
    if qa:
        try:
            qa = json.dumps(json.loads(qa), ensure_ascii=False, indent=1)
        except (TypeError, ValueError):
            pass
        lines += f"<li>{escape(words['qa'])}: <pre>{escape(str(qa))}</pre></li>"
    return f"<details><summary>{escape(words['lineage'])}</summary><ul>{lines}</ul></details>" if lines else ""


def card(row: dict[str, Any], words: dict[str, str]) -> str:
    """One row as HTML: image, where it came from, the rendered turns, the Chinese and English messages."""
    url = thumbnail_url(row.get("image"))
    picture = (f"<img class='vcla-row-image' src='{url}' alt='{escape(row.get('id') or '')}'>" if url
               else f"<p>{escape(words['no_image'])}</p>")
    head = " · ".join(escape(str(row.get(k) or "")) for k in ("id", "_subset", "source", "task", "lang"))
    english = (f"<div class='vcla-col'><h4>{escape(words['english'])}</h4>{_messages_html(row.get('messages_en'))}"
               "</div>" if row.get("messages_en") else "")
    chinese = (f"<div class='vcla-col'><h4>{escape(words['chinese'])}</h4>{_messages_html(row.get('messages'))}"
               "</div>" if row.get("messages") else "")
    return (f"<div class='vcla-card' data-row-id='{escape(row.get('id') or '')}'>"
            f"<div class='vcla-card-image'>{picture}</div><div class='vcla-card-text'><p class='vcla-head'>{head}</p>"
            f"{_turns_html(row.get('turns'))}<div class='vcla-cols'>{chinese}{english}</div>"
            f"{_lineage_html(row.get('lineage'), words)}</div></div>")


CARD_CSS = """
.vcla-card {display: flex; gap: 12px; border: 1px solid #ddd; border-radius: 6px; padding: 8px; margin: 6px 0;}
.vcla-card-image img {max-width: 192px; max-height: 192px; image-rendering: pixelated;}
.vcla-card-text {flex: 1; min-width: 0;}
.vcla-head {font-family: monospace; color: #555; margin: 0;}
.vcla-prompt {white-space: pre-wrap; font-size: 0.85em; background: #f6f6f6; margin: 4px 0;}
.vcla-response {font-weight: bold; margin: 2px 0 6px 0;}
.vcla-cols {display: flex; gap: 16px;}
.vcla-col {flex: 1;}
"""
