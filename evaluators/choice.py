"""Multiple choice in MMBench's TSV layout, scored with CircularEval.

    items = read_mmbench_tsv(Path("MMBench_DEV_CN.tsv"))
    metrics = score_circular(items, lambda item: ask(item.image_b64, prompt_for(item)))

A model that always says "A" gets a quarter of four-option questions right by chance; CircularEval
(MMBench's) asks each question once per rotation of its options (k options: k rotations, the texts
moved, the letters A, B, C... fixed, the right letter moving with its text) and counts the question
right only if every rotation is. `vanilla_accuracy` is rotation 0 alone, the plain score.

The TSV (tab-separated, quoted as pandas writes it) has a header with `index`, `question`, `answer`
and option columns `A`, `B`, ... (at least two); `hint`, `category`, `l2-category` and `image`
(base64) are optional. Empty cells and pandas' "nan" are empty. MMBench's own files can hold its
circular copies (index + k x 1,000,000, their `image` the index of the original row): copies are
dropped by default (`rotations` makes its own) and such image references are resolved.

The reply is read by `extract_choice`: a leading letter in the usual forms ("B", "B.", "(B)", "B、",
"选B", "答案是B", "答案：B", "Answer: B"), else the one option whose text the reply contains, else
nothing (wrong), as VLMEvalKit's `can_infer` matches a reply to an option before it asks an LLM.
`prompt_for` asks in Chinese, the format LLaVA uses for MMBench-CN: the hint, the question, the options
one per line ("A. text"), then "请直接回答选项字母。" ("answer with the option's letter directly");
`answer_with="option"` ends with "请直接回答正确选项的内容。" instead ("answer with the right option's
text"), for a model too small to map an option's text to its letter (the demo's: measured in NOTES.md).
Either reply is scored the same way.
"""

from __future__ import annotations

import csv
import re
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

COPY_STRIDE = 1_000_000
"""MMBench's circular copies are numbered index + k x COPY_STRIDE."""
REQUIRED = ("index", "question", "answer", "A", "B")
LETTERS = "ABCDEFGHIJ"
ANSWER_WITH = {"letter": "请直接回答选项字母。", "option": "请直接回答正确选项的内容。"}
"""The prompt's last line per `answer_with`."""
_EMPTY = {"", "nan", "NaN", "NAN"}


@dataclass(frozen=True)
class ChoiceItem:
    index: int | str
    question: str
    hint: str
    options: list[tuple[str, str]]
    """(letter, text) in letter order: A, B, C..."""
    answer: str
    """The right letter."""
    category: str
    image_b64: str | None
    l2_category: str = ""
    rotation: int = 0
    """How many places the option texts were moved (`rotations`); 0 as read."""


class ChoiceFileError(ValueError):
    """A TSV that cannot be read as MMBench's layout; the message names the file and line."""


@contextmanager
def _large_fields() -> Iterator[None]:
    """csv's field limit raised for the read (base64 images are megabytes), then put back: the limit
    is process-wide, and other readers (the url_list source) reject over-long fields by it."""
    before = csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(before)


def read_mmbench_tsv(path: Path | str, keep_copies: bool = False) -> list[ChoiceItem]:
    """The items of an MMBench TSV (module docstring), in file order; MMBench's stored circular
    copies (index >= 1,000,000) are dropped unless `keep_copies`."""
    path = Path(path)
    with _large_fields(), open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise ChoiceFileError(f"{path}: empty file; expected a header line with {', '.join(REQUIRED)}, ...")
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ChoiceFileError(f"{path}, line 1: header lacks column(s) {', '.join(missing)} (has: "
                                  f"{', '.join(header)}); is it a tab-separated MMBench TSV?")
        rows = []
        for fields in reader:
            line = reader.line_num
            if not any(x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                raise ChoiceFileError(f"{path}, line {line}: {len(fields)} fields, the header has {len(header)}; "
                                      "a tab or an unbalanced quote inside a cell?")
            rows.append((line, dict(zip(header, fields))))
    images = {_index(row["index"]): row.get("image", "") for _, row in rows}
    items = [_item(path, line, row, images) for line, row in rows]
    if keep_copies:
        return items
    return [it for it in items if not (isinstance(it.index, int) and it.index >= COPY_STRIDE)]


def _item(path: Path, line: int, row: dict[str, str], images: dict[int | str, str]) -> ChoiceItem:
    where = f"{path}, line {line}"
    letters = [c for c in LETTERS if c in row]
    texts = [_cell(row[c]) for c in letters]
    used = [c for c, t in zip(letters, texts) if t]
    if used != list(LETTERS[:len(used)]):
        raise ChoiceFileError(f"{where}: options {', '.join(used) or 'none'} are filled; they must be A, B, ... "
                              "with no gap")
    if len(used) < 2:
        raise ChoiceFileError(f"{where}: {len(used)} option(s); a question needs at least A and B")
    answer = _cell(row["answer"]).upper()
    if answer not in used:
        raise ChoiceFileError(f"{where}: answer {row['answer']!r} is not one of the options {', '.join(used)}")
    question = _cell(row["question"])
    if not question:
        raise ChoiceFileError(f"{where}: empty question")
    return ChoiceItem(index=_index(row["index"]), question=question, hint=_cell(row.get("hint", "")),
                      options=[(c, t) for c, t in zip(letters, texts) if t], answer=answer,
                      category=_cell(row.get("category", "")), image_b64=_image(where, row, images),
                      l2_category=_cell(row.get("l2-category", "")))


def _cell(text: str | None) -> str:
    text = (text or "").strip()
    return "" if text in _EMPTY else text


def _index(text: str) -> int | str:
    text = text.strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def _image(where: str, row: dict[str, str], images: dict[int | str, str]) -> str | None:
    image = _cell(row.get("image"))
    if not image:
        return None
    if len(image) <= 64 and image.isdigit():  # a circular copy names its original's row
        target = images.get(int(image), "")
        if not _cell(target) or (len(target) <= 64 and target.strip().isdigit()):
            raise ChoiceFileError(f"{where}: image refers to row index {image}, which has no image of its own")
        return target.strip()
    return image


def rotations(item: ChoiceItem) -> list[ChoiceItem]:
    """CircularEval's variants of `item`: for k options, k items whose option texts are moved up by
    0..k-1 places (rotation r puts the text of option (i + r) mod k under letter i); the letters stay
    A, B, C... and the answer is the letter its text now has."""
    letters = [letter for letter, _ in item.options]
    texts = [text for _, text in item.options]
    right = letters.index(item.answer)
    k = len(texts)
    return [replace(item, options=list(zip(letters, texts[r:] + texts[:r])), answer=letters[(right - r) % k],
                    rotation=r) for r in range(k)]


_PREFIX = re.compile(r"^(?:(?:正确)?答案(?:应该)?(?:是|为)?|选项|选择|选|(?i:(?:the\s+)?(?:correct\s+)?"
                     r"(?:answer|option|choice)(?:\s+is)?))?\s*:?\s*")
_LETTER = re.compile(r"""^(?:[(\[【「]\s*([A-Z])\s*[)\]】」]|([A-Z])(?=$|[.、:),。;*_`"'”’]|\s+[^A-Za-z\s]))""")
_DECORATION = "*_`\"'“”‘’ \t\n"


def extract_choice(reply: str, options: list[tuple[str, str]]) -> str | None:
    """The option letter `reply` chose, or None (module docstring). A leading letter counts only if
    it is one of the options' and is not the start of an English sentence ("A cat..." is no choice:
    a letter followed by a space must be followed by something other than a Latin word)."""
    text = unicodedata.normalize("NFKC", reply).strip().lstrip(_DECORATION)
    letters = {letter for letter, _ in options}
    m = _LETTER.match(_PREFIX.sub("", text, count=1).lstrip(_DECORATION))
    if m and (m.group(1) or m.group(2)) in letters:
        return m.group(1) or m.group(2)
    return _by_text(text, options)


def _by_text(text: str, options: list[tuple[str, str]]) -> str | None:
    said = text.lower()
    found = [(letter, t) for letter, t in ((letter, unicodedata.normalize("NFKC", t).strip().lower())
                                           for letter, t in options) if t and t in said]
    # an option inside a longer one that was also found ("红" in "红色") is not a choice of its own
    found = [(letter, t) for letter, t in found if not any(t != u and t in u for _, u in found)]
    return found[0][0] if len(found) == 1 else None


def prompt_for(item: ChoiceItem, answer_with: str = "letter") -> str:
    """The question as the model is asked it: the hint (if any), the question, "A. text" per option,
    then what to answer with (`ANSWER_WITH`: the letter, or the option's text), one per line."""
    if answer_with not in ANSWER_WITH:
        raise ValueError(f"prompt_for: answer_with must be one of {sorted(ANSWER_WITH)}, not {answer_with!r}")
    lines = [item.hint] if item.hint else []
    lines.append(item.question)
    lines += [f"{letter}. {text}" for letter, text in item.options]
    lines.append(ANSWER_WITH[answer_with])
    return "\n".join(lines)


def score_circular(items: Iterable[ChoiceItem], predict: Callable[[ChoiceItem], str],
                   log: list[dict] | None = None) -> dict:
    """Ask `predict` (a rotated item -> the model's reply) every rotation of every item and score
    CircularEval (`circular_eval`). `log`, if given, gets one row per rotation: index, rotation,
    answer, reply, choice, correct."""
    items = list(items)
    results: dict[int | str, list[bool]] = {}
    for item in items:
        if item.index in results:
            raise ValueError(f"score_circular: index {item.index!r} appears twice; each question needs its own index")
        results[item.index] = []
        for rot in rotations(item):
            reply = predict(rot)
            choice = extract_choice(reply, rot.options)
            results[item.index].append(choice == rot.answer)
            if log is not None:
                log.append({"index": rot.index, "rotation": rot.rotation, "answer": rot.answer, "reply": reply,
                            "choice": choice, "correct": choice == rot.answer})
    return circular_eval(results, {item.index: item.category for item in items})


def circular_eval(results: dict[int | str, list[bool]], categories: dict[int | str, str] | None = None) -> dict:
    """CircularEval of per-rotation outcomes (item index -> right or not, rotation 0 first): an item
    counts only if all its rotations are right; `vanilla_accuracy` looks at rotation 0 alone.

    Returns {"circular_accuracy", "vanilla_accuracy", "n", "by_category": {category: {"n",
    "circular_accuracy", "vanilla_accuracy"}}} (categories: item index -> category; none, no breakdown).
    """
    empty = [i for i, r in results.items() if not r]
    if empty:
        raise ValueError(f"circular_eval: item(s) {', '.join(map(repr, empty[:10]))} have no results")
    out = _accuracies(list(results.values()))
    groups: dict[str, list[list[bool]]] = defaultdict(list)
    for index, outcome in results.items():
        if categories and categories.get(index):
            groups[categories[index]].append(outcome)
    out["by_category"] = {name: _accuracies(group) for name, group in sorted(groups.items())}
    return out


def _accuracies(outcomes: list[list[bool]]) -> dict:
    n = len(outcomes)
    return {"n": n, "circular_accuracy": sum(all(o) for o in outcomes) / max(1, n),
            "vanilla_accuracy": sum(bool(o[0]) for o in outcomes) / max(1, n)}
