"""every learner's allocation of a gang run

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scheduler_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allocations", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduler_runs", schema=None) as batch_op:
        batch_op.drop_column("allocations")
