"""API tokens: created, listed, revoked and checked here; stored hashed.

A token is ``trg_`` followed by 32 random bytes (``secrets.token_urlsafe``, 256 bits).
Only the sha256 of the whole token is stored: the secret is shown once, when it is
created, and cannot be recovered from the database. A plain (unsalted, fast) hash is
enough because the secret is random and long, not a password a person chose; checking a
token is one indexed lookup of its hash. Revoked tokens stay in the table (with the time
they were revoked) so the query audit keeps naming who they were; their names cannot be
reused.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.db.access import Role
from triage.db.models import ApiToken, utcnow
from triage.errors import TriageError

TOKEN_PREFIX = "trg_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_TOKEN = re.compile(r"^trg_[A-Za-z0-9_-]{20,128}$")


class TokenError(TriageError):
    """A token cannot be created, found or revoked; the message says why and what to do."""


@dataclass(frozen=True)
class TokenInfo:
    """A token as it may be listed: never its secret nor its hash."""

    name: str
    role: Role
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role.value,
                "created_at": self.created_at.isoformat(), "created_by": self.created_by,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
                "active": self.active}


@dataclass(frozen=True)
class NewToken:
    """A token just created: ``secret`` is shown to the operator once and never stored."""

    info: TokenInfo
    secret: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_role(text: str) -> Role:
    try:
        return Role(text.strip().lower())
    except ValueError:
        raise TokenError(f"unknown role {text!r}: use one of "
                         f"{', '.join(r.value for r in Role)}") from None


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(name=row.name, role=Role(row.role), created_at=row.created_at,
                     created_by=row.created_by, revoked_at=row.revoked_at)


def create_token(session: Session, name: str, role: Role, *, created_by: str | None = None
                 ) -> NewToken:
    """A new token named ``name``; the caller commits, then shows ``secret`` once."""
    if not _NAME.match(name):
        raise TokenError(f"token name {name!r} is not usable: 1-64 letters, digits, '.', '_', "
                         "'@' or '-', starting with a letter or digit (e.g. reading-room-1)")
    existing = session.scalars(select(ApiToken).where(ApiToken.name == name)).first()
    if existing is not None:
        state = "revoked" if existing.revoked_at else "active"
        raise TokenError(f"a token named {name!r} already exists ({state}); names stay unique "
                         "so the audit keeps naming who asked: choose another name")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=role.value, secret_sha256=hash_secret(secret),
                   created_by=created_by, created_at=utcnow())
    session.add(row)
    session.flush()
    return NewToken(info=_info(row), secret=secret)


def list_tokens(session: Session, *, include_revoked: bool = True) -> list[TokenInfo]:
    stmt = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if not include_revoked:
        stmt = stmt.where(ApiToken.revoked_at.is_(None))
    return [_info(r) for r in session.scalars(stmt)]


def revoke_token(session: Session, name: str) -> TokenInfo:
    """Revoke the token named ``name`` (it stops working at once); the caller commits."""
    row = session.scalars(select(ApiToken).where(ApiToken.name == name)).first()
    if row is None:
        raise TokenError(f"no token named {name!r}; `triage tokens list` shows the tokens")
    if row.revoked_at is not None:
        raise TokenError(f"token {name!r} was already revoked at {row.revoked_at.isoformat()}")
    row.revoked_at = utcnow()
    session.flush()
    return _info(row)


def authenticate(session: Session, secret: str) -> TokenInfo | None:
    """The active token whose secret this is, or None (unknown, malformed or revoked)."""
    if not _TOKEN.match(secret):
        return None
    row = session.scalars(
        select(ApiToken).where(ApiToken.secret_sha256 == hash_secret(secret))
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    return _info(row)
