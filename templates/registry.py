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
| `mistral`     | -                      | `[INST] {q} [/INST]`                   | first instruction   | `</s>`                |
| `chatml`      | `<\|im_start\|>system`   | `<\|im_start\|>user\\n{q}<\|im_end\|>\\n<\|im_start\|>assistant\\n` | first instruction | `\\n` (answer ends `<\|im_end\|>`) |
| `llama3`      | system header (if set) | `<\|start_header_id\|>user<\|end_header_id\|>\\n\\n{q}<\|eot_id\|>` + assistant header | first instruction | - (answer ends `<\|eot_id\|>`) |

`alpaca` follows VisualCLA's spelling (space after ``Instruction:``, none after ``Response:``),
so text-only rows rendered with `visualcla` and with `alpaca` are byte-identical.

`chatml` is Qwen2 / Qwen2.5's format (Qwen2's default system prompt, as its tokenizer's chat template;
Qwen3 in non-thinking use without the empty `<think>` block), `llama3` Meta's Llama-3 / 3.1 format
(BOS is the tokenizer's `<|begin_of_text|>`). In both the answer ends with the end-of-turn token,
which is trained and stops generation, so the tokenizer's EOS is not added (`eos=False`).
`template: auto` (a recipe's stage, `render.sft_template`) picks the format of the LLM's
architecture (`template_for_llm`).
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

QWEN_SYSTEM = "You are a helpful assistant."
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
LLAMA3_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
_CHATML_TURN = "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
_LLAMA3_TURN = "<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
AUTO = "auto"
"""The template name that means: the LLM architecture's own format (`template_for_llm`)."""
LLAMA3_VOCAB = 128_000
"""A `llama` model with at least this many tokens is a Llama-3 (128,256); Llama 1/2 have 32,000."""
TEMPLATE_BY_MODEL_TYPE = {"qwen2": "chatml", "qwen2_moe": "chatml", "qwen3": "chatml", "qwen3_moe": "chatml",
                          "mistral": "mistral", "mixtral": "mistral"}

TEMPLATES: dict[str, Template] = {}


def register_template(template: Template) -> Template:
    if template.name in TEMPLATES:
        raise ValueError(f"template {template.name!r} is already registered")
    TEMPLATES[template.name] = template
    return template


def template_for_llm(model_type: str, vocab_size: int) -> str:
    """The template `auto` means for an LLM: ChatML for Qwen2/2.5/3, Mistral's [INST] for Mistral, Llama-3's
    headers for a `llama` with a Llama-3 vocabulary, Llama-2 chat for other `llama` models."""
    if model_type == "llama":
        return "llama3" if vocab_size >= LLAMA3_VOCAB else "llama2_chat"
    if model_type not in TEMPLATE_BY_MODEL_TYPE:
        raise KeyError(f"template: auto knows no prompt format for LLM architecture {model_type!r} (known: llama, "
                       f"{', '.join(sorted(TEMPLATE_BY_MODEL_TYPE))}); name one in the recipe (e.g. chatml)")
    return TEMPLATE_BY_MODEL_TYPE[model_type]


def resolve_template(name: str, model_type: str, vocab_size: int) -> str:
    """`name`, or for `auto` the LLM architecture's format."""
    return template_for_llm(model_type, vocab_size) if name == AUTO else name


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
register_template(Template(
    name="mistral",
    description="Mistral instruct: [INST] ... [/INST], no system prompt",
    first_turn="[INST] {image}{text} [/INST]",
    turn="[INST] {text} [/INST]",
    answer_close="</s>",
    image_sep="\n",
    stop="</s>",
))
register_template(Template(
    name="chatml",
    description="ChatML (Qwen2 / Qwen2.5 / Qwen3): <|im_start|>role ... <|im_end|>",
    system=QWEN_SYSTEM,
    system_format="<|im_start|>system\n{system}<|im_end|>\n",
    first_turn="{system}" + _CHATML_TURN.replace("{text}", "{image}{text}"),
    turn=_CHATML_TURN,
    response="{text}<|im_end|>",
    answer_close="\n",
    image_sep="\n",
    stop="<|im_end|>",
    eos=False,
    special_tokens=CHATML_TOKENS,
))
register_template(Template(
    name="llama3",
    description="Llama-3 / 3.1 chat: <|start_header_id|>role<|end_header_id|> ... <|eot_id|>",
    system_format="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
    first_turn="{system}" + _LLAMA3_TURN.replace("{text}", "{image}{text}"),
    turn=_LLAMA3_TURN,
    response="{text}<|eot_id|>",
    image_sep="\n",
    stop="<|eot_id|>",
    eos=False,
    special_tokens=LLAMA3_TOKENS,
))
