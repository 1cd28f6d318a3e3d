"""Protect what a translation must not touch: `<image>` and other placeholders, markup tags,
format fields, URLs, e-mails, numbers, code spans, LaTeX and bounding boxes.

Each protected span becomes a mask token `⟦i⟧` before the text is sent and is put back
verbatim afterwards. Placeholders at the very start or end of a segment (`<image>\\n...`, the
common case) are not sent at all: they are peeled off and re-attached, so they cannot move.

    masked = protect("<image>\\nIs the 2nd cat at https://x.org/a?")
    masked.text      # 'Is the 2nd cat at ⟦0⟧?'
    restore(masked, "第二只猫在⟦0⟧吗？")   # '<image>\\n第二只猫在https://x.org/a吗？'

`spans()` finds the same spans in any text, so QA compares source and translation with it
whether the translation came back from a model (masked) or from memory (never masked).
Text that already looks like a mask token is itself protected, so it survives unchanged.

A tag is protected whole, attributes and all (`<img src="a.png" alt="cat"/>`, `<a href="x">`,
`<br/>`, `<!-- note -->`): a model would translate the attribute values and names otherwise;
so is an HTML entity (`&amp;`, `&#39;`), which a model would decode. A tag whose attributes have
no value (`<td nowrap>`, `<input disabled>`) is a tag only when its name is a known HTML element
and its attributes known boolean ones (`_HTML_ELEMENTS`, `_BOOLEAN_ATTRS`): `x<y and y>z` and
`a<b and c>d` stay text.
A number is masked whole (`3.5`, `1,000`, `10:30`, `50%`) when it stands alone. One glued to
letters (`10cm`, `3.5kg`, `1st`, `4K`, `A380`) is part of a word the model must see to translate
it (`10厘米`, `第1`), so it is left in the text; QA checks that its digits survive either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

SpanKind = Literal["mask", "code", "latex", "url", "email", "bbox", "tag", "entity", "placeholder", "number"]

_URL_CHARS = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]"
_URL_END = r"[A-Za-z0-9\-_~/#=&%+]"
_NUM = r"-?\d*\.?\d+"
_ATTR = r"""\s+[^\s<>"'=/]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s<>"'=`]+))?"""
_FORMAT_FIELD = (r"\{\{\s*[\w.]+\s*\}\}"  # {{name}}
                 r"|\{[A-Za-z0-9_]*(?:\.[A-Za-z_]\w*|\[\w+\])*(?:![rsa])?(?::[^{}\s]*)?\}"  # {} {0} {name!r:>8}
                 r"|%(?:\(\w+\)|\d+\$)?[-+#0]*(?:\d+|\*)?(?:\.\d+)?[sdifFeEgGxXoc](?![A-Za-z0-9_])")  # %s %(n)d %.2f

_HTML_ELEMENTS = frozenset("""
a abbr address area article aside b base bdi bdo blockquote body br button canvas caption cite code
col colgroup data datalist dd del details dfn dialog div dl dt em embed fieldset figcaption figure footer
form h1 h2 h3 h4 h5 h6 head header hgroup hr html i iframe input ins kbd label legend li link main map
mark menu meta meter nav noscript object ol optgroup option output p param picture pre progress q rp rt
ruby s samp script search section select slot small source span strong style sub summary sup table tbody
td template textarea tfoot th thead time title tr track u ul var wbr center font big tt nobr strike
""".split())
"""HTML elements, less those that VLM data uses as placeholders (`<img>`, `<video>`, `<audio>`:
Qwen-VL, LLaVA-Video), which stay placeholders tied to their place."""
_BOOLEAN_ATTRS = frozenset("""
allowfullscreen async autofocus autoplay checked compact controls default defer disabled formnovalidate
hidden inert ismap itemscope loop multiple muted nomodule noresize noshade novalidate nowrap open
playsinline readonly required reversed selected truespeed
""".split())
_ELEMENT = "|".join(sorted(_HTML_ELEMENTS, key=len, reverse=True))
_BOOL_ATTR = "|".join(sorted(_BOOLEAN_ATTRS, key=len, reverse=True))

# ASCII look-arounds, not \b: in Chinese text a URL touches CJK characters, which are \w.
# Order is priority: at one position the first alternative that matches wins, and positions
# inside a match are never looked at again (so a URL's digits are not numbers).
_PATTERNS: list[tuple[SpanKind, str]] = [
    ("mask", r"⟦\s*\d+\s*⟧"),
    ("code", r"```.*?```|``[^\n]+?``|`[^`\n]+`"),
    ("latex", r"\$\$.+?\$\$|\\\(.+?\\\)|\\\[.+?\\\]|\$(?!\s)[^$\n]+?(?<!\s)\$(?!\d)"),
    ("url", rf"(?<![A-Za-z0-9])(?i:https?|ftp)://{_URL_CHARS}*{_URL_END}"
            rf"|(?<![A-Za-z0-9.])(?i:www)\.[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?:/{_URL_CHARS}*{_URL_END})?"),
    ("email", r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z])"),
    ("bbox", rf"\[\s*{_NUM}\s*(?:,\s*{_NUM}\s*){{3}}\]|\(\s*\d+\s*,\s*\d+\s*\)\s*,\s*\(\s*\d+\s*,\s*\d+\s*\)"),
    # a tag with attributes (one `=` at least: `x<y and y>z` is no tag) or self-closing, a comment,
    # a declaration: `<a href="x">`, `<br/>`, `<!-- -->`, `<!DOCTYPE html>`
    ("tag", rf"<[A-Za-z][\w:.-]*(?=[^<>]*=)(?:{_ATTR})+\s*/?>|<[A-Za-z][\w:.-]*(?:{_ATTR})*\s*/>"
            # a known element bare or with valueless attributes only: `<td nowrap>`, `<input disabled>`,
            # `<br>`, `</p>` (markup that moves with the words, not a placeholder tied to an edge)
            rf"|<(?i:{_ELEMENT})(?:\s+(?i:{_BOOL_ATTR}))*\s*/?>|</(?i:{_ELEMENT})\s*>"
            r"|<!--.*?-->|<![A-Za-z][^<>]*>"),
    ("entity", r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});"),  # &amp; &#39; &#x27;
    ("placeholder", rf"</?[A-Za-z_][A-Za-z0-9_\-]*>|{_FORMAT_FIELD}"),  # <image>, </ref>, {name}, %s
    # atomic: `3.5kg` must not give up `.5kg` and mask the `3` alone
    ("number", r"(?<![A-Za-z0-9_.])(?>-?\d+(?:[.,:]\d+)*%?)(?![A-Za-z0-9_])"),
]
_SPAN_RE = re.compile(
    "|".join(f"(?P<{kind}>{pattern})" for kind, pattern in _PATTERNS), re.DOTALL
)
MASK_RE = re.compile(r"⟦\s*(\d+)\s*⟧")
_TAG = r"</?[A-Za-z_][A-Za-z0-9_\-]*>"
_WORD_RE = re.compile(r"[A-Za-z]{2,}")


@dataclass(frozen=True, slots=True)
class Span:
    kind: SpanKind
    value: str


@dataclass(frozen=True, slots=True)
class Masked:
    text: str
    """What the model sees: the core of the segment with every span replaced by `⟦i⟧`."""
    spans: tuple[Span, ...]
    prefix: str = ""
    suffix: str = ""

    @property
    def translatable(self) -> bool:
        """False when nothing but protected spans, single letters and punctuation is left
        (`<image>`, `42`, a URL, option `B`): such a segment is its own translation."""
        return bool(_WORD_RE.search(MASK_RE.sub(" ", self.text)))


def iter_spans(text: str) -> Iterator[tuple[int, int, Span]]:
    for m in _SPAN_RE.finditer(text):
        yield m.start(), m.end(), Span(m.lastgroup, m.group())  # type: ignore[arg-type]


def spans(text: str) -> list[Span]:
    """Every protected span of `text`, in order."""
    return [span for _, _, span in iter_spans(text)]


def protect(text: str) -> Masked:
    prefix, core, suffix = peel_edges(text)
    out: list[str] = []
    found: list[Span] = []
    pos = 0
    for start, end, span in iter_spans(core):
        out.append(core[pos:start])
        out.append(mask_token(len(found)))
        found.append(span)
        pos = end
    out.append(core[pos:])
    return Masked("".join(out), tuple(found), prefix, suffix)


def restore(masked: Masked, translated: str) -> str:
    """Put every span back. A token whose index is unknown is left as written, so QA sees it."""

    def put_back(m: re.Match) -> str:
        i = int(m.group(1))
        return masked.spans[i].value if i < len(masked.spans) else m.group()

    return masked.prefix + MASK_RE.sub(put_back, translated.strip()) + masked.suffix


def mask_token(i: int) -> str:
    return f"⟦{i}⟧"


_EDGE_RE = re.compile(rf"^(\s*(?:{_TAG}\s*)*)(.*?)(\s*(?:{_TAG}\s*)*)$", re.DOTALL)


def peel_edges(text: str) -> tuple[str, str, str]:
    """Split off leading and trailing placeholders with their whitespace:
    `"<image>\\nHi"` -> `("<image>\\n", "Hi", "")`."""
    m = _EDGE_RE.match(text)
    assert m is not None  # the pattern matches every string
    return m.group(1), m.group(2), m.group(3)
