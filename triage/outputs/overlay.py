"""Secondary-capture overlay per scored view (highdicom SCImage, RGB, burned-in legend).

The picture: the source mammogram windowed for display (its VOI LUT / window when it has
one, else the 0.5-99.5 percentile of the image), with the ensemble's malignant saliency
in red and benign saliency in green, alpha-blended with opacity proportional to the
saliency value (``ALPHA_MAX`` at saliency 1, nothing at 0), the ROI patches of every member
as yellow boxes labelled with their attention weight, and a legend band below the image:
"NOT FOR DIAGNOSTIC USE", "UNCALIBRATED WEIGHTS" when the run is not verified, exam score
and category, this view's probabilities, the members with versions and weights status,
and for DBT the slice shown.

Saliency maps live on the model-input grid (any resolution spanning the input); they are
resized to the input size and placed on the source geometry by inverting
``ViewScore.frame`` (crop, mirror, padding, window). Members are combined with their
normalised ensemble weights, renormalised over the members that have a map: a member
without saliency (DMV-CNN image-only) adds nothing to the picture and does not dim the
others; its probabilities still count and the legend lists it with "no saliency map".
Text is drawn with OpenCV's built-in Hershey font (no font
files). Decoding is the caller's job: the builder takes the stored pixel array.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from triage.config import Settings
from triage.errors import InvalidDicom
from triage.outputs.common import (
    UNCALIBRATED,
    contributing_equipment,
    copy_patient_and_study,
    coverage_text,
    effective_category,
    roi_source_box,
    scored_sources,
    set_equipment,
    shows_scores,
    stamp_times,
    views_by_source,
    weighted_members,
)
from triage.outputs.uids import instance_uid, series_uid
from triage.results import ExamResult, InputFrame, MemberInfo, ViewScore, weighted_mean
from triage.vocabulary import OutputKind

logger = logging.getLogger(__name__)

SERIES_NUMBER = 9903
ALPHA_MAX = 0.6
MALIGNANT_RGB = (255, 0, 0)
BENIGN_RGB = (0, 255, 0)
ROI_RGB = (255, 255, 0)
TEXT_RGB = (255, 255, 255)
WARNING_RGB = (255, 160, 0)
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
UNCALIBRATED_WEIGHTS = "UNCALIBRATED WEIGHTS"
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class OverlayPicture:
    """The rendered overlay and where things ended up in it (for checks and logs)."""

    rgb: np.ndarray  # (rows + legend rows, cols, 3) uint8
    image_rows: int  # rows of the mammogram part; the legend band follows
    scale: float  # overlay pixels per source pixel (downscale <= 1)
    slice_index: int | None  # DBT slice shown (0-based)
    legend: tuple[str, ...]


def saliency_on_source(frame: InputFrame, saliency: np.ndarray) -> np.ndarray:
    """A saliency map spanning the model input, resampled onto the source image grid.

    Source pixels outside the model input window are 0.
    """
    in_h, in_w = frame.input_shape
    sal = np.asarray(saliency, dtype=np.float32)
    if sal.ndim != 2 or sal.size == 0:
        raise ValueError(f"saliency map must be 2-D and non-empty, got shape {sal.shape}")
    on_input = cv2.resize(sal, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
    rows, cols = frame.source_shape
    r = np.arange(rows)
    c = np.arange(cols)
    r_crop = r - frame.crop_top
    c_crop = c - frame.crop_left
    c_oriented = (frame.cropped_shape[1] - 1 - c_crop) if frame.flipped else c_crop
    r_in = r_crop + frame.pad_top - frame.window_top
    c_in = c_oriented + frame.pad_left - frame.window_left
    r_ok = (r_crop >= 0) & (r_crop < frame.cropped_shape[0]) & (r_in >= 0) & (r_in < in_h)
    c_ok = (c_crop >= 0) & (c_crop < frame.cropped_shape[1]) & (c_in >= 0) & (c_in < in_w)
    out = np.zeros((rows, cols), dtype=np.float32)
    rr, cc = np.flatnonzero(r_ok), np.flatnonzero(c_ok)
    if rr.size and cc.size:
        out[np.ix_(rr, cc)] = on_input[np.ix_(r_in[rr], c_in[cc])]
    return out


def _first(value: object) -> float:
    """First value of a possibly multi-valued DS (Window Center / Width)."""
    if isinstance(value, (MultiValue, list, tuple)):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def display_gray(image: np.ndarray, source: Dataset) -> np.ndarray:
    """8-bit display rendering of stored pixel values.

    Modality LUT (rescale), then the source's first VOI LUT (VOI LUT Sequence) or window
    (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT or SIGMOID), else the 0.5-99.5 percentile range
    of the image; MONOCHROME1 (or Presentation LUT Shape INVERSE) is inverted once so
    dense tissue is bright.
    """
    values = np.asarray(apply_modality_lut(image, source), dtype=np.float64)
    if "VOILUTSequence" in source:
        lut = apply_voi_lut(values, source, index=0, prefer_lut=True).astype(np.float64)
        bits = int(source.VOILUTSequence[0].LUTDescriptor[2])
        gray = lut / float(2**bits - 1)
    elif "WindowCenter" in source and "WindowWidth" in source:
        center = _first(source.WindowCenter)
        width = max(_first(source.WindowWidth), 1.0)
        function = str(source.get("VOILUTFunction", "LINEAR")).upper()
        if function == "SIGMOID":
            gray = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        elif function == "LINEAR_EXACT":
            gray = (values - (center - width / 2)) / width
        else:
            gray = ((values - (center - 0.5)) / max(width - 1, 1.0)) + 0.5
    else:
        lo, hi = (float(v) for v in np.percentile(values, (0.5, 99.5)))
        gray = (values - lo) / max(hi - lo, 1e-9)
    gray = np.clip(gray, 0.0, 1.0)
    if (str(source.get("PhotometricInterpretation", "")) == "MONOCHROME1"
            or str(source.get("PresentationLUTShape", "")) == "INVERSE"):
        gray = 1.0 - gray
    return np.round(gray * 255).astype(np.uint8)


def _blend(gray: np.ndarray, malignant: np.ndarray, benign: np.ndarray) -> np.ndarray:
    """Grey image tinted by malignant then benign saliency (alpha blend), as RGB uint8.

    float32, one channel at a time: a full-size mammogram is ~14 Mpixel per channel.
    """
    a_m = (ALPHA_MAX * np.clip(malignant, 0.0, 1.0)).astype(np.float32)
    a_b = (ALPHA_MAX * np.clip(benign, 0.0, 1.0)).astype(np.float32)
    keep_m, keep_b = 1.0 - a_m, 1.0 - a_b
    g = gray.astype(np.float32)
    out = np.empty((*gray.shape, 3), dtype=np.uint8)
    for c in range(3):
        channel = g * keep_m
        channel += np.float32(MALIGNANT_RGB[c]) * a_m
        channel *= keep_b
        channel += np.float32(BENIGN_RGB[c]) * a_b
        np.rint(channel, out=channel)
        np.clip(channel, 0, 255, out=channel)
        out[..., c] = channel
    return out


def _text_scale(width: int) -> float:
    return float(min(max(width / 1100.0, 0.35), 2.5))


def _wrap(line: str, scale: float, thickness: int, width: int) -> list[str]:
    words, out, current = line.split(" "), [], ""
    for word in words:
        trial = f"{current} {word}".strip()
        if current and cv2.getTextSize(trial, _FONT, scale, thickness)[0][0] > width:
            out.append(current)
            current = word
        else:
            current = trial
    out.append(current)
    return out


def _benign_text(p: float | None, digits: int = 3) -> str:
    return "not estimated" if p is None else f"{p:.{digits}f}"


def _legend_lines(result: ExamResult, views: Sequence[ViewScore], pm: float, pb: float | None,
                  slice_index: int | None, n_slices: int | None,
                  scale: float) -> list[tuple[str, tuple[int, int, int]]]:
    category, reason = effective_category(result)
    scores = shows_scores(result)  # a NOT TRIAGED / PARTIAL score is for admins only
    view = views[0]
    lines: list[tuple[str, tuple[int, int, int]]] = [
        (f"{NOT_FOR_DIAGNOSIS} - investigational AI worklist triage overlay",
         WARNING_RGB),
    ]
    if not result.verified:
        lines.append((f"{UNCALIBRATED_WEIGHTS} - {UNCALIBRATED}", WARNING_RGB))
    coverage = coverage_text(result)
    if coverage:
        lines.append((coverage, WARNING_RGB))
    lines.append((
        f"{view.laterality.value} {view.view.value} | "
        + (f"exam score {result.exam_score:.3f} | " if scores else "")
        + f"category {category}" + (f" ({reason})" if reason else ""), TEXT_RGB))
    if scores:
        lines.append((f"this view: p(malignant) {pm:.3f}  p(benign) {_benign_text(pb)}",
                      TEXT_RGB))
    if slice_index is not None:
        total = f" of {n_slices}" if n_slices else ""
        lines.append((f"DBT slice {slice_index + 1}{total}", TEXT_RGB))
    lines.append(("red: malignant saliency  green: benign saliency  yellow: ROI (attention)",
                  TEXT_RGB))
    lines.append((f"model set {result.model_set_version}", TEXT_RGB))
    members = {m.name: m for m in result.members}
    for v in views:
        m = members.get(v.member)
        if m is not None:
            no_map = v.saliency_malignant is None and v.saliency_benign is None
            probabilities = (f": p(malignant) {v.p_malignant:.3f} "
                             f"p(benign) {_benign_text(v.p_benign)}"
                             if scores else "")
            lines.append((f"{m.name} {m.version} ({m.weights_status.value}){probabilities}"
                          + ("; no saliency map" if no_map else ""), TEXT_RGB))
    if scale < 1.0:
        lines.append((f"downscaled x{scale:.3f}", TEXT_RGB))
    return lines


def combined_saliency(views: Sequence[ViewScore], members: Mapping[str, MemberInfo],
                      saliency: Callable[[ViewScore], np.ndarray | None],
                      shape: tuple[int, int]) -> np.ndarray:
    """Weighted mean on the source grid of the maps ``saliency`` picks from ``views``.

    Members without that map are skipped and the ensemble weights are renormalised over
    the members that have one; all zero when no member has a map.
    """
    out = np.zeros(shape, dtype=np.float32)
    present = [v for v in views if saliency(v) is not None]
    if not present:
        return out
    for view, weight in weighted_members(present, members):
        sal = saliency(view)
        if sal is not None:
            out += weight * saliency_on_source(view.frame, sal)
    return out


def render_overlay(
    result: ExamResult, source: Dataset, pixels: np.ndarray, max_rows: int = 0
) -> OverlayPicture:
    """Render the overlay of one scored source image (RGB uint8, legend band below)."""
    uid = str(source.SOPInstanceUID)
    views = views_by_source(result).get(uid)
    if not views:
        raise InvalidDicom(f"instance {uid} was not scored in study {result.study_instance_uid}")
    members = {m.name: m for m in result.members}
    weighted = weighted_members(views, members)
    lead = views[0]

    array = np.asarray(pixels)
    slice_index: int | None = None
    n_slices: int | None = None
    if array.ndim == 3:
        n_slices = int(array.shape[0])
        slice_index = lead.saliency_slice if lead.saliency_slice is not None else 0
        if not 0 <= slice_index < n_slices:
            raise InvalidDicom(
                f"instance {uid}: saliency slice {slice_index} is outside its {n_slices} frames"
            )
        array = array[slice_index]
    if array.ndim != 2:
        raise InvalidDicom(f"instance {uid}: expected a 2-D image or a stack, got {array.shape}")
    if tuple(array.shape) != tuple(lead.frame.source_shape):
        raise InvalidDicom(
            f"instance {uid}: pixel array {array.shape} does not match the scored geometry "
            f"{lead.frame.source_shape}; pass the decoded pixels of that instance"
        )

    gray = display_gray(array, source)
    shape = (int(array.shape[0]), int(array.shape[1]))
    malignant = combined_saliency(views, members, lambda v: v.saliency_malignant, shape)
    benign = combined_saliency(views, members, lambda v: v.saliency_benign, shape)
    pm = float(sum(w * v.p_malignant for v, w in weighted))
    pb = weighted_mean([(w, v.p_benign) for v, w in weighted])

    rows, cols = gray.shape
    scale = 1.0
    if max_rows and rows > max_rows:
        scale = max_rows / rows
        size = (max(1, round(cols * scale)), max_rows)
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        malignant = cv2.resize(malignant, size, interpolation=cv2.INTER_AREA)
        benign = cv2.resize(benign, size, interpolation=cv2.INTER_AREA)
        rows, cols = gray.shape

    image = _blend(gray, malignant, benign)

    text_scale = _text_scale(cols)
    thickness = max(1, round(text_scale * 1.6))
    line_w = max(1, round(cols / 400))
    for view in views:
        for roi in view.rois:
            top, left, bottom, right = roi_source_box(view, roi)
            p0 = (round(left * scale), round(top * scale))
            p1 = (round(right * scale), round(bottom * scale))
            cv2.rectangle(image, p0, p1, ROI_RGB, line_w)
            label = f"{roi.attention:.2f}"
            (_, th), _ = cv2.getTextSize(label, _FONT, text_scale * 0.8, thickness)
            origin = (p0[0] + 2, max(th + 1, p0[1] - 3))
            cv2.putText(image, label, origin, _FONT, text_scale * 0.8, ROI_RGB, thickness,
                        cv2.LINE_AA)

    margin = max(4, round(8 * text_scale))
    lines: list[tuple[str, tuple[int, int, int]]] = []
    for text, color in _legend_lines(result, views, pm, pb, slice_index, n_slices, scale):
        lines.extend((part, color) for part in
                     _wrap(text, text_scale, thickness, cols - 2 * margin))
    (_, line_h), baseline = cv2.getTextSize("Ag", _FONT, text_scale, thickness)
    step = line_h + baseline + max(2, round(4 * text_scale))
    band = np.zeros((margin * 2 + step * len(lines), cols, 3), dtype=np.uint8)
    y = margin + line_h
    for text, color in lines:
        cv2.putText(band, text, (margin, y), _FONT, text_scale, color, thickness, cv2.LINE_AA)
        y += step
    picture = np.concatenate([image, band], axis=0)
    return OverlayPicture(rgb=picture, image_rows=rows, scale=scale, slice_index=slice_index,
                          legend=tuple(t for t, _ in lines))


def _code_item(code: Dataset) -> Dataset:
    item = Dataset()
    for keyword in ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning"):
        if keyword in code:
            item[keyword] = code[keyword]
    return item


def _source_image_item(source: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    purpose = Dataset()
    purpose.CodeValue = "121322"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def build_overlay(
    result: ExamResult,
    source: Dataset,
    pixels: np.ndarray,
    settings: Settings,
    *,
    instance_number: int = 1,
) -> hd.sc.SCImage:
    """Secondary capture (RGB) of one scored view with saliency, ROIs and legend burned in."""
    if str(source.StudyInstanceUID) != result.study_instance_uid:
        raise InvalidDicom(
            f"source instance {source.SOPInstanceUID} belongs to study "
            f"{source.StudyInstanceUID}, not to the scored study {result.study_instance_uid}"
        )
    picture = render_overlay(result, source, pixels, settings.overlay_max_rows)
    uid = str(source.SOPInstanceUID)
    lead = views_by_source(result)[uid][0]
    root = settings.uid_root
    orientation = source.get("PatientOrientation")
    valid_orientation = bool(orientation) and len(orientation) == 2 and all(orientation)
    sc = hd.sc.SCImage(
        pixel_array=picture.rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=result.study_instance_uid,
        series_instance_uid=series_uid(root, result, OutputKind.SC_OVERLAY),
        series_number=SERIES_NUMBER,
        sop_instance_uid=instance_uid(root, result, OutputKind.SC_OVERLAY, uid),
        instance_number=instance_number,
        manufacturer="triage",
        # placeholder: highdicom accepts single letters only, the source value (e.g. the
        # oblique "A\\FR" of an MLO) is copied below
        patient_orientation=("A", "F"),
        contributing_equipment=[contributing_equipment(result, settings.institution_name)],
        series_description=settings.overlay_series_description[:64],
    )
    copy_patient_and_study(sc, source)
    stamp_times(sc, source)
    set_equipment(sc, result, settings.institution_name)
    del sc.PatientOrientation
    if valid_orientation:
        sc.PatientOrientation = list(orientation)  # same pixel orientation as the source
    else:
        sc.add_new(0x00200020, "CS", None)  # Type 2: empty (unknown) rather than invented
    sc.Modality = settings.overlay_modality
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = "BREAST"
    # Image Laterality (General Image) rather than series Laterality, which is Type 2C and
    # must be absent when Image Laterality is sent; the view code is copied when present.
    sc.ImageLaterality = lead.laterality.value
    if source.get("ViewCodeSequence"):
        sc.ViewCodeSequence = [_code_item(source.ViewCodeSequence[0])]
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    frame = picture.slice_index + 1 if picture.slice_index is not None else None
    sc.SourceImageSequence = [_source_image_item(source, frame)]
    view_text = f"{lead.laterality.value} {lead.view.value}"
    slice_text = f", DBT slice {frame}" if frame is not None else ""
    sc.DerivationDescription = (
        f"AI saliency overlay of {view_text}{slice_text} (source {uid}); red malignant, "
        f"green benign saliency, yellow ROI boxes; model set {result.model_set_version}"
    )[:1024]
    comments = f"{NOT_FOR_DIAGNOSIS}. {view_text}{slice_text}."
    coverage = coverage_text(result)
    if coverage:
        comments = f"{coverage}. " + comments
    if not result.verified:
        comments = f"{UNCALIBRATED_WEIGHTS} - {UNCALIBRATED}. " + comments
    sc.ImageComments = comments
    logger.info(
        "built overlay",
        extra={"study_instance_uid": result.study_instance_uid, "source_uid": uid,
               "sop_uid": str(sc.SOPInstanceUID), "rows": int(sc.Rows)},
    )
    return sc


def build_overlays(
    result: ExamResult,
    sources: Sequence[Dataset],
    pixels: Mapping[str, np.ndarray],
    settings: Settings,
) -> list[hd.sc.SCImage]:
    """One overlay per scored view; ``pixels`` maps SOP Instance UID -> stored pixels."""
    ordered = scored_sources(result, sources)
    for source in ordered:
        uid = str(source.SOPInstanceUID)
        if uid not in pixels:
            raise InvalidDicom(
                f"no decoded pixels for scored instance {uid} of study "
                f"{result.study_instance_uid}; decode it before building overlays"
            )
    # numpy and OpenCV release the GIL: the views render concurrently
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(ordered)))) as pool:
        futures = [pool.submit(build_overlay, result, source, pixels[str(source.SOPInstanceUID)],
                               settings, instance_number=number)
                   for number, source in enumerate(ordered, start=1)]
        return [f.result() for f in futures]
