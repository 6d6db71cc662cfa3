"""Checkpoints in the warm table (SQLite and PostgreSQL) with a cold copy: create, list, retention, verified restore,
corruption refused naming the newest good checkpoint, cold fallback when the warm copy is corrupt."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session

from tests.state.cold.conftest import MotoS3
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderType, Side
from trader.ledger import Ledger
from trader.ledger.models import Checkpoint
from trader.market import ReplayMarketData
from trader.state.checkpoints import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointNotFound,
    CheckpointStore,
    encode_snapshot,
    snapshot_from_ledger,
    verify_payload,
)
from trader.state.cold import LocalFolderStore, S3Store

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

SNAPSHOT: dict[str, Any] = {
    "positions": {"BTC-USD": {"quantity": "0.25", "average_entry_price": "64000.5"}},
    "open_orders": [{"client_order_id": "demo-001", "side": "buy", "quantity": "0.01", "limit_price": "60000"}],
    "balances": {"USD": {"available": "84000", "hold": "600"}},
    "strategy_state": {"fast": [1, 2, 3], "last_signal": None},
    "guard_counters": {"staleness": 0, "drawdown": 2},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url"))


@pytest.fixture
def cold(tmp_path: Path) -> LocalFolderStore:
    return LocalFolderStore(tmp_path / "cold")


@pytest.fixture
def make_store(database_url: str, cold: LocalFolderStore) -> Iterator[Any]:
    stores: list[CheckpointStore] = []

    def make(**options: Any) -> CheckpointStore:
        store = CheckpointStore(database_url, cold, **{"retention": 10, "compress": True, **options})
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.dispose()


def corrupt_warm(store: CheckpointStore, checkpoint_id: str) -> None:
    """Flip one byte of the stored payload in the warm row."""
    with Session(store.ledger.engine) as session, session.begin():
        row = session.get(Checkpoint, checkpoint_id)
        assert row is not None
        data = bytearray(row.payload)
        data[len(data) // 2] ^= 0x01
        row.payload = bytes(data)


def truncate_cold(cold: LocalFolderStore, key: str) -> None:
    path = cold.root / key
    path.write_bytes(path.read_bytes()[:-7])


# --- create / list / restore ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_create_then_restore_returns_the_snapshot(make_store: Any, cold: LocalFolderStore, compress: bool) -> None:
    store = make_store(compress=compress)

    info = store.create(SNAPSHOT, reason="scheduled", session_id=None)
    restored = store.restore_checkpoint(info.id)

    assert restored.snapshot == SNAPSHOT
    assert restored.source == "warm" and restored.notes == []
    assert info.compressed is compress
    assert info.cold_key == f"accounts/default/checkpoints/{info.id}.json{'.gz' if compress else ''}"
    assert cold.get(info.cold_key) == encode_snapshot(SNAPSHOT, compress=compress)
    manifest = json.loads(cold.get(f"accounts/default/checkpoints/{info.id}.manifest.json"))
    assert manifest["sha256"] == info.sha256 and manifest["size_bytes"] == info.size_bytes
    assert info.duration_ms is not None and store.last_create_ms == info.duration_ms
    assert store.last_restore_ms == restored.duration_ms


def test_compression_makes_a_large_snapshot_smaller(make_store: Any) -> None:
    snapshot = {"open_orders": [{"client_order_id": f"bot-{i}", "quantity": "0.01"} for i in range(500)]}
    plain = make_store(compress=False).create(snapshot, reason="a")
    packed = make_store(compress=True).create(snapshot, reason="b")

    assert packed.size_bytes * 5 < plain.size_bytes
    assert gzip.decompress(encode_snapshot(snapshot, compress=True)) == encode_snapshot(snapshot, compress=False)


def test_list_is_newest_first_with_metadata(make_store: Any) -> None:
    store = make_store()
    first = store.create(SNAPSHOT, reason="startup", session_id="s-1", at=T0)
    second = store.create(SNAPSHOT, reason="scheduled", at=T0 + timedelta(minutes=5))

    listed = store.list()

    assert [c.id for c in listed] == [second.id, first.id]
    assert (listed[1].reason, listed[1].session_id, listed[1].created_at) == ("startup", "s-1", T0)
    assert listed[0].sha256 == second.sha256 and listed[0].duration_ms is None


def test_retention_keeps_the_newest_and_deletes_older_cold_copies(make_store: Any, cold: LocalFolderStore) -> None:
    store = make_store(retention=3)

    made = [store.create({"n": i}, reason="scheduled", at=T0 + timedelta(minutes=i)) for i in range(5)]

    kept = [c.id for c in made[2:]]
    assert [c.id for c in store.list()] == kept[::-1]
    assert sorted(cold.list("accounts/default/checkpoints/")) == sorted(
        name
        for cid in kept
        for name in (f"accounts/default/checkpoints/{cid}.json.gz", f"accounts/default/checkpoints/{cid}.manifest.json")
    )
    assert store.restore(made[-1].id) == {"n": 4}


def test_unknown_id_is_not_found_and_names_the_newest(make_store: Any) -> None:
    store = make_store()
    good = store.create(SNAPSHOT, reason="scheduled")

    with pytest.raises(CheckpointNotFound, match=f"no checkpoint cp-nope; newest good checkpoint: {good.id}"):
        store.restore("cp-nope")


# --- corruption ---------------------------------------------------------------------------------------------------


def test_corrupt_warm_and_truncated_cold_is_refused_naming_the_newest_good(
    make_store: Any, cold: LocalFolderStore
) -> None:
    store = make_store()
    good = store.create(SNAPSHOT, reason="scheduled", at=T0)
    bad = store.create({**SNAPSHOT, "n": 2}, reason="scheduled", at=T0 + timedelta(minutes=5))
    corrupt_warm(store, bad.id)
    truncate_cold(cold, bad.cold_key)

    with pytest.raises(CheckpointCorrupt) as refused:
        store.restore(bad.id)

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {bad.id} is corrupt (sha256 mismatch")
    assert "truncated" in message
    assert message.endswith(f"newest good checkpoint: {good.id}")
    assert store.latest_good() == store.get(good.id)


def test_cold_copy_restores_when_the_warm_copy_is_corrupt(make_store: Any) -> None:
    store = make_store()
    info = store.create(SNAPSHOT, reason="scheduled")
    corrupt_warm(store, info.id)

    restored = store.restore_checkpoint(info.id)

    assert restored.snapshot == SNAPSHOT
    assert restored.source == "cold"
    assert "warm copy" in restored.notes[0] and "restored from the cold copy" in restored.notes[0]
    assert store.latest_good() == store.get(info.id)


def test_no_good_checkpoint_at_all_says_none(make_store: Any, cold: LocalFolderStore) -> None:
    store = make_store(compress=False)
    info = store.create(SNAPSHOT, reason="scheduled")
    corrupt_warm(store, info.id)
    cold.delete(info.cold_key)

    with pytest.raises(CheckpointCorrupt, match="newest good checkpoint: none$"):
        store.restore(info.id)
    assert store.latest_good() is None


@pytest.mark.parametrize(
    ("payload", "compressed", "problem"),
    [
        (b"\x1f\x8b" + b"\x00" * 30, True, "gzip"),
        (b"{not json", False, "not JSON"),
        (b"[1, 2]", False, "not an object"),
    ],
)
def test_verify_names_what_is_wrong(payload: bytes, compressed: bool, problem: str) -> None:
    with pytest.raises(CheckpointCorrupt, match=problem):
        verify_payload(
            payload, sha256=hashlib.sha256(payload).hexdigest(), size_bytes=len(payload), compressed=compressed
        )


def test_a_snapshot_that_is_not_json_is_refused_at_create(make_store: Any) -> None:
    store = make_store()

    with pytest.raises(CheckpointError, match="cannot be stored as JSON"):
        store.create({"price": float("nan")}, reason="scheduled")
    assert store.list() == []


# --- cold tier on S3, snapshot of the ledger ---------------------------------------------------------------------


def test_checkpoints_copy_to_s3(sqlite_url: str, moto_s3: MotoS3) -> None:
    store = CheckpointStore(sqlite_url, S3Store(moto_s3.url("gpt-trader"), endpoint_url=moto_s3.endpoint))

    info = store.create(SNAPSHOT, reason="scheduled")

    assert moto_s3.read(f"gpt-trader/{info.cold_key}") == encode_snapshot(SNAPSHOT, compress=True)
    corrupt_warm(store, info.id)
    assert store.restore_checkpoint(info.id).source == "cold"


def test_snapshot_from_ledger_holds_positions_open_orders_and_balances(database_url: str, tmp_path: Path) -> None:
    ledger = Ledger(database_url)
    exchange = SimulatedExchange(ReplayMarketData())
    ledger.set_position("BTC-USD", Decimal("0.25"), Decimal("64000.5"), T0)
    request = OrderRequest(
        symbol="BTC-USD",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal("0.01"),
        client_order_id="demo-001",
        limit_price=Decimal("1000"),
    )
    ledger.record_pending(request, None, T0)

    snapshot = snapshot_from_ledger(
        ledger, exchange, strategy_state={"signal": "hold"}, guard_counters={"staleness": 1}, taken_at=T0
    )

    assert snapshot["positions"]["BTC-USD"]["quantity"] == "0.25"
    assert snapshot["positions"]["BTC-USD"]["average_entry_price"] == "64000.5"
    assert [o["client_order_id"] for o in snapshot["open_orders"]] == ["demo-001"]
    assert snapshot["open_orders"][0]["limit_price"] == "1000"
    assert "USD" in snapshot["balances"]
    assert snapshot["strategy_state"] == {"signal": "hold"}
    assert snapshot["guard_counters"] == {"staleness": 1}
    assert snapshot["taken_at"] == T0.isoformat()
    store = CheckpointStore(database_url, LocalFolderStore(tmp_path / "cold"))
    assert store.restore(store.create(snapshot, reason="manual").id) == snapshot
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.25")  # the read-only snapshot left the ledger alone
    store.dispose()
    ledger.dispose()


# --- property: any JSON-able snapshot round-trips -----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
snapshots = st.dictionaries(st.text(max_size=12), json_values, max_size=8)


@pytest.fixture(scope="module")
def roundtrip_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CheckpointStore]:
    folder = tmp_path_factory.mktemp("roundtrip")
    store = CheckpointStore(f"sqlite:///{folder / 'ledger.db'}", LocalFolderStore(folder / "cold"), retention=3)
    yield store
    store.dispose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(snapshot=snapshots, compress=st.booleans())
def test_any_json_snapshot_restores_equal(roundtrip_store: CheckpointStore, snapshot: dict, compress: bool) -> None:
    roundtrip_store.compress = compress

    info = roundtrip_store.create(snapshot, reason="property")

    assert roundtrip_store.restore(info.id) == snapshot
