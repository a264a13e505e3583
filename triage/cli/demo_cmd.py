"""`triage demo`: send a synthetic screening exam to a listener (ours by default)."""

from __future__ import annotations

from pathlib import Path

import typer

from triage.cli.common import handled_errors, settings_or_exit
from triage.config import Destination, Settings
from triage.dicom.sender import send_files
from triage.synthetic import ExamSpec, generate_exam
from triage.synthetic.specs import Vendor


def send_demo_exam(settings: Settings, destination: Destination, *, seed: int = 1,
                   lesion: bool = True, vendor: str = "hologic", scale: float = 1.0) -> str:
    """Write a synthetic exam under the data dir and C-STORE it; returns its Study UID."""
    out = settings.data_dir / "demo" / f"seed-{seed}"
    summary = generate_exam(ExamSpec(seed=seed, lesion=lesion, vendor=Vendor(vendor), scale=scale), out)
    results = send_files([Path(p) for p in summary.files], destination, "TRIAGE_DEMO")
    failed = [r for r in results if not r.stored]
    if failed:
        raise typer.BadParameter(f"{len(failed)} image(s) not stored: {failed[0].message}")
    return summary.study_instance_uid


def demo(
    seed: int = typer.Option(1, help="synthetic exam seed (same seed, same exam)"),
    host: str | None = typer.Option(None, help="listener host (default: ours)"),
    port: int | None = typer.Option(None, help="listener port (default: ours)"),
    called_aet: str | None = typer.Option(None, "--called-aet", help="listener AE title"),
    scale: float = typer.Option(1.0, min=0.05, max=1.0, help="matrix size factor"),
) -> None:
    """Send a synthetic 4-view screening exam (with a lesion) and print its Study UID."""
    settings = settings_or_exit()
    destination = Destination(ae_title=called_aet or settings.ae_title,
                              host=host or settings.dicom_host, port=port or settings.dicom_port)
    with handled_errors():
        uid = send_demo_exam(settings, destination, seed=seed, scale=scale)
    typer.echo(uid)
