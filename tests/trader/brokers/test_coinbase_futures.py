"""US futures (CFM) through the real SDK against the local Advanced Trade server: the balance summary and positions
in the account snapshot, the margin arithmetic of the server, futures orders through the one order path (leverage,
margin type, reduce-only against the CFM position, the product's max leverage, unknown products), and INTX orders
refused before anything is sent (INTX is read-only since 1 October 2026)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.deployments.test_cli import perps_bot
from tests.deployments.test_cli_coinbase import env_for
from tests.trader.brokers.test_coinbase_broker import settings_for
from tests.trader.test_bot_guards import coinbase_settings, open_incidents
from trader.brokers.coinbase import CoinbaseBroker
from trader.brokers.coinbase_futures import futures_terms
from trader.domain import FuturesTerms, OrderRequest, OrderStatus, OrderType, Side, TimeInForce
from trader.errors import ConfigError, OrderRejected, UnknownSymbol
from trader.ledger import Ledger
from trader.ledger.lease import Holder
from trader.metrics import BotMetrics
from trader.orders.path import OrderPath
from trader.risk import RiskControls
from trader.runtime import build_bot
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey

BIP = "BIP-20DEC30-CDE"  # nano Bitcoin perpetual-style future: 0.01 BTC a contract
CREATE = "/api/v3/brokerage/orders"
OFF = RiskControls(kill_switch=False, reduce_only=False)


@pytest.fixture
def futures_exchange(start_exchange: Callable[..., AdvancedTradeServer]) -> AdvancedTradeServer:
    server = start_exchange(derivatives=True)
    server.set_futures_cash("10000")
    server.add_futures_position(BIP, "LONG", "4", "60000", "61000", daily_realized_pnl="12.5")
    server.add_futures_position("ETP-20DEC30-CDE", "SHORT", "10", "3000", "3100", contract_size="0.1")
    return server


def test_the_futures_account_has_margins_buffer_pnl_and_each_position(
    futures_exchange: AdvancedTradeServer, cdp_key: CdpKey, tmp_path: Path
) -> None:
    broker = CoinbaseBroker.from_settings(
        settings_for(futures_exchange, cdp_key, tmp_path, coinbase_enable_derivatives=True)
    )

    account = broker.account_snapshot().futures

    assert account is not None
    long, short = sorted(account.positions, key=lambda p: p.symbol)
    assert (long.symbol, long.side, long.contracts, long.average_entry_price, long.current_price) == (
        BIP,
        "long",
        Decimal("4"),
        Decimal("60000"),
        Decimal("61000"),
    )
    assert long.unrealized_pnl == Decimal("40")  # (61,000 - 60,000) x 4 contracts x 0.01 BTC
    assert short.side == "short" and short.unrealized_pnl == Decimal("-100")  # short 1 ETH, up 100
    assert account.unrealized_pnl == Decimal("-60") and account.daily_realized_pnl == Decimal("12.5")
    notional = Decimal("4") * Decimal("0.01") * 61000 + Decimal("10") * Decimal("0.1") * 3100  # 2,440 + 3,100
    assert account.initial_margin == notional * Decimal("0.10")
    assert account.liquidation_threshold == notional * Decimal("0.05")
    equity = Decimal("10000") - 60
    assert account.liquidation_buffer_usd == equity - notional * Decimal("0.05")
    assert account.liquidation_buffer_pct == (account.liquidation_buffer_usd / equity * 100).quantize(Decimal("0.01"))
    assert account.available_margin == account.buying_power == equity - notional * Decimal("0.10")
    # the positions reconciliation compares with the ledger's: signed contracts, a short negative
    futures = {p.symbol: (p.quantity, p.average_entry_price) for p in broker.positions() if p.symbol.endswith("-CDE")}
    assert futures == {BIP: (Decimal("4"), Decimal("60000")), "ETP-20DEC30-CDE": (Decimal("-10"), Decimal("3000"))}


def test_futures_are_refused_without_the_derivatives_flag_and_unknown_to_a_key_without_access(
    futures_exchange: AdvancedTradeServer,
    start_exchange: Callable[..., AdvancedTradeServer],
    cdp_key: CdpKey,
    tmp_path: Path,
) -> None:
    off = CoinbaseBroker.from_settings(settings_for(futures_exchange, cdp_key, tmp_path))
    with pytest.raises(ConfigError, match="COINBASE_ENABLE_DERIVATIVES=1"):
        off.futures_account()
    assert off.account_snapshot().futures is None
    assert not any(r.path.startswith("/api/v3/brokerage/cfm") for r in futures_exchange.requests)


def test_an_intx_order_is_refused_in_one_line_citing_the_october_2026_change_and_nothing_is_sent(
    futures_exchange: AdvancedTradeServer, cdp_key: CdpKey, tmp_path: Path
) -> None:
    broker = CoinbaseBroker.from_settings(
        settings_for(futures_exchange, cdp_key, tmp_path, coinbase_enable_derivatives=True)
    )
    request = OrderRequest("BTC-PERP-INTX", Side.BUY, OrderType.MARKET, Decimal("0.01"), "intx-1")

    with pytest.raises(OrderRejected, match="INTX is read-only since 1 October 2026"):
        broker.validate(request)
    with pytest.raises(OrderRejected):
        broker.place_order(request)
    assert futures_exchange.orders == {}

    env = {**env_for(futures_exchange, cdp_key, tmp_path), "COINBASE_ENABLE_DERIVATIVES": "1"}
    args = ("--place-order", "--order-symbol", "BTC-PERP-INTX", "--order-side", "buy", "--order-quantity", "0.01")
    result = perps_bot(tmp_path, "--profile", "perps", *args, **env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stdout + result.stderr
    assert "BTC-PERP-INTX: INTX is read-only since 1 October 2026" in result.stderr
    assert futures_exchange.orders == {}


def test_the_account_snapshot_prints_the_futures_account(
    futures_exchange: AdvancedTradeServer, cdp_key: CdpKey, tmp_path: Path
) -> None:
    env = {**env_for(futures_exchange, cdp_key, tmp_path), "COINBASE_ENABLE_DERIVATIVES": "1"}

    result = perps_bot(tmp_path, "--profile", "perps", "--account-snapshot", **env)

    assert result.returncode == 0, result.stderr
    assert "futures: buying power" in result.stdout and "liquidation buffer" in result.stdout
    [row] = [line for line in result.stdout.splitlines() if BIP in line and "long" in line]  # the futures table
    assert "61000" in row and "40" in row
    [position] = [line for line in result.stdout.splitlines() if BIP in line and "long" not in line]
    assert " 4 " in position and "60000" in position  # the positions table: signed contracts and entry


def test_funding_and_the_liquidation_buffer_are_guards_of_a_bot_with_derivatives(
    start_exchange: Callable[..., AdvancedTradeServer], cdp_key: CdpKey, tmp_path: Path
) -> None:
    server = start_exchange(derivatives=True)
    server.set_futures_cash("10000")
    server.set_futures_product(BIP, price="60000", funding_rate="0.002")  # the runbook's spike: |rate| > 0.001
    server.add_futures_position(BIP, "LONG", "250", "60000", "60000")  # maintenance 7,500 of 10,000: 25 % buffer
    settings = coinbase_settings(server, cdp_key, tmp_path, coinbase_enable_derivatives=True)
    bot = build_bot(settings, broker=CoinbaseBroker.from_settings(settings))
    bot.attach_metrics(metrics := BotMetrics(account=settings.account))
    bot.start()
    try:
        report = bot.run_cycle()

        assert report.readings["funding_rate"] == 0.002 and report.readings["liquidation_buffer"] == 25.0
        levels = bot.risk.monitor.levels
        assert (levels["funding_rate"], levels["liquidation_buffer"]) == ("warning", "warning")
        assert bot._trading_state == "trading"  # warnings alert only
        assert open_incidents(bot)["guard:funding_rate:warning"] == "SEV-3"
        exported = metrics.render().decode()
        assert f'perps_bot_funding_rate{{account="default",symbol="{BIP}"}} 0.002' in exported

        server.add_futures_position(BIP, "LONG", "300", "60000", "60000")  # maintenance 9,000: a 10 % buffer
        server.set_futures_product(BIP, price="60000", funding_rate="0.0004")
        report = bot.run_cycle()

        assert report.readings["liquidation_buffer"] == 10.0 and levels["liquidation_buffer"] == "critical"
        assert levels["funding_rate"] == "ok" and bot._trading_state == "reduce_only"
    finally:
        bot.stop()


# --- futures orders through the one order path ---------------------------------------------------------------------


@pytest.fixture
def cfm(start_exchange: Callable[..., AdvancedTradeServer]) -> AdvancedTradeServer:
    """A futures account with 10,000 USD and BIP listed at 60,000 (max leverage 10, taker fee 0.6 %)."""
    server = start_exchange(derivatives=True)
    server.set_futures_cash("10000")
    server.set_futures_product(BIP, price="60000", funding_rate="0.0001")
    return server


@pytest.fixture
def cfm_broker(cfm: AdvancedTradeServer, cdp_key: CdpKey, tmp_path: Path) -> CoinbaseBroker:
    return CoinbaseBroker.from_settings(settings_for(cfm, cdp_key, tmp_path, coinbase_enable_derivatives=True))


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    """The session's PostgreSQL ledger, on an account of this test's own."""
    ledger = Ledger(pg_url, account=f"cfm-{uuid.uuid4().hex[:12]}")
    yield ledger
    ledger.dispose()


@pytest.fixture
def order_path(cfm_broker: CoinbaseBroker, ledger: Ledger) -> OrderPath:
    lease = ledger.acquire_lease(ledger.account, Holder.this_process("bot"), 30)
    return OrderPath(cfm_broker, ledger, controls=lambda: OFF, fence=lambda: lease.fence)


def future(side: Side, contracts: str, client_order_id: str, **terms: object) -> OrderRequest:
    return OrderRequest(BIP, side, OrderType.MARKET, Decimal(contracts), client_order_id, **terms)  # type: ignore[arg-type]


def creates(server: AdvancedTradeServer) -> list[dict[str, object]]:
    return [r.body or {} for r in server.requests if r.method == "POST" and r.path == CREATE]


def test_a_futures_product_carries_its_contract_size_margins_leverage_and_underlying(
    cfm_broker: CoinbaseBroker,
) -> None:
    product = cfm_broker.get_product(BIP)

    # the test server's BIP: intraday 10 %, overnight 20 % (the stricter is the initial rate), max leverage 10
    assert product.futures == FuturesTerms(
        contract_size=Decimal("0.01"),
        max_leverage=Decimal("10"),
        initial_margin_rate=Decimal("0.2"),
        maintenance_margin_rate=Decimal("0.1"),
        underlying="BTC-USD",
        funding_interval=timedelta(hours=1),
    )
    assert (product.quote_currency, product.base_increment, product.quote_increment) == ("USD", 1, 5)


def test_a_futures_market_buy_with_leverage_goes_through_the_order_path_to_the_cfm_position(
    cfm: AdvancedTradeServer, cfm_broker: CoinbaseBroker, order_path: OrderPath, ledger: Ledger
) -> None:
    published: list[dict[str, object]] = []
    cfm.on_orders(published.extend)  # what the user channel would carry

    outcome = order_path.send(future(Side.BUY, "5", "fut-1", leverage=Decimal("3")), position=Decimal(0))

    assert outcome.status == OrderStatus.FILLED and outcome.fills_recorded == 1
    [sent] = creates(cfm)
    assert (sent["leverage"], sent["margin_type"]) == ("3", "CROSS")
    assert sent["order_configuration"] == {"market_market_ioc": {"base_size": "5"}}
    account = cfm_broker.futures_account()
    [position] = account.positions
    assert (position.symbol, position.side, position.contracts, position.average_entry_price) == (
        BIP,
        "long",
        Decimal("5"),
        Decimal("60000"),
    )
    fee = Decimal("18")  # 5 contracts x 0.01 BTC x 60,000 x 0.6 %
    assert account.total_usd_balance == Decimal("10000") - fee
    assert [(o.client_order_id, o.status) for o in ledger.list_orders()] == [("fut-1", OrderStatus.FILLED.value)]
    [fill] = ledger.list_fills()
    assert (fill.client_order_id, fill.quantity, fill.price, fill.fee) == ("fut-1", 5, 60000, fee)
    served = cfm.orders[outcome.order.order_id if outcome.order else ""]
    assert (served.product_type, served.leverage, served.margin_type) == ("FUTURE", Decimal("3"), "CROSS")
    assert cfm_broker.get_order(served.order_id).status == OrderStatus.FILLED  # GET /orders/historical/{id}
    assert cfm_broker.find_order("fut-1", symbol=BIP) is not None  # the orders list
    assert [(o["client_order_id"], o["product_type"]) for o in published if o["status"] == "FILLED"] == [
        ("fut-1", "FUTURE")
    ]


@pytest.mark.parametrize(
    ("side", "held", "sell"),
    [("LONG", "2", "3"), ("SHORT", "2", "1")],  # more than the long; any sell on a short grows it
    ids=["sell-more-than-the-long", "sell-into-a-short"],
)
def test_a_reduce_only_order_that_would_not_shrink_the_cfm_position_is_refused_before_anything_is_sent(
    cfm: AdvancedTradeServer, order_path: OrderPath, ledger: Ledger, side: str, held: str, sell: str
) -> None:
    cfm.add_futures_position(BIP, side, held, "60000")
    signed = Decimal(held) if side == "LONG" else -Decimal(held)

    with pytest.raises(OrderRejected, match=f"would not shrink the position {signed} contracts of {BIP}"):
        order_path.send(future(Side.SELL, sell, "ro-1", reduce_only=True), position=signed)

    assert any(r.path == f"/api/v3/brokerage/cfm/positions/{BIP}" for r in cfm.requests)  # read, then refused
    assert creates(cfm) == [] and ledger.list_orders() == []


def test_leverage_above_the_products_max_is_refused_by_the_rules_and_nothing_is_sent(
    cfm: AdvancedTradeServer, order_path: OrderPath, ledger: Ledger
) -> None:
    with pytest.raises(OrderRejected, match=f"leverage 11 is above {BIP}'s max_leverage 10"):
        order_path.send(future(Side.BUY, "1", "lev-1", leverage=Decimal("11")), position=Decimal(0))

    assert creates(cfm) == [] and ledger.list_orders() == []


def test_the_server_refuses_leverage_above_the_max_as_coinbase_answers_a_failed_create(
    cfm: AdvancedTradeServer, cfm_broker: CoinbaseBroker
) -> None:
    answer = cfm_broker.client.create_order(
        client_order_id="lev-2",
        product_id=BIP,
        side="BUY",
        order_configuration={"market_market_ioc": {"base_size": "1"}},
        leverage="11",
        margin_type="CROSS",
    )

    assert answer.success is False
    assert answer.response["error"] == "INVALID_LEVERAGE"  # the SDK keeps error_response as .response
    assert answer.response["preview_failure_reason"] == "PREVIEW_INVALID_LEVERAGE"
    assert cfm.orders == {} and cfm_broker.futures_account().positions == []


def test_an_unknown_futures_product_is_an_unknown_symbol_and_nothing_is_sent(
    cfm: AdvancedTradeServer, cfm_broker: CoinbaseBroker, order_path: OrderPath, ledger: Ledger
) -> None:
    unknown = OrderRequest("BIT-26DEC31-CDE", Side.BUY, OrderType.MARKET, Decimal("1"), "unk-1", leverage=Decimal(2))

    with pytest.raises(UnknownSymbol, match="BIT-26DEC31-CDE"):
        order_path.send(unknown, position=Decimal(0))
    with pytest.raises(UnknownSymbol, match="BIT-26DEC31-CDE"):
        cfm_broker.place_order(unknown)

    assert creates(cfm) == [] and ledger.list_orders() == []


def test_a_reduce_only_close_flattens_the_cfm_position_and_realizes_its_pnl(
    cfm: AdvancedTradeServer, cfm_broker: CoinbaseBroker, order_path: OrderPath, ledger: Ledger
) -> None:
    order_path.send(future(Side.BUY, "5", "open-1", leverage=Decimal("3")), position=Decimal(0))
    cfm.set_futures_product(BIP, price="61000", funding_rate="0.0001")

    outcome = order_path.send(future(Side.SELL, "5", "close-1", reduce_only=True), position=Decimal(5))

    assert outcome.status == OrderStatus.FILLED
    account = cfm_broker.futures_account()
    assert account.positions == [] and cfm_broker.futures_contracts(BIP) == 0
    assert account.daily_realized_pnl == Decimal("50")  # (61,000 - 60,000) x 5 contracts x 0.01 BTC
    fees = Decimal("18") + Decimal("18.3")  # 0.6 % of 3,000 and of 3,050
    assert account.total_usd_balance == Decimal("10000") + 50 - fees
    assert BIP not in ledger.positions() and ledger.realized_pnl(BIP) == 50 - fees
    assert [f.client_order_id for f in ledger.list_fills()] == ["open-1", "close-1"]


def test_a_limit_ioc_future_fills_at_the_product_price_or_is_cancelled_when_it_does_not_reach_it(
    cfm: AdvancedTradeServer, cfm_broker: CoinbaseBroker
) -> None:
    def limit_ioc(side: Side, price: str, client_order_id: str) -> OrderRequest:
        return OrderRequest(
            BIP, side, OrderType.LIMIT, Decimal("2"), client_order_id, Decimal(price), time_in_force=TimeInForce.IOC
        )

    filled = cfm_broker.place_order(limit_ioc(Side.SELL, "59000", "ioc-1"))  # reaches 60,000: sells there
    missed = cfm_broker.place_order(limit_ioc(Side.BUY, "59000", "ioc-2"))  # below 60,000: nothing fills

    assert (filled.status, filled.average_fill_price) == (OrderStatus.FILLED, Decimal("60000"))
    assert missed.status == OrderStatus.CANCELLED and missed.filled_quantity == 0
    [short] = cfm_broker.futures_account().positions
    assert (short.side, short.contracts, short.average_entry_price) == ("short", Decimal("2"), Decimal("60000"))
    assert cfm_broker.futures_contracts(BIP) == -2


def test_a_preview_of_a_future_carries_its_leverage_and_margin_type(
    cfm: AdvancedTradeServer, cfm_broker: CoinbaseBroker
) -> None:
    preview = cfm_broker.preview_order(future(Side.BUY, "2", "pv-1", leverage=Decimal("5")))

    [sent] = [r.body or {} for r in cfm.requests if r.path == f"{CREATE}/preview"]
    assert (sent["leverage"], sent["margin_type"]) == ("5", "CROSS")
    assert preview.errors == () and preview.commission == Decimal("7.2")  # 0.6 % of 2 x 0.01 x 60,000
    assert cfm.orders == {}


def test_a_futures_order_without_the_derivatives_flag_is_refused_and_nothing_is_sent(
    cfm: AdvancedTradeServer, cdp_key: CdpKey, tmp_path: Path
) -> None:
    broker = CoinbaseBroker.from_settings(settings_for(cfm, cdp_key, tmp_path))

    with pytest.raises(OrderRejected, match=f"{BIP} is a future: futures orders need COINBASE_ENABLE_DERIVATIVES=1"):
        broker.place_order(future(Side.BUY, "1", "off-1"))

    assert creates(cfm) == []


def test_futures_terms_from_coinbases_product_shape_fall_back_where_fields_are_empty() -> None:
    # GET /products/{id} as Coinbase answers for a US perp: max_leverage and the perpetual_details funding empty,
    # per-side margin rates, the funding interval as a protobuf duration, no maintenance rate
    details = {
        "venue": "cde",
        "contract_size": "0.1",
        "contract_root_unit": "ETH",
        "contract_expiry_type": "EXPIRING",
        "perpetual_details": {"open_interest": "10", "funding_rate": "", "funding_time": None, "max_leverage": ""},
        "funding_interval": "3600s",
        "intraday_margin_rate": {"long_margin_rate": "0.1", "short_margin_rate": "0.12"},
        "overnight_margin_rate": {"long_margin_rate": "0.2", "short_margin_rate": "0.25"},
    }
    data = {"product_id": "ETP-20DEC30-CDE", "product_type": "FUTURE", "future_product_details": details}

    terms = futures_terms(data, "USD")

    assert terms == FuturesTerms(
        contract_size=Decimal("0.1"),
        max_leverage=Decimal("4"),  # what the strictest rate, 25 %, allows
        initial_margin_rate=Decimal("0.25"),
        maintenance_margin_rate=Decimal("0.125"),
        underlying="ETH-USD",
        funding_interval=timedelta(hours=1),
    )
    assert (
        futures_terms({"product_id": "BTC-USD", "product_type": "SPOT", "future_product_details": None}, "USD") is None
    )
