"""`vcla webui` in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright through
`executable_path`; nothing is downloaded) uploads an image, asks, watches the answer stream in, and
opens the data tab. Screenshots of both tabs go to the test's temporary folder.

`make test` installs the browser when it can (.ci/ensure-chromium.sh); without one this test fails
saying which package to install, rather than being skipped."""

from __future__ import annotations

import re
import shutil

import pytest

from training.chat import GREEDY, chat
from training.synthetic import draw

pytestmark = pytest.mark.xdist_group("webui")
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "no Chromium for the browser test: install the 'chromium' package (apt-get install chromium)"
    with sync_playwright() as p:
        # --no-sandbox: the test may run as root (containers, CI), where Chromium's sandbox refuses to start;
        # the fake camera is Chromium's own test pattern, so the webcam source can be used headless
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, permissions=["camera"])
        yield context.new_page()
        browser.close()


def notice_says(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector('#vcla-notice').innerText.includes(t)", arg=text,
                           timeout=TIMEOUT_MS)


def test_chat_then_data_in_a_real_browser(page, webui_server, tmp_path):
    page.goto(webui_server["url"])
    upload = page.locator("#vcla-image input[type=file]")
    (tmp_path / "not-an-image.png").write_bytes(b"<html><body>hello</body></html>")
    upload.set_input_files(str(tmp_path / "not-an-image.png"))
    notice_says(page, "这张图片无法使用：image_not_an_image")

    image = tmp_path / "yellow-square.png"
    image.write_bytes(draw("黄色", "正方形", seed=11))
    upload.set_input_files(str(image))
    notice_says(page, "图片可用：64 × 64")
    page.get_by_text("生成设置").click()
    page.get_by_label("贪心解码（每次回答相同）").check()
    page.fill("#vcla-question textarea", "图中是什么？")
    page.press("#vcla-question textarea", "Enter")

    bot = webui_server["webui"].bot
    expected, _ = chat(bot, image, "图中是什么？", None, **GREEDY, max_new_tokens=512)
    assert re.search(r"[\u4e00-\u9fff]", expected)
    page.wait_for_function("t => document.querySelector('#vcla-chatbot').innerText.includes(t)", arg=expected,
                           timeout=TIMEOUT_MS)
    assert page.input_value("#vcla-question textarea") == ""
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)

    assert page.locator("#vcla-chatbot img").count() >= 1  # the first question shows its image
    # this checkpoint's template (stage 1: `none`) takes one image per conversation: a new one needs Clear
    page.get_by_role("button", name="清空").click()
    page.wait_for_function("t => !document.querySelector('#vcla-chatbot').innerText.includes(t)", arg=expected,
                           timeout=TIMEOUT_MS)
    page.get_by_text("三角形是什么颜色？").first.click()  # the held-out example: its image and question
    notice_says(page, "图片可用：64 × 64")
    assert page.input_value("#vcla-question textarea") == "三角形是什么颜色？"

    page.get_by_label("Capture from camera").click()  # the webcam source (Gradio's own English labels)
    page.get_by_text("Click to Access Webcam").click()
    page.wait_for_function("() => { const v = document.querySelector('#vcla-image video');"
                           " return v && v.readyState >= 2 && v.videoWidth > 0; }", timeout=TIMEOUT_MS)
    page.get_by_label("capture photo").click()  # once the camera's frames arrive, not before
    page.wait_for_function("() => /图片可用：\\d+ × \\d+/.test(document.querySelector('#vcla-notice').innerText) && "
                           "!document.querySelector('#vcla-notice').innerText.includes('64 × 64')", timeout=TIMEOUT_MS)

    page.get_by_role("tab", name="数据").click()
    first = page.locator("#vcla-cards img.vcla-row-image").first
    first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.querySelector('#vcla-cards img.vcla-row-image').naturalWidth > 0",
                           timeout=TIMEOUT_MS)
    assert first.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    assert "共 56 条" in page.inner_text("#vcla-data-status")
    assert "wrong_language" in page.inner_text("#vcla-rejected")
    page.screenshot(path=str(tmp_path / "data.png"), full_page=True)
    assert (tmp_path / "chat.png").stat().st_size > 10_000 and (tmp_path / "data.png").stat().st_size > 10_000
