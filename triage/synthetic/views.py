"""Mammography views and view modifiers with their DICOM codes (CID 4014 / CID 4015).

Code values and meanings come from pydicom's copy of the DICOM content mapping resource,
so they match the standard's SNOMED CT codes without a hand-typed table.
"""

from __future__ import annotations

from enum import StrEnum

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from triage.vocabulary import Laterality, View


class MammoView(StrEnum):
    """Projection of a 2D mammogram; CC and MLO are the screening views."""

    CC = "CC"  # cranio-caudal
    MLO = "MLO"  # medio-lateral oblique
    ML = "ML"  # medio-lateral
    LM = "LM"  # latero-medial
    XCCL = "XCCL"  # cranio-caudal exaggerated laterally
    XCCM = "XCCM"  # cranio-caudal exaggerated medially
    FB = "FB"  # caudo-cranial (from below)
    LMO = "LMO"  # latero-medial oblique
    SIO = "SIO"  # superolateral to inferomedial oblique
    ISO = "ISO"  # inferomedial to superolateral oblique

    @classmethod
    def from_view(cls, view: View | MammoView | str) -> MammoView:
        return cls(str(view))

    @property
    def is_standard(self) -> bool:
        return self in (MammoView.CC, MammoView.MLO)

    @property
    def family(self) -> str:
        """Shape family used to draw the breast: CC-like, oblique or lateral."""
        if self in (MammoView.CC, MammoView.XCCL, MammoView.XCCM, MammoView.FB):
            return "CC"
        if self in (MammoView.ML, MammoView.LM):
            return "ML"
        return "MLO"


class ViewModifier(StrEnum):
    SPOT_COMPRESSION = "spot_compression"
    MAGNIFICATION = "magnification"
    IMPLANT_DISPLACED = "implant_displaced"
    ROLLED_LATERAL = "rolled_lateral"
    ROLLED_MEDIAL = "rolled_medial"
    CLEAVAGE = "cleavage"
    AXILLARY_TAIL = "axillary_tail"
    TANGENTIAL = "tangential"


_VIEW_CODES: dict[MammoView, Code] = {
    MammoView.CC: codes.SCT.CranioCaudal,
    MammoView.MLO: codes.SCT.MedioLateralObliqueProjection,
    MammoView.ML: codes.SCT.MedioLateralProjection,
    MammoView.LM: codes.SCT.LateroMedial,
    MammoView.XCCL: codes.SCT.CranioCaudalExaggeratedLaterally,
    MammoView.XCCM: codes.SCT.CranioCaudalExaggeratedMedially,
    MammoView.FB: codes.SCT.CaudoCranial,
    MammoView.LMO: codes.SCT.LateroMedialOblique,
    MammoView.SIO: codes.SCT.SuperolateralToInferomedialOblique,
    MammoView.ISO: codes.SCT.InferomedialToSuperolateralOblique,
}

_MODIFIER_CODES: dict[ViewModifier, Code] = {
    ViewModifier.SPOT_COMPRESSION: codes.SCT.SpotCompression,
    ViewModifier.MAGNIFICATION: codes.SCT.Magnification,
    ViewModifier.IMPLANT_DISPLACED: codes.SCT.ImplantDisplaced,
    ViewModifier.ROLLED_LATERAL: codes.SCT.RolledLateral,
    ViewModifier.ROLLED_MEDIAL: codes.SCT.RolledMedial,
    ViewModifier.CLEAVAGE: codes.SCT.Cleavage,
    ViewModifier.AXILLARY_TAIL: codes.SCT.AxillaryTail,
    ViewModifier.TANGENTIAL: codes.SCT.Tangential,
}

BREAST_CODE: Code = codes.SCT.Breast
#: the part of the breast a partial view shows (CID 4005)
PARTIAL_VIEW_CODE: Code = codes.SCT.Lateral


def view_code(view: MammoView) -> Code:
    return _VIEW_CODES[view]


def modifier_code(modifier: ViewModifier) -> Code:
    return _MODIFIER_CODES[modifier]


def patient_orientation(laterality: Laterality, view: MammoView) -> tuple[str, str]:
    """Patient Orientation (row direction, column direction) of a mammogram.

    Images are laid out as they are hung: a left breast's chest wall is on the image's
    left with the nipple pointing right, a right breast's the other way round. Along a
    row the image therefore runs towards anterior (A) for a left breast and posterior (P)
    for a right one. Down a column a CC image runs from lateral to medial (R for a left
    breast, L for a right one), a lateral view runs from head to foot (F), and an oblique
    view runs foot-wards and medially (FR / FL).
    """
    row = "A" if laterality is Laterality.LEFT else "P"
    medial = "R" if laterality is Laterality.LEFT else "L"
    family = view.family
    if family == "CC":
        column = medial
    elif family == "ML":
        column = "F"
    else:
        column = "F" + medial
    return row, column
