"""A step's fingerprint: what its output depends on, hashed. The flows compare it with the one
recorded in the step folder to tell a finished step from a stale one.

The code part is derived, not listed: the step's own module (or its whole folder, for a step that
is a package) and every module of ours that those import, directly or through others (function-level
imports included), read from the source's tokens. Adding an import adds the file; nothing is kept
by hand.
"""

from __future__ import annotations

import hashlib
import io
import json
import tokenize
from functools import cache
from pathlib import Path
from typing import Any

from pipelines.core.step import Step
from pipelines.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]
OURS = ("common", "llm", "templates", "translators", "generators", "curators", "evaluators", "training", "pipelines")
"""Top-level packages whose code counts (third-party code is pinned by constraints.txt)."""


def fingerprint(step: Step, recipe: Recipe, upstream_output: str | None) -> str:
    """The step's recipe values, code, output place and its upstream's output id, hashed."""
    return sha256_json({
        "step": step.name,
        "config": _jsonable(step.section(recipe)),
        "code": code_hash(step.module),
        "output": str(step.output(recipe)),
        "upstream": upstream_output,
    })


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@cache
def code_hash(module: str) -> str:
    """sha256 over the sources of `module` (its folder if it is a package) and all of ours it imports."""
    h = hashlib.sha256()
    for f in code_files(module):
        h.update(str(f.relative_to(REPO)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def code_files(module: str) -> list[Path]:
    """The files whose source a step's output depends on (see the module docstring), sorted."""
    start = _file_of(module)
    if start is None:
        raise ValueError(f"{module}: not a module of this repository")
    todo = sorted(start.parent.rglob("*.py")) if start.name == "__init__.py" else [start]
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(_imported_files(f))
    return sorted(seen)


@cache
def _imported_files(path: Path) -> tuple[Path, ...]:
    """Our files that `path` imports, with the `__init__.py` of every package on the way (Python runs them)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = _imported_names(path.read_text(encoding="utf-8"), package)
    files = set()
    for name in names:
        parts = name.split(".")
        if parts[0] not in OURS:
            continue
        for i in range(1, len(parts) + 1):
            if (f := _file_of(".".join(parts[:i]))) is not None:
                files.add(f)
    return tuple(sorted(files))


def _imported_names(source: str, package: str) -> set[str]:
    """Every module an `import` or `from ... import` statement of `source` names (function-level ones
    too), read from its tokens. Not `ast.parse`: in CPython 3.11 converting a tree fails now and then
    ("AST constructor recursion depth mismatch") while another thread runs, and steps compute their
    fingerprints in the flows' threads (seen in a served flow run)."""
    names: set[str] = set()
    for line in _logical_lines(source):
        if line[:1] == ["import"]:
            names.update(part.split(" as ")[0] for part in " ".join(line[1:]).replace(" . ", ".").split(" , "))
        elif line[:1] == ["from"] and "import" in line:
            at = line.index("import")
            dotted = "".join(line[1:at])  # "..pkg.mod": the dots before the name are the relative level
            module = dotted.lstrip(".")
            level = len(dotted) - len(module)
            base = module
            if level:
                parts = package.split(".")[: len(package.split(".")) - level + 1]
                base = ".".join(p for p in [*parts, module] if p)
            names.add(base)
            imported = [t for t in line[at + 1:] if t not in ("(", ")", ",")]
            skip = False
            for t in imported:
                if skip:
                    skip = False
                elif t == "as":
                    skip = True
                else:
                    names.add(f"{base}.{t}")  # `from pkg import module`
    return {n.strip() for n in names if n.strip()}


def _logical_lines(source: str) -> list[list[str]]:
    """The token strings of each logical line, indentation left out."""
    lines, current = [], []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            if current:
                lines.append(current)
            current = []
        elif tok.type not in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            current.append(tok.string)
    return lines


def _file_of(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for f in (base / "__init__.py", base.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
