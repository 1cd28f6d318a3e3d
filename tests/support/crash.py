"""Run `vcla` in a child process and kill it with SIGKILL at a chosen point (tests/reliability).

    result = run_vcla(["render", "--run-dir", str(run)], kill_at=[Call("os:replace", n=3, under=run)])
    assert result.killed

The child is this file run as a script: it installs the kill points, then calls `pipelines.cli.main`
exactly as the `vcla` console script does, or (`direct=True`) parses the same command line and calls
the stage function itself, as the stage's Prefect task would (3 s less per run: no Prefect client,
no flow run on the server). A kill point is reached inside the child (the n-th call
of a function, before or after it runs; or n files matching a glob), so it is exact and the same on
every machine; the kill itself is a real `SIGKILL` to the child's whole process group (img2dataset's
workers included): no `finally`, no atexit handler, no buffer flush runs. `kill_group` is the same
kill sent from outside (the test process), at a moment the test chooses by watching files.

Limits for the storage tests: `fsize` sets RLIMIT_FSIZE in the child (a write past it fails with
EFBIG, SIGXFSZ ignored); `obey_permissions` makes a root child respect file modes by dropping
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its capability bounding set (a non-root child obeys
them anyway), so a folder of mode 0555 is really read-only for it.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


@dataclass(frozen=True)
class Call:
    """Kill at the n-th call of `target` ("module:attr.path") that has an argument under `under`."""

    target: str
    n: int = 1
    when: str = "before"  # "before" the call runs, or "after" it returned
    under: str | None = None
    kind: str = "call"


@dataclass(frozen=True)
class Files:
    """Kill as soon as at least `n` files match `pattern` (a glob relative to `root`)."""

    root: str
    pattern: str
    n: int = 1
    kind: str = "files"


@dataclass
class Result:
    returncode: int
    output: str
    seconds: float
    note: dict[str, Any] = field(default_factory=dict)

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "VCLA_PROGRESS": "0", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # one thread per child: the suite runs on 2 cores, 2 workers
    return {**env, **(extra or {})}


def start_vcla(args: list[str], *, kill_at: list[Call | Files] = (), env: dict[str, str] | None = None,
               log: Path, fsize: int | None = None, obey_permissions: bool = False, direct: bool = False,
               cwd: Path | None = None) -> subprocess.Popen:
    """Start `vcla ARGS` in its own session (so its process group can be killed as one)."""
    spec = json.dumps({"points": [asdict(p) for p in kill_at], "note": str(log) + ".kill.json", "direct": direct})
    cmd = [sys.executable, __file__, spec, *args]

    def limits() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # stays ignored across exec: writes fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if obey_permissions and os.geteuid() == 0:
            _drop_permission_override()

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or child_env(), cwd=cwd,
                            start_new_session=True, preexec_fn=limits)
    # through a pipe: the child's file size limit must not apply to its own log
    proc.copier = threading.Thread(target=_copy, args=(proc.stdout, log), daemon=True)
    proc.copier.start()
    return proc


def _drop_permission_override() -> None:
    """Root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (after exec): file modes apply to it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap}) failed: cannot make root obey file modes")


def _copy(pipe, log: Path) -> None:
    with open(log, "wb") as out:
        for chunk in iter(lambda: pipe.read1(1 << 16), b""):
            out.write(chunk)
            out.flush()


def finish(proc: subprocess.Popen, log: Path, started: float, timeout: float = 300) -> Result:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError(f"vcla did not finish in {timeout} s; log: {log}") from None
    proc.copier.join(timeout=30)
    note_file = Path(str(log) + ".kill.json")
    note = json.loads(note_file.read_text()) if note_file.is_file() else {}
    return Result(proc.returncode, log.read_text(encoding="utf-8", errors="replace"), time.monotonic() - started, note)


def run_vcla(args: list[str], *, log: Path, timeout: float = 300, **kw: Any) -> Result:
    started = time.monotonic()
    return finish(start_vcla(args, log=log, **kw), log, started, timeout)


def kill_group(proc: subprocess.Popen) -> None:
    """`kill -9` of the child and every process it started (they share its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    proc.copier.join(timeout=30)


# ---- inside the child -------------------------------------------------------------------------

def _die(note_path: str, point: dict[str, Any], detail: str) -> None:
    with open(note_path, "w", encoding="utf-8") as f:
        f.write(json.dumps({**point, "detail": detail}))
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _resolve(target: str) -> tuple[Any, str]:
    module, _, attr = target.partition(":")
    owner: Any = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def _install_call(point: dict[str, Any], note: str) -> None:
    owner, name = _resolve(point["target"])
    original = getattr(owner, name)
    calls = [0]
    lock = threading.Lock()

    def matches(args: tuple, kwargs: dict) -> bool:
        under = point["under"]
        return under is None or any(str(a).startswith(under) for a in (*args, *kwargs.values()))

    def wrapper(*args, **kwargs):
        if not matches(args, kwargs):
            return original(*args, **kwargs)
        with lock:
            calls[0] += 1
            hit = calls[0] == point["n"]
        detail = f"call {calls[0]} of {point['target']}: {[str(a)[:200] for a in args[:3]]}"
        if hit and point["when"] == "before":
            _die(note, point, detail)
        result = original(*args, **kwargs)
        if hit:
            _die(note, point, detail)
        return result

    setattr(owner, name, wrapper)


def _install_files(point: dict[str, Any], note: str) -> None:
    root = Path(point["root"])

    def watch() -> None:
        while True:
            found = sorted(root.glob(point["pattern"]))
            if len(found) >= point["n"]:
                _die(note, point, f"{len(found)} files: {[str(p) for p in found[:5]]}")
            time.sleep(0.002)

    threading.Thread(target=watch, daemon=True).start()


def _child_main() -> int:
    spec = json.loads(sys.argv[1])
    for point in spec["points"]:
        (_install_call if point["kind"] == "call" else _install_files)(point, spec["note"])
    from pipelines.cli.main import build_parser, main

    if not spec["direct"]:
        return main(sys.argv[2:])
    from pipelines.recipe import load_recipe
    from pipelines.orchestration.registry import STEPS

    args = build_parser().parse_args(sys.argv[2:])
    step = STEPS[args.command]
    step.run(load_recipe(args.recipe, args.overrides, args.run_dir), step.make_options(vars(args)))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
