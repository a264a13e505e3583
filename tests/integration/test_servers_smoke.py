"""The real servers the integration suite relies on start and answer."""

from __future__ import annotations

import socket

from sqlalchemy import create_engine, text

from tests.servers import OrthancServer, RedisServer


def test_postgres_fixture_gives_a_reachable_empty_database(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname='public'")).scalar() == 0
    engine.dispose()


def test_redis_answers_ping(redis_server: RedisServer) -> None:
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(16).startswith(b"+PONG")


def test_orthanc_rest_answers_with_no_instances(orthanc: OrthancServer) -> None:
    assert orthanc.get("/instances") == []
    system = orthanc.get("/system")
    assert isinstance(system, dict) and system["DicomAet"] == "ORTHANC"
