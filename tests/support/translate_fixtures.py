"""Small builders shared by the translate tests and benchmark: recipes and record files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.recipe import Recipe
from templates.schema import Record, make_id

API_KEY = "sk-test-9f8e7d6c5b4a-never-in-any-file"
KEY_ENV = "VCLA_TEST_TRANSLATE_KEY"


def make_recipe(run_dir: Path, **translator: Any) -> Recipe:
    """A minimal valid recipe whose `translator:` section is `translator` (tiny model stubs)."""
    recipe = Recipe.model_validate({
        "name": "translate-test",
        "translator": {"memory_path": str(run_dir / "tm.sqlite"), **translator},
        "model": {"vision": {"init": {}}, "llm": {"init": {}}},
        "stages": {},
    })
    recipe.run_dir = run_dir
    return recipe


def record(source: str, n: int, task: str, *turns: tuple[str, str], lang: str = "en") -> Record:
    return Record(
        id=make_id(source, n), source=source, task=task,  # type: ignore[arg-type]
        messages=[{"role": role, "content": content} for role, content in turns],  # type: ignore[misc]
        image=f"{n:06d}.jpg" if task != "text" else None, lang=lang,
    )


def write_records(folder: Path, name: str, records: list[Record]) -> Path:
    path = folder / "records" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
