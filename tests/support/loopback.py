"""The HTTP server every loopback fake (images, chat completions, Hub) runs on."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer on 127.0.0.1 (a free port), served from a daemon thread by `start()`.

    The default listen backlog (5) drops connections when a client opens a burst of them (img2dataset,
    200 in-flight translation requests) on a loaded 2-core box; a dropped SYN is retried after 1 s
    and reads as a timeout. Hence 256."""

    request_queue_size = 256
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
