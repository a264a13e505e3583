"""An exam scored by GMIC and DMV-CNN members through process_study: every object the output
stage wrote (TID 1500 SR, overlays; no CAD SR for an unverified run) passes dciodvfy
(dicom3tools) without errors, and the SR is read by DCMTK's dsr2xml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.dmv_helpers import DMV_TESTING, GMIC_TESTING, score_exam0_study
from triage.pipeline import Outcome

pytestmark = pytest.mark.integration


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_outputs_of_a_gmic_and_dmv_run_pass_dciodvfy_and_dsr2xml(tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None or shutil.which("dsr2xml") is None:
        pytest.fail("dciodvfy (dicom3tools) and dsr2xml (DCMTK) must be installed")
    scored = score_exam0_study(tmp_path, {GMIC_TESTING: 0.5, DMV_TESTING: 0.5})
    try:
        assert scored.outcome is Outcome.SCORED
        files = sorted((scored.settings.outputs_dir / scored.study_instance_uid).glob("*.dcm"))
        kinds = sorted(p.name.split("-")[0] for p in files)
        assert kinds == ["sc_overlay"] * 4 + ["sr_tid1500"]
        for path in files:
            report = _run(["dciodvfy", str(path)])
            text = report.stdout + report.stderr
            errors = [line for line in text.splitlines() if line.startswith("Error")]
            assert not errors, f"dciodvfy {path.name}:\n{text}"
            if str(pydicom.dcmread(path, stop_before_pixels=True).Modality) == "SR":
                xml = _run(["dsr2xml", str(path), str(tmp_path / "sr.xml")])
                assert xml.returncode == 0, xml.stderr
                content = (tmp_path / "sr.xml").read_text(errors="replace")
                assert GMIC_TESTING in content and DMV_TESTING in content
    finally:
        scored.db.dispose()
