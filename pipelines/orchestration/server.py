"""The Prefect API a `vcla` command runs its flows against: a configured one, or a private
temporary server that dies with the command.

Without an API configured, Prefect starts a temporary server itself (`SubprocessASGIServer`:
a `subprocess.Popen` of uvicorn, stopped by `atexit`). `atexit` never runs when `vcla` is killed
with SIGKILL (an OOM kill, `kill -9`, a cluster scheduler), and that server (about 230 MB) then
ran on forever under PID 1. So `vcla` starts the same server itself, through this module's
`__main__`, which asks Linux for a parent-death signal (`prctl(PR_SET_PDEATHSIG, SIGTERM)`) before
it loads the app: the server is told to stop the moment `vcla` dies, however it dies.

A server that does not start raises `ServerStartError` (`vcla` prints it as one line, exit 1).

Reuse: with an API configured (`PREFECT_API_URL` in the environment or the active Prefect
profile, e.g. a `prefect server start` in another terminal; see the README) nothing is started
and a command skips the few seconds of server start-up.

Telemetry: the server posts a heartbeat to prefect.io on start (offline: `ERROR ... Failed to send
telemetry` on every command) and the SDK sends onboarding events; `quiet_telemetry` turns both
off unless the user's environment already says otherwise.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

TELEMETRY_OFF = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # server heartbeat (prefect.server.services.telemetry)
    "DO_NOT_TRACK": "1",  # SDK events (prefect._internal.analytics)
}
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
"""What Prefect's own temporary server runs with (no UI, ephemeral services only)."""
PR_SET_PDEATHSIG = 1
START_ATTEMPTS = 3

USE_YOUR_OWN = ("or start one server yourself (prefect server start --host 127.0.0.1 --port 4200 --background) and "
                "export PREFECT_API_URL=http://127.0.0.1:4200/api (README: The Prefect server)")

_server: subprocess.Popen | None = None


class ServerStartError(RuntimeError):
    """The temporary server did not start; the message says what to do. `vcla` exits 1, one line."""


def quiet_telemetry() -> None:
    """Telemetry off by default; call before Prefect is imported. A value already set wins."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def ensure_api() -> str | None:
    """The API URL this process's flows will use: the configured one, or a private server's.

    Returns None where Prefect is left to decide (ephemeral mode off: Prefect reports the missing
    URL; called off the main thread: a parent-death signal would follow that thread, not vcla)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return settings.api.url
    if not settings.server.ephemeral.enabled or threading.current_thread() is not threading.main_thread():
        return None
    url = start_server(settings.server.ephemeral.startup_timeout_seconds)
    _use_api(url)
    return url


def start_server(timeout: float) -> str:
    """Start the private server on a free loopback port and wait until it answers; its URL."""
    global _server
    for _ in range(START_ATTEMPTS):
        port = free_port()
        proc = _spawn(port)
        url = f"http://127.0.0.1:{port}/api"
        if wait_healthy(proc, url, timeout):
            _server = proc
            atexit.register(stop_server, proc)
            return url
        if proc.poll() is None:
            stop_server(proc)
            raise ServerStartError(f"the temporary Prefect server did not answer within {timeout:g} s (a busy "
                                   "machine?); raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, " + USE_YOUR_OWN)
        # it exited by itself: another program may have taken the port between probe and bind
    raise ServerStartError(f"the temporary Prefect server exited at start-up {START_ATTEMPTS} times (last exit code "
                           f"{proc.returncode}; its output is above); fix what it says, " + USE_YOUR_OWN)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(port: int) -> subprocess.Popen:
    from prefect.settings import get_current_settings

    env = {**os.environ, **SERVER_ENV, **get_current_settings().to_environment_variables(exclude_unset=True)}
    return subprocess.Popen([sys.executable, "-m", "pipelines.orchestration.server", str(os.getpid()), str(port)], env=env)


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float) -> bool:
    """Poll `<url>/health` until it answers 200 (True), the process exits or time runs out (False)."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    return False


def _use_api(url: str) -> None:
    """Point this process (and the processes it starts: Dask/Ray workers) at `url`."""
    import prefect.context

    os.environ["PREFECT_API_URL"] = url
    os.environ.setdefault("PREFECT_UI_URL", "")  # no UI on this server: no "View at <url>" lines
    prefect.context.refresh_global_settings_context()


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the server process -----------------------------------------------------------------------

def die_with_parent(parent: int) -> None:
    """SIGTERM to this process when `parent` exits (Linux); exit now if it is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(0)


def run_server(parent: int, port: int) -> None:
    """Prefect's temporary server (the app and flags of `SubprocessASGIServer`), tied to `parent`."""
    die_with_parent(parent)
    import uvicorn

    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
                log_level="error", lifespan="on")


if __name__ == "__main__":
    run_server(int(sys.argv[1]), int(sys.argv[2]))
