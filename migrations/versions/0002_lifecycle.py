"""exam lifecycle: scoring owner and heartbeat, worker losses apart from transient
retries, held exams, per-instance patient identity, run coverage

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 08:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scoring_owner', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('worker_losses', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('transient_retries', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('hold_reason', sa.Text(), nullable=True))
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=True))
    with op.batch_alter_table('scoring_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('partial', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('coverage_gaps', sa.JSON(), nullable=False,
                                      server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('scoring_runs', schema=None) as batch_op:
        batch_op.drop_column('coverage_gaps')
        batch_op.drop_column('partial')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('issuer_of_patient_id')
        batch_op.drop_column('patient_id')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('hold_reason')
        batch_op.drop_column('transient_retries')
        batch_op.drop_column('worker_losses')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('scoring_owner')
