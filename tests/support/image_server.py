"""A loopback HTTP server for download tests and benchmarks, and the odd images it serves.

    with ImageServer({"/a.jpg": Route(body=jpeg_bytes())}) as server:
        server.url("/a.jpg")   # http://127.0.0.1:PORT/a.jpg

Routes are fixed when the server starts; an unknown path is a 404. Every image is built
in memory with Pillow (or by hand, for what Pillow will not write), in milliseconds.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from PIL import Image

from support.loopback import LoopbackHTTPServer


@dataclass(frozen=True)
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    delay_s: float = 0.0
    """Seconds to wait before answering (to provoke client timeouts)."""


class ImageServer:
    """ThreadingHTTPServer on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = dict(routes)
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = LoopbackHTTPServer(self._handler())

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return self._server.origin + path

    def __enter__(self) -> "ImageServer":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                with server._lock:
                    server.hits[self.path] = server.hits.get(self.path, 0) + 1
                route = server.routes.get(self.path, Route(b"not found", 404, "text/plain"))
                if route.delay_s:
                    time.sleep(route.delay_s)
                try:
                    self.send_response(route.status)
                    self.send_header("Content-Type", route.content_type)
                    self.send_header("Content-Length", str(len(route.body)))
                    self.end_headers()
                    self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


# -- images -----------------------------------------------------------------------------------
def encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kwargs)
    return out.getvalue()


def two_colour(size: tuple[int, int] = (40, 20), left=(255, 0, 0), right=(0, 0, 255), mode: str = "RGB") -> Image.Image:
    """Left half one colour, right half another: shows rotation and channel order."""
    im = Image.new("RGB", size, right)
    im.paste(left, (0, 0, size[0] // 2, size[1]))
    return im.convert(mode)


def jpeg_bytes(size=(40, 20), colour=(200, 30, 30), quality: int = 90) -> bytes:
    return encode(Image.new("RGB", size, colour), "JPEG", quality=quality)


def noisy_jpeg(seed: int, size=(96, 64)) -> bytes:
    """A distinct, incompressible-ish JPEG per seed (benchmarks; truncation tests)."""
    import random

    im = Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3))
    return encode(im, "JPEG", quality=85)


def cmyk_jpeg() -> bytes:
    return encode(two_colour(mode="CMYK"), "JPEG", quality=95)


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """Stored 40x20 (red left, blue right); orientation 6 means "rotate 90° clockwise to
    view", so the viewed image is 20x40 with red on top."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(two_colour(), "JPEG", quality=95, exif=exif)


def rgba_png() -> bytes:
    """Half-transparent blue: over white it is (127, 127, 255)."""
    return encode(Image.new("RGBA", (40, 20), (0, 0, 255, 128)), "PNG")


def palette_png() -> bytes:
    return encode(two_colour().quantize(colors=4), "PNG")


def animated_gif() -> bytes:
    """Two frames: red then green. The first frame is the one to keep."""
    frames = [Image.new("RGB", (40, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def png_raw(width: int, height: int, bit_depth: int, colour_type: int, row: bytes) -> bytes:
    """A PNG whose every row is `row` (unfiltered), written by hand: Pillow cannot write
    16-bit RGB, and this builds a 20000x20000 image in ~0.2 s without holding its pixels."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"\x00" + row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def rgb16_png() -> bytes:
    """16-bit RGB, every pixel (60000, 3000, 3000) = 8-bit (233, 12, 12) when scaled."""
    return png_raw(40, 20, 16, 2, struct.pack(">HHH", 60000, 3000, 3000) * 40)


def gray16_png() -> bytes:
    """16-bit grayscale, every pixel 32768 = 8-bit 128 when scaled (clipping would give 255)."""
    return png_raw(40, 20, 16, 0, struct.pack(">H", 32768) * 40)


def bomb_png(side: int = 20000) -> bytes:
    """A 1-bit side x side black PNG: ~50 kB on the wire, 400 M pixels decoded."""
    return png_raw(side, side, 1, 0, b"\x00" * ((side + 7) // 8))


def truncated_jpeg() -> bytes:
    """A valid JPEG header with the scan data cut at 60%."""
    data = noisy_jpeg(7, size=(200, 150))
    return data[: int(len(data) * 0.6)]


HTML_PAGE = b"<!DOCTYPE html><html><head><title>Not here</title></head><body>moved</body></html>"
