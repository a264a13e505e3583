"""`triage validate reference | published`: numerics against fixtures and published numbers."""

from __future__ import annotations

from pathlib import Path

import typer

from triage.cli.common import echo_json, handled_errors, settings_or_exit
from triage.pipeline import resolve_device
from triage.validation import (
    PUBLISHED_TOLERANCE,
    published_report_json,
    run_reference_checks,
    validate_published,
)

app = typer.Typer(no_args_is_help=True)

_DEVICE_HELP = "cpu, cuda, cuda:N or auto (default: TRIAGE_DEVICE)."


@app.command("reference")
def reference(
    fixtures: Path = typer.Option(..., "--fixtures", help="Directory laid out like the "
                                  "shared reference fixtures."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    only: list[str] = typer.Option([], "--only", help="Run only these check families "
                                   "(preprocessing, roi2d, gmic, ...); repeatable."),
    device: str = typer.Option("", "--device", help=_DEVICE_HELP),
) -> None:
    """Run every check the fixtures directory supports; non-zero exit if any fails."""
    settings = settings_or_exit()
    with handled_errors():
        report = run_reference_checks(fixtures, resolve_device(device or settings.device),
                                      only=only)
    if as_json:
        echo_json([r.as_dict() for r in report.results])
    else:
        width = max((len(r.check) for r in report.results), default=5)
        typer.echo(f"{'check':<{width}}  {'max abs error':>13}  {'tolerance':>18}  pass")
        for r in report.results:
            tol = f"{r.tolerance:.0e}" + (f" + {r.rtol:.0e}|ref|" if r.rtol else "")
            mark = "ok" if r.passed else "FAIL"
            typer.echo(f"{r.check:<{width}}  {r.max_abs_error:>13.3e}  {tol:>18}  {mark}"
                       + (f"  ({r.detail})" if r.detail and not r.passed else ""))
        failed = sum(not r.passed for r in report.results)
        typer.echo(f"{len(report.results) - failed}/{len(report.results)} checks passed")
    for prefix in report.skipped:
        typer.echo(f"skipped {prefix}: its files are not in {fixtures}", err=True)
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    if not report.results:
        typer.echo(f"error: no checks apply to {fixtures}", err=True)
        raise typer.Exit(1)
    if not report.passed:
        raise typer.Exit(1)


@app.command("published")
def published(
    images: Path = typer.Option(..., "--images", help="Folder with the authors' sample exam 0: "
                                "0_L-CC.png, 0_R-CC.png, 0_L-MLO.png, 0_R-MLO.png."),
    weights_dir: Path | None = typer.Option(None, "--weights-dir", help="Folder with the "
                                            "authors' sample_model_N.p files to import "
                                            "first (default: the weights already imported)."),
    models: list[str] = typer.Option([], "--model", help="Validate only these models "
                                     "(repeatable; default: every imported GMIC model). "
                                     "DMV-CNN and 3D-GMIC models are refused, with the reason."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    device: str = typer.Option("", "--device", help=_DEVICE_HELP),
) -> None:
    """Reproduce the authors' published sample predictions; verifies the published weights.

    The tolerance is fixed in code (PUBLISHED_TOLERANCE) and recorded with each success.
    """
    settings = settings_or_exit()
    with handled_errors():
        report = validate_published(images, settings, resolve_device(device or settings.device),
                                    weights_dir=weights_dir, models=models)
    if as_json:
        echo_json(published_report_json(report))
    else:
        for c in report.comparisons:
            mark = "ok" if c.passed else "MISMATCH"
            typer.echo(f"{c.source:<16} {c.view:<8} expected {c.expected[0]:.4f} "
                       f"{c.expected[1]:.4f}  got {c.actual[0]:.4f} {c.actual[1]:.4f}  "
                       f"max diff {c.max_abs_error:.2e}  {mark}")
        for message in report.messages:
            typer.echo(message)
        if report.passed:
            typer.echo(f"reproduced the published predictions ({report.matched_source}) "
                       f"within {PUBLISHED_TOLERANCE}; validation recorded, "
                       f"verified_published: {', '.join(report.upgraded) or 'none'}")
    if not report.passed:
        typer.echo("error: the published sample predictions were not reproduced; weights stay "
                   "imported_unverified", err=True)
        raise typer.Exit(1)
