"""Record files a step hands on unchanged (curate and generate without their recipe section, and the
upstream records generate adds its own to): hard links, so nothing is copied, and the next step
still reads one folder. Copies where links are impossible (another file system)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def pass_through(files: list[Path], dst: Path, digest: Any) -> None:
    """Link each of `files` into `dst` under its name; `digest` gets each name and size (their content
    is the upstream's output, whose id the downstream fingerprints carry already)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in files:
        target = dst / path.name
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
