"""End-to-end fixtures: the real servers of tests/integration plus Orthanc as an archive
that counts every C-STORE it receives.

The session servers (PostgreSQL, Redis) are the ones tests/integration/conftest.py defines;
they are re-exported here because that conftest only applies below tests/integration.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import postgres_server, postgres_url, redis_server
from tests.servers import OrthancServer

__all__ = ["ArchiveServer", "postgres_server", "postgres_url", "redis_server"]

_RECEIPT = re.compile(r"Lua says: RECEIVED (\S+)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.integration)


class ArchiveServer(OrthancServer):
    """Orthanc as the site's archive, which also logs every instance a C-STORE delivers.

    ``OverwriteInstances`` is on, so Orthanc stores (and its ``OnStoredInstance`` hook
    sees) every copy it receives, not only the first: a second delivery of the same SOP
    Instance UID shows up in ``receipts()`` even though Orthanc keeps one instance. With
    ``forward_to`` the same hook also routes each instance to that modality.
    """

    def _write_config(self) -> Path:
        path = super()._write_config()
        config = json.loads(path.read_text())
        lua = self.root / "receipts.lua"
        body = "  print('RECEIVED ' .. tags['SOPInstanceUID'])\n"
        if self.forward_to:
            body += f"  SendToModality(instanceId, '{self.forward_to}')\n"
        lua.write_text("function OnStoredInstance(instanceId, tags, metadata, origin)\n"
                       f"{body}end\n")
        config["LuaScripts"] = [str(lua)]
        config["OverwriteInstances"] = True
        path.write_text(json.dumps(config, indent=2))
        return path

    def receipts(self) -> Counter[str]:
        """How many times each SOP Instance UID was received and stored."""
        log = (self.root / "orthanc.log").read_text(errors="replace")
        return Counter(_RECEIPT.findall(log))

    def instance_ids_by_sop(self) -> dict[str, list[str]]:
        """Orthanc instance ids per SOP Instance UID (more than one would be a duplicate)."""
        out: dict[str, list[str]] = {}
        oids = self.get("/instances")
        assert isinstance(oids, list)
        for oid in oids:
            tags = self.get(f"/instances/{oid}/simplified-tags")
            assert isinstance(tags, dict)
            out.setdefault(str(tags["SOPInstanceUID"]), []).append(str(oid))
        return out


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[ArchiveServer]:
    server = ArchiveServer(root=tmp_path / "orthanc")
    server.root.mkdir()
    server.start()
    yield server
    server.destroy()
