"""Futures: a fill's contract size (its PnL counts contracts of that much), funding rates and funding payments.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from trader.ledger.types import DecimalType, UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _account() -> sa.Column[str]:
    return sa.Column("account", sa.String(length=64), nullable=False, server_default="default")


def upgrade() -> None:
    with op.batch_alter_table("fills") as batch:
        batch.add_column(sa.Column("contract_size", DecimalType(), nullable=False, server_default="1"))
    op.create_table(
        "funding_rates",
        _account(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("rate", DecimalType(), nullable=False),
        sa.Column("funding_time", UTCDateTime(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_funding_rates"),
        sa.UniqueConstraint("account", "symbol", "funding_time", name="uq_funding_rates_account"),
    )
    op.create_index("ix_funding_rates_funding_time", "funding_rates", ["funding_time"])
    op.create_table(
        "funding_payments",
        _account(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.String(), nullable=False),
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("rate", DecimalType(), nullable=True),
        sa.Column("contracts", DecimalType(), nullable=True),
        sa.Column("mark_price", DecimalType(), nullable=True),
        sa.Column("amount", DecimalType(), nullable=False),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_funding_payments"),
        sa.UniqueConstraint("account", "payment_id", name="uq_funding_payments_account"),
    )
    op.create_index("ix_funding_payments_at", "funding_payments", ["at"])


def downgrade() -> None:
    op.drop_index("ix_funding_payments_at", table_name="funding_payments")
    op.drop_table("funding_payments")
    op.drop_index("ix_funding_rates_funding_time", table_name="funding_rates")
    op.drop_table("funding_rates")
    with op.batch_alter_table("fills") as batch:
        batch.drop_column("contract_size")
