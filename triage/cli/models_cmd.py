"""`triage models list | import | verify`: the model catalogue and its weight files.

Every status shown is derived from the weight file's bytes (git blob id, sha256 and the
recorded published validations), never read from the manifest; see
:mod:`triage.models.weights`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from triage.cli.common import echo_json, handled_errors, settings_or_exit
from triage.models.registry import get_spec, list_specs
from triage.models.weights import (
    assess_weights,
    import_weights,
    read_manifest,
    verification_refusal,
    verify_weights,
)

app = typer.Typer(no_args_is_help=True)


def _rows() -> list[dict[str, Any]]:
    settings = settings_or_exit()
    with handled_errors():
        manifest = read_manifest(settings)
    rows = []
    for spec in list_specs():
        entry = manifest.get(spec.name)
        with handled_errors():
            assessment = assess_weights(spec.name, settings)
        validation = assessment.validation
        rows.append({
            "name": spec.name,
            "version": spec.version,
            "architecture": spec.architecture,
            "modality": spec.modality,
            "preprocessing": spec.preprocessing,
            "weights_file": entry.file if entry else None,
            "sha256": entry.sha256 if entry else None,
            "git_blob_id": entry.git_blob_id if entry else None,
            "published_git_blob_id": spec.weights.git_blob_id,
            "weights_status": assessment.status.value,
            "weights_status_reason": assessment.reason,
            "validation": None if validation is None else {
                "tolerance": validation.tolerance, "validated_at": validation.validated_at,
                "sha256": validation.sha256, "matched_source": validation.matched_source,
                "compared": validation.compared},
            "verifiable": verification_refusal(spec) is None,
            "licence": spec.licence,
            "intended_use": spec.intended_use,
        })
    return rows


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")
                ) -> None:
    """List the registered models, their weight files and weights status."""
    rows = _rows()
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['name']}  {row['version']}  [{row['weights_status']}]")
        typer.echo(f"  architecture: {row['architecture']}")
        sha = row["sha256"] or "-"
        typer.echo(f"  weights: {row['weights_file'] or '(none)'}  sha256 {sha}")
        if row["weights_file"]:
            typer.echo(f"  status: {row['weights_status_reason']}")
        typer.echo(f"  licence: {row['licence']}")
        typer.echo(f"  intended use: {row['intended_use']}")


@app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="Weights file: a PyTorch state_dict, or a Keras "
                                "HDF5 model (.h5) for the allconv-* models (converted first)."),
    name: str = typer.Option(..., "--as", help="Registered model name, e.g. gmic-resnet18-1."),
) -> None:
    """Copy a weights file into the models directory, after checking its keys and shapes."""
    settings = settings_or_exit()
    with handled_errors():
        result = import_weights(file, name, settings)
    entry = result.entry
    typer.echo(f"imported {file} as {name}: {entry.file}")
    typer.echo(f"  sha256       {entry.sha256}")
    typer.echo(f"  git blob id  {entry.git_blob_id}")
    refusal = verification_refusal(get_spec(name))
    if result.published_blob_id is None:
        typer.echo("  no published weights exist for this model: status imported_unverified")
    elif result.matches_published and refusal is not None:
        typer.echo("  matches the authors' published file, but stays imported_unverified: "
                   + refusal)
    elif result.matches_published:
        typer.echo("  matches the authors' published file; run `triage validate published "
                   "--images DIR` to verify it (status imported_unverified until then)")
    else:
        typer.echo(f"  does NOT match the published file (blob {result.published_blob_id}): "
                   "status imported_unverified")


@app.command("verify")
def verify(
    names: list[str] = typer.Argument(None, help="Models to check (default: every model "
                                      "with weights recorded)."),
) -> None:
    """Re-check each weights file's sha256 and show the status its bytes give.

    Non-zero exit when a file is missing or changed. Models this installation can never
    verify (DMV-CNN, 3D-GMIC, models without published weights) are listed with the reason
    and what you can do; only `triage validate published` makes GMIC weights verified.
    """
    settings = settings_or_exit()
    with handled_errors():
        results = verify_weights(settings, names or None)
    if not results:
        typer.echo("no weights files recorded")
        return
    for r in results:
        state = "ok" if r.ok else f"FAILED: {r.reason}"
        typer.echo(f"{r.name}  {r.file or '(no file)'}  {state}  [{r.status.value}]")
        if not r.ok and r.actual_sha256:
            typer.echo(f"  expected {r.expected_sha256}\n  found    {r.actual_sha256}")
        if r.refusal is not None:
            typer.echo(f"  {r.refusal}")
        elif r.file:
            typer.echo(f"  status: {r.status_reason}")
    failed = [r.name for r in results if not r.ok]
    if failed:
        typer.echo(f"error: {len(failed)} weights file(s) failed verification: "
                   f"{', '.join(failed)}; re-import them with `triage models import`", err=True)
        raise typer.Exit(1)
