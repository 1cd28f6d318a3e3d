"""The Prefect server a `vcla` command starts dies with it, even under `kill -9`; telemetry is off
by default; a configured server is used instead of starting one.

Each test runs the real `vcla` console script without a Prefect API configured, so it starts its
own temporary server (a real one: uvicorn serving Prefect's app on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

VCLA = Path(sys.executable).parent / "vcla"
SERVED = """\
name: served
sources:
  - {name: shapes, kind: url_list, path: /nonexistent/urls.parquet}
model: {vision: {init: {}}, llm: {init: {}}}
stages: {s1: {data: pretrain}}
schedules:
  - {flow: download, interval_s: 3600}
"""
TELEMETRY_VARS = ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK")


def bare_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user who configured nothing: no API URL, no telemetry settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PREFECT_API_URL", "PREFECT_UI_URL", *TELEMETRY_VARS}}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "VCLA_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent, PID 1, to reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def wait_until(condition, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def gone_within(pids: list[int], timeout: float) -> float | None:
    """Seconds until none of `pids` runs, or None if some still run after `timeout`."""
    started = time.monotonic()
    if wait_until(lambda: not any(alive(p) for p in pids), timeout):
        return time.monotonic() - started
    return None


def cleanup(pids: list[int]) -> None:
    for pid in pids:  # only the server processes this test saw its own vcla start
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_kill_9_of_vcla_stops_its_prefect_server_and_telemetry_is_off(tmp_path):
    recipe = tmp_path / "served.yaml"
    recipe.write_text(SERVED, encoding="utf-8")
    log = tmp_path / "vcla.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        vcla = subprocess.Popen([str(VCLA), "serve", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run")],
                                env=bare_env(tmp_path), stdout=out, stderr=subprocess.STDOUT)
    servers: list[int] = []
    try:
        assert wait_until(lambda: "deployments are being served" in log.read_text() or vcla.poll() is not None,
                          180, every=0.2), "vcla serve did not come up"
        assert vcla.poll() is None, log.read_text()
        print(f"vcla serve up (server started, deployment registered) in {time.monotonic() - started:.1f} s")
        servers = [p for p in children(vcla.pid) if alive(p)]
        assert servers, "no server process under vcla"
        for pid in servers:  # what the server runs with: telemetry off unless the user says otherwise
            env = environ(pid)
            assert env.get("PREFECT_SERVER_ANALYTICS_ENABLED", "").lower() == "false" and env.get("DO_NOT_TRACK") == "1"

        vcla.send_signal(signal.SIGKILL)
        vcla.wait(timeout=10)
        took = gone_within(servers, timeout=15)
        assert took is not None, f"server {servers} outlived vcla (kill -9)"
        print(f"server gone {took:.2f} s after kill -9 of vcla")
        output = log.read_text()
        assert "Failed to send telemetry" not in output
        assert "Starting temporary server" not in output  # Prefect's own, unguarded server was not started
    finally:
        if vcla.poll() is None:
            vcla.kill()
        cleanup(servers)


def test_kill_9_while_the_server_starts_stops_it_too(tmp_path):
    """The kill lands while the server process is still importing (before or after it armed its
    parent-death signal): it must not survive either."""
    vcla = subprocess.Popen([str(VCLA), "render", "--run-dir", str(tmp_path / "run")], env=bare_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers: list[int] = []
    try:
        assert wait_until(lambda: bool(children(vcla.pid)) or vcla.poll() is not None, 120, every=0.01)
        servers = children(vcla.pid)
        vcla.send_signal(signal.SIGKILL)
        vcla.wait(timeout=10)
        assert servers, "vcla exited without starting a server"
        assert gone_within(servers, timeout=15) is not None, f"server {servers} outlived vcla (kill -9 at start)"
    finally:
        if vcla.poll() is None:
            vcla.kill()
        cleanup(servers)


def test_a_configured_api_is_used_and_no_server_started(tmp_path):
    code = "from pipelines.orchestration import server; print(server.ensure_api(), server._server)"
    env = {**bare_env(tmp_path), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["http://127.0.0.1:9/api", "None"], result.stderr
