"""DICOM objects the product writes back to the archive (builders only; sending is the
outbox's job).

* ``build_tid1500_sr``: TID 1500 Comprehensive 3D SR (IHE AI Results style);
* ``build_mammo_cad_sr``: Mammography CAD SR (TID 4000), sent only if ``cad_sr_allowed``;
* ``build_overlays`` / ``build_overlay``: RGB secondary captures with saliency burned in;
* ``plan_uids``: the deterministic UIDs of all of them (``triage.outputs.uids``).

Every builder takes the typed ``ExamResult`` and the source datasets (and, for overlays,
the decoded pixels), never tensors, and returns a pydicom Dataset in the source study.
A re-score's SRs name the ones they replace: pass ``predecessor=DocumentReference(study,
series, instance, COMPREHENSIVE_3D_SR or MAMMOGRAPHY_CAD_SR)`` (the previous run's
``plan_uids``) or ``DocumentReference.from_dataset(previous_sr)``.
"""

from triage.outputs.common import DocumentReference
from triage.outputs.overlay import build_overlay, build_overlays, render_overlay
from triage.outputs.sr_mammo_cad import (
    MAMMOGRAPHY_CAD_SR,
    build_mammo_cad_sr,
    cad_findings,
    cad_sr_allowed,
)
from triage.outputs.sr_tid1500 import COMPREHENSIVE_3D_SR, build_tid1500_sr
from triage.outputs.uids import OutputUids, digest_instances, is_own_uid, plan_uids

__all__ = [
    "COMPREHENSIVE_3D_SR",
    "MAMMOGRAPHY_CAD_SR",
    "DocumentReference",
    "OutputUids",
    "build_mammo_cad_sr",
    "build_overlay",
    "build_overlays",
    "build_tid1500_sr",
    "cad_findings",
    "cad_sr_allowed",
    "digest_instances",
    "is_own_uid",
    "plan_uids",
    "render_overlay",
]
