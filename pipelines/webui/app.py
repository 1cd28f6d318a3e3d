"""`vcla webui`: the Gradio page, a chat tab over a checkpoint and a data tab over a run folder.

    app = build_app(WebUI(bot, run_dir=Path("runs/demo"), lang="zh"))
    launch(app, webui, bind_settings())            # 127.0.0.1, no share link, no login

The tabs' work lives beside this file (chat.py, browse.py); here they are laid out and wired to
Gradio's events. Every event the page uses is also an API endpoint (`api_name`), which is how the
tests drive it with `gradio_client`: `/image`, `/chat`, `/regenerate`, `/clear`, `/data_page`,
`/rejected`. A chat message's images come back to a `gradio_client` caller as local file paths; it
sends the messages back with those parts as files (`handle_file`), as the page does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: it phones home otherwise

import gradio as gr  # noqa: E402

from pipelines.webui.browse import ALL, DataHandlers  # noqa: E402
from pipelines.webui.cards import CARD_CSS  # noqa: E402
from pipelines.webui.chat import DEFAULT_SETTINGS, ChatHandlers, Conversation, Limits  # noqa: E402
from pipelines.webui.examples import QUESTIONS, heldout_examples  # noqa: E402
from pipelines.webui.labels import labels  # noqa: E402
from pipelines.webui.rejected import report_pictures  # noqa: E402
from pipelines.webui.safety import Bind  # noqa: E402
from pipelines.webui.uploads import DEFAULT_MAX_BYTES  # noqa: E402
from training.chat import ChatModel  # noqa: E402

PAGE_SIZE = 10


@dataclass
class WebUI:
    """What the page shows: a loaded checkpoint (or why there is none) and a run folder."""

    bot: ChatModel | None
    run_dir: Path
    lang: str = "zh"
    checkpoint: Path | None = None
    no_model_reason: str = ""
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = 80_000_000
    corpus: Path | None = None
    """The demo corpus folder whose held-out images are the examples (default `<run>/demo-data`)."""


def build_app(webui: WebUI) -> gr.Blocks:
    words = labels(webui.lang)
    with gr.Blocks(title=words["title"], analytics_enabled=False) as app:
        gr.Markdown(f"## {words['title']}")
        with gr.Tabs():
            with gr.Tab(words["chat_tab"], id="chat"):
                _chat_tab(webui, words)
            with gr.Tab(words["data_tab"], id="data"):
                _data_tab(webui, words, app)
    return app


def _chat_tab(webui: WebUI, words: dict[str, str]) -> None:
    handlers = ChatHandlers(webui.bot, Limits(webui.max_bytes, webui.max_pixels), words, webui.no_model_reason)
    if webui.bot is not None:
        gr.Markdown(words["model_line"].format(webui.checkpoint or "?", webui.bot.template))
    else:
        gr.Markdown(words["no_model"].format(webui.no_model_reason))
    conversation = gr.State(Conversation())
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.Image(label=words["image"], sources=["upload", "webcam"], type="filepath",
                             elem_id="vcla-image", height=320)
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label=words["chatbot"], elem_id="vcla-chatbot", height=360,
                                 feedback_options=None)
            question = gr.Textbox(label=words["question"], placeholder=words["question_placeholder"],
                                  elem_id="vcla-question", lines=1)
            with gr.Row():
                send = gr.Button(words["send"], variant="primary", elem_id="vcla-send")
                stop = gr.Button(words["stop"], elem_id="vcla-stop")
                regenerate = gr.Button(words["regenerate"], elem_id="vcla-regenerate")
                clear = gr.Button(words["clear"], elem_id="vcla-clear")
            notice = gr.Markdown(elem_id="vcla-notice")
            settings = _settings(words)
    _examples(webui, words, image, question)

    image.change(handlers.on_image, [image, chatbot, conversation, notice], [image, chatbot, conversation, notice],
                 preprocess=False, api_name="image", concurrency_limit=4)
    answer = dict(outputs=[chatbot, question, notice], concurrency_id="model", concurrency_limit=1)
    question.submit(handlers.respond, [question, chatbot, conversation, *settings], api_name="chat", **answer)
    send.click(handlers.respond, [question, chatbot, conversation, *settings], api_name=False, **answer)
    regenerate.click(handlers.regenerate, [chatbot, conversation, *settings], api_name="regenerate", **answer)
    stop.click(handlers.stop, [conversation], None, queue=False, api_name="stop")
    clear.click(handlers.clear, [conversation], [chatbot, image, conversation, notice], queue=False,
                api_name="clear")


def _settings(words: dict[str, str]) -> list[gr.components.Component]:
    temperature, top_p, max_new_tokens, greedy = DEFAULT_SETTINGS
    with gr.Accordion(words["settings"], open=False):
        return [
            gr.Slider(0.05, 2.0, value=temperature, step=0.05, label=words["temperature"]),
            gr.Slider(0.05, 1.0, value=top_p, step=0.05, label=words["top_p"]),
            gr.Slider(1, 2048, value=max_new_tokens, step=1, label=words["max_new_tokens"]),
            gr.Checkbox(value=greedy, label=words["greedy"]),
        ]


def _examples(webui: WebUI, words: dict[str, str], image: gr.Image, question: gr.Textbox) -> None:
    pairs = heldout_examples(webui.corpus or webui.run_dir / "demo-data")
    if pairs:
        gr.Examples([[str(path), text] for path, text in pairs], [image, question], label=words["examples"])
    else:
        gr.Examples([[text] for text in QUESTIONS], [question], label=words["examples"])


def _data_tab(webui: WebUI, words: dict[str, str], app: gr.Blocks) -> None:
    data = DataHandlers(webui.run_dir, words)
    gr.Markdown(f"`{webui.run_dir}`")
    with gr.Row():
        subset = gr.Dropdown(data.choices("subset"), value=ALL, label=words["subset"], elem_id="vcla-subset")
        source = gr.Dropdown(data.choices("source"), value=ALL, label=words["source"], elem_id="vcla-source")
        task = gr.Dropdown(data.choices("task"), value=ALL, label=words["task"], elem_id="vcla-task")
        text = gr.Textbox(label=words["search"], placeholder=words["search_placeholder"], elem_id="vcla-search")
    with gr.Row():
        page = gr.Number(1, precision=0, minimum=1, label=words["page"], elem_id="vcla-page")
        size = gr.Slider(1, 50, value=PAGE_SIZE, step=1, label=words["page_size"])
        show = gr.Button(words["show"], variant="primary", elem_id="vcla-show")
        prev, nxt = gr.Button(words["prev"]), gr.Button(words["next"])
    status = gr.Markdown(elem_id="vcla-data-status")
    table = gr.Dataframe(headers=data.table_headers(), interactive=False, wrap=True, elem_id="vcla-rows")
    cards = gr.HTML(elem_id="vcla-cards", js_on_load=None)
    inputs, outputs = [subset, source, task, text, page, size], [status, table, cards, page]
    show.click(data.data_page, inputs, outputs, api_name="data_page")
    text.submit(data.data_page, inputs, outputs, api_name=False)
    prev.click(lambda p: max(1, int(p or 1) - 1), page, page, queue=False, api_name=False).then(
        data.data_page, inputs, outputs, api_name=False)
    nxt.click(lambda p: int(p or 1) + 1, page, page, queue=False, api_name=False).then(
        data.data_page, inputs, outputs, api_name=False)
    app.load(data.data_page, inputs, outputs, api_name=False)
    _rejected_section(data, words, app)
    _report_section(webui, words)


def _rejected_section(data: DataHandlers, words: dict[str, str], app: gr.Blocks) -> None:
    steps = data.step_choices()
    with gr.Accordion(words["rejected"], open=bool(steps)):
        with gr.Row():
            step = gr.Dropdown(steps, value=steps[0] if steps else None, label=words["step"], elem_id="vcla-step")
            reason = gr.Dropdown(data.reason_choices(steps[0] if steps else ""), value=ALL, label=words["reason"])
            page = gr.Number(1, precision=0, minimum=1, label=words["page"])
            size = gr.Slider(1, 100, value=20, step=1, label=words["page_size"])
            show = gr.Button(words["show"], elem_id="vcla-show-rejected")
        status = gr.Markdown(elem_id="vcla-rejected-status")
        table = gr.Dataframe(headers=data.rejected_headers(), interactive=False, wrap=True,
                             elem_id="vcla-rejected")
    inputs, outputs = [step, reason, page, size], [status, table]
    step.change(lambda s: gr.update(choices=data.reason_choices(s), value=ALL), step, reason, api_name=False)
    show.click(data.rejected, inputs, outputs, api_name="rejected")
    reason.change(data.rejected, inputs, outputs, api_name=False)
    app.load(data.rejected, inputs, outputs, api_name=False)


def _report_section(webui: WebUI, words: dict[str, str]) -> None:
    pictures = report_pictures(webui.run_dir)
    with gr.Accordion(words["report"], open=False):
        if pictures:
            gr.Gallery([(str(p), p.stem) for p in pictures], columns=3, height="auto", show_label=False)
        else:
            gr.Markdown(words["no_report"])


def launch(app: gr.Blocks, webui: WebUI, bind: Bind, block: bool = True) -> tuple[str, int]:
    """Serve `app` as `bind` says: (local URL, port). With block=False it returns once serving (tests)."""
    report = webui.run_dir / "curate" / "report"
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(
        server_name=bind.host, server_port=bind.port, auth=bind.auth, share=bind.share,
        max_file_size=webui.max_bytes, prevent_thread_lock=not block, show_error=False, quiet=not block,
        ssr_mode=False, allowed_paths=[str(report)] if report.is_dir() else None, footer_links=["api"],
        css=CARD_CSS, pwa=False, mcp_server=False,
    )
    return url, app.server_port
