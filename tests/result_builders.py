"""Realistic ExamResult objects and matching source datasets for output-builder tests.

The sources are small Digital Mammography X-Ray For Presentation images (512 x 384, 12-bit,
a half-ellipse "breast" against the chest wall with a bright round "lesion"), optionally
one Breast Tomosynthesis view (multi-frame). The result's geometry is computed the way the
imaging layer does it: breast bounding-box crop, right breasts mirrored so every breast
faces the same way, zero padding, a window on the padded crop. Saliency maps (coarse grid
spanning the model input) peak exactly where the lesion (malignant map) and a second spot
(benign map) lie, so tests can check that outputs put marks where the models looked.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from triage.outputs.uids import digest_instances
from triage.results import BreastScore, ExamResult, InputFrame, MemberInfo, RoiPatch, ViewScore
from triage.vocabulary import NOT_TRIAGED, Laterality, View, WeightsStatus

MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
BREAST_TOMO = "1.2.840.10008.5.1.4.1.1.13.1.3"

ROWS, COLS = 512, 384
INPUT_SHAPE = (448, 320)

#: (laterality, view) -> Patient Orientation, chest wall on the left for L, right for R.
_ORIENTATION = {
    (Laterality.LEFT, View.CC): ("A", "R"),
    (Laterality.RIGHT, View.CC): ("P", "L"),
    (Laterality.LEFT, View.MLO): ("A", "F"),
    (Laterality.RIGHT, View.MLO): ("P", "F"),
}
_VIEW_CODE = {View.CC: ("399162004", "cranio-caudal"),
              View.MLO: ("399368009", "medio-lateral oblique")}

NAMES = {
    "latin1": ("ISO_IR 100", "Müller^Jürgen"),
    "japanese": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    "ascii": (None, "Doe^Jane"),
}


@dataclass
class ExamFixture:
    """Sources (datasets + decoded pixels) and the result scored from them."""

    sources: list[Dataset]
    pixels: dict[str, np.ndarray]  # SOP Instance UID -> stored pixel values
    result: ExamResult
    lesions: dict[str, tuple[int, int]] = field(default_factory=dict)  # source (row, col)
    benign_spots: dict[str, tuple[int, int]] = field(default_factory=dict)


def _uid(seed: int, *parts: object) -> str:
    """Deterministic test UID (pydicom's root, never the product's own root)."""
    return str(generate_uid(entropy_srcs=["tests.result_builders", str(seed),
                                          *(str(p) for p in parts)]))


def _breast_mask(laterality: Laterality) -> np.ndarray:
    rr, cc = np.mgrid[0:ROWS, 0:COLS]
    wall = 0 if laterality is Laterality.LEFT else COLS - 1
    return ((rr - ROWS / 2) / (ROWS * 0.42)) ** 2 + ((cc - wall) / (COLS * 0.8)) ** 2 <= 1.0


def _pixels(laterality: Laterality, lesion: tuple[int, int], rng: np.random.Generator,
            frames: int = 1) -> np.ndarray:
    mask = _breast_mask(laterality)
    rr, cc = np.mgrid[0:ROWS, 0:COLS]
    base = np.where(mask, 1400.0, 60.0)
    blob = 1800.0 * np.exp(-(((rr - lesion[0]) ** 2 + (cc - lesion[1]) ** 2) / (2 * 9.0**2)))
    out = []
    for _ in range(frames):
        img = base + np.where(mask, blob, 0.0) + rng.normal(0, 25, size=base.shape)
        out.append(np.clip(img, 0, 4095).astype(np.uint16))
    return out[0] if frames == 1 else np.stack(out)


def _frame_for(laterality: Laterality, mask: np.ndarray | None = None,
               input_shape: tuple[int, int] = INPUT_SHAPE) -> InputFrame:
    """Crop to the breast bounding box, mirror right breasts, pad 12 rows, window 4 rows in."""
    if mask is None:
        mask = _breast_mask(laterality)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
    cropped = (int(bottom - top + 1), int(right - left + 1))
    return InputFrame(
        source_shape=(int(mask.shape[0]), int(mask.shape[1])),
        crop_top=int(top),
        crop_left=int(left),
        cropped_shape=cropped,
        flipped=laterality is Laterality.RIGHT,
        pad_top=12,
        pad_left=0,
        window_top=4,
        window_left=0,
        input_shape=input_shape,
    )


def source_to_input(frame: InputFrame, row: float, col: float) -> tuple[float, float]:
    """Inverse of InputFrame.to_source (test-side, written independently)."""
    c = col - frame.crop_left
    if frame.flipped:
        c = frame.cropped_shape[1] - 1 - c
    return (row - frame.crop_top + frame.pad_top - frame.window_top,
            c + frame.pad_left - frame.window_left)


def _saliency(frame: InputFrame, spot: tuple[int, int], peak: float) -> np.ndarray:
    """A coarse (1/8 of the input) Gaussian saliency map peaking over ``spot`` (source)."""
    r_in, c_in = source_to_input(frame, *spot)
    h, w = frame.input_shape[0] // 8, frame.input_shape[1] // 8
    cell_r = (r_in + 0.5) * h / frame.input_shape[0] - 0.5
    cell_c = (c_in + 0.5) * w / frame.input_shape[1] - 0.5
    rr, cc = np.mgrid[0:h, 0:w]
    g = np.exp(-(((rr - cell_r) ** 2 + (cc - cell_c) ** 2) / (2 * 1.5**2)))
    return (peak * g).astype(np.float32)


def _source(identity: Dataset, laterality: Laterality, view: View, number: int,
            series_uid: str, frames: int, sop_uid: str) -> Dataset:
    meta = FileMetaDataset()
    sop_class = BREAST_TOMO if frames > 1 else MG_PRESENTATION
    ds = Dataset()
    ds.file_meta = meta
    ds.update(identity)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = "MG"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1 if frames == 1 else 2
    ds.InstanceNumber = number
    ds.Manufacturer = "SyntheticVendor"
    ds.ManufacturerModelName = "Synth MG 1"
    ds.DeviceSerialNumber = "SN-0001"
    ds.SoftwareVersions = "1.0"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if frames == 1 else [
        "ORIGINAL", "PRIMARY", "TOMOSYNTHESIS", "NONE"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = laterality.value
    ds.Laterality = laterality.value
    ds.ViewPosition = view.value
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = _VIEW_CODE[view][0], "SCT"
    code.CodeMeaning = _VIEW_CODE[view][1]
    ds.ViewCodeSequence = DicomSequence([code])
    ds.PatientOrientation = list(_ORIENTATION[(laterality, view)])
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.PixelSpacing = [0.1, 0.1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 3600
    ds.ContentDate = identity.StudyDate
    ds.ContentTime = identity.StudyTime
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def build_exam_fixture(
    *,
    verified: bool = True,
    charset: str = "latin1",
    members: tuple[str, ...] = ("gmic-resnet18-1", "gmic-resnet18-2"),
    with_dbt: bool = False,
    p_malignant: dict[Laterality, float] | None = None,
    extra_instance: bool = False,
    seed: int = 7,
) -> ExamFixture:
    """Four FFDM views (plus an optional DBT L-CC view) and a result scored from them.

    ``p_malignant`` sets the per-breast malignant probability (each member's view values
    scatter around it); ``extra_instance`` adds a fifth FFDM image to the scored set
    (a re-score after new images).
    """
    rng = np.random.default_rng(seed)
    p_mal = p_malignant or {Laterality.LEFT: 0.81, Laterality.RIGHT: 0.12}
    charset_value, name = NAMES[charset]

    identity = Dataset()
    if charset_value is not None:
        identity.SpecificCharacterSet = charset_value
    identity.PatientName = name
    identity.PatientID = "PID-12345"
    identity.IssuerOfPatientID = "HOSP-A"
    identity.PatientBirthDate = "19650412"
    identity.PatientSex = "F"
    identity.StudyInstanceUID = _uid(seed, "study")
    identity.StudyDate = "20240305"
    identity.StudyTime = "101500"
    identity.AccessionNumber = "ACC-0042"
    identity.ReferringPhysicianName = "Referrer^Rita"
    identity.StudyID = "S42"
    identity.StudyDescription = "MG screening bilateral"
    identity.TimezoneOffsetFromUTC = "+0100"
    ffdm_series = _uid(seed, "series", 1)
    dbt_series = _uid(seed, "series", 2)

    layout: list[tuple[Laterality, View, int]] = [
        (Laterality.RIGHT, View.CC, 1), (Laterality.LEFT, View.CC, 1),
        (Laterality.RIGHT, View.MLO, 1), (Laterality.LEFT, View.MLO, 1),
    ]
    if extra_instance:
        layout.append((Laterality.LEFT, View.CC, 1))
    if with_dbt:
        layout.append((Laterality.LEFT, View.CC, 5))

    sources: list[Dataset] = []
    pixels: dict[str, np.ndarray] = {}
    lesions: dict[str, tuple[int, int]] = {}
    benign_spots: dict[str, tuple[int, int]] = {}
    views: list[ViewScore] = []
    for number, (lat, view, frames) in enumerate(layout, start=1):
        series = dbt_series if frames > 1 else ffdm_series
        ds = _source(identity, lat, view, number, series, frames,
                     _uid(seed, "instance", number, frames))
        wall = 0 if lat is Laterality.LEFT else COLS - 1
        direction = 1 if lat is Laterality.LEFT else -1
        lesion = (int(rng.integers(200, 300)), int(wall + direction * rng.integers(90, 150)))
        benign = (lesion[0] - 110, int(wall + direction * 70))
        px = _pixels(lat, lesion, rng, frames)
        ds.PixelData = px.tobytes()
        sources.append(ds)
        uid = str(ds.SOPInstanceUID)
        pixels[uid] = px
        lesions[uid] = lesion
        benign_spots[uid] = benign
        frame = _frame_for(lat)
        views.extend(_member_views(ds, frame, lat, view, lesion, benign, members,
                                   p_mal[lat], rng, frames))

    result = _assemble_result(str(identity.StudyInstanceUID), sources, views, members,
                              verified)
    return ExamFixture(sources=sources, pixels=pixels, result=result, lesions=lesions,
                       benign_spots=benign_spots)


def _member_views(ds: Dataset, frame: InputFrame, lat: Laterality, view: View,
                  lesion: tuple[int, int], benign: tuple[int, int], members: tuple[str, ...],
                  p_mal: float, rng: np.random.Generator, frames: int) -> list[ViewScore]:
    """Each member's output for one image: probabilities scattered around ``p_mal``,
    saliency peaking over the lesion (malignant) and ``benign`` (benign), three ROIs."""
    out = []
    for k, member in enumerate(members):
        pm = float(np.clip(p_mal + rng.normal(0, 0.03), 0.001, 0.999))
        pb = float(np.clip(0.3 + rng.normal(0, 0.05), 0.001, 0.999))
        r_in, c_in = source_to_input(frame, *lesion)
        rois = tuple(
            RoiPatch(
                top=int(r_in - 24 + 6 * j), left=int(c_in - 24 - 4 * j), height=48, width=48,
                attention=float(a),
                frame=(2 if frames > 1 else None),
            )
            for j, a in enumerate((0.55 - 0.05 * k, 0.3, 0.15 + 0.05 * k))
        )
        out.append(ViewScore(
            member=member,
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            laterality=lat,
            view=view,
            p_benign=pb,
            p_malignant=pm,
            saliency_benign=_saliency(frame, benign, 0.7),
            saliency_malignant=_saliency(frame, lesion, 0.9 if p_mal > 0.5 else 0.2),
            frame=frame,
            rois=rois,
            saliency_slice=(2 if frames > 1 else None),
            image_class="dbt" if frames > 1 else "ffdm",
        ))
    return out


def _assemble_result(study_uid: str, sources: list[Dataset], views: list[ViewScore],
                     members: tuple[str, ...], verified: bool) -> ExamResult:
    """Per-breast means of the member outputs, exam score = max breast p(malignant)."""
    member_infos = tuple(
        MemberInfo(
            name=m, version=f"{m}@1.0.{i}", architecture="gmic-resnet18", modality="ffdm",
            ensemble_weight=1.0 / len(members),
            weights_sha256=hashlib.sha256(m.encode()).hexdigest(),
            weights_status=(WeightsStatus.VERIFIED_PUBLISHED if verified
                            else WeightsStatus.SYNTHETIC_DEMO),
        )
        for i, m in enumerate(members)
    )
    breasts = []
    for lat in (Laterality.LEFT, Laterality.RIGHT):
        per_member = {}
        for member in members:
            mv = [v for v in views if v.member == member and v.laterality is lat]
            per_member[member] = (float(np.mean([v.p_benign for v in mv])),
                                  float(np.mean([v.p_malignant for v in mv])))
        breasts.append(BreastScore(
            laterality=lat,
            p_benign=float(np.mean([b for b, _ in per_member.values()])),
            p_malignant=float(np.mean([m for _, m in per_member.values()])),
            per_member=per_member,
        ))
    exam_score = max(b.p_malignant for b in breasts)
    if verified:
        category = "HIGH" if exam_score >= 0.5 else "MEDIUM" if exam_score >= 0.2 else "ROUTINE"
        reason = None
    else:
        category, reason = NOT_TRIAGED, "weights not verified (synthetic_demo)"
    scored = tuple(str(ds.SOPInstanceUID) for ds in sources)
    return ExamResult(
        study_instance_uid=study_uid,
        model_set_version="gmic-ensemble-2024.1",
        instances_digest=digest_instances(scored),
        scored_sop_instance_uids=scored,
        members=member_infos,
        views=tuple(views),
        breasts=tuple(breasts),
        exam_score=exam_score,
        category=category,
        not_triaged_reason=reason,
        tta_samples=4,
        tta_seed=1234,
    )


def _display_mask(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """Breast mask of a stored image: tissue is brighter than the background once
    MONOCHROME1 / INVERSE is undone."""
    values = pixels.astype(np.float64)
    if (str(ds.PhotometricInterpretation) == "MONOCHROME1"
            or str(ds.get("PresentationLUTShape", "")) == "INVERSE"):
        values = float(2 ** int(ds.BitsStored) - 1) - values
    return values > values.max() * 0.05


def fixture_from_synthetic(*, vendor: str = "ge", seed: int = 1, verified: bool = True,
                           matrix: tuple[int, int] = (512, 384),
                           members: tuple[str, ...] = ("gmic-resnet18-1", "gmic-resnet18-2"),
                           ) -> ExamFixture:
    """Sources from ``triage.synthetic.build_exam`` (vendor headers, MONOCHROME1, SIGMOID
    VOI, ...) with a result whose saliency peaks lie inside each breast."""
    from triage.synthetic import ExamSpec, build_exam
    from triage.synthetic.vendors import Vendor

    sources = build_exam(ExamSpec(seed=seed, vendor=Vendor(vendor), matrix=matrix))
    rng = np.random.default_rng(seed)
    pixels: dict[str, np.ndarray] = {}
    lesions: dict[str, tuple[int, int]] = {}
    benign_spots: dict[str, tuple[int, int]] = {}
    views: list[ViewScore] = []
    for ds in sources:
        uid = str(ds.SOPInstanceUID)
        px = ds.pixel_array
        pixels[uid] = px
        lat = Laterality(str(ds.ImageLaterality))
        code = str(ds.ViewCodeSequence[0].CodeValue)
        view = View.CC if code == _VIEW_CODE[View.CC][0] else View.MLO
        mask = _display_mask(ds, px)
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        cropped = (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
        input_shape = (int(-(-(cropped[0] + 12) // 8) * 8), int(-(-cropped[1] // 8) * 8))
        frame = _frame_for(lat, mask, input_shape)
        inside = np.argwhere(mask)
        lesion = tuple(int(v) for v in inside[len(inside) // 2])
        benign = tuple(int(v) for v in inside[len(inside) // 4])
        lesions[uid], benign_spots[uid] = lesion, benign  # type: ignore[assignment]
        p = 0.8 if lat is Laterality.LEFT else 0.15
        views.extend(_member_views(ds, frame, lat, view, lesion, benign,  # type: ignore[arg-type]
                                   members, p, rng, 1))
    result = _assemble_result(str(sources[0].StudyInstanceUID), sources, views, members,
                              verified)
    return ExamFixture(sources=sources, pixels=pixels, result=result, lesions=lesions,
                       benign_spots=benign_spots)


def with_failed_member(fx: ExamFixture, name: str = "gmic-resnet18-broken",
                       reason: str = "weights file missing") -> ExamFixture:
    """The same exam where one more configured member failed and was left out."""
    failed = MemberInfo(
        name=name, version=f"{name}@1.0.0", architecture="gmic-resnet18", modality="ffdm",
        ensemble_weight=0.0, weights_sha256=None,
        weights_status=WeightsStatus.RANDOM, included=False, failure_reason=reason,
    )
    result = dataclasses.replace(fx.result, members=(*fx.result.members, failed), partial=True)
    return dataclasses.replace(fx, result=result)


def with_member_without_saliency(fx: ExamFixture, name: str = "dmv-cnn-image-only", *,
                                 only: bool = False, seed: int = 11) -> ExamFixture:
    """The same exam with one more member that outputs probabilities only (no saliency
    maps, no ROIs, like DMV-CNN image-only); members weighted equally and breasts
    recomputed. ``only``: that member alone. FFDM sources only."""
    rng = np.random.default_rng(seed)
    added = []
    for view in {v.sop_instance_uid: v for v in fx.result.views}.values():
        added.append(dataclasses.replace(
            view, member=name, p_benign=float(rng.uniform(0.1, 0.6)),
            p_malignant=float(rng.uniform(0.05, 0.9)), saliency_benign=None,
            saliency_malignant=None, rois=(), saliency_slice=None))
    kept = () if only else tuple(m.name for m in fx.result.members)
    views = [v for v in fx.result.views if v.member in kept] + added
    result = _assemble_result(fx.result.study_instance_uid, fx.sources, views, (*kept, name),
                              fx.result.verified)
    return dataclasses.replace(fx, result=result)
