"""`vcla`, the command line: argument parsing and exits (`main.py`), cheap checks before anything
starts (`preflight.py`), and the commands that are not steps (`commands.py`)."""

from pipelines.cli.main import main

__all__ = ["main"]
