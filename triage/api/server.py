"""Running the API with uvicorn in a thread of the calling process.

``ApiServer.start`` binds the socket itself (so a port in use stops start-up with a message
naming TRIAGE_API_PORT, and port 0 gives a free port whose number ``address`` reports), then
serves from a daemon thread; ``stop`` asks uvicorn to finish and waits for the thread.
uvicorn installs no signal handlers outside the main thread: the command that owns the
process handles SIGINT/SIGTERM and calls ``stop``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from triage.api.app import create_app
from triage.config import Settings
from triage.db import Database
from triage.errors import ConfigError

log = logging.getLogger(__name__)
START_TIMEOUT_S = 15.0


class ApiServer:
    """The API on ``TRIAGE_API_HOST:TRIAGE_API_PORT`` (or the given host and port)."""

    def __init__(self, settings: Settings, db: Database, *, host: str | None = None,
                 port: int | None = None) -> None:
        self.settings, self.db = settings, db
        self.host = settings.api_host if host is None else host
        self.port = settings.api_port if port is None else port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _bind(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            family, _, proto = infos[0][0], infos[0][1], infos[0][2]
            # name the protocol (TCP): asyncio then turns Nagle's algorithm off on every
            # accepted connection; without it each response waited ~40 ms for the client's
            # delayed ACK (benchmarks/api.py)
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
        except OSError as exc:
            raise ConfigError(f"TRIAGE_API_HOST {self.host!r} cannot be used: {exc}; set it "
                              "to an address of this machine (default 127.0.0.1)") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"the API cannot listen on {self.host}:{self.port} "
                              f"({exc.strerror}); set TRIAGE_API_PORT to a free port (0 picks "
                              "one) or TRIAGE_API_HOST to an address of this machine") from exc
        sock.setblocking(False)
        return sock

    def start(self) -> None:
        self._socket = self._bind()
        config = uvicorn.Config(create_app(self.settings, self.db), log_config=None,
                                access_log=False, lifespan="off", server_header=False)
        self._server = uvicorn.Server(config)
        server, sock = self._server, self._socket
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name="api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the API did not start on {self.host}:{self.port} within "
                                  f"{START_TIMEOUT_S:g} s; see the log above")
            time.sleep(0.02)
        log.info("api serving", extra={"url": self.url})

    @property
    def address(self) -> tuple[str, int]:
        if self._socket is None:
            return self.host, self.port
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        log.info("api stopped")
