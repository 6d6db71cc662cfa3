"""The reconciliation audit on the paper exchange with a real ledger (SQLite and PostgreSQL): every kind of
difference seeded, classified, repaired from the broker's truth, and never an order placed, edited or cancelled."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from trader.brokers.simulated import SimulatedExchange
from trader.domain import Balance, OrderRequest, OrderStatus, OrderType, Side
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.reconcile.audit import DRIFT_INCIDENT, AuditReport, DifferenceKind, audit, record_drift_incident

HOUR = timedelta(hours=1)


def market(client_order_id: str, side: Side = Side.BUY, quantity: str = "0.01") -> OrderRequest:
    return OrderRequest("BTC-USD", side, OrderType.MARKET, Decimal(quantity), client_order_id)


def resting(exchange: SimulatedExchange, client_order_id: str, quantity: str = "0.01") -> OrderRequest:
    """A limit buy 20% under the market: it rests."""
    bid, _ = exchange.best_bid_ask("BTC-USD")
    price = (bid * Decimal("0.8")).quantize(Decimal("0.01"))
    return OrderRequest("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal(quantity), client_order_id, limit_price=price)


def traded(exchange: SimulatedExchange, ledger: Ledger, request: OrderRequest) -> None:
    """What the bot does for one order: record pending, send, take the broker's order and its fills."""
    ledger.record_pending(request, None, exchange.now() - HOUR)
    ledger.apply_order(exchange.place_order(request))
    ledger.record_fills(exchange.list_fills())


def snapshot(ledger: Ledger, exchange: SimulatedExchange, ago: timedelta = HOUR, **overrides: Decimal) -> None:
    """A balance snapshot `ago`: the exchange's balances now, with some currencies overridden."""
    balances = [Balance(b.currency, overrides.get(b.currency, b.available), b.hold) for b in exchange.balances()]
    ledger.record_balance_snapshot(None, balances, {"USD": Decimal(1)}, exchange.now() - ago)


def run(exchange: SimulatedExchange, ledger: Ledger, **options: object) -> AuditReport:
    mutations: list[str] = exchange.mutations  # type: ignore[attr-defined]  # the RecordingExchange fixture
    mutations.clear()
    report = audit(exchange, ledger, exchange.now(), **options)  # type: ignore[arg-type]
    assert mutations == [], "the audit must never create, edit or cancel an order"
    return report


def kinds(report: AuditReport) -> list[tuple[str, str, str]]:
    return sorted((str(d.kind), d.entity, d.field) for d in report.differences)


def test_ledger_that_matches_the_broker_has_no_differences(exchange: SimulatedExchange, ledger: Ledger) -> None:
    snapshot(ledger, exchange)
    traded(exchange, ledger, market("bot-1"))
    traded(exchange, ledger, resting(exchange, "bot-2"))

    report = run(exchange, ledger)

    assert report.differences == []
    assert report.orders_checked == 2 and report.fills_checked == 1 and report.positions_checked == 1
    assert report.balance_baseline == exchange.now() - HOUR  # fees included: USD after the buy matches
    assert not report.drift_beyond_tolerance
    assert report.rows() == [
        {
            "kind": "none",
            "entity": "",
            "id": "",
            "symbol": "",
            "field": "",
            "ledger": "",
            "broker": "",
            "action": "no differences",
        }
    ]


def test_resting_order_the_ledger_never_saw_is_missing_locally_and_imported(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    order = exchange.place_order(resting(exchange, "manual-1"))

    report = run(exchange, ledger)

    assert kinds(report) == [("missing_locally", "order", "order")]
    assert report.differences[0].entity_id == "manual-1" and report.differences[0].ledger_value is None
    recorded = ledger.get_order("manual-1")
    assert recorded is not None and recorded.status == OrderStatus.OPEN
    assert recorded.exchange_order_id == order.order_id
    assert run(exchange, ledger).differences == []


def test_fill_the_ledger_missed_is_imported_and_moves_the_position(exchange: SimulatedExchange, ledger: Ledger) -> None:
    request = market("bot-1")
    ledger.record_pending(request, None, exchange.now() - HOUR)
    ledger.apply_order(exchange.place_order(request))  # the bot crashed before recording the fill
    fill = exchange.list_fills()[0]

    report = run(exchange, ledger)

    assert kinds(report) == [("missing_locally", "fill", "fill")]  # the position follows the fill: no mismatch
    assert report.differences[0].entity_id == fill.trade_id
    assert [f.trade_id for f in ledger.list_fills()] == [fill.trade_id]
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.01")
    assert run(exchange, ledger).differences == []


def test_manual_trade_on_the_exchange_imports_its_order_and_fill(exchange: SimulatedExchange, ledger: Ledger) -> None:
    exchange.place_order(market("manual-1"))

    report = run(exchange, ledger)

    assert kinds(report) == [("missing_locally", "fill", "fill"), ("missing_locally", "order", "order")]
    recorded = ledger.get_order("manual-1")
    assert recorded is not None and recorded.status == OrderStatus.FILLED
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.01")
    assert run(exchange, ledger).differences == []


def test_open_order_the_broker_does_not_know_is_unknown_on_exchange_and_marked_cancelled(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    elsewhere = SimulatedExchange(ReplayMarketData())  # same ids, another account: this exchange has no such order
    elsewhere.place_order(market("x-1"))
    request = resting(elsewhere, "ghost-1")
    ledger.record_pending(request, None, exchange.now() - HOUR)
    ledger.apply_order(elsewhere.place_order(request))

    report = run(exchange, ledger)

    assert kinds(report) == [("unknown_on_exchange", "order", "order")]
    assert (report.differences[0].ledger_value, report.differences[0].broker_value) == ("open", None)
    recorded = ledger.get_order("ghost-1")
    assert recorded is not None and recorded.status == OrderStatus.CANCELLED
    assert "vanished" in (recorded.reject_reason or "")
    assert run(exchange, ledger).differences == []


def test_order_recorded_but_never_sent_is_marked_failed_unless_still_in_flight(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    ledger.record_pending(market("lost-1"), None, exchange.now() - HOUR)
    ledger.record_pending(market("sending-1"), None, exchange.now())  # the running bot is sending it right now

    report = run(exchange, ledger)

    assert kinds(report) == [("unknown_on_exchange", "order", "order")]
    assert report.differences[0].entity_id == "lost-1" and report.orders_in_flight == 1
    assert ledger.get_order("lost-1").status == OrderStatus.FAILED  # type: ignore[union-attr]
    assert ledger.get_order("sending-1").status == OrderStatus.PENDING_SUBMIT  # type: ignore[union-attr]


def test_order_cancelled_on_the_exchange_is_a_status_mismatch(exchange: SimulatedExchange, ledger: Ledger) -> None:
    traded(exchange, ledger, resting(exchange, "bot-1"))
    exchange.cancel_orders([exchange.list_open_orders()[0].order_id])  # by hand, in the exchange's UI

    report = run(exchange, ledger)

    assert kinds(report) == [("status_mismatch", "order", "status")]
    difference = report.differences[0]
    assert (difference.ledger_value, difference.broker_value) == ("open", "cancelled")
    assert difference.action == "ledger set to the broker's order"
    assert ledger.get_order("bot-1").status == OrderStatus.CANCELLED  # type: ignore[union-attr]
    assert ledger.open_orders() == []
    assert run(exchange, ledger).differences == []


def test_order_edited_on_the_exchange_is_a_quantity_and_price_mismatch(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    request = resting(exchange, "bot-1")
    traded(exchange, ledger, request)
    order_id = exchange.list_open_orders()[0].order_id
    new_price = request.limit_price - Decimal("100")  # type: ignore[operator]
    preview = exchange.preview_edit(order_id, Decimal("0.02"), new_price)
    exchange.apply_edit(order_id, preview.preview_id)

    report = run(exchange, ledger)

    assert kinds(report) == [("price_mismatch", "order", "limit_price"), ("quantity_mismatch", "order", "quantity")]
    recorded = ledger.get_order("bot-1")
    assert recorded is not None and recorded.quantity == Decimal("0.02") and recorded.limit_price == new_price
    assert run(exchange, ledger).differences == []


def test_position_the_broker_does_not_hold_is_a_position_mismatch_set_to_the_broker(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    traded(exchange, ledger, market("bot-1"))
    ledger.set_position("ETH-USD", Decimal("2"), Decimal("1500"), exchange.now())

    report = run(exchange, ledger)

    assert kinds(report) == [("position_mismatch", "position", "quantity")]
    difference = report.differences[0]
    assert (difference.symbol, difference.ledger_value, difference.broker_value) == ("ETH-USD", "2", "0")
    assert set(ledger.positions()) == {"BTC-USD"}
    assert run(exchange, ledger).differences == []


def test_balance_drift_beyond_tolerance_is_reported_and_not_repaired(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    snapshot(ledger, exchange, USD=Decimal("99000"))  # then 1,000 USD arrived that no fill explains
    traded(exchange, ledger, market("bot-1"))

    report = run(exchange, ledger, balance_tolerance_quote=Decimal("5"))

    assert kinds(report) == [("balance_drift", "balance", "total")]
    difference = report.differences[0]
    assert difference.entity_id == "USD" and report.drift_beyond_tolerance
    assert Decimal(difference.broker_value) - Decimal(difference.ledger_value) == Decimal("1000")  # type: ignore[arg-type]
    assert difference.action.startswith("none: drift 1000 USD")
    assert kinds(run(exchange, ledger, balance_tolerance_quote=Decimal("5"))) == kinds(report)  # still there


def test_balance_drift_within_tolerance_is_not_a_difference(exchange: SimulatedExchange, ledger: Ledger) -> None:
    snapshot(ledger, exchange, USD=Decimal("99999.50"))

    report = run(exchange, ledger, balance_tolerance_quote=Decimal("1"))

    assert report.differences == [] and not report.drift_beyond_tolerance


def test_base_currency_drift_is_valued_at_the_snapshot_price(exchange: SimulatedExchange, ledger: Ledger) -> None:
    balances = [Balance("USD", Decimal("100000"), Decimal(0)), Balance("BTC", Decimal("0.001"), Decimal(0))]
    ledger.record_balance_snapshot(None, balances, {"USD": Decimal(1), "BTC": Decimal("900")}, exchange.now() - HOUR)

    assert run(exchange, ledger, balance_tolerance_quote=Decimal("1")).differences == []  # 0.001 x 900 = 0.90
    report = run(exchange, ledger, balance_tolerance_quote=Decimal("0.5"))
    assert kinds(report) == [("balance_drift", "balance", "total")]
    assert "(0.90 USD)" in report.differences[0].action


def test_every_kind_at_once_without_repair_changes_nothing(exchange: SimulatedExchange, ledger: Ledger) -> None:
    snapshot(ledger, exchange, USD=Decimal("99000"))
    exchange.place_order(resting(exchange, "manual-1"))
    traded(exchange, ledger, resting(exchange, "bot-1"))
    exchange.cancel_orders([exchange.find_order("bot-1").order_id])  # type: ignore[union-attr]
    ledger.record_pending(market("lost-1"), None, exchange.now() - HOUR)
    ledger.set_position("ETH-USD", Decimal("2"), Decimal("1500"), exchange.now())
    before = (ledger.counts(), [(o.client_order_id, o.status) for o in ledger.list_orders()], ledger.positions())

    report = run(exchange, ledger, repair=False)

    assert {d.kind for d in report.differences} == {
        DifferenceKind.MISSING_LOCALLY,
        DifferenceKind.UNKNOWN_ON_EXCHANGE,
        DifferenceKind.STATUS_MISMATCH,
        DifferenceKind.POSITION_MISMATCH,
        DifferenceKind.BALANCE_DRIFT,
    }
    assert all(d.action.startswith("none") for d in report.differences)
    after = (ledger.counts(), [(o.client_order_id, o.status) for o in ledger.list_orders()], ledger.positions())
    assert after == before
    repaired = run(exchange, ledger)
    assert kinds(repaired) == kinds(report)
    assert kinds(run(exchange, ledger)) == [("balance_drift", "balance", "total")]  # the one thing not repaired


@pytest.mark.parametrize("drift", [True, False])
def test_drift_opens_the_incident_and_a_clean_run_resolves_it(
    exchange: SimulatedExchange, ledger: Ledger, drift: bool
) -> None:
    snapshot(ledger, exchange, USD=Decimal("99000"))
    record_drift_incident(ledger, run(exchange, ledger), exchange.now())
    [incident] = ledger.open_incidents()
    assert (incident.fingerprint, incident.severity, incident.source) == (DRIFT_INCIDENT, "SEV-2", "reconcile")
    assert "USD" in incident.title

    if not drift:
        snapshot(ledger, exchange, ago=timedelta(minutes=45))  # the deposit explained: a newer baseline
    incident_id = record_drift_incident(ledger, run(exchange, ledger, lookback=timedelta(minutes=30)), exchange.now())

    assert [i.id for i in ledger.open_incidents()] == ([incident.id] if drift else [])
    assert incident_id == (incident.id if drift else None)


class ReadEarlier:
    """The broker as the audit reads it while the bot trades on: at the audit's first broker read its orders, fills,
    positions and balances are frozen, then `meanwhile` runs (the running bot trades and records it); anything else
    is asked of the live exchange."""

    def __init__(self, exchange: SimulatedExchange, meanwhile: Callable[[], None]) -> None:
        self._exchange = exchange
        self._meanwhile = meanwhile

    def list_open_orders(self) -> list[object]:
        self._open = self._exchange.list_open_orders()
        self._fills = self._exchange.list_fills()
        self._positions = self._exchange.positions()
        self._balances = self._exchange.balances()
        self._meanwhile()
        return list(self._open)

    def list_fills(self, since: object = None) -> list[object]:
        return [f for f in self._fills if since is None or f.filled_at >= since]  # type: ignore[operator]

    def positions(self) -> list[object]:
        return list(self._positions)

    def balances(self) -> list[object]:
        return list(self._balances)

    def __getattr__(self, name: str) -> object:
        return getattr(self._exchange, name)


def test_a_fill_the_bot_records_after_the_broker_was_read_is_not_undone_by_the_position_repair(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    snapshot(ledger, exchange)
    traded(exchange, ledger, market("bot-1"))  # long 0.01
    # The audit reads the broker, then the bot sells and records it: flat.
    read = ReadEarlier(exchange, lambda: traded(exchange, ledger, market("bot-2", Side.SELL)))

    report = audit(read, ledger, exchange.now())  # type: ignore[arg-type]

    assert [str(d.kind) for d in report.differences if d.entity in ("position", "fill")] == [], kinds(report)
    assert "BTC-USD" not in ledger.positions()  # still flat, as the exchange is: not set back to 0.01
    assert run(exchange, ledger).differences == []  # and a later audit with a fresh read finds nothing


def test_a_position_wrong_beside_a_fill_the_broker_has_not_answered_is_repaired_with_that_fill_kept(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    traded(exchange, ledger, market("bot-1", quantity="0.03"))
    ledger.set_position("BTC-USD", Decimal("5"), Decimal("1"), exchange.now())  # the ledger's position is wrong
    read = ReadEarlier(exchange, lambda: traded(exchange, ledger, market("bot-2", Side.SELL)))  # 0.01 sold after

    report = audit(read, ledger, exchange.now())  # type: ignore[arg-type]

    (difference,) = [d for d in report.differences if str(d.kind) == "position_mismatch"]
    assert (difference.ledger_value, difference.broker_value) == ("5", "0.03")  # compared as of the read
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.02")  # the broker's 0.03, less the sale after it
    assert run(exchange, ledger).differences == []


def test_a_ledger_fill_the_broker_never_had_does_not_hide_the_position_it_moved(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    traded(exchange, ledger, market("bot-1", quantity="0.03"))
    # A fill only the ledger has, recorded well before the audit (a bug, a manual edit): the position moved by it.
    (real,) = exchange.list_fills()
    ledger.record_fills([replace(real, trade_id="phantom-1", quantity=Decimal("0.02"))])
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.05")

    report = run(exchange, ledger)

    assert kinds(report) == [("position_mismatch", "position", "quantity"), ("unknown_on_exchange", "fill", "fill")]
    (position,) = [d for d in report.differences if d.entity == "position"]
    assert (position.ledger_value, position.broker_value) == ("0.05", "0.03")
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.03")  # set to the broker's, the phantom not kept
