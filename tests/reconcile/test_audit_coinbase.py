"""The reconciliation audit through CoinbaseBroker and the real SDK, over HTTPS, against the local Advanced Trade
server: differences seeded on the exchange, classified, repaired, and not one order created, edited or cancelled."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from trader.brokers.coinbase import CoinbaseBroker
from trader.domain import Order, OrderRequest, OrderStatus, OrderType, Side
from trader.ledger import Ledger
from trader.reconcile.audit import AuditReport, audit
from trader.settings import load_settings
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey

ORDERS = "/api/v3/brokerage/orders"  # create, edit, batch_cancel are all POSTs under it
HOUR = timedelta(hours=1)


def coinbase(server: AdvancedTradeServer, key: CdpKey, tmp_path: Path) -> CoinbaseBroker:
    key_file = key.write_key_file(tmp_path / "cdp_api_key.json")
    settings = load_settings(
        broker="coinbase",
        coinbase_key_file=key_file,
        coinbase_api_base=server.base_url,
        coinbase_ca_file=server.ca_file,
        coinbase_timeout_seconds=2.0,
        state_dir=tmp_path / "state",
    )
    return CoinbaseBroker.from_settings(settings)


def order_writes(server: AdvancedTradeServer) -> list[str]:
    return [f"{r.method} {r.path}" for r in server.requests if r.method != "GET" and r.path.startswith(ORDERS)]


def kinds(report: AuditReport) -> list[tuple[str, str, str, str]]:
    return sorted((str(d.kind), d.entity, d.entity_id, d.field) for d in report.differences)


def test_audit_through_coinbase_classifies_and_repairs_without_touching_orders(
    start_exchange: Callable[..., AdvancedTradeServer], cdp_key: CdpKey, tmp_path: Path, sqlite_url: str
) -> None:
    server = start_exchange()
    broker = coinbase(server, cdp_key, tmp_path)
    ledger = Ledger(sqlite_url)
    start = broker.now() - HOUR
    ledger.record_balance_snapshot(None, broker.balances(), {"USD": Decimal(1)}, start)
    # The bot's resting buy, filled on the exchange while the bot was down.
    bid, _ = broker.best_bid_ask("BTC-USD")
    price = (bid * Decimal("0.9")).quantize(Decimal("0.01"))
    request = OrderRequest("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.001"), "bot-1", limit_price=price)
    ledger.record_pending(request, None, start)
    resting = broker.place_order(request)
    ledger.apply_order(resting)
    server.fill_order(resting.order_id)
    # A trade made by hand in the Coinbase UI.
    broker.place_order(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.001"), "manual-1"))
    # An open order Coinbase has never heard of.
    ghost = Order(
        "no-such-order", "ghost-1", "BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.001"), OrderStatus.OPEN, start
    )
    ghost.limit_price = price
    ledger.apply_order(ghost)
    # A position the account does not hold, and a 500 USD deposit no fill explains.
    ledger.set_position("ETH-USD", Decimal("1"), Decimal("2000"), start)
    available, _ = server.balance("USD")
    server.set_balance("USD", available + 500)
    server.clear_requests()

    report = audit(broker, ledger, broker.now(), balance_tolerance_quote=Decimal("1"))

    assert order_writes(server) == []
    fills = {f.client_order_id: f.trade_id for f in broker.list_fills()}
    assert kinds(report) == sorted(
        [
            ("balance_drift", "balance", "USD", "total"),
            ("missing_locally", "fill", fills["bot-1"], "fill"),
            ("missing_locally", "fill", fills["manual-1"], "fill"),
            ("missing_locally", "order", "manual-1", "order"),
            ("position_mismatch", "position", "ETH-USD", "quantity"),
            ("price_mismatch", "order", "bot-1", "average_fill_price"),
            ("quantity_mismatch", "order", "bot-1", "filled_quantity"),
            ("status_mismatch", "order", "bot-1", "status"),
            ("unknown_on_exchange", "order", "ghost-1", "order"),
        ]
    )
    drift = next(d for d in report.differences if d.kind == "balance_drift")
    assert Decimal(drift.broker_value or "0") - Decimal(drift.ledger_value or "0") == Decimal("500")
    assert report.drift_beyond_tolerance
    statuses = {o.client_order_id: o.status for o in ledger.list_orders()}
    assert statuses == {"bot-1": "filled", "manual-1": "filled", "ghost-1": "cancelled"}
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.002") and "ETH-USD" not in ledger.positions()

    server.clear_requests()
    again = audit(broker, ledger, broker.now(), balance_tolerance_quote=Decimal("1"))

    assert order_writes(server) == []
    assert kinds(again) == [("balance_drift", "balance", "USD", "total")]  # balances are reported, never repaired
