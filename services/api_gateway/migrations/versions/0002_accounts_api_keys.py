"""accounts and API keys

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 05:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_accounts",
        sa.Column("account", sa.String(length=63), nullable=False),
        sa.Column("tier", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_table(
        "gateway_api_keys",
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("account", sa.String(length=63), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("prefix"),
        sa.UniqueConstraint("account", "request_id", name="uq_gateway_api_keys_request"),
    )
    op.create_index("ix_gateway_api_keys_account", "gateway_api_keys", ["account"])


def downgrade() -> None:
    op.drop_index("ix_gateway_api_keys_account", table_name="gateway_api_keys")
    op.drop_table("gateway_api_keys")
    op.drop_table("gateway_accounts")
