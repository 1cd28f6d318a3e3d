"""A prompt template, and the one function that renders a conversation with it.

`render_turns` is used by the renderer (shard rows) and, unchanged, by the trainer and by chat
(`chat_prompt`), so multi-turn history has the same bytes at training and at chat time.

A rendered conversation is a list of turns ``{prompt, response}``; its full text is the plain
concatenation ``prompt_1 + response_1 + prompt_2 + response_2 + ...``:

* ``prompt_1`` = the system preamble + the first instruction (with the image block);
* ``prompt_i`` (i > 1) = the text that closes the previous answer (`answer_close`) + the
  instruction of turn i, so the closing of a past answer is masked with the prompts;
* ``response_i`` = the answer as the model writes it after its prompt (some templates put a
  space first; chat formats such as ChatML and Llama-3 end it with their end-of-turn token, which
  is trained and is the template's `stop`). The trainer appends the tokenizer's EOS after the last
  response when the template says so (`eos`) and trains on responses (+ EOS) only; the
  tokenizer's BOS precedes ``prompt_1``. Neither is in the text.

Images: the ``{image}`` slot of the first prompt takes the image of a one-image conversation whose
``<image>`` led the first user message (every 2023 recipe); several images, or an image asked about
in a later turn, stand as image blocks inline in the instruction text where the record put them
(`templates.instructions`). Either way the blocks, in text order, are the row's images in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from templates.image import IMAGE_BLOCK, count_image_blocks


class Turn(TypedDict):
    prompt: str
    response: str


class TemplateError(ValueError):
    """A conversation this template cannot render (e.g. an image for a text-only template)."""


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    first_turn: str
    """Format of the first prompt; slots ``{system}``, ``{image}``, ``{text}`` (each optional)."""
    turn: str
    """Format of every later prompt; slot ``{text}``."""
    response: str = "{text}"
    """How an answer follows its prompt (``" {text}"`` where the format puts a space first)."""
    answer_close: str = ""
    """Text that closes a past answer; it opens the next prompt."""
    system: str = ""
    """System preamble; empty means none."""
    system_format: str = "{system}"
    """How a non-empty preamble is written into ``{system}``."""
    image_sep: str | None = None
    """Text after the image block in ``{image}``; None: this template cannot place an image."""
    stop: str = ""
    """String that ends generation besides EOS (empty: EOS only)."""
    eos: bool = True
    """The tokenizer's EOS closes the conversation (trained). False where `response` ends with the
    template's own end-of-turn token (ChatML's `<|im_end|>`, Llama-3's `<|eot_id|>`)."""
    special_tokens: tuple[str, ...] = ()
    """Control tokens of the format; a real chat tokenizer has them, a tokenizer built here adds them."""
    description: str = ""

    @property
    def supports_image(self) -> bool:
        return self.image_sep is not None

    def image_slot(self, image: bool) -> str:
        if not image:
            return ""
        if self.image_sep is None:
            raise TemplateError(f"template {self.name!r} has no place for an image (use e.g. 'visualcla')")
        return IMAGE_BLOCK + self.image_sep

    def system_slot(self) -> str:
        return self.system_format.format(system=self.system) if self.system else ""


def render_turns(template: Template, pairs: Sequence[tuple[str, str]], *, image: bool) -> list[Turn]:
    """Render (instruction, answer) pairs; `image`: an image block goes into the first prompt's slot.
    Image blocks already inline in the instructions stay where they are (several images)."""
    if not pairs:
        raise TemplateError("a conversation needs at least one (instruction, answer) pair")
    inline = sum(count_image_blocks(q) for q, _ in pairs)
    if inline and not template.supports_image:
        raise TemplateError(f"template {template.name!r} has no place for an image (use e.g. 'visualcla')")
    turns: list[Turn] = []
    for i, (instruction, answer) in enumerate(pairs):
        if i == 0:
            prompt = template.first_turn.format(
                system=template.system_slot(), image=template.image_slot(image), text=instruction
            )
        else:
            prompt = template.answer_close + template.turn.format(text=instruction)
        turns.append(Turn(prompt=prompt, response=template.response.format(text=answer)))
    return turns


def join_turns(turns: Sequence[Turn]) -> str:
    """The full text of rendered turns (BOS and the final EOS are the tokenizer's)."""
    return "".join(t["prompt"] + t["response"] for t in turns)


def chat_prompt(
    template: Template, history: Sequence[tuple[str, str]], instruction: str, *, image: bool
) -> str:
    """The text a model continues to answer `instruction` after `history` (same code path as training)."""
    turns = render_turns(template, [*history, (instruction, "")], image=image)
    return join_turns(turns[:-1]) + turns[-1]["prompt"]


def pairs_from_visualcla_history(history: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    """VisualCLA's chat history ``[{type: instruction|response, value}, ...]`` as pairs."""
    pairs: list[tuple[str, str]] = []
    for i in range(0, len(history), 2):
        item, reply = history[i], history[i + 1] if i + 1 < len(history) else None
        if item.get("type") != "instruction" or reply is None or reply.get("type") != "response":
            raise TemplateError(f"history[{i}]: expected an instruction followed by a response")
        pairs.append((item["value"], reply["value"]))
    return pairs
