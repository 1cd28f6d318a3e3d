"""Where `vcla webui` may listen, and with which login: the safe defaults, decided before anything starts.

- It listens on 127.0.0.1 unless told otherwise; only this machine can reach it.
- Any other address (0.0.0.0, a LAN address, a host name) needs a login: `--auth-env VAR` names an
  environment variable that holds `user:password`. The secret never comes from the command line
  (it would sit in the shell history and in `ps` for every user of the machine), and no message
  repeats it.
- A public share link (`--share`, Gradio's tunnel) is made only when asked, and needs the login too.

Cheap and free of Gradio: `vcla`'s pre-flight runs it before the model loads.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.env import check_env_name
from pipelines.core.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class Bind:
    host: str
    port: int | None
    auth: tuple[str, str] | None
    """(user, password), read from the environment; None on loopback without --auth-env."""
    share: bool

    def __repr__(self) -> str:  # a Bind may end up in a log line or a traceback: never the password
        login = f"user {self.auth[0]!r}" if self.auth else "no login"
        return f"Bind(host={self.host!r}, port={self.port}, {login}, share={self.share})"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches: 127.0.0.0/8, ::1, `localhost`."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def read_auth(auth_env: str | None, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(user, password) from the variable `auth_env` names (`user:password`); None without one.

    UsageError when the name is not a variable name (a pasted password), the variable is unset or
    empty, or its value has no `user:` part or an empty password. Messages name the variable only."""
    if auth_env is None:
        return None
    try:
        check_env_name(auth_env, "--auth-env", example="VCLA_WEBUI_AUTH")
    except ValueError as e:
        raise UsageError(str(e)) from None
    value = (os.environ if environ is None else environ).get(auth_env, "")
    if not value:
        raise UsageError(f"--auth-env {auth_env}: the variable is not set; export {auth_env}=user:password first")
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise UsageError(f"--auth-env {auth_env}: the value must be user:password with both parts non-empty "
                         "(the value is not shown)")
    return user, password


def bind_settings(host: str = DEFAULT_HOST, port: int | None = None, auth_env: str | None = None,
                  share: bool = False, environ: Mapping[str, str] | None = None) -> Bind:
    """The checked listening settings; UsageError saying why when they are not safe."""
    auth = read_auth(auth_env, environ)
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--port {port}: not a TCP port; pass 1-65535 (or leave it out for the first free one "
                         "from 7860)")
    if not is_loopback(host) and auth is None:
        raise UsageError(
            f"--host {host}: refusing to listen beyond this machine without a login: anyone who can reach "
            f"{host} could use the model and read the run's data. Pass --auth-env VAR with VAR=user:password "
            f"in the environment, or keep the default --host {DEFAULT_HOST}")
    if share and auth is None:
        raise UsageError("--share: a public link needs a login; pass --auth-env VAR with VAR=user:password "
                         "in the environment")
    return Bind(host=host, port=port, auth=auth, share=share)
