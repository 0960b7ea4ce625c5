"""Run an ASGI app with uvicorn in a background thread (notebooks, tutorials, tests).

Example::

    with BackgroundServer(create_app({"m": posterior})) as server:
        httpx.get(server.url + "/api/models")
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["BackgroundServer", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread; ``stop()`` shuts it down.

    Args:
        app: an ASGI app, e.g. from :func:`sbi_core.server.create_app`.
        host: interface to bind; loopback by default so nothing is exposed to the network.
        port: TCP port; ``None`` picks a free one.
        startup_timeout: seconds to wait for the server to accept connections.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None,
                 startup_timeout: float = 30.0):
        import uvicorn

        self.host = host
        self.port = int(port) if port is not None else free_port(host)
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"sbi-core-serve-{self.port}",
                                        daemon=True)
        self._startup_timeout = startup_timeout

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000``."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and self._server.started

    def start(self) -> BackgroundServer:
        """Start serving and wait until connections are accepted."""
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"The server could not start on {self.url} (is the port in "
                                   "use? pick another port).")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"The server did not start on {self.url} within "
                                   f"{self._startup_timeout:.0f} s.")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
