"""Every object the output builders emit passes dciodvfy (dicom3tools) without errors, and
every SR is read by DCMTK's dsr2xml without errors or unexpected warnings."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.result_builders import (
    build_exam_fixture,
    fixture_from_synthetic,
    with_failed_member,
)
from triage.config import Settings, load_settings
from triage.outputs import (
    DocumentReference,
    build_mammo_cad_sr,
    build_overlays,
    build_tid1500_sr,
)

pytestmark = pytest.mark.integration

#: dsr2xml notices that are limitations of DCMTK 3.6.7, not problems of the object:
#: no template checking for these SOP classes, no VR checker / XML encoding for ISO 2022.
_DSR2XML_BENIGN = (
    "Check for template constraints not yet supported",
    "The VR checker does not support this Specific Character Set",
    "Reading unknown/unsupported SpecificCharacterSet",
    "Cannot map Specific Character Set to equivalent XML encoding",
)


def _settings(**overrides: object) -> Settings:
    return load_settings(**overrides)


def _tid1500_verified() -> list[Dataset]:
    fx = build_exam_fixture(verified=True, charset="latin1")
    return [build_tid1500_sr(fx.result, fx.sources, _settings())]


def _tid1500_unverified_japanese_dbt_rescore() -> list[Dataset]:
    fx = build_exam_fixture(verified=False, charset="japanese", with_dbt=True)
    first = build_tid1500_sr(fx.result, fx.sources, _settings())
    again = build_exam_fixture(verified=False, charset="japanese", with_dbt=True,
                               extra_instance=True)
    return [build_tid1500_sr(again.result, again.sources, _settings(),
                             predecessor=DocumentReference.from_dataset(first))]


def _cad_with_findings() -> list[Dataset]:
    fx = build_exam_fixture(verified=True, charset="latin1", with_dbt=True)
    return [build_mammo_cad_sr(fx.result, fx.sources, _settings(cad_certainty_threshold=0.5))]


def _cad_without_findings_partial_members() -> list[Dataset]:
    fx = build_exam_fixture(verified=False, charset="japanese")
    prior = build_mammo_cad_sr(fx.result, fx.sources, _settings())
    return [build_mammo_cad_sr(fx.result, fx.sources, _settings(cad_certainty_threshold=1.0),
                               predecessor=DocumentReference.from_dataset(prior))]


def _srs_with_failed_member() -> list[Dataset]:
    fx = with_failed_member(build_exam_fixture(verified=True, charset="latin1"))
    return [build_tid1500_sr(fx.result, fx.sources, _settings()),
            build_mammo_cad_sr(fx.result, fx.sources, _settings())]


def _overlays() -> list[Dataset]:
    fx = build_exam_fixture(verified=False, charset="japanese", with_dbt=True)
    return list(build_overlays(fx.result, fx.sources, fx.pixels, _settings()))


def _overlays_downscaled_custom_modality() -> list[Dataset]:
    fx = build_exam_fixture(verified=True, charset="ascii")
    return list(build_overlays(fx.result, fx.sources, fx.pixels, _settings(
        overlay_max_rows=200, overlay_modality="MG",
        overlay_series_description="AI saliency - research only")))


def _all_outputs_for_vendor_sources(vendor: str) -> list[Dataset]:
    """Sources from triage.synthetic (vendor headers: MONOCHROME1, SIGMOID VOI, oblique
    Patient Orientation) through every builder."""
    fx = fixture_from_synthetic(vendor=vendor, verified=vendor != "ge")
    settings = _settings(cad_certainty_threshold=0.5)
    return [
        build_tid1500_sr(fx.result, fx.sources, settings),
        build_mammo_cad_sr(fx.result, fx.sources, settings),
        *build_overlays(fx.result, fx.sources, fx.pixels, settings),
    ]


CASES: dict[str, Callable[[], list[Dataset]]] = {
    "synthetic-ge-sources": lambda: _all_outputs_for_vendor_sources("ge"),
    "synthetic-hologic-sources": lambda: _all_outputs_for_vendor_sources("hologic"),
    "synthetic-siemens-sources": lambda: _all_outputs_for_vendor_sources("siemens"),
    "tid1500-verified": _tid1500_verified,
    "tid1500-unverified-japanese-dbt-rescore": _tid1500_unverified_japanese_dbt_rescore,
    "cad-with-findings-dbt": _cad_with_findings,
    "cad-without-findings-rescore": _cad_without_findings_partial_members,
    "overlays-unverified-japanese-dbt": _overlays,
    "srs-with-failed-member": _srs_with_failed_member,
    "overlays-downscaled": _overlays_downscaled_custom_modality,
}


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_emitted_objects_pass_dciodvfy_and_dsr2xml(case: str, tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None or shutil.which("dsr2xml") is None:
        pytest.fail("dciodvfy (dicom3tools) and dsr2xml (DCMTK) must be installed")
    objects = CASES[case]()
    assert objects
    for n, ds in enumerate(objects):
        path = tmp_path / f"{case}-{n}.dcm"
        ds.save_as(path, enforce_file_format=True)

        iod = _run(["dciodvfy", str(path)])
        report = iod.stdout + iod.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"dciodvfy {path.name}:\n{report}"
        warnings = [line for line in report.splitlines() if line.startswith("Warning")]
        print(f"dciodvfy {path.name}: {len(warnings)} warnings", *sorted(set(warnings)),
              sep="\n  ")

        if str(ds.Modality) == "SR":
            xml = _run(["dsr2xml", str(path), str(tmp_path / f"{case}-{n}.xml")])
            notes = [line for line in xml.stderr.splitlines() if line.strip()]
            unexpected = [line for line in notes
                          if not any(benign in line for benign in _DSR2XML_BENIGN)]
            assert xml.returncode == 0 and not unexpected, (
                f"dsr2xml {path.name} (rc {xml.returncode}):\n{xml.stderr}"
            )
            assert (tmp_path / f"{case}-{n}.xml").stat().st_size > 0
