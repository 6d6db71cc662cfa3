"""US futures (CFM) through the real SDK against the local Advanced Trade server: the balance summary and positions
in the account snapshot, the margin arithmetic of the server, and INTX orders refused before anything is sent
(INTX is read-only since 1 October 2026)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from tests.deployments.test_cli import perps_bot
from tests.deployments.test_cli_coinbase import env_for
from tests.trader.brokers.test_coinbase_broker import settings_for
from tests.trader.test_bot_guards import coinbase_settings, open_incidents
from trader.brokers.coinbase import CoinbaseBroker
from trader.domain import OrderRequest, OrderType, Side
from trader.errors import ConfigError, OrderRejected
from trader.metrics import BotMetrics
from trader.runtime import build_bot
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey

BIP = "BIP-20DEC30-CDE"  # nano Bitcoin perpetual-style future: 0.01 BTC a contract


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
    [row] = [line for line in result.stdout.splitlines() if BIP in line]
    assert "long" in row and "61000" in row and "40" in row


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
