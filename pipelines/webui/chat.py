"""The chat tab's work: a checkpoint answers in the page, token by token, through `training.chat`.

The answer comes from `training.chat.chat` itself, the code path of `vcla chat` and the eval: the
checkpoint's own template, the prompt tokenised as in training, VisualCLA's generation defaults. It
runs in a thread with a `TextIteratorStreamer` and a stop flag passed as generation settings
(`chat` hands them on to `generate`), so the page shows each piece as it comes and Stop ends the
generation at the next token. The conversation the model sees is the one the page shows: the chat
box's messages become VisualCLA's `history`, so a stopped, partial answer stays part of it.

Several images per conversation, in any turn: an image accepted in the image box waits in the
session's `Conversation` and goes with the next message (`chat`'s `turn_images`; before the first
message, into the first turn), so a second image asks about both. The chat box shows each question
with its images (a thumbnail file named by the image's digest), and when the page sends its messages
back, those names find the checked images again: the history the model gets is the one the page
shows, images included. A new conversation is the Clear button.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from pipelines.webui.uploads import UploadRejected, checked_upload, payload_path, takes_several_images
from training.chat import GENERATION_DEFAULTS, GREEDY, ChatModel, chat, cut_at_stop

STREAM_TIMEOUT_S = 600.0
"""Longest wait for the next piece of an answer before the page gives up on it."""


class StopRequest:
    """Set by the Stop button, read by the generation after every token. A plain flag, not a
    threading.Event: Gradio deep-copies a session's fresh state, and a lock cannot be copied."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set


THUMBNAILS = Path(tempfile.gettempdir()) / "vcla-webui-chat"
"""Where the chat box's copies of the images are written (the temp folder: Gradio serves files from it)."""
THUMBNAIL_PIXELS = 512


class UnknownImage(LookupError):
    """A chat box message names an image this session never accepted (e.g. after a server restart)."""


def image_name(image: Image.Image) -> str:
    """The file name of an image in the chat box: a digest of its size and pixels, so the same name
    comes back whatever path Gradio's cache gives the file."""
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()[:24]
    return f"vcla-{digest}.png"


def write_thumbnail(image: Image.Image, name: str) -> Path:
    """The chat box's picture of `image` (at most THUMBNAIL_PIXELS a side); the model gets the image itself."""
    path = THUMBNAILS / name
    if not path.exists():
        THUMBNAILS.mkdir(parents=True, exist_ok=True)
        small = image.copy()
        small.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        part = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
        small.save(part, format="PNG")
        part.replace(path)  # never a half-written file under the final name
    return path


class Conversation:
    """One browser session's state: a `gr.State`, which Gradio deep-copies from the initial value once
    per session and then keeps in memory. (Not a dataclass: Gradio would serialise it into the page's
    config.)"""

    def __init__(self) -> None:
        self.images: dict[str, Image.Image] = {}
        """Every image accepted in this session, by its chat box file name (`image_name`)."""
        self.pending: list[str] = []
        """Images accepted since the last message: they go with the next one."""
        self.shown: str | None = None
        """The accepted image in the image box, if any."""
        self.stop = StopRequest()

    def attach(self, image: Image.Image) -> str:
        name = image_name(image)
        write_thumbnail(image, name)
        self.images[name] = image
        self.pending.append(name)
        self.shown = name
        return name

    def take_pending(self, fresh: bool) -> list[str]:
        """The images of the next message: those waiting; in a fresh conversation with none waiting,
        the one still in the image box (a question after the chat box was emptied is about it)."""
        names = self.pending or ([self.shown] if fresh and self.shown else [])
        self.pending = []
        return names

    def lookup(self, names: list[str]) -> list[Image.Image]:
        missing = [n for n in names if n not in self.images]
        if missing:
            raise UnknownImage(missing[0])
        return [self.images[n] for n in names]

    def clear(self) -> None:
        self.images.clear()
        self.pending.clear()
        self.shown = None


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int


def generation_settings(temperature: float, top_p: float, max_new_tokens: int, greedy: bool) -> dict[str, Any]:
    """The page's settings as `chat` keyword arguments (greedy: `training.chat.GREEDY`, plain argmax)."""
    if greedy:
        return {**GREEDY, "max_new_tokens": int(max_new_tokens)}
    return {"temperature": float(temperature), "top_p": float(top_p), "max_new_tokens": int(max_new_tokens)}


DEFAULT_SETTINGS = (GENERATION_DEFAULTS["temperature"], GENERATION_DEFAULTS["top_p"],
                    GENERATION_DEFAULTS["max_new_tokens"], False)


def message_text(message: dict) -> str:
    """The text of a chat box message: a string, or Gradio 6's list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def message_images(message: dict) -> list[str]:
    """The chat box file names (`image_name`) of a message's images, in order: Gradio 6's file parts
    as the page sends them (``{"type": "file", "file": {"path": ...}}``) or as a handler writes them."""
    content = message.get("content")
    parts = content if isinstance(content, list) else [content]
    files = [p.get("file") or p for p in parts if isinstance(p, dict) and (p.get("type") == "file" or "path" in p)]
    return [Path(f["path"]).name for f in files if isinstance(f, dict) and f.get("path")]


def user_message(question: str, names: list[str]) -> dict:
    """A question as the chat box shows it: its images' thumbnails, then the text."""
    if not names:
        return {"role": "user", "content": question}
    return {"role": "user", "content": [*({"path": str(THUMBNAILS / n)} for n in names), question]}


def visualcla_history(messages: list[dict], conversation: Conversation) -> list[dict]:
    """VisualCLA's `history` (instruction/response pairs) of the chat box's finished exchanges; an
    instruction whose message shows images keeps them (UnknownImage if this session has not got one)."""
    history, question = [], None
    for m in messages:
        if m.get("role") == "user":
            question = {"type": "instruction", "value": message_text(m)}
            if names := message_images(m):
                question["images"] = conversation.lookup(names)
        elif m.get("role") == "assistant" and question is not None:
            history += [question, {"type": "response", "value": message_text(m)}]
            question = None
    return history


class _StopFlag:
    """A stopping criterion (transformers calls it after every token): true once any flag is set."""

    def __init__(self, *events: StopRequest) -> None:
        self.events = events

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return any(e.is_set() for e in self.events)


def stream_reply(bot: ChatModel, image: Image.Image | None, text: str, history: list[dict],
                 generation: dict[str, Any], stop: StopRequest,
                 turn_images: list[Image.Image] | None = None) -> Iterator[str]:
    """The answer so far, after each piece the model generates; the last one is `chat`'s own reply
    (cut at the template's stop string, stripped), partial when `stop` was set. `image` and
    `turn_images` are `chat`'s: the first turn's image(s), the images this message brings."""
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    streamer = TextIteratorStreamer(bot.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                    timeout=STREAM_TIMEOUT_S)
    result: dict[str, Any] = {}
    abandoned = StopRequest()
    """Set when this generator is closed before the end (the page went away): the generation stops too."""

    def run() -> None:
        try:
            result["reply"], _ = chat(bot, image, text, history, turn_images=turn_images, streamer=streamer,
                                      stopping_criteria=StoppingCriteriaList([_StopFlag(stop, abandoned)]),
                                      **generation)
        except Exception as e:  # noqa: BLE001 -- reported in the page; the thread must end the stream
            result["error"] = e
            streamer.end()

    thread = threading.Thread(target=run, name="webui-generate", daemon=True)
    thread.start()
    so_far = ""
    try:
        for piece in streamer:
            so_far += piece
            yield cut_at_stop(so_far, bot.template)
    finally:
        abandoned.set()  # harmless after the end: the generation is over when the stream ends
        thread.join()
    if "error" in result:
        raise result["error"]
    yield result["reply"]


class ChatHandlers:
    """The chat tab's event handlers over one loaded checkpoint (or none: the page says why)."""

    def __init__(self, bot: ChatModel | None, limits: Limits, words: dict[str, str],
                 no_model_reason: str = "") -> None:
        self.bot, self.limits, self.words, self.no_model_reason = bot, limits, words, no_model_reason

    def on_image(self, payload: Any, messages: list[dict], conversation: Conversation, notice: str):
        """An image (upload, webcam, example), checked before use: (image, messages, conversation, notice).
        An accepted one goes with the next message. Takes the raw payload (`preprocess=False`): nothing
        has decoded the file before the checks."""
        path = payload_path(payload)
        if path is None:  # removed from the box by the user (it no longer goes), or by the refusal below
            if conversation.shown in conversation.pending:
                conversation.pending.remove(conversation.shown)
            conversation.shown = None
            return gr.skip(), gr.skip(), conversation, notice
        try:
            image = checked_upload(path, self.limits.max_bytes, self.limits.max_pixels)
        except UploadRejected as e:
            conversation.shown = None  # the images waiting before it still go
            return None, gr.skip(), conversation, self.words["image_rejected"].format(e)
        if self._one_image_only(messages, conversation):
            conversation.shown = None
            return None, gr.skip(), conversation, self.words["image_one_only"].format(self.bot.template)
        conversation.attach(image)
        waiting = len(conversation.pending)
        line = self.words["image_ok"].format(*image.size)
        return gr.skip(), gr.skip(), conversation, (
            f"{line} {self.words['image_next'].format(waiting)}" if messages or waiting > 1 else line)

    def _one_image_only(self, messages: list[dict], conversation: Conversation) -> bool:
        """True when the conversation has an image already and the checkpoint's template takes only one."""
        has_one = conversation.pending or any(message_images(m) for m in messages or [])
        return bool(has_one) and self.bot is not None and not takes_several_images(self.bot.template)

    def respond(self, text: str, messages: list[dict], conversation: Conversation, temperature: float,
                top_p: float, max_new_tokens: int, greedy: bool):
        """Streams (messages, question box, notice) while the answer grows. The images waiting in the
        conversation go with this message."""
        messages = list(messages or [])
        if not (text or "").strip():
            yield messages, text, self.words["empty_question"]
            return
        yield from self._answer(text.strip(), None, messages, conversation,
                                generation_settings(temperature, top_p, max_new_tokens, greedy))

    def regenerate(self, messages: list[dict], conversation: Conversation, temperature: float, top_p: float,
                   max_new_tokens: int, greedy: bool):
        """The last question answered again (its answer replaced), with the images it brought."""
        messages = list(messages or [])
        while messages and messages[-1].get("role") == "assistant":
            messages.pop()
        if not messages:
            yield messages, gr.skip(), self.words["nothing_to_regenerate"]
            return
        last = messages.pop()
        yield from self._answer(message_text(last), message_images(last), messages, conversation,
                                generation_settings(temperature, top_p, max_new_tokens, greedy))

    def _answer(self, question: str, names: list[str] | None, messages: list[dict], conversation: Conversation,
                generation: dict):
        """`names`: the images of this question (None: the ones waiting in the conversation)."""
        if self.bot is None:
            yield messages, question, self.words["no_model"].format(self.no_model_reason)
            return
        try:
            history = visualcla_history(messages, conversation)
            names = conversation.take_pending(fresh=not messages) if names is None else names
            images = conversation.lookup(names)
        except UnknownImage as e:
            yield messages, question, self.words["image_unknown"].format(e.args[0])
            return
        messages = [*messages, user_message(question, names), {"role": "assistant", "content": ""}]
        conversation.stop.clear()
        yield messages, "", ""
        try:
            for reply in stream_reply(self.bot, None, question, history, generation, conversation.stop, images):
                messages[-1] = {"role": "assistant", "content": reply}
                yield messages, "", ""
        except Exception as e:  # noqa: BLE001 -- a failed generation is a message in the page, not a dead server
            yield messages, "", self.words["generation_failed"].format(f"{type(e).__name__}: {e}")
            return
        if conversation.stop.is_set():
            yield messages, "", self.words["stopped"]

    @staticmethod
    def stop(conversation: Conversation) -> None:
        """The running answer ends at its next token (the Stop button runs outside the queue)."""
        conversation.stop.set()

    @staticmethod
    def clear(conversation: Conversation):
        """A new conversation: no messages, no images, nothing generating."""
        conversation.stop.set()
        conversation.clear()
        return [], None, conversation, ""
