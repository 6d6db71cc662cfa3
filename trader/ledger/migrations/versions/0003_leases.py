"""Account leases with fencing tokens, their history, wall-clock heartbeats beside market time.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from trader.ledger.types import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "account_leases",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("holder_kind", sa.String(), nullable=False),
        sa.Column("holder_host", sa.String(), nullable=False),
        sa.Column("holder_pid", sa.Integer(), nullable=False),
        sa.Column("holder_instance", sa.String(), nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("flow_run_url", sa.String(), nullable=True),
        sa.Column("acquired_at", UTCDateTime(), nullable=False),
        sa.Column("renewed_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("ttl_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("account", name="pk_account_leases"),
    )
    op.create_table(
        "lease_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_lease_events"),
    )
    op.create_index("ix_lease_events_account", "lease_events", ["account"])
    with op.batch_alter_table("trading_sessions") as batch:
        batch.add_column(sa.Column("last_market_time", UTCDateTime(), nullable=True))
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("fencing_token", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("fencing_token")
    with op.batch_alter_table("trading_sessions") as batch:
        batch.drop_column("last_market_time")
    op.drop_index("ix_lease_events_account", table_name="lease_events")
    op.drop_table("lease_events")
    op.drop_table("account_leases")
