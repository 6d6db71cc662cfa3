"""The Ledger's read methods for the audit, the checklists and checkpoints, and its record<->domain mapping, on
SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from trader.domain import Balance, Fill, Liquidity, Order, OrderRequest, OrderStatus, OrderType, Side, TimeInForce
from trader.ledger import Checkpoint, Ledger
from trader.ledger.mappers import fill_of, order_of

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)


def an_order(client_order_id: str, status: OrderStatus, at: datetime, **changes: object) -> Order:
    fields: dict[str, object] = {
        "order_id": f"ex-{client_order_id}",
        "client_order_id": client_order_id,
        "symbol": "BTC-USD",
        "side": Side.BUY,
        "order_type": OrderType.LIMIT,
        "quantity": Decimal("0.02"),
        "status": status,
        "created_at": at,
        "limit_price": Decimal("65000"),
        "updated_at": at,
        **changes,
    }
    return Order(**fields)  # type: ignore[arg-type]


def a_fill(trade_id: str, at: datetime, side: Side = Side.BUY, quantity: str = "0.01") -> Fill:
    return Fill(
        trade_id=trade_id,
        order_id=f"ex-{trade_id}",
        client_order_id=f"bot-{trade_id}",
        symbol="BTC-USD",
        side=side,
        quantity=Decimal(quantity),
        price=Decimal("65000"),
        fee=Decimal("0.39"),
        liquidity=Liquidity.MAKER,
        filled_at=at,
    )


def a_checkpoint(checkpoint_id: str, at: datetime) -> Checkpoint:
    payload = checkpoint_id.encode()
    return Checkpoint(
        id=checkpoint_id,
        created_at=at,
        reason="scheduled",
        compressed=False,
        size_bytes=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        payload=payload,
    )


# --- orders ----------------------------------------------------------------------------------------------------


def test_orders_to_reconcile_are_the_open_ones_and_the_acknowledged_ones_that_changed_since(ledger: Ledger) -> None:
    ledger.apply_order(an_order("filled-old", OrderStatus.FILLED, T0 - 2 * HOUR))
    ledger.record_pending(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), "pending"), None, T0)
    ledger.apply_order(an_order("filled-new", OrderStatus.FILLED, T0))
    ledger.record_pending(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), "failed"), None, T0)
    ledger.mark_failed("failed", "refused by the bot", T0)  # never acknowledged: no exchange id
    ledger.apply_order(an_order("resting", OrderStatus.OPEN, T0 - 3 * HOUR))

    window = [o.client_order_id for o in ledger.orders_to_reconcile(changed_since=T0 - HOUR)]

    assert window == ["pending", "filled-new", "resting"]
    assert [o.client_order_id for o in ledger.orders_to_reconcile()] == ["pending", "resting"]
    assert [o.client_order_id for o in ledger.open_orders()] == ["pending", "resting"]


def test_orders_by_client_id_returns_only_the_ones_the_ledger_has(ledger: Ledger) -> None:
    ledger.apply_order(an_order("a", OrderStatus.OPEN, T0))
    ledger.apply_order(an_order("b", OrderStatus.FILLED, T0))

    found = ledger.orders_by_client_id(["b", "unknown", "a"])

    assert {coid: row.status for coid, row in found.items()} == {"a": "open", "b": "filled"}
    assert ledger.orders_by_client_id([]) == {}


def test_apply_order_terms_takes_the_brokers_size_and_prices_after_an_edit(ledger: Ledger) -> None:
    ledger.apply_order(an_order("edited", OrderStatus.OPEN, T0))
    edited = an_order("edited", OrderStatus.OPEN, T0, quantity=Decimal("0.015"), limit_price=Decimal("64000"))

    ledger.apply_order(edited)  # the broker's status and fills, not its terms
    assert ledger.get_order("edited").quantity == Decimal("0.02")  # type: ignore[union-attr]
    ledger.apply_order_terms(edited)

    row = ledger.get_order("edited")
    assert row is not None and (row.quantity, row.limit_price) == (Decimal("0.015"), Decimal("64000"))


def test_orders_created_between_is_half_open(ledger: Ledger) -> None:
    moments = {"before": T0 - timedelta(seconds=1), "start": T0, "inside": T0 + HOUR, "end": T0 + 2 * HOUR}
    for name, at in moments.items():
        ledger.apply_order(an_order(name, OrderStatus.FILLED, at))

    assert [o.client_order_id for o in ledger.orders_created_between(T0, T0 + 2 * HOUR)] == ["start", "inside"]


def test_an_order_reads_back_as_the_brokers_order_it_was_recorded_from(ledger: Ledger) -> None:
    order = an_order(
        "round-trip",
        OrderStatus.PARTIALLY_FILLED,
        T0,
        order_type=OrderType.STOP_LIMIT,
        stop_price=Decimal("64500"),
        time_in_force=TimeInForce.GTD,
        expire_at=T0 + HOUR,
        reduce_only=True,
        filled_quantity=Decimal("0.005"),
        average_fill_price=Decimal("64999.5"),
        fees=Decimal("0.2"),
        updated_at=T0 + timedelta(seconds=5),
    )
    ledger.apply_order(order)

    row = ledger.get_order("round-trip")

    assert row is not None and order_of(row) == order
    never_acknowledged = replace(order, order_id="", client_order_id="pending", status=OrderStatus.PENDING_SUBMIT)
    ledger.apply_order(never_acknowledged)
    assert order_of(ledger.get_order("pending")).order_id == ""  # type: ignore[arg-type]


# --- fills -----------------------------------------------------------------------------------------------------


def test_fills_after_is_strictly_after_in_execution_order(ledger: Ledger) -> None:
    ledger.record_fills([a_fill("t3", T0 + 2 * HOUR), a_fill("t1", T0), a_fill("t2", T0 + HOUR)])

    assert [f.trade_id for f in ledger.fills_after(T0)] == ["t2", "t3"]
    assert ledger.fills_after(T0 + 2 * HOUR) == []


def test_fills_by_trade_id_and_fill_times_find_what_the_ledger_recorded(ledger: Ledger) -> None:
    fill = a_fill("t1", T0)
    ledger.record_fills([fill, a_fill("t2", T0 + HOUR, Side.SELL)])

    found = ledger.fills_by_trade_id(["t1", "nope"])

    assert list(found) == ["t1"] and fill_of(found["t1"]) == fill
    assert ledger.fills_by_trade_id([]) == {}
    assert ledger.fill_times_among([T0 - HOUR, T0, T0 + HOUR]) == {T0, T0 + HOUR}
    assert ledger.fill_times_among([]) == set()


# --- balances --------------------------------------------------------------------------------------------------


def snapshot(ledger: Ledger, at: datetime, usd: str = "1000") -> str:
    balances = [Balance("USD", Decimal(usd), Decimal(0)), Balance("BTC", Decimal("0.1"), Decimal(0))]
    return ledger.record_balance_snapshot(None, balances, {"USD": Decimal(1), "BTC": Decimal("65000")}, at)


def test_balance_snapshots_around_a_moment_are_the_newest_before_then_the_oldest_after(ledger: Ledger) -> None:
    ids = {offset: snapshot(ledger, T0 + offset * HOUR) for offset in (-3, -2, -1, 0, 1, 2, 3)}

    around = ledger.balance_snapshots_around(T0, limit=2)

    assert around == [(ids[0], T0), (ids[-1], T0 - HOUR), (ids[1], T0 + HOUR), (ids[2], T0 + 2 * HOUR)]


def test_one_balance_snapshot_and_the_snapshots_of_a_window(ledger: Ledger) -> None:
    snapshot(ledger, T0 - HOUR, usd="900")
    first = snapshot(ledger, T0, usd="1000")
    snapshot(ledger, T0 + HOUR, usd="1100")

    rows = ledger.balance_snapshot(first)
    window = ledger.balance_snapshots_between(T0 - HOUR, T0 + HOUR)

    assert {(r.currency, r.available) for r in rows} == {("USD", Decimal("1000")), ("BTC", Decimal("0.1"))}
    assert [(r.taken_at, r.currency) for r in window] == [
        (T0 - HOUR, "USD"),
        (T0 - HOUR, "BTC"),
        (T0, "USD"),
        (T0, "BTC"),
    ]


# --- incidents -------------------------------------------------------------------------------------------------


def test_incidents_opened_between_include_resolved_ones_and_not_those_outside(ledger: Ledger) -> None:
    ledger.open_incident("early", "SEV-3", "t", "d", "s", T0 - HOUR)
    ledger.open_incident("resolved", "SEV-1", "t", "d", "s", T0)
    ledger.resolve_incident("resolved", T0 + HOUR)
    ledger.open_incident("open", "SEV-2", "t", "d", "s", T0 + HOUR)
    ledger.open_incident("late", "SEV-2", "t", "d", "s", T0 + 2 * HOUR)

    window = ledger.incidents_opened_between(T0, T0 + 2 * HOUR)

    assert [(i.fingerprint, i.status) for i in window] == [("resolved", "resolved"), ("open", "open")]


# --- checkpoints -----------------------------------------------------------------------------------------------


def test_book_holds_every_position_row_and_the_open_orders_by_creation(ledger: Ledger) -> None:
    ledger.record_fills([a_fill("t1", T0), a_fill("t2", T0 + HOUR, Side.SELL)])  # BTC-USD back to flat
    ledger.set_position("ETH-USD", Decimal("2"), Decimal("3000"), T0)
    ledger.apply_order(an_order("later", OrderStatus.OPEN, T0 + HOUR))
    ledger.apply_order(an_order("earlier", OrderStatus.PARTIALLY_FILLED, T0))
    ledger.apply_order(an_order("done", OrderStatus.FILLED, T0))

    book = ledger.book()

    assert [(p.symbol, p.quantity) for p in book.positions] == [("BTC-USD", Decimal(0)), ("ETH-USD", Decimal(2))]
    assert [o.client_order_id for o in book.open_orders] == ["earlier", "later"]


def test_pruning_checkpoints_keeps_the_newest_and_returns_the_rest(ledger: Ledger) -> None:
    for n in range(3):
        ledger.add_checkpoint(a_checkpoint(f"cp-{n}", T0 + n * HOUR))

    pruned = ledger.prune_checkpoints(keep=1)

    assert sorted(row.id for row in pruned) == ["cp-0", "cp-1"]
    assert [row.id for row in ledger.checkpoints()] == ["cp-2"]
    kept = ledger.get_checkpoint("cp-2")
    assert kept is not None and kept.payload == b"cp-2"
    assert ledger.get_checkpoint("cp-0") is None


# --- housekeeping ----------------------------------------------------------------------------------------------


def test_rows_dated_between_name_each_rows_table_and_time(ledger: Ledger) -> None:
    ledger.apply_order(an_order("inside", OrderStatus.FILLED, T0))
    ledger.apply_order(an_order("outside", OrderStatus.FILLED, T0 - HOUR))
    ledger.record_fills([a_fill("t1", T0 + HOUR)])
    ledger.open_incident("x", "SEV-3", "t", "d", "s", T0 + 2 * HOUR)  # the window's end: excluded

    dated = ledger.rows_dated_between(T0, T0 + 2 * HOUR)

    assert sorted(dated) == [("fills", T0 + HOUR), ("orders", T0), ("positions", T0 + HOUR)]


def test_database_size_and_vacuum_answer_on_each_backend(ledger: Ledger) -> None:
    assert ledger.ping() > 0
    assert ledger.database_size() > 0
    expected = ["VACUUM (ANALYZE)"] if ledger.backend == "postgresql" else ["VACUUM", "ANALYZE"]
    assert ledger.vacuum() == expected
