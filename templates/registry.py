"""The named templates (../shared/reference/models.md) and how to look one up.

    from templates.registry import get_template
    turns = render_turns(get_template("visualcla"), [("图中是什么？", "一只猫。")], image=True)

| name          | system                 | prompt of a turn                       | image               | past answer closed by |
|---------------|------------------------|----------------------------------------|---------------------|-----------------------|
| `none`        | -                      | nothing (stage-1 captioning)           | the whole prompt    | -                     |
| `alpaca`      | Alpaca preamble        | `### Instruction: \\n{q}\\n\\n### Response:` | not supported     | `\\n\\n`              |
| `visualcla`   | Alpaca preamble        | as alpaca                              | first instruction   | `\\n\\n`              |
| `llava_v1`    | LLaVA v1 system        | `USER: {q} ASSISTANT:`                 | first instruction   | `</s>`                |
| `ziya`        | -                      | `<human>:{q}\\n<bot>:`                 | before first prompt | `\\n`                 |
| `llama2_chat` | `<<SYS>>` in first turn| `[INST] {q} [/INST]`                   | first instruction   | ` </s><s>`            |

`alpaca` follows VisualCLA's spelling (space after ``Instruction:``, none after ``Response:``),
so text-only rows rendered with `visualcla` and with `alpaca` are byte-identical.
"""

from __future__ import annotations

from templates.template import Template

ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA2_VISION_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural language."
)
_ALPACA_TURN = "### Instruction: \n{text}\n\n### Response:"

TEMPLATES: dict[str, Template] = {}


def register_template(template: Template) -> Template:
    if template.name in TEMPLATES:
        raise ValueError(f"template {template.name!r} is already registered")
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown template {name!r} (known: {', '.join(sorted(TEMPLATES))})") from None


register_template(Template(
    name="none",
    description="VisualCLA stage 1: the image, then the caption; no prompt text at all",
    first_turn="{image}",
    turn="",
    image_sep="",
))
register_template(Template(
    name="alpaca",
    description="Chinese-Alpaca instruction format, text only",
    system=ALPACA_SYSTEM,
    system_format="{system}\n\n",
    first_turn="{system}" + _ALPACA_TURN,
    turn=_ALPACA_TURN,
    answer_close="\n\n",
    stop="### Instruction:",
))
register_template(Template(
    name="visualcla",
    description="VisualCLA stage 2: Alpaca with the image block in the first instruction",
    system=ALPACA_SYSTEM,
    system_format="{system}\n\n",
    first_turn="{system}### Instruction: \n{image}{text}\n\n### Response:",
    turn=_ALPACA_TURN,
    answer_close="\n\n",
    image_sep="\n",
    stop="### Instruction:",
))
register_template(Template(
    name="llava_v1",
    description="LLaVA v1 (vicuna_v1 conversation)",
    system=LLAVA_V1_SYSTEM,
    system_format="{system} ",
    first_turn="{system}USER: {image}{text} ASSISTANT:",
    turn="USER: {text} ASSISTANT:",
    response=" {text}",
    answer_close="</s>",
    image_sep="\n",
    stop="</s>",
))
register_template(Template(
    name="ziya",
    description="Ziya-Visual: <human>/<bot> roles, image features before the prompt",
    first_turn="{image}<human>:{text}\n<bot>:",
    turn="<human>:{text}\n<bot>:",
    answer_close="\n",
    image_sep="",
    stop="<human>:",
))
register_template(Template(
    name="llama2_chat",
    description="Llama-2 chat (Chinese-LLaVA): [INST] <<SYS>> ... <</SYS>> ... [/INST]",
    system=LLAMA2_VISION_SYSTEM,
    system_format="<<SYS>>\n{system}\n<</SYS>>\n\n",
    first_turn="[INST] {system}{image}{text} [/INST]",
    turn="[INST] {text} [/INST]",
    response=" {text}",
    answer_close=" </s><s>",
    image_sep="\n",
    stop="</s>",
))
