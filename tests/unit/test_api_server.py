"""ApiServer: uvicorn in a thread on loopback, port 0 = a free port, a port in use stops
start-up with a message naming TRIAGE_API_PORT, stop frees the port."""

from __future__ import annotations

import socket

import httpx
import pytest

from triage.api.server import ApiServer
from triage.config import Settings
from triage.db import Database
from triage.errors import ConfigError


def test_api_serves_on_a_free_loopback_port_and_stops(settings: Settings, sqlite_db: Database) -> None:
    server = ApiServer(settings, sqlite_db, port=0)
    server.start()
    try:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0 and server.url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{server.url}/api/v1/worklist", timeout=10).status_code == 401
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code != 401
    finally:
        server.stop()
    with socket.socket() as probe:  # the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_a_port_in_use_stops_start_up_naming_the_setting(settings: Settings,
                                                         sqlite_db: Database) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*set TRIAGE_API_PORT"):
            ApiServer(settings, sqlite_db, port=port).start()


def test_the_listening_socket_is_tcp_so_responses_are_not_held_by_nagle(
        settings: Settings, sqlite_db: Database) -> None:
    """asyncio disables Nagle's algorithm only on sockets whose protocol is TCP; a socket
    created without it made every response wait ~40 ms for the client's delayed ACK."""
    import socket

    from triage.api.server import ApiServer

    server = ApiServer(settings, sqlite_db, port=0)
    sock = server._bind()
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
