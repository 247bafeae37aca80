"""experiments, trials and metric points

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 05:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_experiments",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("spec", sa.LargeBinary(), nullable=False),
        sa.Column("code_key", sa.String(length=300), nullable=True),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("tier", sa.String(length=64), nullable=False),
        sa.Column("max_runs", sa.Integer(), nullable=False),
        sa.Column("extensions", sa.Integer(), nullable=False),
        sa.Column("extend_request_id", sa.String(length=200), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("best_run", sa.String(length=200), nullable=True),
        sa.Column("best_value", sa.Float(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("account", "request_id", name="uq_gateway_experiments_request"),
    )
    op.create_index("ix_gateway_experiments_account", "gateway_experiments", ["account", "created_ms"])
    op.create_index("ix_gateway_experiments_state", "gateway_experiments", ["state"])
    op.create_table(
        "gateway_trials",
        sa.Column("experiment", sa.String(length=200), nullable=False),
        sa.Column("trial", sa.Integer(), nullable=False),
        sa.Column("run", sa.String(length=200), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("extension", sa.Integer(), nullable=False),
        sa.Column("retry_of", sa.Integer(), nullable=True),
        sa.Column("submitted", sa.Boolean(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("termination_reason", sa.Integer(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("objective", sa.Float(), nullable=True),
        sa.Column("objective_step", sa.BigInteger(), nullable=False),
        sa.Column("latest", sa.Text(), nullable=False),
        sa.Column("rungs", sa.Text(), nullable=False),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("failure_cause", sa.Text(), nullable=False),
        sa.Column("running_ms", sa.BigInteger(), nullable=True),
        sa.Column("ended_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("experiment", "trial"),
        sa.UniqueConstraint("run"),
    )
    op.create_table(
        "gateway_metric_points",
        sa.Column("run", sa.String(length=200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("metric", sa.String(length=128), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run", "attempt", "sequence"),
    )


def downgrade() -> None:
    op.drop_table("gateway_metric_points")
    op.drop_table("gateway_trials")
    op.drop_index("ix_gateway_experiments_state", table_name="gateway_experiments")
    op.drop_index("ix_gateway_experiments_account", table_name="gateway_experiments")
    op.drop_table("gateway_experiments")
