"""Response bodies as the OpenAPI schema documents them (the data comes from the library's
dataclasses; these models only describe and check what leaves the API)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class WorklistEntryOut(BaseModel):
    study_instance_uid: str
    accession_numbers: list[str]
    status: str
    category: str
    reason: str | None
    score: float | None  # None for a viewer when the category is NOT TRIAGED
    partial: bool
    model_set_version: str | None
    first_received_at: str
    last_received_at: str
    scored_at: str | None
    delivered_at: str | None
    failure_reason: str | None
    skip_reason: str | None


class WorklistOut(BaseModel):
    entries: list[WorklistEntryOut]
    total: int
    has_more: bool
    next_cursor: str | None
    since: str


class BreastScoreOut(BaseModel):
    laterality: str
    p_malignant: float | None
    p_benign: float | None


class HistoryRowOut(BaseModel):
    study_instance_uid: str
    accession_numbers: list[str]
    patient_id: str | None = None  # present only for admins with TRIAGE_API_SHOW_PATIENT_IDS
    model_set_version: str
    category: str | None
    exam_score: float | None
    breast_scores: list[BreastScoreOut]
    scored_at: str
    verified: bool
    partial: bool
    not_triaged_reason: str | None


class HistoryOut(BaseModel):
    rows: list[HistoryRowOut]
    has_more: bool
    next_cursor: str | None


class ModelOut(BaseModel):
    name: str
    version: str
    architecture: str
    modality: str
    weights_file: str | None
    sha256: str | None
    weights_status: str
    weights_status_reason: str
    licence: str
    intended_use: str
    ensemble_weight: float | None


class AuditEntryOut(BaseModel):
    at: str
    who: str
    role: str
    channel: str
    query: str
    filters: dict[str, Any]
    rows: int


class AuditOut(BaseModel):
    entries: list[AuditEntryOut]
    has_more: bool
    next_cursor: str | None
