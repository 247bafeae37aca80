"""The price book: a price per GPU-hour for each GPU type, from an effective date on.

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
    op.create_table(
        "metering_prices",
        sa.Column("gpu_type", sa.String(200), nullable=False),
        sa.Column("effective_ms", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("micros_per_gpu_hour", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("gpu_type", "effective_ms", name="pk_metering_prices"),
    )


def downgrade() -> None:
    op.drop_table("metering_prices")
