"""Which way a breast faces in the stored pixels, and whether to mirror it.

The models expect every breast to face right: chest wall on the left edge, nipple pointing
to increasing column index. The reference pipelines assume the usual storage (left breasts
face right, right breasts face left, as in the hanging protocol) and mirror right breasts.

DICOM says the same thing explicitly in Patient Orientation (0020,0020): its first value is
the patient direction of increasing column index. For a mammogram it starts with ``A``
(anterior: the nipple points right, e.g. ``A\\R`` for a left CC) or ``P`` (posterior: the
nipple points left, e.g. ``P\\L`` for a right CC). When it is present we use it for the
geometry; when it disagrees with the usual storage for the laterality, either the image was
stored mirrored or the laterality is wrong, so the disagreement is reported (a warning, or
:class:`~triage.errors.PreprocessingError` with ``strict=True``). A first value starting
with anything else (``L``, ``R``, ``H``, ``F``) means the image is rotated by 90 degrees,
which the reference preprocessing cannot handle: that raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from triage.errors import PreprocessingError
from triage.vocabulary import Laterality

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Orientation:
    """The facing used for preprocessing and where it came from."""

    faces_right: bool  # raw pixels: nipple toward increasing column index
    source: str  # "patient_orientation" or "laterality_convention"
    conflict: str | None = None  # set when Patient Orientation contradicts the convention

    @property
    def needs_flip(self) -> bool:
        """True when the image must be mirrored left-right to face right."""
        return not self.faces_right


def faces_right_by_convention(laterality: Laterality) -> bool:
    """Usual storage: left breasts face right, right breasts face left."""
    return laterality is Laterality.LEFT


def _values(patient_orientation: str | Sequence[str] | None) -> list[str]:
    if patient_orientation is None:
        return []
    if isinstance(patient_orientation, str):
        raw = patient_orientation.split("\\")
    else:
        raw = [str(v) for v in patient_orientation]
    return [v.strip().upper() for v in raw if v and v.strip()]


def faces_right_from_patient_orientation(
    patient_orientation: str | Sequence[str] | None,
) -> bool | None:
    """Facing read from Patient Orientation; ``None`` when it is absent or empty.

    Raises PreprocessingError for a rotated image (row direction not anterior/posterior)
    or an unreadable value.
    """
    values = _values(patient_orientation)
    if not values:
        return None
    row_direction = values[0]
    if row_direction.startswith("A"):
        return True
    if row_direction.startswith("P"):
        return False
    joined = "\\".join(values)
    raise PreprocessingError(
        f"Patient Orientation {joined!r}: rows run {row_direction!r}, not "
        "anterior/posterior, so the image is rotated or the value is invalid; the "
        "mammogram preprocessing needs the chest wall on the left or right edge"
    )


def resolve_orientation(
    laterality: Laterality,
    patient_orientation: str | Sequence[str] | None = None,
    *,
    strict: bool = False,
    sop_instance_uid: str | None = None,
) -> Orientation:
    """Decide the raw facing from Patient Orientation, else from the laterality convention.

    A contradiction between the two is logged as a warning (Patient Orientation wins, it
    describes the pixels) or, with ``strict=True``, raised as PreprocessingError.
    """
    conventional = faces_right_by_convention(laterality)
    stated = faces_right_from_patient_orientation(patient_orientation)
    if stated is None:
        return Orientation(faces_right=conventional, source="laterality_convention")
    if stated == conventional:
        return Orientation(faces_right=stated, source="patient_orientation")
    values = "\\".join(_values(patient_orientation))
    conflict = (
        f"Patient Orientation {values!r} says the nipple points "
        f"{'right' if stated else 'left'}, but {laterality.name.lower()} breasts are "
        f"normally stored pointing {'right' if conventional else 'left'}: the image is "
        "stored mirrored or its laterality is wrong"
    )
    if strict:
        raise PreprocessingError(conflict + "; check the modality's laterality/orientation")
    logger.warning(
        "orientation contradiction, using Patient Orientation: %s",
        conflict,
        extra={"sop_instance_uid": sop_instance_uid},
    )
    return Orientation(faces_right=stated, source="patient_orientation", conflict=conflict)


def needs_flip(
    laterality: Laterality,
    patient_orientation: str | Sequence[str] | None = None,
    *,
    strict: bool = False,
) -> bool:
    """Whether the stored image must be mirrored so the breast faces right."""
    return resolve_orientation(laterality, patient_orientation, strict=strict).needs_flip
