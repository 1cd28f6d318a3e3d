"""Checks every record passes at read time, before any image is fetched.

A check returns None (keep) or `(reason, detail)` (reject), datatrove-style. The reasons
are the keys counted in the step's report:

    invalid_utf8          text that is not valid UTF-8 (bad bytes in the source file); when the file's
                          first such line looks like GBK or cp1252 (`legacy_encoding`), the detail says
                          to re-save the file as UTF-8 (`read_located`); nothing is guess-decoded
    no_messages           an empty conversation
    unknown_role          a role other than human/gpt/user/assistant
    empty_turn            a turn whose text is empty or only whitespace
    bad_turn_order        roles do not alternate user, assistant, ... ending with the assistant
    image_count_mismatch  the number of `<image>` placeholders differs from the number of images (a single
                          image may go unmarked: it leads the first turn), or one stands in an answer
    field_too_long        a turn, the image reference, the whole conversation or `meta` is over
                          its size limit (below); the rejection row keeps a cut copy
"""

from __future__ import annotations

import json

from templates.schema import IMAGE_PLACEHOLDER, Record, images_of

Rejection = tuple[str, str] | None

MAX_TURN_CHARS = 100_000
"""One message (~25k tokens): longer than any context we train at, so it could only be cut."""
MAX_TURNS = 256
MAX_RECORD_CHARS = 1_000_000
"""All turns together."""
MAX_IMAGE_REF_CHARS = 4096
"""An image URL or path (browsers and servers stop at 2-8 KB)."""
MAX_META_CHARS = 100_000
"""`meta` serialised as JSON (VQAv2's ten answers and ids are ~1 KB)."""


def validate(record: Record) -> Rejection:
    """The first failed check's (reason, detail), or None when the record is usable."""
    for check in (check_sizes, check_utf8, check_turns, check_image_count):
        verdict = check(record)
        if verdict is not None:
            return verdict
    return None


def check_sizes(record: Record) -> Rejection:
    """Oversized fields are rejected before anything else looks at them (limits above)."""
    if len(record.messages) > MAX_TURNS:
        return "field_too_long", f"messages: {len(record.messages):,} turns (limit {MAX_TURNS})"
    total = 0
    for i, message in enumerate(record.messages):
        content = message.get("content") if isinstance(message, dict) else None
        n = len(content) if isinstance(content, str) else 0
        total += n
        if n > MAX_TURN_CHARS:
            return "field_too_long", f"messages[{i}]: {n:,} characters (limit {MAX_TURN_CHARS:,})"
    if total > MAX_RECORD_CHARS:
        return "field_too_long", f"messages: {total:,} characters in all (limit {MAX_RECORD_CHARS:,})"
    for ref in images_of(record):
        if isinstance(ref, str) and len(ref) > MAX_IMAGE_REF_CHARS:
            return "field_too_long", f"image: reference of {len(ref):,} characters (limit {MAX_IMAGE_REF_CHARS:,})"
    try:
        meta = len(json.dumps(record.meta, default=str))
    except (TypeError, ValueError):  # keys JSON cannot hold
        meta = len(repr(record.meta))
    if meta > MAX_META_CHARS:
        return "field_too_long", f"meta: {meta:,} characters as JSON (limit {MAX_META_CHARS:,})"
    return None


def check_utf8(record: Record) -> Rejection:
    texts = [("image", ref) for ref in images_of(record)] + [(f"messages[{i}]", m.get("content")) for i, m in enumerate(record.messages)]
    for where, text in texts:
        if isinstance(text, str) and not _is_utf8(text):
            bad = next(ch for ch in text if 0xD800 <= ord(ch) <= 0xDFFF)
            byte = f"0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
            return "invalid_utf8", f"{where}: not valid UTF-8 (byte/code point {byte} at {text.index(bad)})"
    return None


def legacy_encoding(record: Record) -> str | None:
    """The legacy codec ("GBK", "cp1252") the first text of `record` that is not UTF-8 looks like, or None.
    Only a hint for the rejection detail (re-save the file as UTF-8): text is never decoded with it, as a
    wrong guess would corrupt it silently. GBK when its bytes decode as GBK to CJK text, else cp1252 when
    they decode as cp1252. Undecodable bytes reach the text as U+DC80..U+DCFF (`jsonstream.ESCAPE_ERRORS`)."""
    texts = images_of(record) + [m.get("content") for m in record.messages if isinstance(m, dict)]
    text = next((t for t in texts if isinstance(t, str) and not _is_utf8(t)), None)
    if text is None:
        return None
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the line's bytes as the file holds them
    except UnicodeEncodeError:  # other lone surrogates (a UTF-16 file, a JSON \ud800 escape): no guess
        return None
    try:
        decoded = raw.decode("gbk")
        if all(ord(ch) < 0x80 or _cjk(ch) for ch in decoded):
            return "GBK"
    except UnicodeDecodeError:
        pass
    try:
        raw.decode("cp1252")
    except UnicodeDecodeError:
        return None
    return "cp1252"


def _cjk(ch: str) -> bool:
    code = ord(ch)
    return 0x4E00 <= code <= 0x9FFF or 0x3000 <= code <= 0x303F or 0xFF00 <= code <= 0xFFEF or 0x3400 <= code <= 0x4DBF


def legacy_encoding_hint(file: str, encoding: str) -> str:
    """What an `invalid_utf8` rejection of a file that looks like `encoding` tells the user to do."""
    return (f"{file} looks like {encoding}, not UTF-8 (its lines are not decoded by guessing): save it as UTF-8, "
            f"e.g. `iconv -f {encoding} -t UTF-8 '{file}' > utf8-copy` and point the source at the copy")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_turns(record: Record) -> Rejection:
    if not record.messages:
        return "no_messages", "the record has no turns"
    for i, message in enumerate(record.messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            return "unknown_role", f"messages[{i}]: role {role!r} (expected user/human or assistant/gpt)"
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return "empty_turn", f"messages[{i}] ({role}): empty text"
    for i, message in enumerate(record.messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            return "bad_turn_order", f"messages[{i}] is {message['role']!r}, expected {expected!r} (turns alternate from the user)"
    if record.messages[-1]["role"] != "assistant":
        return "bad_turn_order", f"the last turn (messages[{len(record.messages) - 1}]) is the user's, with no answer"
    return None


def check_image_count(record: Record) -> Rejection:
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in record.messages)
    images = len(images_of(record))
    if placeholders != images:
        return "image_count_mismatch", f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for {images} image(s)"
    in_answers = [i for i, m in enumerate(record.messages) if m["role"] == "assistant" and IMAGE_PLACEHOLDER in m["content"]]
    if in_answers:
        return "image_count_mismatch", f"messages[{in_answers[0]}] (an answer) holds {IMAGE_PLACEHOLDER}; images go in user turns"
    return None
