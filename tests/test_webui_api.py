"""`vcla webui` through its API, as `gradio_client` (and the page) talk to it: a real Gradio server on a
loopback port, a tiny checkpoint trained in the test session, a small run folder (tests/conftest.py)."""

from __future__ import annotations

import io
import re

import httpx
import pyarrow.parquet as pq
import pytest
from PIL import Image

from training.chat import GREEDY, chat
from training.synthetic import draw

pytestmark = pytest.mark.xdist_group("webui")
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def client(webui_server):
    from gradio_client import Client

    return Client(webui_server["url"], verbose=False)


def text_of(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def resend(messages: list[dict]) -> list[dict]:
    """The chat box's messages as a client sends them back: gradio_client gives a message's image as the
    local path of the file it downloaded, which goes back as a file (`handle_file`), as the page sends it."""
    from gradio_client import handle_file

    def part(p):
        return {**p, "file": handle_file(p["file"])} if isinstance(p, dict) and isinstance(p.get("file"), str) else p
    return [{**m, "content": [part(p) for p in m["content"]]} if isinstance(m["content"], list) else m
            for m in messages]


def upload(client, path, messages: list[dict] | None = None) -> str:
    from gradio_client import handle_file

    _, _, notice = client.predict(handle_file(str(path)), resend(messages or []), "", api_name="/image")
    return notice


def test_an_image_and_a_question_stream_chinese_from_the_chat_code_path(client, webui_server, tmp_path):
    """The answer grows piece by piece (every update extends the last) and ends as `training.chat.chat`'s
    own greedy answer with the same image: the page adds streaming, not another model call. A second
    question carries the first exchange as VisualCLA history, as `chat` does."""
    image = tmp_path / "red-circle.png"
    image.write_bytes(draw("红色", "圆形", seed=5))
    assert upload(client, image).startswith("图片可用：64 × 64")
    settings = (0.5, 0.9, 20, True)  # temperature, top-p, max new tokens, greedy
    job = client.submit("图中是什么？", [], *settings, api_name="/chat")
    first, question_box, notice = job.result()
    assert [m["role"] for m in first] == ["user", "assistant"] and (question_box, notice) == ("", "")

    bot = webui_server["webui"].bot
    pil = Image.open(image).convert("RGB")
    expected, history = chat(bot, pil, "图中是什么？", None, **GREEDY, max_new_tokens=20)
    assert text_of(first[1]) == expected and len(CJK.findall(expected)) >= 3, expected
    partials = [text_of(out[0][-1]) for out in job.outputs() if len(out[0]) == 2]
    grown = [p for i, p in enumerate(partials) if p and p != partials[i - 1]]
    assert len(grown) >= 2, partials  # seen before the end: streamed, not sent at once
    assert all(expected.startswith(p) for p in partials), partials

    second = client.predict("它是什么颜色？", resend(first), *settings, api_name="/chat")[0]
    assert [m["role"] for m in second] == ["user", "assistant"] * 2
    assert text_of(second[3]) == chat(bot, pil, "它是什么颜色？", history, **GREEDY, max_new_tokens=20)[0]


def images_of(message: dict) -> int:
    content = message["content"]
    return 0 if isinstance(content, str) else sum(p.get("type") == "file" for p in content)


@pytest.fixture(scope="module")
def sft_server(webui_run, webui_model, tmp_path_factory):
    """A second server over a tiny instruction-tuned stage (the `visualcla` template, which takes several
    images; the session server's stage-1 `none` template places one)."""
    import socket

    from pipelines.webui.app import WebUI, build_app, launch
    from pipelines.webui.safety import bind_settings
    from training.chat import ChatModel
    from training.config import StageConfig
    from training.run import train_stage

    model = webui_model
    # 60 steps: answers are Chinese text (after 2 an answer may echo the image block, after 10 is empty)
    stage = StageConfig(data="sft", max_steps=60, batch_size=8, max_length=160, save_steps=60, warmup_ratio=0.0,
                        lr={"default": 3e-3}, trainable={"connector": "full", "llm": "full"})
    checkpoint = tmp_path_factory.mktemp("webui-sft") / "stage2"
    train_stage(model, "stage2", stage, webui_run / "render", checkpoint)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    webui = WebUI(bot=ChatModel.load(checkpoint), run_dir=webui_run, checkpoint=checkpoint)
    app = build_app(webui)
    url, _ = launch(app, webui, bind_settings(port=port), block=False)
    yield {"url": url, "webui": webui}
    app.close()


def test_a_one_image_template_refuses_a_second_image_with_a_message(client, tmp_path):
    client.predict(api_name="/clear")
    (tmp_path / "a.png").write_bytes(draw("红色", "圆形", seed=7))
    (tmp_path / "b.png").write_bytes(draw("绿色", "正方形", seed=8))
    upload(client, tmp_path / "a.png")
    first = client.predict("图中是什么？", [], 0.5, 0.9, 8, True, api_name="/chat")[0]
    assert upload(client, tmp_path / "b.png", first) == "这个模型的模板 none 每段对话只能放一张图片；请点“清空”后再换图片。"
    client.predict(api_name="/clear")


def test_an_image_uploaded_after_the_first_turn_goes_with_the_next_message(sft_server, tmp_path):
    """A second image in the second turn: the same conversation (the first exchange stays), the chat box
    shows each question's image, and the answer is `chat`'s greedy one with `turn_images`; Regenerate
    asks again with that turn's image; a third question without an upload brings none."""
    from gradio_client import Client

    client, webui_server = Client(sft_server["url"], verbose=False), sft_server
    first_image, second_image = tmp_path / "red.png", tmp_path / "green.png"
    first_image.write_bytes(draw("红色", "圆形", seed=7))
    second_image.write_bytes(draw("绿色", "正方形", seed=8))
    settings = (0.5, 0.9, 16, True)
    upload(client, first_image)
    first = client.predict("图中是什么？", [], *settings, api_name="/chat")[0]
    assert upload(client, second_image, first) == "图片可用：64 × 64。 它将随下一条消息发送（待发送 1 张）。"
    second = client.predict("和这张比呢？", resend(first), *settings, api_name="/chat")[0]
    assert [images_of(m) for m in second] == [1, 0, 1, 0] and text_of(second[1]) == text_of(first[1])

    bot = webui_server["webui"].bot
    red, green = (Image.open(p).convert("RGB") for p in (first_image, second_image))
    _, history = chat(bot, red, "图中是什么？", None, **GREEDY, max_new_tokens=16)
    expected, history = chat(bot, None, "和这张比呢？", history, turn_images=[green], **GREEDY, max_new_tokens=16)
    assert text_of(second[3]) == expected and expected.strip(), (text_of(second[3]), expected)
    assert [text_of(m) for m in client.predict(resend(second), *settings, api_name="/regenerate")[0]] == \
        [text_of(m) for m in second]
    third = client.predict("还有吗？", resend(second), *settings, api_name="/chat")[0]
    assert [images_of(m) for m in third] == [1, 0, 1, 0, 0, 0]
    assert text_of(third[5]) == chat(bot, None, "还有吗？", history, **GREEDY, max_new_tokens=16)[0]


def test_regenerate_and_clear(client, tmp_path):
    image = tmp_path / "blue.png"
    image.write_bytes(draw("蓝色", "正方形", seed=2))
    upload(client, image)
    settings = (0.5, 0.9, 12, True)
    answered = client.predict("正方形是什么颜色？", [], *settings, api_name="/chat")[0]
    again = client.predict(resend(answered), *settings, api_name="/regenerate")[0]
    assert [text_of(m) for m in again] == [text_of(m) for m in answered]  # greedy: the same answer again
    assert client.predict([], *settings, api_name="/regenerate")[2] == "还没有可以重新生成的回答。"
    messages, image_value, notice = client.predict(api_name="/clear")
    assert messages == [] and image_value is None and notice == ""


def shard_ids(run) -> list[str]:
    """Row ids in the order the data tab pages them: shard files sorted by path, row groups in order."""
    files = sorted((run / "render" / "data").glob("*/*/*.parquet"))
    return [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


def test_the_data_tab_pages_filters_and_searches_the_shards(client, webui_run):
    ids = shard_ids(webui_run)
    status, table, html, page = client.predict("", "", "", "", 1, 4, api_name="/data_page")
    assert status == f"第 1 页，本页 4 条；共 {len(ids)} 条。" and page == 1
    assert [row[0] for row in table["data"]] == ids[:4]
    assert html.count("<img class='vcla-row-image' src='data:image/jpeg;base64,") == 4

    _, table, _, page = client.predict("", "", "", "", 3, 4, api_name="/data_page")
    assert page == 3 and [row[0] for row in table["data"]] == ids[8:12]

    _, table, _, _ = client.predict("sft/train", "", "vqa", "", 1, 50, api_name="/data_page")
    assert table["data"] and {(r[1], r[3]) for r in table["data"]} == {("sft/train", "vqa")}

    status, table, html, _ = client.predict("", "", "", "加", 1, 50, api_name="/data_page")
    assert len(table["data"]) == 8 and {r[3] for r in table["data"]} == {"text"}  # the 8 sums, text only
    assert "（纯文本）" in html and status == "第 1 页，本页 8 条；共 8 条。"


def test_the_data_tab_lists_each_steps_rejected_rows_with_reasons(client):
    status, table = client.predict("curate", "", 1, 20, api_name="/rejected")
    assert status == "curate：共 3 条被剔除（wrong_language 2, near_duplicate 1）。"
    assert [(r[2], r[3], r[4]) for r in table["data"]] == [
        ("near_duplicate", "near_duplicate #0", "curate-0"), ("wrong_language", "wrong_language #1", "curate-1"),
        ("wrong_language", "wrong_language #2", "curate-2")]
    _, table = client.predict("curate", "wrong_language", 2, 1, api_name="/rejected")
    assert [r[4] for r in table["data"]] == ["curate-2"]
    _, table = client.predict("render", "", 1, 20, api_name="/rejected")
    assert [(r[0], r[2]) for r in table["data"]] == [("render", "too_long")]


def png_bytes(size: tuple[int, int], mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


def test_hostile_uploads_get_a_message_and_the_server_keeps_serving(client, webui_server, tmp_path):
    """Not an image, a bomb by the recipe's pixel limit (2000 x 2000 > 3,000,000 here), a bomb Pillow
    itself refuses to open (200 million pixels in 25 KB), an empty file: each is refused with the
    pipeline's reason before anything decodes it; a file over the size limit never gets in."""
    cases = {
        "page.png": (b"<!doctype html><html><body>not a picture</body></html>", "image_not_an_image"),
        "big.png": (png_bytes((2000, 2000)), "image_too_large"),
        "bomb.png": (png_bytes((20000, 10000), mode="1"), "image_too_large"),
        "empty.jpg": (b"", "image_empty"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        notice = upload(client, tmp_path / name)
        assert notice.startswith("这张图片无法使用：" + reason), (name, notice)
    (tmp_path / "huge.png").write_bytes(png_bytes((8, 8)) + bytes(3 << 20))  # 3 MiB > the 2 MiB limit
    with pytest.raises(ValueError, match="exceeds the maximum file size of 2097152 bytes"):  # the client checks
        upload(client, tmp_path / "huge.png")
    with open(tmp_path / "huge.png", "rb") as f:  # and so does the server, for a client that does not
        refused = httpx.post(webui_server["url"] + "gradio_api/upload", files={"files": ("huge.png", f, "image/png")})
    assert refused.status_code == 413 and "maximum allowed size of 2097152 bytes" in refused.text
    (tmp_path / "ok.png").write_bytes(draw("绿色", "三角形"))
    assert upload(client, tmp_path / "ok.png").startswith("图片可用")
    assert client.predict("三角形是什么颜色？", [], 0.5, 0.9, 8, True, api_name="/chat")[0][-1]["role"] == "assistant"


def test_stop_ends_the_answer_at_the_next_token(webui_server, tmp_path):
    """Stop sets the conversation's flag; the generation checks it after every token and the partial
    answer is `chat`'s own reply to that point."""
    from pipelines.webui.chat import StopRequest, stream_reply

    bot, image = webui_server["webui"].bot, Image.open(io.BytesIO(draw("紫色", "圆形", seed=4))).convert("RGB")
    settings = {**GREEDY, "max_new_tokens": 20}
    full = list(stream_reply(bot, image, "图中是什么？", [], settings, StopRequest()))[-1]
    stop = StopRequest()
    stop.set()
    stopped = list(stream_reply(bot, image, "图中是什么？", [], settings, stop))[-1]
    assert full == chat(bot, image, "图中是什么？", **settings)[0] and len(CJK.findall(full)) >= 3
    assert stopped and full.startswith(stopped) and len(stopped) < len(full)


def test_with_a_login_nothing_is_served_without_it_and_no_model_is_a_message(webui_run):
    """The login (from the environment) guards the API too; without a trained stage the page says so
    and the data tab still works."""
    import socket

    from gradio_client import Client

    from pipelines.webui.app import WebUI, build_app, launch
    from pipelines.webui.safety import bind_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    webui = WebUI(bot=None, run_dir=webui_run, no_model_reason="runs/x/train/stage2: no trained stage here")
    app = build_app(webui)
    url, _ = launch(app, webui, bind_settings(port=port, auth_env="WEBUI_LOGIN", environ={"WEBUI_LOGIN": "ann:pw-9"}),
                    block=False)
    try:
        assert httpx.get(url + "config").status_code == 401
        assert httpx.post(url + "login", data={"username": "ann", "password": "wrong"}).status_code == 400
        with pytest.raises(Exception, match="(?i)login|auth|401"):
            Client(url, verbose=False)
        client = Client(url, auth=("ann", "pw-9"), verbose=False)
        _, _, notice = client.predict("图中是什么？", [], 0.5, 0.9, 8, True, api_name="/chat")
        assert notice == "没有可用的模型：runs/x/train/stage2: no trained stage here。数据页仍可浏览。"
        assert client.predict("", "", "", "", 1, 2, api_name="/data_page")[0].startswith("第 1 页，本页 2 条")
    finally:
        app.close()
