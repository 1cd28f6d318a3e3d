"""The layers of docs/ARCHITECTURE.md hold: no module imports one from a layer above it, translators/
does not import templates/, steps do not import each other, and no import cycle exists anywhere
(function-level imports count). The contracts live in pyproject.toml ([tool.importlinter]); the last
tests show that they do fail when someone adds an upward import or a cycle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "llm", "templates", "translators", "generators", "curators", "evaluators", "training", "pipelines")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with root's pyproject.toml, importing root's packages (not the installed ones)."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


CYCLES = """
import json, sys
import grimp

graph = grimp.build_graph(*sys.argv[1:], cache_dir=None)
index, low, stack, on_stack, found = {}, {}, [], set(), []
sys.setrecursionlimit(10_000)

def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.find_modules_directly_imported_by(v):
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = [v]
        while (w := stack.pop()) != v:
            component.append(w)
            on_stack.discard(w)
        on_stack.discard(v)
        if len(component) > 1:
            found.append(sorted(component))

for module in sorted(graph.modules):
    if module not in index:
        visit(module)
print(json.dumps(found))
"""


def cycles(root: Path) -> list[set[str]]:
    """Strongly connected components of more than one module in root's import graph (Tarjan), built in a
    fresh interpreter so it reads root's files, not the modules this process already imported."""
    result = subprocess.run([sys.executable, "-c", CYCLES, *PACKAGES], cwd=root, env={"PYTHONPATH": str(root)},
                            capture_output=True, text=True, timeout=300, check=True)
    return [set(c) for c in json.loads(result.stdout)]


def test_the_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 5 kept, 0 broken." in result.stdout


def test_no_import_cycle_among_all_modules_and_packages() -> None:
    """Stricter than the acyclic-siblings contract: a package's `__init__` counts as a module too."""
    assert cycles(REPO) == []


@pytest.fixture
def copy_of_the_code(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_an_upward_import_breaks_the_layer_contract(copy_of_the_code: Path) -> None:
    """A function-level import of the command line from the bottom layer, the kind that hid cycles before."""
    files = copy_of_the_code / "common" / "files.py"
    files.write_text(files.read_text() + "\n\ndef _sneaky():\n    from pipelines.cli.main import main\n")
    result = lint_imports(copy_of_the_code)
    assert result.returncode == 1
    assert "Layers import downward only BROKEN" in result.stdout
    assert "common.files -> pipelines.cli.main" in result.stdout


def test_a_cycle_breaks_the_acyclic_contract_and_is_found(copy_of_the_code: Path) -> None:
    config = copy_of_the_code / "training" / "config.py"  # training.lora imports training.config
    config.write_text(config.read_text() + "\n\ndef _loop():\n    from training import lora\n")
    result = lint_imports(copy_of_the_code)
    assert result.returncode == 1
    assert "No import cycle among the modules of any package BROKEN" in result.stdout
    assert {"training.config", "training.lora"} in cycles(copy_of_the_code)


def test_one_step_importing_another_breaks_independence(copy_of_the_code: Path) -> None:
    train = copy_of_the_code / "pipelines" / "steps" / "train.py"
    train.write_text(train.read_text() + "\nfrom pipelines.steps.render.shards import ShardFile\n")
    result = lint_imports(copy_of_the_code)
    assert result.returncode == 1
    assert "Steps do not import each other" in result.stdout and "BROKEN" in result.stdout


def test_fingerprints_cover_every_package_of_ours() -> None:
    """A step's code fingerprint follows imports into every root package: one left out of `OURS` meant
    that a change in it (llm/, generators/...) never made the steps using it run again."""
    import tomllib

    from pipelines.orchestration.fingerprint import OURS, code_files

    roots = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]
    assert sorted(OURS) == sorted(roots)
    generate = {f.relative_to(REPO).as_posix() for f in code_files("pipelines.steps.generate")}
    assert {"llm/client.py", "llm/cache.py", "generators/generator.py", "generators/checks.py"} <= generate
    curate = {f.relative_to(REPO).as_posix() for f in code_files("pipelines.steps.curate")}
    assert {"curators/near_dups.py", "curators/text_rules.py"} <= curate
