"""Every ledger table belongs to an account: rows from before accounts become the account `default`.

Positions and state entries are keyed by (account, symbol) and (account, key); an order's client_order_id and a
fill's trade id are unique per account; incidents are found by (account, fingerprint).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Tables whose account column gets an index of its own (the others lead a composite key or index with it).
INDEXED = ("trading_sessions", "balance_snapshots", "checklist_runs", "checkpoints")


def _account() -> sa.Column[str]:
    # The server default fills existing rows in the same ALTER; it stays, so an older writer's row is `default` too.
    return sa.Column("account", sa.String(length=64), nullable=False, server_default="default")


def upgrade() -> None:
    for table in INDEXED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(_account())
            batch.create_index(f"ix_{table}_account", ["account"])
    with op.batch_alter_table("orders") as batch:
        batch.add_column(_account())
        batch.drop_constraint("uq_orders_client_order_id", type_="unique")
        batch.create_unique_constraint("uq_orders_account_client_order_id", ["account", "client_order_id"])
    with op.batch_alter_table("fills") as batch:
        batch.add_column(_account())
        batch.drop_constraint("uq_fills_trade_id", type_="unique")
        batch.create_unique_constraint("uq_fills_account_trade_id", ["account", "trade_id"])
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(_account())
        batch.drop_index("ix_incidents_fingerprint")
        batch.create_index("ix_incidents_account_fingerprint", ["account", "fingerprint"])
    for table, key in (("positions", "symbol"), ("state_entries", "key")):
        with op.batch_alter_table(table) as batch:
            batch.add_column(_account())
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", ["account", key])


def downgrade() -> None:
    # Only a single-account ledger goes back: two accounts' rows could collide on the old keys, and dropping the
    # column would hand every account's orders and positions to the one bot of the old schema.
    connection = op.get_bind()
    for table in ("positions", "state_entries", "incidents", "fills", "orders", *INDEXED):
        others = connection.execute(
            sa.text(f"SELECT DISTINCT account FROM {table} WHERE account <> 'default' ORDER BY account LIMIT 5")
        ).scalars()
        names = ", ".join(others)
        if names:
            raise RuntimeError(
                f"ledger downgrade below 0004 refused: table {table} holds rows of account(s) {names}; move or delete "
                "every account's rows but 'default' first (nothing was changed)"
            )
    for table, key in (("positions", "symbol"), ("state_entries", "key")):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", [key])
            batch.drop_column("account")
    with op.batch_alter_table("incidents") as batch:
        batch.drop_index("ix_incidents_account_fingerprint")
        batch.create_index("ix_incidents_fingerprint", ["fingerprint"])
        batch.drop_column("account")
    with op.batch_alter_table("fills") as batch:
        batch.drop_constraint("uq_fills_account_trade_id", type_="unique")
        batch.create_unique_constraint("uq_fills_trade_id", ["trade_id"])
        batch.drop_column("account")
    with op.batch_alter_table("orders") as batch:
        batch.drop_constraint("uq_orders_account_client_order_id", type_="unique")
        batch.create_unique_constraint("uq_orders_client_order_id", ["client_order_id"])
        batch.drop_column("account")
    for table in INDEXED:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_account")
            batch.drop_column("account")
