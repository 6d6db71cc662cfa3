from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import StatementError

from trader.domain import (
    Balance,
    Fill,
    Liquidity,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
)
from trader.ledger import DuplicateClientOrderId, Ledger, LedgerError
from trader.ledger.types import canonical_decimal

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


def a_request(client_order_id: str = "bot-1", quantity: Decimal = Decimal("0.01"), **changes: object) -> OrderRequest:
    fields: dict[str, object] = {
        "symbol": "BTC-USD",
        "side": Side.BUY,
        "order_type": OrderType.LIMIT,
        "quantity": quantity,
        "client_order_id": client_order_id,
        "limit_price": Decimal("65000.01"),
        **changes,
    }
    return OrderRequest(**fields)  # type: ignore[arg-type]


def a_fill(
    trade_id: str, side: Side, quantity: str, price: str, fee: str, at: datetime, symbol: str = "BTC-USD"
) -> Fill:
    return Fill(
        trade_id=trade_id,
        order_id=f"ex-{trade_id}",
        client_order_id=f"bot-{trade_id}",
        symbol=symbol,
        side=side,
        quantity=Decimal(quantity),
        price=Decimal(price),
        fee=Decimal(fee),
        liquidity=Liquidity.TAKER,
        filled_at=at,
    )


# --- sessions ------------------------------------------------------------------------------------------------


def test_session_records_start_heartbeat_and_end(ledger: Ledger) -> None:
    session_id = ledger.start_session("spot", "simulated", "paper", flow_run_id="flow-1", at=T0)

    before = datetime.now(UTC)
    ledger.heartbeat(session_id, 42, market_time=T0 - timedelta(days=900))
    after = datetime.now(UTC)
    ledger.end_session(session_id, "stopped", "operator stop", at=T0 + timedelta(minutes=6))

    session = ledger.get_session(session_id)
    assert (session.status, session.cycles, session.note, session.flow_run_id) == (
        "stopped",
        42,
        "operator stop",
        "flow-1",
    )
    # the heartbeat is wall clock; replay market time (years behind) is kept beside it, never instead of it
    assert session.last_heartbeat_at is not None and before <= session.last_heartbeat_at <= after
    assert session.last_market_time == T0 - timedelta(days=900)
    assert session.ended_at == T0 + timedelta(minutes=6)


def test_session_is_found_by_the_flow_run_that_started_it(ledger: Ledger) -> None:
    ledger.start_session("spot", "simulated", "paper", flow_run_id="run-a", at=T0)
    newest = ledger.start_session("spot", "simulated", "paper", flow_run_id="run-a", at=T0 + timedelta(hours=1))

    found = ledger.find_session_by_flow_run("run-a")

    assert found is not None and found.id == newest
    assert ledger.find_session_by_flow_run("run-b") is None


def test_unknown_session_mode_and_session_id_are_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="session mode 'demo'"):
        ledger.start_session("spot", "simulated", "demo")
    with pytest.raises(LedgerError, match="no trading session nope"):
        ledger.heartbeat("nope", 1, T0)


# --- orders --------------------------------------------------------------------------------------------------


def test_duplicate_client_order_id_is_refused_and_writes_nothing(ledger: Ledger) -> None:
    session_id = ledger.start_session("spot", "simulated", "paper")
    ledger.record_pending(a_request("bot-dup", Decimal("0.01")), session_id, T0)

    with pytest.raises(DuplicateClientOrderId, match="bot-dup") as refused:
        ledger.record_pending(a_request("bot-dup", Decimal("0.5")), session_id, T0 + timedelta(seconds=1))

    assert "\n" not in str(refused.value)
    assert ledger.counts()["orders"] == 1
    kept = ledger.get_order("bot-dup")
    assert kept is not None
    assert (kept.quantity, kept.created_at) == (Decimal("0.01"), T0)


def test_pending_order_is_open_until_the_broker_answers(ledger: Ledger) -> None:
    ledger.record_pending(a_request("bot-1"), None, T0)

    [pending] = ledger.open_orders()

    assert (pending.client_order_id, pending.status, pending.exchange_order_id) == ("bot-1", "pending_submit", None)
    assert pending.filled_quantity == 0


def test_apply_order_takes_the_brokers_view_of_a_known_order(ledger: Ledger) -> None:
    ledger.record_pending(a_request("bot-1", Decimal("0.02")), None, T0)
    broker_view = Order(
        order_id="ex-1",
        client_order_id="bot-1",
        symbol="BTC-USD",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal("0.02"),
        status=OrderStatus.FILLED,
        created_at=T0,
        filled_quantity=Decimal("0.02"),
        average_fill_price=Decimal("64999.5"),
        fees=Decimal("0.78"),
        updated_at=T0 + timedelta(seconds=3),
    )

    ledger.apply_order(broker_view)

    order = ledger.get_order("bot-1")
    assert order is not None
    assert (order.status, order.exchange_order_id) == ("filled", "ex-1")
    assert (order.filled_quantity, order.average_fill_price, order.fees) == (
        Decimal("0.02"),
        Decimal("64999.5"),
        Decimal("0.78"),
    )
    assert order.updated_at == T0 + timedelta(seconds=3)
    assert ledger.open_orders() == []


def test_apply_order_imports_an_order_found_only_on_the_broker(ledger: Ledger) -> None:
    found = Order(
        order_id="ex-9",
        client_order_id="manual-9",
        symbol="ETH-USD",
        side=Side.SELL,
        order_type=OrderType.LIMIT,
        quantity=Decimal("1.5"),
        status=OrderStatus.OPEN,
        created_at=T0,
        limit_price=Decimal("4000"),
    )

    ledger.apply_order(found)

    [imported] = ledger.open_orders()
    assert (imported.client_order_id, imported.exchange_order_id, imported.side) == ("manual-9", "ex-9", "sell")
    assert (imported.quantity, imported.limit_price, imported.session_id) == (Decimal("1.5"), Decimal("4000"), None)


def test_mark_failed_closes_a_pending_order_with_the_reason(ledger: Ledger) -> None:
    ledger.record_pending(a_request("bot-1"), None, T0)

    ledger.mark_failed("bot-1", "insufficient funds", T0 + timedelta(seconds=1))

    order = ledger.get_order("bot-1")
    assert order is not None
    assert (order.status, order.reject_reason) == ("failed", "insufficient funds")
    assert ledger.open_orders() == []


def test_orders_are_listed_per_session(ledger: Ledger) -> None:
    first = ledger.start_session("spot", "simulated", "paper")
    second = ledger.start_session("spot", "simulated", "paper")
    ledger.record_pending(a_request("bot-1"), first, T0)
    ledger.record_pending(a_request("bot-2"), second, T0)
    ledger.record_pending(a_request("bot-3"), first, T0)

    assert [o.client_order_id for o in ledger.list_orders(first)] == ["bot-1", "bot-3"]
    assert [o.client_order_id for o in ledger.list_orders()] == ["bot-1", "bot-2", "bot-3"]


# --- exact values --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["0.00000001", "65000.01", "123456789.123456789012345678", "0", "100", "0.1", "99999999999999999999.5"],
)
def test_decimals_round_trip_exactly(ledger: Ledger, value: str) -> None:
    amount = Decimal(value)
    ledger.record_pending(a_request("bot-1", amount, limit_price=amount, stop_price=amount), None, T0)
    ledger.record_fills([a_fill("t-1", Side.BUY, value, value, value, T0)])

    order = ledger.get_order("bot-1")
    [fill] = ledger.list_fills()

    assert order is not None
    assert [order.quantity, order.limit_price, order.stop_price] == [amount] * 3
    assert [fill.quantity, fill.price, fill.fee] == [amount] * 3


def test_stored_decimals_drop_trailing_zeros_but_keep_whole_numbers() -> None:
    assert str(canonical_decimal(Decimal("0.010000"))) == "0.01"
    assert str(canonical_decimal(Decimal("100.00"))) == "100"
    assert str(canonical_decimal(Decimal("-0.0"))) == "0"


def test_timestamps_come_back_timezone_aware_in_utc(ledger: Ledger) -> None:
    paris = timezone(timedelta(hours=1))
    at = datetime(2026, 11, 20, 15, 30, 0, 123456, tzinfo=paris)

    ledger.record_pending(a_request("bot-1"), None, at)

    order = ledger.get_order("bot-1")
    assert order is not None
    assert order.created_at == at
    assert order.created_at.tzinfo == UTC
    assert order.created_at.hour == 14


def test_naive_timestamps_are_refused_and_nothing_is_written(ledger: Ledger) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        ledger.record_pending(a_request("bot-1"), None, datetime(2026, 11, 20, 14, 30))

    assert ledger.counts()["orders"] == 0


# --- fills and positions -------------------------------------------------------------------------------------


def test_same_fills_recorded_twice_are_inserted_once(ledger: Ledger) -> None:
    fills = [
        a_fill("t-1", Side.BUY, "0.1", "60000", "0.6", T0),
        a_fill("t-2", Side.BUY, "0.2", "61000", "1.2", T0 + timedelta(seconds=1)),
    ]

    first = ledger.record_fills(fills)
    second = ledger.record_fills([*fills, a_fill("t-3", Side.SELL, "0.05", "62000", "0.3", T0 + timedelta(seconds=2))])

    assert (first, second) == (2, 1)
    assert [f.trade_id for f in ledger.list_fills()] == ["t-1", "t-2", "t-3"]
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.25")


def test_a_fill_repeated_within_one_batch_counts_once(ledger: Ledger) -> None:
    fill = a_fill("t-1", Side.BUY, "0.1", "60000", "0", T0)

    assert ledger.record_fills([fill, fill]) == 1
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.1")


def test_buy_buy_sell_gives_average_cost_and_realized_pnl_net_of_fees(ledger: Ledger) -> None:
    buys = [("0.5", "60000", "1.5"), ("0.25", "66000", "0.75")]
    sell = ("0.5", "70000", "2")
    fills = [a_fill(f"b{i}", Side.BUY, q, p, f, T0 + timedelta(minutes=i)) for i, (q, p, f) in enumerate(buys)]
    fills.append(a_fill("s0", Side.SELL, *sell, T0 + timedelta(minutes=5)))

    ledger.record_fills(fills)

    bought = sum((Decimal(q) for q, _, _ in buys), Decimal(0))
    average = sum((Decimal(q) * Decimal(p) for q, p, _ in buys), Decimal(0)) / bought
    realized = (Decimal(sell[1]) - average) * Decimal(sell[0]) - sum(
        (Decimal(f) for _, _, f in [*buys, sell]), Decimal(0)
    )
    position = ledger.positions()["BTC-USD"]
    assert position.quantity == bought - Decimal(sell[0])
    assert position.average_entry_price == average
    assert ledger.realized_pnl("BTC-USD") == realized


def test_selling_the_whole_position_removes_it_and_resets_the_average(ledger: Ledger) -> None:
    ledger.record_fills(
        [
            a_fill("b", Side.BUY, "0.3", "60000", "0", T0),
            a_fill("s", Side.SELL, "0.3", "61000", "0", T0 + timedelta(minutes=1)),
        ]
    )
    ledger.record_fills([a_fill("b2", Side.BUY, "0.1", "50000", "0", T0 + timedelta(minutes=2))])

    assert ledger.positions()["BTC-USD"].average_entry_price == Decimal("50000")
    assert ledger.realized_pnl("BTC-USD") == (Decimal("61000") - Decimal("60000")) * Decimal("0.3")


def test_selling_through_zero_opens_a_short_at_the_fill_price(ledger: Ledger) -> None:
    ledger.record_fills(
        [
            a_fill("b", Side.BUY, "0.1", "60000", "0", T0),
            a_fill("s", Side.SELL, "0.3", "62000", "0", T0 + timedelta(minutes=1)),
        ]
    )

    short = ledger.positions()["BTC-USD"]
    assert (short.quantity, short.average_entry_price) == (Decimal("-0.2"), Decimal("62000"))
    assert ledger.realized_pnl("BTC-USD") == (Decimal("62000") - Decimal("60000")) * Decimal("0.1")


def test_fills_apply_to_positions_in_execution_order(ledger: Ledger) -> None:
    later_sell = a_fill("s", Side.SELL, "0.1", "70000", "0", T0 + timedelta(minutes=1))
    earlier_buy = a_fill("b", Side.BUY, "0.1", "60000", "0", T0)

    ledger.record_fills([later_sell, earlier_buy])

    assert "BTC-USD" not in ledger.positions()
    assert ledger.realized_pnl("BTC-USD") == Decimal("1000")


def test_last_fill_time_is_when_the_newest_fill_executed(ledger: Ledger) -> None:
    assert ledger.last_fill_time() is None

    ledger.record_fills(
        [
            a_fill("t-2", Side.BUY, "0.1", "60000", "0", T0 + timedelta(minutes=3)),
            a_fill("t-1", Side.BUY, "0.1", "60000", "0", T0),
        ]
    )

    assert ledger.last_fill_time() == T0 + timedelta(minutes=3)


def test_set_position_overwrites_the_ledger_with_the_brokers_truth(ledger: Ledger) -> None:
    ledger.record_fills([a_fill("b", Side.BUY, "0.3", "60000", "0", T0)])

    ledger.set_position("BTC-USD", Decimal("0.25"), Decimal("59000"), T0 + timedelta(hours=1))
    ledger.set_position("ETH-USD", Decimal("0"), Decimal("0"), T0 + timedelta(hours=1))

    positions = ledger.positions()
    assert set(positions) == {"BTC-USD"}
    assert (positions["BTC-USD"].quantity, positions["BTC-USD"].average_entry_price) == (
        Decimal("0.25"),
        Decimal("59000"),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["buy", "sell", "sell_all"]),
            st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1000"), places=8),
            st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100000"), places=2),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_position_quantity_is_exactly_the_sum_of_signed_fills(
    ledger: Ledger, steps: list[tuple[str, Decimal, Decimal]]
) -> None:
    symbol = f"P{uuid.uuid4().hex[:10]}-USD"  # examples share the ledger, so each trades its own product
    held = Decimal(0)
    fills = []
    for i, (action, quantity, price) in enumerate(steps):
        if action != "buy":
            quantity = held if action == "sell_all" else min(quantity, held)
            if quantity == 0:
                continue
        side = Side.BUY if action == "buy" else Side.SELL
        held += quantity if side == Side.BUY else -quantity
        at = T0 + timedelta(seconds=i)
        fills.append(a_fill(f"{symbol}-{i}", side, str(quantity), str(price), "0.01", at, symbol=symbol))

    ledger.record_fills(fills)

    position = ledger.positions().get(symbol)
    assert (position.quantity if position else Decimal(0)) == held
    assert held == sum((f.quantity if f.side == Side.BUY else -f.quantity for f in fills), Decimal(0))


# --- balances ------------------------------------------------------------------------------------------------


def test_balance_snapshot_values_each_currency_in_the_quote_currency(ledger: Ledger) -> None:
    balances = [Balance("USD", Decimal("1000.5"), Decimal("20")), Balance("BTC", Decimal("0.015"), Decimal("0"))]
    prices = {"USD": Decimal(1), "BTC": Decimal("65000.01")}

    ledger.record_balance_snapshot(None, balances, prices, T0)

    assert ledger.equity_at_start_of_day(T0.date()) == sum(b.total * prices[b.currency] for b in balances)


def test_equity_at_start_of_day_is_the_first_snapshot_of_that_utc_day(ledger: Ledger) -> None:
    day = date(2026, 11, 20)
    midnight = datetime(2026, 11, 20, tzinfo=UTC)
    prices = {"USD": Decimal(1), "BTC": Decimal("60000")}
    first = [Balance("USD", Decimal("900"), Decimal("0")), Balance("BTC", Decimal("0.01"), Decimal("0.005"))]
    ledger.record_balance_snapshot(
        None, [Balance("USD", Decimal("1"), Decimal("0"))], prices, midnight - timedelta(seconds=1)
    )
    ledger.record_balance_snapshot(
        None, [Balance("USD", Decimal("5"), Decimal("0"))], prices, midnight + timedelta(hours=9)
    )
    ledger.record_balance_snapshot(None, first, prices, midnight + timedelta(minutes=1))

    equity = ledger.equity_at_start_of_day(day)

    assert equity == sum(b.total * prices[b.currency] for b in first)
    assert ledger.equity_at_start_of_day(day + timedelta(days=1)) is None


# --- incidents and checklists --------------------------------------------------------------------------------


def test_incident_with_the_same_fingerprint_is_refreshed_not_duplicated(ledger: Ledger) -> None:
    first = ledger.open_incident("redis-down", "SEV-2", "Redis is down", "ping failed", "health", T0)

    again = ledger.open_incident(
        "redis-down", "SEV-2", "Redis is down", "ping failed twice", "health", T0 + timedelta(minutes=1)
    )

    [incident] = ledger.open_incidents()
    assert again == first == incident.id
    assert (incident.detail, incident.updated_at, incident.opened_at) == (
        "ping failed twice",
        T0 + timedelta(minutes=1),
        T0,
    )
    assert incident.notified is False


def test_resolving_an_incident_closes_it_and_the_next_failure_opens_a_new_one(ledger: Ledger) -> None:
    first = ledger.open_incident("redis-down", "SEV-2", "Redis is down", "ping failed", "health", T0)

    assert ledger.resolve_incident("redis-down", T0 + timedelta(minutes=5)) is True
    assert ledger.resolve_incident("redis-down", T0 + timedelta(minutes=6)) is False
    assert ledger.open_incidents() == []
    second = ledger.open_incident("redis-down", "SEV-2", "Redis is down", "again", "health", T0 + timedelta(hours=1))

    assert second != first
    assert ledger.counts()["incidents"] == 2


def test_notified_incident_keeps_its_slack_message(ledger: Ledger) -> None:
    incident_id = ledger.open_incident("kill-switch", "SEV-1", "Kill switch on", "", "risk", T0)

    ledger.mark_incident_notified(incident_id, "1732100000.000100")

    [incident] = ledger.open_incidents()
    assert (incident.notified, incident.slack_ts) == (True, "1732100000.000100")


def test_checklist_run_is_stored_with_its_results(ledger: Ledger) -> None:
    results: list[dict[str, object]] = [
        {"check": "ledger reachable", "status": "pass"},
        {"check": "equity", "value": Decimal("1.5")},
    ]

    run_id = ledger.record_checklist_run("daily", "warn", results, T0, T0 + timedelta(seconds=30), flow_run_id="fr-1")

    [run] = ledger.checklist_runs("daily")
    assert (run.id, run.status, run.flow_run_id, run.finished_at) == (
        run_id,
        "warn",
        "fr-1",
        T0 + timedelta(seconds=30),
    )
    assert json.loads(run.results_json) == [
        {"check": "ledger reachable", "status": "pass"},
        {"check": "equity", "value": "1.5"},
    ]


def test_counts_reports_rows_per_table(ledger: Ledger) -> None:
    ledger.start_session("spot", "simulated", "paper")
    ledger.record_fills([a_fill("t-1", Side.BUY, "0.1", "60000", "0", T0)])

    assert ledger.counts() == {
        "trading_sessions": 1,
        "orders": 0,
        "fills": 1,
        "positions": 1,
        "balance_snapshots": 0,
        "incidents": 0,
        "checklist_runs": 0,
        "state_entries": 0,
        "checkpoints": 0,
        "account_leases": 0,
        "lease_events": 0,
        "funding_rates": 0,
        "funding_payments": 0,
    }


def test_unknown_severity_is_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="SEV-0"):
        ledger.open_incident("x", "SEV-0", "t", "d", "s", T0)
