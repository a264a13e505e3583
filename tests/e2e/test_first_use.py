"""First use: `make run` starts the product on its embedded default and shows the demo
exam's worklist line, as README.md says ("What `make run` shows").

The test runs the Makefile's `run` target itself (so it runs exactly ``RUN_COMMAND``), with
its data directory in a temp dir and a free DICOM port, so the checkout's ``triage-data``
is never touched. ``-o .venv/.installed`` keeps make from reinstalling the venv in the
middle of a test run (``make test`` has just installed it; elsewhere a stale stamp would
mean a reinstall of the environment the tests run in). It waits for the worklist line,
checks what it says and that the SR is where it says, then stops the product with SIGINT
(what Ctrl-C sends it) and checks that it stops cleanly: make exits 0 only when the
product did.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pydicom
import pytest

from tests.conftest import REPO_ROOT
from tests.servers import free_port, require_tools

#: generous: install check, demo weights, model load, quiet period and CPU scoring on a
#: shared runner
FIRST_LINE_TIMEOUT_S = 900.0
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


class _Lines:
    """The lines a process writes on stdout, collected by a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, prefix: str, proc: subprocess.Popen[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((x for x in self.lines if x.startswith(prefix)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (proc.poll() is not None and not self._thread.is_alive()):
                    raise AssertionError(f"no line starting {prefix!r} (exit {proc.poll()}):\n"
                                         + "\n".join(self.lines))
                self._changed.wait(min(left, 1.0))

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


def _product_pid(make_pid: int) -> int:
    """The product process make started for the recipe (make -> [shell exec] -> triage)."""
    children = Path(f"/proc/{make_pid}/task/{make_pid}/children").read_text().split()
    for pid in map(int, children):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if any(arg.endswith(b"/triage") for arg in cmdline) and b"serve" in cmdline:
            return pid
    raise AssertionError(f"make ({make_pid}) has no `triage serve` child: {children}")


@pytest.mark.timeout(FIRST_LINE_TIMEOUT_S + 300)
def test_make_run_serves_the_demo_exam_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    require_tools("make")
    data = tmp_path / "triage-data"
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRIAGE_", "MAKE")) and k not in ("MFLAGS", "PYTHONPATH")}
    env.update(TRIAGE_DATA_DIR=str(data), TRIAGE_DICOM_PORT=str(port), TRIAGE_API_PORT="0")
    stderr = tmp_path / "stderr.log"
    started = time.monotonic()
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "-o", ".venv/.installed", "run"], cwd=REPO_ROOT,
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
            start_new_session=True)
    try:
        out = _Lines(proc)
        went = out.wait_for("results went to: ", proc, FIRST_LINE_TIMEOUT_S)
        first_use_s = time.monotonic() - started
        text = out.text()
        serving = out.wait_for("triage is serving: ", proc, 1)
        assert f"TRIAGE@127.0.0.1:{port}" in serving and "embedded worker" in serving
        assert f"sqlite:///{data}/triage.db" in serving

        sent = out.wait_for("demo exam ", proc, 1)
        uid = sent.split()[2]
        assert "quiet period (2 s)" in sent, "demo mode uses its short quiet period"

        lines = out.lines
        header = lines.index("worklist line for the demo exam:")
        entry, reason = lines[header + 1], lines[header + 2]
        assert entry.split()[:2] == ["NOT", "TRIAGED"], text
        assert uid in entry
        score = re.search(r"score\s+(\d\.\d{3})\s", entry)
        assert score is not None, f"the computed score is shown: {entry}"
        assert 0.0 <= float(score.group(1)) <= 1.0
        assert re.search(r"\s(scored|delivered)\s", entry), entry
        assert reason.strip().startswith("reason: ")
        assert re.search(r"UNCALIBRATED|not verified|unverified", reason), reason

        outputs = data / "outputs" / uid
        assert went == f"results went to: {outputs}/ (1 TID 1500 SR, 4 overlays)", text
        srs = [ds for ds in (pydicom.dcmread(p, stop_before_pixels=True)
                             for p in sorted(outputs.glob("*.dcm")))
               if ds.SOPClassUID == COMPREHENSIVE_3D_SR]
        assert len(srs) == 1 and srs[0].StudyInstanceUID == uid
        assert not (REPO_ROOT / "triage-data" / "outputs" / uid).exists()

        os.kill(_product_pid(proc.pid), signal.SIGINT)
        assert proc.wait(timeout=120) == 0, (text, stderr.read_text()[-4000:])
        out.wait_for("triage stopped", proc, 10)
        print(f"first use: worklist line after {first_use_s:.0f} s; {went}")
    finally:
        if proc.poll() is None:  # only the process group this test started
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
