"""tiers per account, drained nodes, run priority, learners and deadlines

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scheduler_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("learners", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("max_runtime_s", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("assigned_ms", sa.BigInteger(), nullable=True))
    # Queue lengths per account are counted at every submission.
    op.create_index("ix_scheduler_runs_account_state", "scheduler_runs", ["account", "state"])
    op.create_table(
        "scheduler_accounts",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("tier", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("account"),
    )
    op.create_table(
        "scheduler_drained_nodes",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("drained_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("scheduler_drained_nodes")
    op.drop_table("scheduler_accounts")
    op.drop_index("ix_scheduler_runs_account_state", table_name="scheduler_runs")
    with op.batch_alter_table("scheduler_runs", schema=None) as batch_op:
        batch_op.drop_column("assigned_ms")
        batch_op.drop_column("max_runtime_s")
        batch_op.drop_column("priority")
        batch_op.drop_column("learners")
