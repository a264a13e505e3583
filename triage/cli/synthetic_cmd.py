"""`triage synthetic exam`: write a synthetic screening exam as DICOM files."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer

from triage.cli.common import echo_json, handled_errors
from triage.synthetic import (
    ExamModality,
    ExamSpec,
    TransferSyntax,
    Vendor,
    generate_dbt_exam,
    generate_exam,
)

app = typer.Typer(no_args_is_help=True)


@app.command("exam")
def exam(
    out: Path = typer.Option(..., "--out", help="directory to write the DICOM files to"),
    lesion: bool = typer.Option(False, "--lesion/--no-lesion",
                                help="draw a mass into one breast (its location is reported)"),
    vendor: Vendor = typer.Option(Vendor.HOLOGIC, case_sensitive=False,
                                  help="header style, matrix size and bit depth"),
    transfer_syntax: TransferSyntax = typer.Option(
        TransferSyntax.EXPLICIT, "--transfer-syntax", case_sensitive=False,
        help="explicit VR little endian or lossless JPEG 2000"),
    seed: int = typer.Option(0, min=0, help="same seed: same pixels and UIDs"),
    modality: ExamModality = typer.Option(
        ExamModality.FFDM, case_sensitive=False,
        help="ffdm; synthetic2d (Image Type marks the images as generated 2D); dbt (Breast "
             "Tomosynthesis objects, one per view); combo (FFDM + synthetic 2D + DBT, one study)"),
    slices: int = typer.Option(40, min=1, max=400,
                               help="dbt/combo: number of 1 mm tomosynthesis slices"),
    slab_thickness_mm: float | None = typer.Option(
        None, "--slab-thickness-mm", min=1.5,
        help="dbt/combo: also write a slab series (e.g. 6 or 10 mm, 50% overlap)"),
    scale: float = typer.Option(1.0, min=0.01, max=4.0,
                                help="matrix size factor (e.g. 0.1 for fast tests)"),
    rows: int | None = typer.Option(None, min=32, help="matrix rows (with --cols)"),
    cols: int | None = typer.Option(None, min=32, help="matrix columns (with --rows)"),
    small_format: bool = typer.Option(False, help="the vendor's small detector format"),
    study_datetime: datetime | None = typer.Option(
        None, formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"],
        help="study date/time (local time); default: now"),
) -> None:
    """Write the four screening views (R-CC, L-CC, R-MLO, L-MLO) of each modality asked for
    and print a JSON summary."""
    if (rows is None) != (cols is None):
        typer.echo("error: give --rows and --cols together", err=True)
        raise typer.Exit(2)
    matrix = (rows, cols) if rows is not None and cols is not None else None
    with handled_errors():
        spec = ExamSpec(
            seed=seed, vendor=vendor, lesion=lesion, scale=scale, matrix=matrix,
            small_format=small_format, generated_2d=modality is ExamModality.SYNTHETIC2D,
            study_datetime=study_datetime.astimezone() if study_datetime else None,
        )
        if modality in (ExamModality.DBT, ExamModality.COMBO):
            summary = generate_dbt_exam(spec, out, transfer_syntax, slices=slices,
                                        slab_thickness_mm=slab_thickness_mm,
                                        combo=modality is ExamModality.COMBO)
        else:
            summary = generate_exam(spec, out, transfer_syntax)
    echo_json(summary.as_dict())
