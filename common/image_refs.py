"""Image references as sources give them and steps read them: an http(s) URL, a local path, or a
file:// URL of a local file. One parser, so that every step agrees on what a reference names:

* `check_scheme` (the readers, lenient): refuses only what no step may fetch (javascript:, data:,
  ftp:, an unparsable URL) and leaves the rest to the step that reads the image;
* `parse_image_ref` (the download and render steps, strict): an http(s) URL with a host, or a
  local path: the reference itself, or a file:// URL's path, on this host (`file:///p` or
  `file://localhost/p`), percent-decoded (`url2pathname`: `my%20image.jpg` names "my image.jpg").

Every refusal is an `ImageRefError` whose `reason` is what the rejection rows record."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse
from urllib.request import url2pathname

URL_SCHEMES = ("http", "https", "file")
LOCAL_HOSTS = ("", "localhost")
"""Hosts of a file:// URL that name this machine; any other is not a local file."""


class ImageRefError(ValueError):
    """An image reference no step may read. `reason`: image_url_invalid (not text, a NUL character,
    cannot be parsed, e.g. "http://[::1", a URL without a host) or image_url_unsupported (another
    scheme: javascript:, data:, ftp:..., or a file:// URL on another host); a step's own policy
    may add its reasons (the download step's image_url_not_allowed)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed reference: exactly one of `url` (http or https) and `path` (a local file, decoded)."""

    url: str | None = None
    path: str | None = None


def _shown(ref: object) -> str:
    return repr(ref[:200] if isinstance(ref, str) else ref)


def url_scheme(ref: str) -> str:
    """The scheme of `ref` ("" for a plain path); ImageRefError if it cannot be parsed."""
    try:
        return urlparse(ref).scheme
    except ValueError as err:  # e.g. "http://[::1": an unclosed IPv6 host
        raise ImageRefError("image_url_invalid", f"image {_shown(ref)}: cannot be parsed as a URL ({err})") from None


def is_url(ref: str) -> bool:
    return url_scheme(ref) in URL_SCHEMES


def check_scheme(ref: str) -> str:
    """`ref` if it is a path or an http(s)/file URL; ImageRefError otherwise. A one-letter scheme
    is a Windows drive ("C:/x.jpg"), left to the step that reads the image (`parse_image_ref`)."""
    scheme = url_scheme(ref)
    if scheme and scheme not in URL_SCHEMES and len(scheme) > 1:
        raise ImageRefError("image_url_unsupported",
                            f"image {_shown(ref)}: scheme {scheme!r} (only http, https and file are fetched)")
    return ref


def parse_image_ref(ref: str) -> ImageRef:
    """`ref` as an http(s) URL or a local path (see the module's docstring); ImageRefError if it is
    neither. A relative path stays relative: what it is relative to is the caller's business."""
    if not isinstance(ref, str) or "\x00" in ref:
        raise ImageRefError("image_url_invalid", f"image {_shown(ref)}: not a URL or path (not text, or a NUL character)")
    scheme = url_scheme(ref)
    if scheme in ("http", "https"):
        if not urlparse(ref).netloc:
            raise ImageRefError("image_url_invalid", f"image {_shown(ref)}: URL without a host")
        return ImageRef(url=ref)
    if scheme == "":
        return ImageRef(path=ref)
    if scheme != "file":
        raise ImageRefError("image_url_unsupported",
                            f"image {_shown(ref)}: scheme {scheme!r} (only http, https and file:// are read)")
    parsed = urlparse(ref)
    if parsed.netloc not in LOCAL_HOSTS:
        raise ImageRefError("image_url_unsupported", f"image {_shown(ref)}: file:// URL on host {parsed.netloc!r} "
                            "(only local files, file:///path, are read)")
    path = url2pathname(parsed.path)  # unquotes %xx (UTF-8)
    if "\x00" in path:
        raise ImageRefError("image_url_invalid", f"image {_shown(ref)}: the path holds a NUL character (%00)")
    return ImageRef(path=path)

