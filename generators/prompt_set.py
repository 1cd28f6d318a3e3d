"""The prompts of one version: per kind a system text (`<kind>.md`), few-shot examples
(`<kind>.examples.jsonl`: {"context": ..., "reply": {...}} per line) and, for `detail`, the user
instructions a record asks with (`detail.instructions.txt`). The shipped ones are in
`generators/prompts/<version>/`; `generate.prompts_dir` replaces them with a user's folder.

A request is the system text, then the examples as user / assistant turns, then this image's
context: everything before the last message is the same for every image of a kind, so providers'
automatic prefix caching serves it. The prompt id in cache keys and lineage is the version plus a
hash of the files, so an edited prompt never meets replies to the old one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generators.config import KINDS, GenerateConfig, Kind

SHIPPED = Path(__file__).parent / "prompts"
ENGLISH_NOTE = ("\n\nLanguage override: write every question, answer and description in English "
                "(not Chinese), keeping the JSON keys as shown.")
STRICT_NOTE = ("注意：你上一次的回复没有通过检查（{reason}）。这一次请严格遵守全部要求，"
               "只输出要求格式的 JSON 对象。")


class PromptError(ValueError):
    """A prompt folder that is missing a file or holds a malformed example; names the file."""


@dataclass(frozen=True, slots=True)
class KindPrompt:
    system: str
    examples: tuple[tuple[str, str], ...]
    """(context text, reply JSON text) pairs."""


@dataclass(frozen=True, slots=True)
class PromptSet:
    version: str
    prompt_id: str
    kinds: dict[str, KindPrompt]
    detail_instructions: tuple[str, ...]
    language: str

    def messages(self, kind: Kind, context_text: str, image_url: str | None = None,
                 strict_reason: str | None = None) -> list[dict[str, Any]]:
        p = self.kinds[kind]
        system = p.system + (ENGLISH_NOTE if self.language == "en" else "")
        out: list[dict[str, Any]] = [{"role": "system", "content": system}]
        for ctx, reply in p.examples:
            out += [{"role": "user", "content": ctx}, {"role": "assistant", "content": reply}]
        text = context_text + ("\n\n" + STRICT_NOTE.format(reason=strict_reason) if strict_reason else "")
        if image_url is None:
            out.append({"role": "user", "content": text})
        else:
            out.append({"role": "user", "content": [{"type": "text", "text": text},
                                                    {"type": "image_url", "image_url": {"url": image_url}}]})
        return out


def load_prompts(config: GenerateConfig) -> PromptSet:
    folder = Path(config.prompts_dir) if config.prompts_dir else SHIPPED / config.prompt_version
    if not folder.is_dir():
        known = sorted(p.name for p in SHIPPED.iterdir() if p.is_dir())
        raise PromptError(f"generate.prompt_version / prompts_dir: no prompt folder {folder} "
                          f"(shipped versions: {known})")
    digest = hashlib.sha256(config.language.encode())
    kinds = {}
    for kind in KINDS:  # every kind's files count, so the id does not change with generate.kinds
        if kind not in config.kinds and not (folder / f"{kind}.md").is_file():
            continue
        system_path, examples_path = folder / f"{kind}.md", folder / f"{kind}.examples.jsonl"
        system = _read(system_path).strip()
        examples = tuple(_examples(examples_path))
        kinds[kind] = KindPrompt(system, examples)
        digest.update(system.encode() + b"\0" + json.dumps(examples, ensure_ascii=False).encode() + b"\0")
    instructions: tuple[str, ...] = ()
    if "detail" in kinds:
        path = folder / ("detail.instructions.en.txt" if config.language == "en" else "detail.instructions.txt")
        instructions = tuple(line.strip() for line in _read(path).splitlines() if line.strip())
        if not instructions:
            raise PromptError(f"{path}: no instructions (one per line)")
        digest.update("\n".join(instructions).encode())
    return PromptSet(config.prompt_version, f"{config.prompt_version}-{digest.hexdigest()[:12]}", kinds,
                     instructions, config.language)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PromptError(f"{path}: missing; a prompt folder needs <kind>.md and <kind>.examples.jsonl for each "
                          "kind in generate.kinds, and detail.instructions.txt for `detail`") from None


def _examples(path: Path) -> list[tuple[str, str]]:
    out = []
    for lineno, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            context, reply = row["context"], row["reply"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise PromptError(f"{path}:{lineno}: an example is {{\"context\": str, \"reply\": object}} ({e})") from None
        if not isinstance(context, str) or not isinstance(reply, dict):
            raise PromptError(f"{path}:{lineno}: an example is {{\"context\": str, \"reply\": object}}")
        out.append((context, json.dumps(reply, ensure_ascii=False)))
    return out
