"""``GET /api/v1/models``: the model catalogue (:func:`triage.models.catalogue.model_catalogue`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from triage.api.auth import caller, settings_of
from triage.api.problems import PROBLEM_RESPONSES
from triage.api.schemas import ModelOut
from triage.config import Settings
from triage.db.access import Access

router = APIRouter(prefix="/api/v1", tags=["models"], responses=PROBLEM_RESPONSES)


@router.get("/models", response_model=list[ModelOut],
            summary="Registered models, their weights and what they may be used for")
def get_models(_access: Access = Depends(caller),
               settings: Settings = Depends(settings_of)) -> list[dict[str, Any]]:
    """Name, version, architecture, weight file and its sha256, weights status (from the
    file's bytes) with the reason, licence, intended use, and the ensemble weight of each
    member of the configured ensemble."""
    # imported here: the model code pulls in torch, which the rest of the API does not need
    from triage.models.catalogue import model_catalogue

    return [entry.to_dict() for entry in model_catalogue(settings)]
