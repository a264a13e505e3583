"""The exam images the pipeline scores (what every member family receives)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triage.vocabulary import ImageClass, Laterality, View


@dataclass(frozen=True)
class ExamImage:
    """One chosen image of an exam, as the pipeline needs it."""

    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    laterality: Laterality
    view: View
    image_class: ImageClass = ImageClass.FFDM
    content_digest: str = ""  # sha256 of the stored dataset bytes (Instance.content_digest)
