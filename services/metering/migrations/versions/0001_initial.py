"""Usage intervals and the ids of applied usage events.

Revision ID: 0001
Revises:
Create Date: 2025-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_applied_events",
        sa.Column("event_id", sa.String(300), nullable=False),
        sa.Column("applied_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_usage_applied_events"),
    )
    op.create_table(
        "usage_intervals",
        sa.Column("run", sa.String(200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("gpu_type", sa.String(200), nullable=False),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("start_ms", sa.BigInteger(), nullable=True),
        sa.Column("end_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("run", "attempt", name="pk_usage_intervals"),
    )
    op.create_index("ix_usage_intervals_account_start", "usage_intervals", ["account", "start_ms"])


def downgrade() -> None:
    op.drop_index("ix_usage_intervals_account_start", table_name="usage_intervals")
    op.drop_table("usage_intervals")
    op.drop_table("usage_applied_events")
