"""The chat tab's work: a checkpoint answers in the page, token by token, through `training.chat`.

The answer comes from `training.chat.chat` itself, the code path of `vcla chat` and the eval: the
checkpoint's own template, the prompt tokenised as in training, VisualCLA's generation defaults. It
runs in a thread with a `TextIteratorStreamer` and a stop flag passed as generation settings
(`chat` hands them on to `generate`), so the page shows each piece as it comes and Stop ends the
generation at the next token. The conversation the model sees is the one the page shows: the chat
box's messages become VisualCLA's `history`, so a stopped, partial answer stays part of it.

`Conversation` keeps a browser session's images: a list, so that when the trainer takes several
images, each turn can add one; `chat` takes one image per conversation today, so a new image starts
a new conversation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from pipelines.webui.uploads import UploadRejected, checked_upload, payload_path
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


class Conversation:
    """One browser session's state: a `gr.State`, which Gradio deep-copies from the initial value once
    per session and then keeps in memory. (Not a dataclass: Gradio would serialise it into the page's
    config.)"""

    def __init__(self) -> None:
        self.images: list[Image.Image] = []
        self.stop = StopRequest()

    def image(self) -> Image.Image | None:
        """The image the next turn is about (one per conversation until the trainer takes several)."""
        return self.images[-1] if self.images else None


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


def visualcla_history(messages: list[dict]) -> list[dict]:
    """VisualCLA's `history` (instruction/response pairs) of the chat box's finished exchanges."""
    history, question = [], None
    for m in messages:
        if m.get("role") == "user":
            question = message_text(m)
        elif m.get("role") == "assistant" and question is not None:
            history += [{"type": "instruction", "value": question},
                        {"type": "response", "value": message_text(m)}]
            question = None
    return history


class _StopFlag:
    """A stopping criterion (transformers calls it after every token): true once any flag is set."""

    def __init__(self, *events: StopRequest) -> None:
        self.events = events

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return any(e.is_set() for e in self.events)


def stream_reply(bot: ChatModel, image: Image.Image | None, text: str, history: list[dict],
                 generation: dict[str, Any], stop: StopRequest) -> Iterator[str]:
    """The answer so far, after each piece the model generates; the last one is `chat`'s own reply
    (cut at the template's stop string, stripped), partial when `stop` was set."""
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    streamer = TextIteratorStreamer(bot.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                    timeout=STREAM_TIMEOUT_S)
    result: dict[str, Any] = {}
    abandoned = StopRequest()
    """Set when this generator is closed before the end (the page went away): the generation stops too."""

    def run() -> None:
        try:
            result["reply"], _ = chat(bot, image, text, history, streamer=streamer,
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
        """A new image (upload, webcam, example), checked before use: (image, messages, conversation, notice).
        Takes the raw payload (`preprocess=False`): nothing has decoded the file before the checks."""
        path = payload_path(payload)
        if path is None:  # cleared by the user, or by the refusal below
            conversation.images.clear()
            return gr.skip(), messages, conversation, notice
        try:
            image = checked_upload(path, self.limits.max_bytes, self.limits.max_pixels)
        except UploadRejected as e:
            conversation.images.clear()
            return None, messages, conversation, self.words["image_rejected"].format(e)
        fresh = bool(messages)
        conversation.images[:] = [image]  # one per conversation for now: a new image starts anew
        line = self.words["image_ok"].format(*image.size)
        return gr.skip(), [], conversation, (self.words["new_image"] + " " if fresh else "") + line

    def respond(self, text: str, messages: list[dict], conversation: Conversation, temperature: float,
                top_p: float, max_new_tokens: int, greedy: bool):
        """Streams (messages, question box, notice) while the answer grows."""
        messages = list(messages or [])
        if not (text or "").strip():
            yield messages, text, self.words["empty_question"]
            return
        yield from self._answer(text.strip(), messages, conversation,
                                generation_settings(temperature, top_p, max_new_tokens, greedy))

    def regenerate(self, messages: list[dict], conversation: Conversation, temperature: float, top_p: float,
                   max_new_tokens: int, greedy: bool):
        """The last question answered again (its answer replaced)."""
        messages = list(messages or [])
        while messages and messages[-1].get("role") == "assistant":
            messages.pop()
        if not messages:
            yield messages, gr.skip(), self.words["nothing_to_regenerate"]
            return
        question = message_text(messages.pop())
        yield from self._answer(question, messages, conversation,
                                generation_settings(temperature, top_p, max_new_tokens, greedy))

    def _answer(self, question: str, messages: list[dict], conversation: Conversation, generation: dict):
        if self.bot is None:
            yield messages, question, self.words["no_model"].format(self.no_model_reason)
            return
        history = visualcla_history(messages)
        messages = [*messages, {"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        conversation.stop.clear()
        yield messages, "", ""
        try:
            for reply in stream_reply(self.bot, conversation.image(), question, history, generation,
                                      conversation.stop):
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
        """A new conversation: no messages, no image, nothing generating."""
        conversation.stop.set()
        conversation.images.clear()
        return [], None, conversation, ""
