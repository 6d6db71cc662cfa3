"""A backup is the whole ledger database, every account's rows; its manifest counts each account's orders, fills,
positions and checkpoints, and the restore test proves each account whole."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from trader.backup import BackupManager
from trader.backup.models import ACCOUNT_TABLES
from trader.backup.render import backup_markdown, restore_markdown
from trader.domain import Fill, Liquidity, OrderRequest, OrderType, Side
from trader.ledger import Ledger
from trader.state.checkpoints import CheckpointStore
from trader.state.cold import LocalFolderStore, StreamingObjectStore

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
AT = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)
ACCOUNTS = {"alpha": 6, "beta": 3}  # account -> fills (and half as many orders)


def fill_accounts(url: str, cold_dir: Path) -> dict[str, dict[str, int]]:
    """Orders, fills (with positions) and a checkpoint in each account; each account's counts, from its Ledger."""
    counts = {}
    for account, fills in ACCOUNTS.items():
        ledger = Ledger(url, account=account)
        session_id = ledger.start_session("dev", "simulated", "paper", at=T0)
        for i in range(fills // 2):
            ledger.record_pending(_order(f"bot-{i}"), session_id, T0 + timedelta(seconds=i))
        ledger.record_fills([_fill(i) for i in range(fills)], session_id)
        checkpoints = CheckpointStore(url, LocalFolderStore(cold_dir), account=account, migrate=False)
        checkpoints.create({"account": account}, reason="scheduled")
        checkpoints.dispose()
        counted = ledger.counts()
        counts[account] = {table: counted[table] for table in ACCOUNT_TABLES}
        ledger.dispose()
    return counts


@pytest.fixture(params=["sqlite", "postgresql"])
def two_account_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, dict[str, int]]]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url")
    return url, fill_accounts(url, tmp_path / "checkpoint-copies")


def test_the_manifest_counts_each_accounts_rows_and_the_restore_test_verifies_them(
    two_account_ledger: tuple[str, dict[str, dict[str, int]]], cold: StreamingObjectStore, tmp_path: Path
) -> None:
    url, counts = two_account_ledger
    backups = BackupManager(url, cold, workdir=tmp_path / "work")

    info = backups.create("daily", at=AT)
    report = backups.restore_test()

    assert counts["alpha"] == {"orders": 3, "fills": 6, "positions": 1, "checkpoints": 1}
    assert info.account_row_counts == counts
    assert backups.list()[0].account_row_counts == counts  # as read back from the manifest
    assert report.ok, report.mismatches
    assert report.restored_account_counts == counts
    assert info.row_counts["fills"] == sum(ACCOUNTS.values())  # one dump holds every account


def test_the_restore_test_names_the_account_whose_rows_differ_from_the_manifest(
    two_account_ledger: tuple[str, dict[str, dict[str, int]]], tmp_path: Path
) -> None:
    url, _ = two_account_ledger
    cold = LocalFolderStore(tmp_path / "cold")
    backups = BackupManager(url, cold, workdir=tmp_path / "work")
    info = backups.create("daily", at=AT)
    manifest = json.loads(cold.get(info.manifest_name))
    manifest["account_row_counts"]["beta"]["fills"] = 4
    manifest["account_row_counts"]["gamma"] = {"orders": 1}
    cold.put(info.manifest_name, json.dumps(manifest).encode())

    report = backups.restore_test()

    assert not report.ok
    assert report.mismatches == [
        "account beta: fills: 3 rows restored, manifest says 4",
        "account gamma: orders: 0 rows restored, manifest says 1",
    ]
    assert "| beta | 1 | **3** (manifest 4) | 1 | 1 |" in restore_markdown(report)


def test_the_rendered_backup_shows_a_table_per_account(
    two_account_ledger: tuple[str, dict[str, dict[str, int]]], tmp_path: Path
) -> None:
    url, _ = two_account_ledger
    backups = BackupManager(url, LocalFolderStore(tmp_path / "cold"), workdir=tmp_path / "work")
    info = backups.create("daily", at=AT)

    backup_text = backup_markdown(info, [])
    restore_text = restore_markdown(backups.restore_test())

    for text in (backup_text, restore_text):
        assert "| account | orders | fills | positions | checkpoints |" in text
        assert "| alpha | 3 | 6 | 1 | 1 |" in text and "| beta | 1 | 3 | 1 | 1 |" in text


def test_a_manifest_from_before_accounts_still_restore_tests(sqlite_url: str, tmp_path: Path) -> None:
    fill_accounts(sqlite_url, tmp_path / "checkpoint-copies")
    cold = LocalFolderStore(tmp_path / "cold")
    backups = BackupManager(sqlite_url, cold, workdir=tmp_path / "work")
    info = backups.create("daily", at=AT)
    manifest = json.loads(cold.get(info.manifest_name))
    del manifest["account_row_counts"]
    cold.put(info.manifest_name, json.dumps(manifest).encode())

    report = backups.restore_test()

    assert report.ok, report.mismatches
    assert "Per account" not in backup_markdown(backups.list()[0], [])


def _order(client_order_id: str) -> OrderRequest:
    return OrderRequest(
        symbol="BTC-USD",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal("0.01"),
        client_order_id=client_order_id,
        limit_price=Decimal("65000.01"),
    )


def _fill(i: int) -> Fill:
    return Fill(
        trade_id=f"t-{i:05d}",
        order_id=f"ex-{i}",
        client_order_id=f"bot-{i}",
        symbol="BTC-USD",
        side=Side.BUY,
        quantity=Decimal("0.01"),
        price=Decimal("65000.01") + i,
        fee=Decimal("0.35"),
        liquidity=Liquidity.TAKER,
        filled_at=T0 + timedelta(seconds=i),
    )
