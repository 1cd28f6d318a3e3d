"""Screenshots of `vcla webui` for the README: docs/webui-chat.png and docs/webui-data.png.

    .venv/bin/python .ci/webui_screenshots.py [--recipe demo] [--out docs]

Starts `vcla webui` on a free loopback port (the demo run by default, after `make demo`), asks the
model about a held-out image in headless Chromium (the system's `chromium`, as the browser test
uses it), opens the data tab, and writes both pictures as palette PNGs (kept under 300 KB).
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
IMAGE = "runs/demo/demo-data/images/003000.jpg"  # held out at the demo's 3,000 images: a red diamond
QUESTION = "菱形是什么颜色？"
MAX_BYTES = 300_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"vcla webui exited with {server.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    sys.exit(f"vcla webui did not listen on port {port} within {timeout:.0f} s")


def save_small(png: bytes, path: Path, max_height: int | None = None) -> None:
    """The screenshot (its top `max_height` pixels) as a 256-colour PNG (text and flat UI survive it),
    shrunk until under MAX_BYTES."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if max_height and image.height > max_height:
        image = image.crop((0, 0, image.width, max_height))
    while True:
        out = io.BytesIO()
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
        if out.tell() <= MAX_BYTES:
            path.write_bytes(out.getvalue())
            print(f"{path}: {image.width}x{image.height}, {out.tell() // 1024} KB")
            return
        image = image.resize((image.width * 9 // 10, image.height * 9 // 10), Image.LANCZOS)


def shoot(url: str, image: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(url)
        page.locator("#vcla-image input[type=file]").set_input_files(str(image))
        page.wait_for_function("() => document.querySelector('#vcla-notice').innerText.includes('图片可用')")
        page.get_by_text("生成设置").click()
        page.get_by_label("贪心解码（每次回答相同）").check()
        page.get_by_text("生成设置").click()  # closed again: the picture shows the conversation
        page.fill("#vcla-question textarea", QUESTION)
        page.press("#vcla-question textarea", "Enter")
        page.wait_for_function("() => document.querySelectorAll('#vcla-chatbot .message').length >= 2 && "
                               "document.querySelector('#vcla-question textarea').value === ''", timeout=120_000)
        page.wait_for_timeout(1500)
        page.evaluate("window.scrollTo(0, 0)")
        save_small(page.screenshot(full_page=True), out / "webui-chat.png", max_height=1000)
        page.get_by_role("tab", name="数据").click()
        page.locator("#vcla-subset input").click()
        page.get_by_role("option", name="sft/train").click()
        page.fill("#vcla-search textarea, #vcla-search input", "颜色")
        page.locator("#vcla-show").click()
        page.wait_for_function("() => [...document.querySelectorAll('#vcla-cards .vcla-head')].every("
                               "h => h.innerText.includes('sft/train'))", timeout=60_000)
        page.wait_for_timeout(1500)
        save_small(page.screenshot(full_page=True), out / "webui-data.png", max_height=1600)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="demo")
    parser.add_argument("--image", type=Path, default=REPO / IMAGE)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([str(REPO / ".venv/bin/vcla"), "webui", "--recipe", args.recipe, "--port", str(port)],
                              cwd=REPO)
    try:
        wait_for(port, server)
        shoot(f"http://127.0.0.1:{port}/", args.image, args.out)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
