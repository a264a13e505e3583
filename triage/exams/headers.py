"""The study- and instance-level header fields the exam keeps (read with the lenient
``header_text`` helpers: a bad value is treated as absent, never a crash)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.dataset import Dataset

from triage.dicom.classify import header_items, header_text, parse_offset


@dataclass(frozen=True)
class StudyHeader:
    """The study-level attributes of one instance that the exam row keeps."""

    study_instance_uid: str
    accession_number: str
    issuer_of_accession: str | None
    patient_id: str | None
    issuer_of_patient_id: str | None
    study_date: str | None
    study_time: str | None
    timezone_offset: str | None
    study_description: str | None
    procedure_codes: list[dict[str, str]]

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyHeader:
        issuer = None
        for item in header_items(ds, "IssuerOfAccessionNumberSequence"):
            issuer = (header_text(item, "LocalNamespaceEntityID")
                      or header_text(item, "UniversalEntityID")) or None
        patient_issuer = header_text(ds, "IssuerOfPatientID") or None
        offset = header_text(ds, "TimezoneOffsetFromUTC")
        return cls(
            study_instance_uid=header_text(ds, "StudyInstanceUID"),
            accession_number=header_text(ds, "AccessionNumber"),
            issuer_of_accession=clip(issuer, 64),
            patient_id=clip(header_text(ds, "PatientID"), 64),
            issuer_of_patient_id=clip(patient_issuer, 64),
            study_date=clip(header_text(ds, "StudyDate"), 8),
            study_time=clip(header_text(ds, "StudyTime"), 16),
            timezone_offset=offset if parse_offset(offset) else None,
            study_description=clip(header_text(ds, "StudyDescription"), 200),
            procedure_codes=procedure_codes(ds),
        )


def clip(text: str | None, length: int) -> str | None:
    return text[:length] if text else None


def procedure_codes(ds: Dataset) -> list[dict[str, str]]:
    """Procedure Code Sequence and Requested Procedure Code Sequence items, as plain dicts."""
    items = [*header_items(ds, "ProcedureCodeSequence"),
             *header_items(ds, "RequestedProcedureCodeSequence")]
    for request in header_items(ds, "RequestAttributesSequence"):
        items += header_items(request, "RequestedProcedureCodeSequence")
    codes: list[dict[str, str]] = []
    for item in items:
        code = {"scheme": header_text(item, "CodingSchemeDesignator"),
                "value": header_text(item, "CodeValue"),
                "meaning": header_text(item, "CodeMeaning")}
        if (code["value"] or code["meaning"]) and code not in codes:
            codes.append(code)
    return codes


def acquisition_datetime(ds: Dataset) -> str | None:
    """When the image was acquired, as sortable 'YYYYMMDDHHMMSS.ffffff' (UTC if offset given)."""
    candidates = [header_text(ds, "AcquisitionDateTime")]
    for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"),
                             ("ContentDate", "ContentTime")):
        date = header_text(ds, date_kw)
        if date:
            candidates.append(date + header_text(ds, time_kw).replace(":", ""))
    for text in candidates:
        match = re.fullmatch(
            r"(\d{8})(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?", text.strip())
        if not match:
            continue
        date, hour, minute, second, frac, offset = match.groups()
        try:
            value = datetime(int(date[:4]), int(date[4:6]), int(date[6:8]), int(hour or 0),
                             int(minute or 0), int(second or 0), int((frac or "0").ljust(6, "0")))
        except ValueError:
            continue
        tz = parse_offset(offset) if offset else None
        if tz is not None:
            value = value.replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y%m%d%H%M%S.%f")
    return None


def int_or_none(ds: Dataset, keyword: str) -> int | None:
    text = header_text(ds, keyword)
    try:
        return int(text) if text else None
    except ValueError:
        return None
