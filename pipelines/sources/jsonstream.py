"""Streaming JSON: read the items of a huge JSON array without loading the file.

LLaVA, VQAv2, COCO and GQA ship single JSON documents of hundreds of MB to several GB.
`json.load` would hold the whole document (and several times its size in Python objects);
here a buffered reader feeds `json.JSONDecoder.raw_decode` one item at a time, so memory
is bounded by the largest single item, not the file.

    for index, item in iter_json_array(path):                 # top level is [...]
    for index, item in iter_json_array(path, key="questions"):  # {"questions": [...], ...}
    for key, value in iter_json_object(path):                 # {"id": {...}, ...} (GQA)

Text is UTF-8 unless the file says otherwise: a byte-order mark (files saved by Windows tools:
UTF-8 with BOM, UTF-16, UTF-32) or, without one, the NUL bytes UTF-16/32 put around a leading
ASCII character (RFC 4627's detection) choose the codec, and the mark is not part of the text.
A bad byte does not stop the file: it reaches the record as a lone surrogate and validation
rejects that record (`invalid_utf8`).
"""

from __future__ import annotations

import codecs
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

CHUNK_CHARS = 1 << 20
MAX_ITEM_CHARS = 1 << 28
"""An item still unparsed after this many characters is treated as malformed JSON."""
TOO_DEEP = "invalid JSON: nested too deeply for the parser (thousands of levels)"
_WHITESPACE = " \t\n\r"
_AFTER_VALUE = ",]}:" + _WHITESPACE


class JsonStreamError(ValueError):
    """Malformed JSON; `location` is "file[index]" or "file@offset" for the rejection row."""

    def __init__(self, message: str, location: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.reason = message


BOM = "\ufeff"
ESCAPE_ERRORS = "vcla.escape"
"""Decode-error handler: each undecodable byte b becomes the lone surrogate U+DC00+b, as
`surrogateescape` does for UTF-8, but for every codec (a UTF-16 file's odd last byte too)."""


def _escape_bytes(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return "".join(chr(0xDC00 + b) for b in err.object[err.start:err.end]), err.end


codecs.register_error(ESCAPE_ERRORS, _escape_bytes)


def open_text(path: str | Path) -> IO[str]:
    """Open text (gzip if the name ends in .gz) in the encoding `sniff_encoding` finds, its
    byte-order mark skipped; bad bytes become lone surrogates."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw:
        encoding = sniff_encoding(raw.read(4))
    return opener(path, "rt", encoding=encoding, errors=ESCAPE_ERRORS, newline="")


def sniff_encoding(head: bytes) -> str:
    """The codec for a file starting with `head` (its first 4 bytes): "utf-8-sig" (UTF-8, with or
    without a BOM), "utf-16"/"utf-32" (BOM), "utf-16-le" etc. (no BOM, NUL-padded ASCII start)."""
    encoding = json.detect_encoding(head)
    return "utf-8-sig" if encoding == "utf-8" else encoding


class JsonStream:
    """A cursor over one JSON document, refilled from the file as parsing needs more text."""

    def __init__(self, f: IO[str], name: str) -> None:
        self._f = f
        self._name = name
        self._buf = ""
        self._pos = 0
        self._offset = 0  # characters dropped from the front of the buffer so far
        self._eof = False
        self._decoder = json.JSONDecoder()

    # -- buffer --------------------------------------------------------------------------
    def _fill(self, want: int | None = None) -> bool:
        if self._eof:
            return False
        if self._pos > len(self._buf) // 2:
            self._offset += self._pos
            self._buf = self._buf[self._pos:]
            self._pos = 0
        chunk = self._f.read(want or CHUNK_CHARS)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def _where(self, index: int | str | None = None) -> str:
        if index is not None:
            return f"{self._name}[{index}]"
        return f"{self._name}@char {self._offset + self._pos}"

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file), not consumed."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in _WHITESPACE:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def expect(self, chars: str, what: str) -> str:
        ch = self.peek()
        if ch == "" or ch not in chars:
            found = repr(ch) if ch else "end of file"
            raise JsonStreamError(f"invalid JSON: expected {what}, found {found}", self._where())
        self._pos += 1
        return ch

    def value(self, index: int | str | None = None) -> Any:
        """Decode one complete JSON value at the cursor, reading more text until it parses."""
        self.peek()
        want = CHUNK_CHARS
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as err:
                if not self._truncated(err) or not self._fill(want):
                    raise JsonStreamError(f"invalid JSON: {err.msg}", self._where(index)) from None
                want = min(want * 2, MAX_ITEM_CHARS)  # geometric growth: no quadratic re-parsing
                continue
            except RecursionError:
                raise JsonStreamError(TOO_DEEP, self._where(index)) from None
            if (end == len(self._buf) or self._buf[end] not in _AFTER_VALUE) and self._fill(want):
                continue  # "12" of "12.5" at the end of a chunk: parse again with more text
            self._pos = end
            return value

    def _truncated(self, err: json.JSONDecodeError) -> bool:
        """Could this error be the buffer ending mid-item (rather than bad JSON)?"""
        if len(self._buf) - self._pos > MAX_ITEM_CHARS:
            return False
        return err.msg.startswith("Unterminated string") or err.pos >= len(self._buf) - 64

    # -- containers ----------------------------------------------------------------------
    def array_items(self) -> Iterator[tuple[int, Any]]:
        """Yield (index, item) of the array at the cursor and consume its closing bracket."""
        self.expect("[", "'[' (a JSON array)")
        if self.peek() == "]":
            self._pos += 1
            return
        index = 0
        while True:
            yield index, self.value(index)
            index += 1
            if self.expect(",]", "',' or ']' after an array item") == "]":
                return

    def object_keys(self) -> Iterator[str]:
        """Yield each key of the object at the cursor, leaving the cursor on its value.

        The caller must consume the value (`value()`, `array_items()` or `skip()`) before
        asking for the next key."""
        self.expect("{", "'{' (a JSON object)")
        if self.peek() == "}":
            self._pos += 1
            return
        while True:
            if self.peek() != '"':
                self.expect('"', "a quoted object key")
            key = self.value()
            self.expect(":", "':' after an object key")
            yield key
            if self.expect(",}", "',' or '}' after an object value") == "}":
                return

    def skip(self) -> None:
        """Consume the value at the cursor; a big array is stepped through, not loaded."""
        if self.peek() == "[":
            for _ in self.array_items():
                pass
        else:
            self.value()

    def end(self) -> None:
        if self.peek() != "":
            raise JsonStreamError("invalid JSON: extra data after the document", self._where())


def iter_json_array(
    path: str | Path, key: str | None = None, header: dict[str, Any] | None = None
) -> Iterator[tuple[int, Any]]:
    """Stream (index, item) from a top-level array, or from the array at top-level `key`.

    Other top-level values are skipped without being kept; scalar and small ones met before
    `key` are stored in `header` when given (e.g. VQAv2's `data_subtype`)."""
    name = str(path)
    with open_text(path) as f:
        stream = JsonStream(f, name)
        if key is None:
            yield from stream.array_items()
            stream.end()
            return
        found = False
        for k in stream.object_keys():
            if k == key:
                found = True
                yield from stream.array_items()
            elif header is not None and stream.peek() != "[":
                header[k] = stream.value()
            else:
                stream.skip()
        if not found:
            raise JsonStreamError(f"missing field: no top-level key {key!r}", name)


def iter_json_object(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Stream (key, value) pairs of a top-level object (GQA: {question_id: {...}})."""
    with open_text(path) as f:
        stream = JsonStream(f, str(path))
        for key in stream.object_keys():
            yield key, stream.value(key)
        stream.end()


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any | JsonStreamError]]:
    """Stream (line number, value) from JSONL; a bad line yields its error, not raises. A BOM at
    the start of a line (files with one concatenated) is skipped like the file's own."""
    name = str(path)
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value: Any = json.loads(line.lstrip(BOM))
            except json.JSONDecodeError as err:
                value = JsonStreamError(f"invalid JSON: {err.msg}", f"{name}:{lineno}")
            except RecursionError:
                value = JsonStreamError(TOO_DEEP, f"{name}:{lineno}")
            yield lineno, value


def iter_json_items(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(location, item) from JSONL (by extension) or a top-level JSON array.

    Malformed JSON comes out as a `JsonStreamError` item (for JSONL the file goes on at the
    next line; in a JSON array nothing after the error can be trusted, so it stops)."""
    name = str(path)
    if name.endswith((".jsonl", ".jsonl.gz")):
        for lineno, value in iter_json_lines(path):
            yield f"{name}:{lineno}", value
        return
    try:
        for index, value in iter_json_array(path):
            yield f"{name}[{index}]", value
    except JsonStreamError as err:
        yield err.location, err
