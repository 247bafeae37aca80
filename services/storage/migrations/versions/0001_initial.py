"""Grants: issued, expiring, revocable access to object-store locations.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "grants",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account", sa.String(63), nullable=False),
        sa.Column("run", sa.String(255), nullable=True),
        sa.Column("accesses", sa.JSON(), nullable=False),
        sa.Column("expire_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoke_ms", sa.BigInteger(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("account", "request_id", name="uq_grants_account_request_id"),
    )
    op.create_index("ix_grants_account_run", "grants", ["account", "run"])


def downgrade() -> None:
    op.drop_index("ix_grants_account_run", table_name="grants")
    op.drop_table("grants")
