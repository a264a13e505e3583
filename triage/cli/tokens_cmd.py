"""`triage tokens create | list | revoke`: API tokens (stored as the sha256 of the secret)."""

from __future__ import annotations

import getpass

import typer

from triage.cli.common import echo_json, handled_errors, open_database, settings_or_exit
from triage.db.tokens import TokenInfo, create_token, list_tokens, parse_role, revoke_token

app = typer.Typer(no_args_is_help=True)


def _line(t: TokenInfo) -> str:
    state = f"revoked {t.revoked_at:%Y-%m-%d %H:%MZ}" if t.revoked_at else "active"
    return (f"{t.name:<24} {t.role.value:<7} created {t.created_at:%Y-%m-%d %H:%MZ}"
            f"{' by ' + t.created_by if t.created_by else ''}  {state}")


@app.command("create")
def create(
    role: str = typer.Option(..., "--role", help="viewer (worklist, exams, history, models) or "
                             "admin (also the query audit and scores of unverified runs)"),
    name: str = typer.Option(..., "--name", help="who or what uses it, e.g. reading-room-1; "
                             "recorded in the query audit"),
) -> None:
    """Create a token and print it once (the last word of the last line); only its sha256
    is stored, so it cannot be shown again: revoke it and create another if it is lost."""
    settings = settings_or_exit()
    with handled_errors():
        parsed = parse_role(role)
        db = open_database(settings)
        try:
            with db.session() as session:
                new = create_token(session, name, parsed, created_by=getpass.getuser())
        finally:
            db.dispose()
    typer.echo(f"created {new.info.role.value} token {new.info.name!r}; it is shown only now "
               "(send it as 'Authorization: Bearer <token>'):")
    typer.echo(f"token: {new.secret}")


@app.command("list")
def list_cmd(
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    active: bool = typer.Option(False, "--active", help="leave revoked tokens out"),
) -> None:
    """Tokens by creation time: name, role, who created it, active or revoked (never the
    secret)."""
    settings = settings_or_exit()
    with handled_errors():
        db = open_database(settings)
        try:
            with db.session() as session:
                tokens = list_tokens(session, include_revoked=not active)
        finally:
            db.dispose()
    if json_out:
        echo_json([t.to_dict() for t in tokens])
        return
    if not tokens:
        typer.echo("no tokens: create one with `triage tokens create --role viewer --name NAME`")
    for t in tokens:
        typer.echo(_line(t))


@app.command("revoke")
def revoke(name: str = typer.Argument(..., help="the token's name")) -> None:
    """Revoke a token: it is refused from the next request on. Its name stays reserved so
    the query audit keeps naming who asked."""
    settings = settings_or_exit()
    with handled_errors():
        db = open_database(settings)
        try:
            with db.session() as session:
                info = revoke_token(session, name)
        finally:
            db.dispose()
    typer.echo(f"revoked {info.role.value} token {info.name!r}")
