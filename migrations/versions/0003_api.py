"""API: tokens (hashed secrets, roles) and the audit of history and exam queries; score
history reads runs by the time they were scored

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    sa.UniqueConstraint('secret_sha256')
    )
    op.create_table('query_audit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('who', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('query', sa.String(length=48), nullable=False),
    sa.Column('filters', sa.JSON(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('query_audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_query_audit_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_query_audit_who'), ['who'], unique=False)
    with op.batch_alter_table('scoring_runs', schema=None) as batch_op:
        batch_op.create_index('ix_scoring_runs_finished_at', ['finished_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('scoring_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_scoring_runs_finished_at')
    with op.batch_alter_table('query_audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_query_audit_who'))
        batch_op.drop_index(batch_op.f('ix_query_audit_at'))
    op.drop_table('query_audit')
    op.drop_table('api_tokens')
