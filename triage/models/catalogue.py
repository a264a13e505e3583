"""The model catalogue as plain data: every registered model, its weight file and the status
that file's bytes give (``assess_weights``), its licence and intended use, and whether the
configured ensemble uses it. Read by ``GET /api/v1/models``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from triage.config import Settings
from triage.models.registry import list_specs
from triage.models.weights import assess_weights, read_manifest


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    version: str
    architecture: str
    modality: str
    weights_file: str | None  # under the models directory; None: not imported
    sha256: str | None
    weights_status: str
    weights_status_reason: str
    licence: str
    intended_use: str
    ensemble_weight: float | None  # None: not a member of the configured ensemble

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_catalogue(settings: Settings) -> list[CatalogueEntry]:
    """Every registered model, in registry order (reads each imported weight file)."""
    manifest = read_manifest(settings)
    members = {m.name: m.weight for m in settings.ensemble}
    out = []
    for spec in list_specs():
        entry = manifest.get(spec.name)
        assessment = assess_weights(spec.name, settings)
        out.append(CatalogueEntry(
            name=spec.name, version=spec.version, architecture=spec.architecture,
            modality=spec.modality, weights_file=entry.file if entry else None,
            sha256=entry.sha256 if entry else None, weights_status=assessment.status.value,
            weights_status_reason=assessment.reason, licence=spec.licence,
            intended_use=spec.intended_use, ensemble_weight=members.get(spec.name),
        ))
    return out
