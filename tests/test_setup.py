"""The environment that `make` bootstraps is the one the project needs."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_REPO_VENV = Path(sys.prefix).resolve() == (REPO / ".venv").resolve()


def test_stdlib_dataclasses_is_not_shadowed():
    import dataclasses

    assert "site-packages" not in dataclasses.__file__
    assert "slots" in dataclasses.dataclass.__code__.co_varnames or hasattr(dataclasses, "KW_ONLY")


def test_torch_is_the_cpu_build_on_disk():
    import torch

    assert torch.__version__.startswith("2.13.0")
    assert torch.version.cuda is None


@pytest.mark.skipif(not IN_REPO_VENV, reason="only meaningful in the .venv that `make` bootstraps")
def test_second_bootstrap_is_a_no_op():
    result = subprocess.run(["make", "-q", "-C", str(REPO), ".venv/.bootstrap-stamp"], capture_output=True)
    assert result.returncode == 0, "make would bootstrap again: the stamp is older than pyproject.toml/constraints.txt"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    commands = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]
