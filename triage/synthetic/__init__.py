"""Synthetic screening exams (DICOM) for demos, tests and load tests.

Public API:

* ``ExamSpec`` / ``ViewSpec`` / ``StudyIdentity``: what to build (frozen dataclasses);
* ``build_view(ViewSpec)`` and ``build_exam(ExamSpec)``: pydicom Datasets;
* ``build_ct_image(study)``: a minimal CT image in the same study;
* ``write_exam(datasets, out_dir, transfer_syntax)``: DICOM files;
* ``generate_exam(spec, out_dir, transfer_syntax)``: build + write, with a summary;
* ``exam_from_pngs(paths_by_view, spec)``: wrap real PNG mammograms;
* ``DbtViewSpec`` / ``build_dbt_view`` / ``generate_dbt_exam``: tomosynthesis (Breast
  Tomosynthesis Image objects, optionally a slab series, or a combo visit with FFDM and
  synthetic 2D), see :mod:`triage.synthetic.dbt`.

Pixel convention: MONOCHROME2 images have an exactly-zero background; MONOCHROME1
images (GE style) store ``2**BitsStored - 1 - value``, so the background becomes 0 again
after the usual MONOCHROME1 inversion. Same seed (and same study date/time) gives
identical files; UIDs and pixel data depend on the seed only.
"""

from triage.synthetic.builders import (
    ExamSummary,
    InstanceSummary,
    bits_for_max,
    build_ct_image,
    build_exam,
    build_view,
    encode,
    generate_exam,
    view_specs,
    write_exam,
)
from triage.synthetic.dbt import (
    DbtLesion,
    DbtViewSpec,
    build_dbt_view,
    dbt_matrix,
    dbt_view_specs,
    generate_dbt_exam,
    iter_dbt_exam,
)
from triage.synthetic.phantom import BreastGeometry, breast_geometry, render_breast
from triage.synthetic.png import exam_from_pngs, read_png
from triage.synthetic.specs import (
    STANDARD_VIEWS,
    ExamModality,
    ExamSpec,
    Lesion,
    LesionShape,
    StudyIdentity,
    TransferSyntax,
    ViewSpec,
    now_local,
    seeded_uid,
    study_identity_for_seed,
)
from triage.synthetic.vendors import PROFILES, Photometric, Vendor, VendorProfile, vendor_profile
from triage.synthetic.views import MammoView, ViewModifier, patient_orientation

__all__ = [
    "PROFILES",
    "STANDARD_VIEWS",
    "BreastGeometry",
    "DbtLesion",
    "DbtViewSpec",
    "ExamModality",
    "ExamSpec",
    "ExamSummary",
    "InstanceSummary",
    "Lesion",
    "LesionShape",
    "MammoView",
    "Photometric",
    "StudyIdentity",
    "TransferSyntax",
    "Vendor",
    "VendorProfile",
    "ViewModifier",
    "ViewSpec",
    "bits_for_max",
    "breast_geometry",
    "build_ct_image",
    "build_dbt_view",
    "build_exam",
    "build_view",
    "dbt_matrix",
    "dbt_view_specs",
    "encode",
    "exam_from_pngs",
    "generate_dbt_exam",
    "generate_exam",
    "iter_dbt_exam",
    "now_local",
    "patient_orientation",
    "read_png",
    "render_breast",
    "seeded_uid",
    "study_identity_for_seed",
    "vendor_profile",
    "view_specs",
    "write_exam",
]
