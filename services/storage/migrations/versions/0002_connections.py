"""Connections: accounts' S3-compatible stores, their credentials sealed with AES-GCM.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "connections",
        sa.Column("account", sa.String(63), primary_key=True),
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("endpoint", sa.String(2048), nullable=False),
        sa.Column("region", sa.String(63), nullable=False),
        sa.Column("credentials", sa.Text(), nullable=False),
        sa.Column("access_key_hint", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("create_ms", sa.BigInteger(), nullable=False),
        sa.Column("presigned_urls", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("account", "request_id", name="uq_connections_account_request_id"),
    )


def downgrade() -> None:
    op.drop_table("connections")
