"""CoinbaseBroker through the real coinbase-advanced-py RESTClient, over HTTPS, against the local Advanced Trade
server (trader/testing): JWT-verified requests, order state, and injected faults."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

import trader.brokers.coinbase as coinbase_module
from trader.brokers.coinbase import CoinbaseBroker
from trader.domain import Liquidity, OrderRequest, OrderStatus, OrderType, Side, TimeInForce
from trader.errors import (
    AuthenticationFailed,
    BrokerUnavailable,
    ConfigError,
    InsufficientFunds,
    OrderNotFound,
    OrderRejected,
    UnknownSymbol,
)
from trader.settings import Settings, load_settings
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey, Fault

ORDERS = "/api/v3/brokerage/orders"
ACCOUNTS = "/api/v3/brokerage/accounts"


def settings_for(server: AdvancedTradeServer, key: CdpKey, tmp_path: Path, **overrides: object) -> Settings:
    key_file = tmp_path / "cdp_api_key.json"
    key.write_key_file(key_file)
    values: dict[str, object] = {
        "broker": "coinbase",
        "coinbase_key_file": key_file,
        "coinbase_api_base": server.base_url,
        "coinbase_ca_file": server.ca_file,
        "coinbase_timeout_seconds": 1.0,
        "state_dir": tmp_path / "state",
        **overrides,
    }
    return load_settings(**values)


class Sleeps(list[float]):
    """Records the policy's pauses and waits only a little, so retry tests stay fast but really wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def broker(exchange: AdvancedTradeServer, cdp_key: CdpKey, tmp_path: Path, sleeps: Sleeps) -> CoinbaseBroker:
    built = CoinbaseBroker.from_settings(settings_for(exchange, cdp_key, tmp_path))
    built.policy.sleep = sleeps
    return built


def market(side: Side, quantity: str, client_order_id: str, symbol: str = "BTC-USD") -> OrderRequest:
    return OrderRequest(symbol, side, OrderType.MARKET, Decimal(quantity), client_order_id)


def resting_buy(
    broker: CoinbaseBroker, client_order_id: str, quantity: str = "0.001", bid: Decimal | None = None
) -> OrderRequest:
    """A GTC limit buy 10% under the bid (asked of the exchange unless given): it rests."""
    if bid is None:
        bid, _ = broker.best_bid_ask("BTC-USD")
    price = (bid * Decimal("0.9")).quantize(Decimal("0.01"))
    return OrderRequest("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal(quantity), client_order_id, limit_price=price)


def creates(server: AdvancedTradeServer) -> list[str]:
    sent = [r.body or {} for r in server.requests if r.method == "POST" and r.path == ORDERS]
    return [str(body.get("client_order_id")) for body in sent]


# --- account snapshot ---------------------------------------------------------------------------------------------


def test_account_snapshot_has_balances_permissions_fee_tier_and_positions(broker: CoinbaseBroker) -> None:
    broker.place_order(market(Side.BUY, "0.01", "snap-1"))

    snapshot = broker.account_snapshot()

    balances = {b.currency: b for b in snapshot.balances}
    assert balances["BTC"].available == Decimal("0.01") and balances["BTC"].hold == 0
    assert Decimal(0) < balances["USD"].available < Decimal("100000")
    assert (snapshot.permissions.can_view, snapshot.permissions.can_trade) == (True, True)
    assert snapshot.permissions.can_transfer is False
    assert snapshot.fee_tier.taker_fee_rate == Decimal("0.006")
    assert [(p.symbol, p.quantity) for p in snapshot.positions] == [("BTC-USD", Decimal("0.01"))]
    assert snapshot.positions[0].average_entry_price > 0


def test_products_and_market_data(broker: CoinbaseBroker) -> None:
    product = broker.get_product("BTC-USD")
    bid, ask = broker.best_bid_ask("BTC-USD")
    candles = broker.candles("BTC-USD", 30)

    assert product.base_increment == Decimal("0.00000001") and product.quote_increment == Decimal("0.01")
    assert not product.trading_disabled
    assert 0 < bid < ask
    assert len(candles) == 30 and [c.start for c in candles] == sorted(c.start for c in candles)
    assert candles[-1].start < broker.now()  # the still-open bar is dropped
    assert {p.symbol for p in broker.list_products()} >= {"BTC-USD", "ETH-USD"}
    with pytest.raises(UnknownSymbol, match="DOGE-XYZ"):
        broker.get_product("DOGE-XYZ")


# --- orders -------------------------------------------------------------------------------------------------------


def test_market_order_fills_and_the_fill_carries_the_client_order_id(broker: CoinbaseBroker) -> None:
    order = broker.place_order(market(Side.BUY, "0.02", "mkt-1"))

    assert order.status == OrderStatus.FILLED and order.filled_quantity == Decimal("0.02")
    [fill] = broker.list_fills()
    assert (fill.client_order_id, fill.order_id, fill.side, fill.liquidity) == (
        "mkt-1",
        order.order_id,
        Side.BUY,
        Liquidity.TAKER,
    )
    assert fill.fee == fill.quantity * fill.price * Decimal("0.006")  # Coinbase does not round commissions
    assert broker.find_order("mkt-1") == broker.get_order(order.order_id)


@pytest.mark.parametrize(
    ("tif", "order_type", "expected_config"),
    [
        (TimeInForce.GTC, OrderType.LIMIT, "limit_limit_gtc"),
        (TimeInForce.GTD, OrderType.LIMIT, "limit_limit_gtd"),
        (TimeInForce.IOC, OrderType.LIMIT, "sor_limit_ioc"),
        (TimeInForce.GTC, OrderType.STOP_LIMIT, "stop_limit_stop_limit_gtc"),
    ],
)
def test_each_order_type_is_sent_in_coinbase_shape(
    broker: CoinbaseBroker, exchange: AdvancedTradeServer, tif: TimeInForce, order_type: OrderType, expected_config: str
) -> None:
    request = resting_buy(broker, f"shape-{expected_config}")
    extra: dict[str, object] = {"time_in_force": tif, "order_type": order_type}
    if tif == TimeInForce.GTD:
        extra["expire_at"] = broker.now().replace(microsecond=0) + timedelta(hours=1)
    if order_type == OrderType.STOP_LIMIT:
        _, ask = broker.best_bid_ask("BTC-USD")
        extra["stop_price"] = (ask * Decimal("1.05")).quantize(Decimal("0.01"))
        extra["limit_price"] = (ask * Decimal("1.06")).quantize(Decimal("0.01"))
    request = replace(request, **extra)  # type: ignore[arg-type]

    order = broker.place_order(request)

    sent = [r.body for r in exchange.requests if r.method == "POST" and r.path == ORDERS][-1]
    assert sent is not None and list(sent["order_configuration"]) == [expected_config]
    assert sent["client_order_id"] == request.client_order_id and sent["side"] == "BUY"
    assert (order.order_type, order.time_in_force) == (order_type, tif)
    expected_status = OrderStatus.CANCELLED if tif == TimeInForce.IOC else OrderStatus.OPEN
    assert order.status == expected_status


def test_preview_then_edit_a_resting_limit(broker: CoinbaseBroker, exchange: AdvancedTradeServer) -> None:
    request = resting_buy(broker, "edit-1")
    preview = broker.preview_order(request)
    assert preview.errors == () and preview.preview_id and preview.commission > 0
    order = broker.place_order(request)
    new_price = (request.limit_price or Decimal(0)) + Decimal("10.00")

    edit = broker.preview_edit(order.order_id, Decimal("0.002"), new_price)
    edited = broker.apply_edit(order.order_id, edit.preview_id)

    assert edit.errors == () and edit.order_id == order.order_id
    assert (edited.quantity, edited.limit_price, edited.status) == (Decimal("0.002"), new_price, OrderStatus.OPEN)
    assert exchange.orders[order.order_id].edit_history


def test_an_edit_coinbase_refuses_raises_with_its_reason(broker: CoinbaseBroker) -> None:
    order = broker.place_order(market(Side.BUY, "0.001", "edit-filled"))  # filled: not editable

    with pytest.raises((OrderRejected, OrderNotFound)):
        broker.apply_edit(order.order_id, f"0.001@{broker.best_bid_ask('BTC-USD')[0]}")


def test_batch_cancel_of_250_orders_goes_in_chunks_of_100(
    broker: CoinbaseBroker, exchange: AdvancedTradeServer
) -> None:
    bid, _ = broker.best_bid_ask("BTC-USD")  # once: 250 orders are enough requests
    ids = [broker.place_order(resting_buy(broker, f"bc-{i}", "0.0001", bid)).order_id for i in range(250)]
    exchange.clear_requests()

    result = broker.cancel_orders(ids + ids[:5] + ["no-such-order"])

    batches = [len((r.body or {})["order_ids"]) for r in exchange.requests if r.path.endswith("/batch_cancel")]
    assert batches == [100, 100, 51]
    assert all(result[i] for i in ids) and result["no-such-order"] is False
    assert broker.list_open_orders() == []
    assert exchange.balance("USD")[1] == 0  # every hold released


def test_fills_are_paginated_by_cursor_and_each_returned_once(
    broker: CoinbaseBroker, exchange: AdvancedTradeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(60):
        broker.place_order(market(Side.BUY if i % 2 == 0 else Side.SELL, "0.0005", f"fill-{i}"))
    monkeypatch.setattr(coinbase_module, "PAGE_LIMIT", 7)
    exchange.clear_requests()

    fills = broker.list_fills()

    pages = [r for r in exchange.requests if r.path.endswith("/orders/historical/fills")]
    assert len(pages) == 9  # 60 fills, 7 per page
    assert len(fills) == 60 and len({f.trade_id for f in fills}) == 60
    assert {f.client_order_id for f in fills} == {f"fill-{i}" for i in range(60)}
    assert [f.filled_at for f in fills] == sorted(f.filled_at for f in fills)
    later = broker.list_fills(since=fills[29].filled_at)
    assert {f.trade_id for f in later} == {f.trade_id for f in fills if f.filled_at > fills[29].filled_at}


# --- idempotency --------------------------------------------------------------------------------------------------


def test_a_create_that_times_out_after_the_exchange_acted_is_found_not_resent(
    broker: CoinbaseBroker, exchange: AdvancedTradeServer
) -> None:
    exchange.inject(Fault(kind="timeout", method="POST", path=ORDERS, delay=3.0, process=True, times=1))

    order = broker.place_order(market(Side.BUY, "0.01", "to-1"))

    assert creates(exchange) == ["to-1"]  # sent once, then looked up
    assert [o for o in exchange.orders.values() if o.client_order_id == "to-1"] != []
    assert len([o for o in exchange.orders.values() if o.client_order_id == "to-1"]) == 1
    assert order.status == OrderStatus.FILLED and exchange.balance("BTC")[0] == Decimal("0.01")


def test_a_create_that_times_out_before_the_exchange_acted_is_resent_once_with_the_same_id(
    broker: CoinbaseBroker, exchange: AdvancedTradeServer
) -> None:
    exchange.inject(Fault(kind="503", method="POST", path=ORDERS, times=1))

    order = broker.place_order(market(Side.BUY, "0.01", "to-2"))

    assert creates(exchange) == ["to-2", "to-2"]
    lookups = [r for r in exchange.requests if r.path.endswith("/orders/historical/batch")]
    assert lookups, "the order must be looked up before it is sent again"
    assert len([o for o in exchange.orders.values() if o.client_order_id == "to-2"]) == 1
    assert order.status == OrderStatus.FILLED


def test_a_late_create_racing_the_lookup_still_makes_one_order(
    broker: CoinbaseBroker, exchange: AdvancedTradeServer
) -> None:
    # The exchange hangs, then acts after the client gave up and looked: the resend carries the same
    # client_order_id, which the exchange answers with the existing order.
    exchange.inject(Fault(kind="timeout", method="POST", path=ORDERS, delay=1.5, process=False, times=1))

    broker.place_order(market(Side.BUY, "0.01", "to-3"))

    assert len([o for o in exchange.orders.values() if o.client_order_id == "to-3"]) == 1
    assert exchange.balance("BTC")[0] == Decimal("0.01")


def test_a_create_that_never_gets_an_answer_gives_up_without_a_duplicate(
    broker: CoinbaseBroker, exchange: AdvancedTradeServer
) -> None:
    exchange.inject(Fault(kind="500", method="POST", path=ORDERS, times=100))

    with pytest.raises(BrokerUnavailable, match="not found by client_order_id"):
        broker.place_order(market(Side.BUY, "0.01", "to-4"))

    assert len(creates(exchange)) == broker.policy.max_retries + 1
    assert not [o for o in exchange.orders.values() if o.client_order_id == "to-4"]


# --- faults on reads ----------------------------------------------------------------------------------------------


def test_429_waits_for_retry_after(broker: CoinbaseBroker, exchange: AdvancedTradeServer, sleeps: Sleeps) -> None:
    exchange.inject(Fault(kind="429", method="GET", path=ACCOUNTS, times=2, retry_after=0.7))

    balances = broker.balances()

    assert {b.currency for b in balances} >= {"USD"}
    assert sleeps == [0.7, 0.7]
    assert [r.fault for r in exchange.requests if r.path == ACCOUNTS] == ["429", "429", None]


@pytest.mark.parametrize("kind", ["500", "503", "malformed", "timeout"])
def test_transient_read_failures_back_off_with_jitter_then_succeed(
    broker: CoinbaseBroker, exchange: AdvancedTradeServer, sleeps: Sleeps, kind: str
) -> None:
    exchange.inject(Fault(kind=kind, method="GET", path=ACCOUNTS, times=3, delay=2.0, process=True))

    balances = broker.balances()

    assert {b.currency for b in balances} >= {"USD"}
    assert len(sleeps) == 3
    caps = [min(broker.policy.max_delay, broker.policy.base_delay * 2**n) for n in range(3)]
    assert all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))


def test_reads_give_up_after_max_retries(broker: CoinbaseBroker, exchange: AdvancedTradeServer, sleeps: Sleeps) -> None:
    exchange.inject(Fault(kind="503", method="GET", path=ACCOUNTS, times=50))

    with pytest.raises(BrokerUnavailable, match="503"):
        broker.balances()

    assert len(sleeps) == broker.policy.max_retries


def test_coinbase_order_errors_map_to_our_exceptions_with_the_exchange_message(
    broker: CoinbaseBroker, exchange: AdvancedTradeServer
) -> None:
    with pytest.raises(InsufficientFunds, match="INSUFFICIENT_FUND"):
        broker.place_order(market(Side.BUY, "50", "big-1"))

    _, ask = broker.best_bid_ask("BTC-USD")
    post_only = OrderRequest(
        "BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.001"), "po-1", limit_price=ask + Decimal("100"), post_only=True
    )
    with pytest.raises(OrderRejected, match="INVALID_LIMIT_PRICE_POST_ONLY"):
        broker.place_order(post_only)

    exchange.inject(
        Fault(
            kind="error",
            method="POST",
            path=ORDERS,
            status=200,
            body={
                "success": False,
                "failure_reason": "UNKNOWN_FAILURE_REASON",
                "order_id": "",
                "error_response": {"error": "UNKNOWN_FAILURE_REASON", "message": "venue said no", "error_details": ""},
            },
        )
    )
    with pytest.raises(OrderRejected, match="UNKNOWN_FAILURE_REASON: venue said no"):
        broker.place_order(market(Side.BUY, "0.001", "unk-1"))

    preview = broker.preview_order(market(Side.BUY, "50", "big-2"))
    assert "PREVIEW_INSUFFICIENT_FUND" in preview.errors
    with pytest.raises(OrderNotFound):
        broker.get_order("00000000-0000-0000-0000-000000000000")


def test_an_expired_jwt_is_an_authentication_error_that_never_shows_the_key(
    broker: CoinbaseBroker, exchange: AdvancedTradeServer, cdp_key: CdpKey, caplog: pytest.LogCaptureFixture
) -> None:
    exchange.clock_offset_seconds = 600  # the server's clock is ahead: every token looks expired
    caplog.set_level(logging.DEBUG)

    with pytest.raises(AuthenticationFailed, match="401") as error:
        broker.balances()

    secret_line = cdp_key.private_key_pem.splitlines()[1]
    for text in (str(error.value), caplog.text, repr(broker)):
        assert secret_line not in text and "PRIVATE KEY" not in text


def test_reduce_only_sell_is_checked_against_the_base_balance(broker: CoinbaseBroker) -> None:
    broker.place_order(market(Side.BUY, "0.01", "ro-buy"))
    too_much = OrderRequest("BTC-USD", Side.SELL, OrderType.MARKET, Decimal("0.02"), "ro-1", reduce_only=True)

    with pytest.raises(OrderRejected, match="exceeds position"):
        broker.place_order(too_much)

    exact = OrderRequest("BTC-USD", Side.SELL, OrderType.MARKET, Decimal("0.01"), "ro-2", reduce_only=True)
    ok = broker.place_order(exact)
    assert ok.status == OrderStatus.FILLED and ok.reduce_only


# --- perpetuals ---------------------------------------------------------------------------------------------------


def test_perpetuals_are_refused_without_the_derivatives_flag(
    broker: CoinbaseBroker, exchange: AdvancedTradeServer
) -> None:
    exchange.clear_requests()

    with pytest.raises(ConfigError, match="COINBASE_ENABLE_DERIVATIVES=1"):
        broker.perps_positions()

    assert exchange.requests == []  # refused before anything was sent


def test_perpetuals_with_the_flag_read_intx_positions_summary_and_balances(
    tmp_path: Path, cdp_key: CdpKey, start_exchange: Callable[..., AdvancedTradeServer]
) -> None:
    server = start_exchange(derivatives=True)
    server.add_perp_position("BTC-PERP-INTX", net_size=Decimal("0.5"), entry_vwap=Decimal("60000"))
    broker = CoinbaseBroker.from_settings(settings_for(server, cdp_key, tmp_path, coinbase_enable_derivatives=True))

    positions = broker.perps_positions()
    summary = broker.perps_portfolio_summary()
    balances = broker.perps_balances()
    snapshot = broker.account_snapshot()

    assert [(p.symbol, p.quantity, p.average_entry_price) for p in positions] == [
        ("BTC-PERP-INTX", Decimal("0.5"), Decimal("60000"))
    ]
    assert "summary" in summary and "portfolio_balances" in balances
    assert "BTC-PERP-INTX" in {p.symbol for p in snapshot.positions}
