"""Ledgers with rows in them on real PostgreSQL and SQLite, and the cold tier as a folder or moto S3."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.state.cold.conftest import MotoS3, aws_env, moto_s3, moto_server  # noqa: F401  (fixtures used here)
from trader.domain import Fill, Liquidity, Side
from trader.ledger import Ledger
from trader.state.base import StateRecord, checksum, encode_value
from trader.state.cold import LocalFolderStore, S3Store, StreamingObjectStore
from trader.state.warm import SqlWarmStore

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


def fill_ledger(url: str, fills: int = 50, *, first: int = 0) -> dict[str, int]:
    """Migrate the ledger at url and give it a session, fills (with positions) and a state entry; its counts."""
    ledger = Ledger(url)
    try:
        session_id = ledger.start_session("dev", "simulated", "paper", at=T0)
        ledger.record_fills(
            [
                Fill(
                    trade_id=f"t-{i:05d}",
                    order_id=f"ex-{i}",
                    client_order_id=f"bot-{i}",
                    symbol="BTC-USD" if i % 2 else "ETH-USD",
                    side=Side.BUY if i % 3 else Side.SELL,
                    quantity=Decimal("0.01") + Decimal(i) / 1000,
                    price=Decimal("65000.01") + i,
                    fee=Decimal("0.35"),
                    liquidity=Liquidity.TAKER,
                    filled_at=T0 + timedelta(seconds=i),
                )
                for i in range(first, first + fills)
            ],
            session_id,
        )
        value = encode_value({"symbol": "BTC-USD", "quantity": "0.5"})
        warm = SqlWarmStore(url, 100)
        assert warm.put_many([StateRecord("position:BTC-USD", value, checksum(value), 1, T0)]).ok
        warm.engine.dispose()
        return ledger.counts()
    finally:
        ledger.dispose()


@pytest.fixture(params=["local", "s3"])
def cold(request: pytest.FixtureRequest, tmp_path: Path) -> StreamingObjectStore:
    """The cold tier as a local folder and as S3 (a fresh bucket on moto)."""
    if request.param == "local":
        return LocalFolderStore(tmp_path / "cold")
    server: MotoS3 = request.getfixturevalue("moto_s3")
    return S3Store(server.url(), endpoint_url=server.endpoint)


@pytest.fixture
def pg_ledger(fresh_pg_url: str) -> Iterator[tuple[str, dict[str, int]]]:
    """A fresh PostgreSQL ledger with rows, and its row counts."""
    yield fresh_pg_url, fill_ledger(fresh_pg_url)


@pytest.fixture
def sqlite_ledger(sqlite_url: str) -> tuple[str, dict[str, int]]:
    """A SQLite ledger file with rows, and its row counts."""
    return sqlite_url, fill_ledger(sqlite_url)


@pytest.fixture
def prefect_harness(prefect_server: dict[str, str]) -> None:
    """The session's Prefect server (tests/conftest.py), so flows run in-process and record artifacts; a test reads
    the artifacts of its own flow run."""


@pytest.fixture
def backup_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Path]:
    """Point the flows' settings at a ledger and a cold tier; returns the state folder."""

    def configure(database_url: str, cold_storage_url: str, endpoint_url: str | None = None) -> Path:
        for name in (
            "PERPS_PROFILE",
            "COINBASE_API_KEY",
            "COINBASE_API_SECRET",
            "COINBASE_KEY_FILE",
            "SLACK_BOT_TOKEN",
        ):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
        monkeypatch.setenv("DATABASE_URL", database_url)
        monkeypatch.setenv("COLD_STORAGE_URL", cold_storage_url)
        if endpoint_url:
            monkeypatch.setenv("COLD_STORAGE_ENDPOINT_URL", endpoint_url)
        monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
        return tmp_path / "state"

    return configure
