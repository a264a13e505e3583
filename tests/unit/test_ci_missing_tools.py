"""In CI (``CI=true``) a missing test server or tool fails the run; elsewhere it skips.

Pure logic of tests/servers.py: the environment and ``which`` are stand-ins.
"""

from __future__ import annotations

import pytest

from tests import servers
from tests.servers import (
    RedisServer,
    fail_missing_tool_skip,
    in_ci,
    require_tools,
    tool_named_in,
)


def _nothing_installed(name: str) -> str | None:
    return None


def _everything_installed(name: str) -> str | None:
    return f"/usr/bin/{name}"


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("TRUE", True), ("1", True), ("", False), ("false", False), ("0", False),
])
def test_ci_means_the_ci_variable_says_true(value: str, expected: bool) -> None:
    assert in_ci({"CI": value}) is expected
    assert in_ci({}) is False


def test_missing_tool_fails_in_ci_naming_it_and_how_to_install_it() -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        require_tools("storescu", "dciodvfy", environ={"CI": "true"}, which=_nothing_installed)
    message = str(failed.value)
    assert "storescu, dciodvfy not installed" in message
    assert "apt-get install dcmtk" in message and "apt-get install dicom3tools" in message
    assert "CI=true" in message


@pytest.mark.parametrize("environ", [{}, {"CI": "false"}])
def test_missing_tool_skips_outside_ci(environ: dict[str, str]) -> None:
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_tools("redis-server", environ=environ, which=_nothing_installed)
    assert "redis-server not installed: install Redis (apt-get install redis-server)" in str(skipped.value)


@pytest.mark.parametrize("environ", [{}, {"CI": "true"}])
def test_installed_tools_neither_skip_nor_fail(environ: dict[str, str]) -> None:
    require_tools(*servers.TOOLS, environ=environ, which=_everything_installed)


def test_every_server_checks_its_tools_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(servers, "tool_path", _nothing_installed)
    for server, tool in ((RedisServer(), "redis-server"), (servers.OrthancServer(), "Orthanc"),
                         (servers.PostgresServer(), "initdb")):
        try:
            with pytest.raises(pytest.fail.Exception, match=tool):
                server.start()
            assert server.proc is None, "nothing was started"
        finally:
            server.destroy()


@pytest.mark.parametrize(("reason", "tool"), [
    ("DCMTK not installed", "storescu"),
    ("Orthanc not installed", "Orthanc"),
    ("dciodvfy (dicom3tools) not installed", "dciodvfy"),
    ("needs root to mount a 2 MB tmpfs as the data directory", None),
    ("Orthanc is busy", None),
    ("make sure the archive is reachable", None),
    ("no CUDA device", None),
])
def test_skip_reasons_that_name_a_tool(reason: str, tool: str | None) -> None:
    assert tool_named_in(reason) == tool


def _skipped(reason: str) -> pytest.TestReport:
    return pytest.TestReport(nodeid="t.py::test", location=("t.py", 1, "test"), keywords={},
                             outcome="skipped", longrepr=("t.py", 1, f"Skipped: {reason}"),
                             when="setup")


def test_a_skip_for_a_missing_tool_becomes_a_failure_in_ci() -> None:
    report = _skipped("DCMTK not installed")
    fail_missing_tool_skip(report, {"CI": "true"})
    assert report.failed
    assert "DCMTK not installed: install DCMTK (apt-get install dcmtk)" in str(report.longrepr)


def test_other_skips_and_skips_outside_ci_stay_skips() -> None:
    unrelated = _skipped("needs root to mount a 2 MB tmpfs as the data directory")
    fail_missing_tool_skip(unrelated, {"CI": "true"})
    assert unrelated.skipped
    local = _skipped("DCMTK not installed")
    fail_missing_tool_skip(local, {})
    assert local.skipped and local.longrepr == ("t.py", 1, "Skipped: DCMTK not installed")


def test_passing_reports_are_left_alone() -> None:
    report = pytest.TestReport(nodeid="t.py::test", location=("t.py", 1, "test"), keywords={},
                               outcome="passed", longrepr=None, when="call")
    fail_missing_tool_skip(report, {"CI": "true"})
    assert report.passed
