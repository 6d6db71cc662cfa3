"""perps-bot against a server that speaks the documented Advanced Trade API (the local HTTPS test server),
configured only through COINBASE_API_BASE, COINBASE_CA_FILE and the key variables."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from tests.deployments.test_cli import ledger_of, perps_bot
from trader.brokers.coinbase import CoinbaseBroker
from trader.domain import OrderRequest, OrderType, Side
from trader.logs import ORDER_EVENTS_LOGGER
from trader.runtime import build_bot
from trader.settings import Settings, load_settings
from trader.strategy import MovingAverageCrossover
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey, generate_cdp_key
from trader.testing.advanced_trade.ws import WsTestServer

ORDERS = "/api/v3/brokerage/orders"


@pytest.fixture
def exchange(start_exchange: Callable[..., AdvancedTradeServer]) -> AdvancedTradeServer:
    return start_exchange(balances={"USD": Decimal("2500.50"), "BTC": Decimal("0.125"), "ETH": Decimal("0")})


def live_settings(server: AdvancedTradeServer, home: Path, **overrides: object) -> Settings:
    """The settings env_for() gives a perps-bot process, for a bot built in the test's own process."""
    return load_settings(
        profile="spot",
        coinbase_api_base=server.base_url,
        coinbase_ca_file=server.ca_file,
        coinbase_key_file=home / "cdp_api_key.json",
        order_updates="poll",
        market_data="coinbase",
        state_dir=home / "var/state",
        log_dir=home / "var/logs",
        **overrides,
    )


def env_for(server: AdvancedTradeServer, key: CdpKey, home: Path, ws: WsTestServer | None = None) -> dict[str, str]:
    """The variables of a bot on the local server; with `ws`, its market data and order updates on that server's
    WebSocket channels (spot's defaults), else REST only."""
    key_file = home / "cdp_api_key.json"
    key.write_key_file(key_file)
    updates = (
        {"COINBASE_WS_USER_URL": ws.url, "COINBASE_WS_URL": ws.url}
        if ws is not None
        else {"ORDER_UPDATES": "poll", "MARKET_DATA": "coinbase"}
    )
    return {
        "COINBASE_API_BASE": server.base_url,
        "COINBASE_CA_FILE": str(server.ca_file),
        "COINBASE_KEY_FILE": str(key_file),
        **updates,
    }


def test_account_snapshot_lists_each_account_and_the_key_permissions(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey
) -> None:
    result = perps_bot(tmp_path, "--profile", "spot", "--account-snapshot", **env_for(exchange, cdp_key, tmp_path))

    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 4}
    assert "2500.5" in rows["USD"] and "0.125" in rows["BTC"]
    assert "can_view=True can_trade=True can_transfer=False" in result.stdout
    assert "WARNING" not in result.stdout
    assert cdp_key.private_key_pem.splitlines()[1] not in result.stdout + result.stderr


def test_account_snapshot_warns_when_a_trading_key_can_transfer(
    tmp_path: Path, cdp_key: CdpKey, start_exchange: Callable[..., AdvancedTradeServer]
) -> None:
    server = start_exchange(
        permissions={"can_view": True, "can_trade": True, "can_transfer": True, "portfolio_type": "DEFAULT"}
    )

    result = perps_bot(tmp_path, "--profile", "spot", "--account-snapshot", **env_for(server, cdp_key, tmp_path))

    assert result.returncode == 0, result.stderr
    assert "can_transfer=True portfolio_type=DEFAULT" in result.stdout
    assert "WARNING: this trading key can also transfer funds" in result.stdout


def test_preview_order_previews_and_sends_no_order(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey
) -> None:
    args = ("--preview-order", "--order-symbol", "BTC-USD", "--order-side", "buy", "--order-quantity", "0.01")

    result = perps_bot(tmp_path, "--profile", "spot", *args, **env_for(exchange, cdp_key, tmp_path))

    assert result.returncode == 0, result.stderr
    assert "Order preview" in result.stdout and "commission" in result.stdout
    assert any(r.path == f"{ORDERS}/preview" for r in exchange.requests)
    assert not any(r.path == ORDERS for r in exchange.requests)
    assert exchange.orders == {}


def test_place_order_records_it_in_the_ledger(tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey) -> None:
    args = ("--place-order", "--order-symbol", "BTC-USD", "--order-side", "sell", "--order-quantity", "0.05")

    result = perps_bot(
        tmp_path, "--profile", "spot", *args, "--order-client-id", "cli-sell-1", **env_for(exchange, cdp_key, tmp_path)
    )

    assert result.returncode == 0, result.stderr
    [order] = exchange.orders.values()
    assert order.client_order_id == "cli-sell-1" and order.status == "FILLED"
    [recorded] = ledger_of(tmp_path).list_orders()
    assert (recorded.client_order_id, recorded.status) == ("cli-sell-1", "filled")


def test_a_key_the_server_does_not_know_is_one_line_exit_1(tmp_path: Path, exchange: AdvancedTradeServer) -> None:
    stranger = generate_cdp_key("organizations/someone-else/apiKeys/unknown")

    result = perps_bot(tmp_path, "--profile", "spot", "--account-snapshot", **env_for(exchange, stranger, tmp_path))

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Coinbase refused the API key" in result.stderr
    assert stranger.private_key_pem.splitlines()[1] not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_key_file_is_one_line_exit_2(tmp_path: Path, exchange: AdvancedTradeServer) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "privateKey": "not a key"}))
    env = {
        "COINBASE_API_BASE": exchange.base_url,
        "COINBASE_CA_FILE": str(exchange.ca_file),
        "COINBASE_KEY_FILE": str(bad),
        "ORDER_UPDATES": "poll",
        "MARKET_DATA": "coinbase",
    }

    result = perps_bot(tmp_path, "--profile", "spot", "--account-snapshot", **env)

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "perps-bot: error: COINBASE_KEY_FILE: not an EC P-256 private key in PEM; use the privateKey of a CDP key "
        "(ECDSA), BEGIN/END lines included"
    )
    assert exchange.requests == []


def test_a_wrong_ca_file_is_a_clear_tls_error(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey, start_exchange: Callable[..., AdvancedTradeServer]
) -> None:
    other = start_exchange()  # its own self-signed certificate
    env = {**env_for(exchange, cdp_key, tmp_path), "COINBASE_CA_FILE": str(other.ca_file)}

    result = perps_bot(tmp_path, "--profile", "spot", "--account-snapshot", **env)

    assert result.returncode == 2
    assert "COINBASE_CA_FILE: TLS verification of" in result.stderr and result.stderr.count("\n") == 1


def test_canary_paper_trades_on_the_servers_live_prices_without_a_key(
    tmp_path: Path, exchange: AdvancedTradeServer
) -> None:
    env = {
        "COINBASE_API_BASE": exchange.base_url,
        "COINBASE_CA_FILE": str(exchange.ca_file),
        "MARKET_DATA": "coinbase",  # REST only (canary's default, coinbase-ws, has its own test)
        "STRATEGY_FAST_WINDOW": "2",
        "STRATEGY_SLOW_WINDOW": "3",
    }

    result = perps_bot(tmp_path, "--profile", "canary", "--dev-fast", **env)

    assert result.returncode == 0, result.stderr
    assert "1 cycle(s)" in result.stdout
    paper = json.loads((tmp_path / "var/state/paper_exchange_live.json").read_text())
    assert paper["market_cursor"] > 28_000_000  # minutes since the epoch: live time, not a replay index
    public = {r.path for r in exchange.requests}
    assert "/api/v3/brokerage/market/product_book" in public
    assert any(p.startswith("/api/v3/brokerage/market/products/BTC-USD/candles") for p in public)
    assert not any(r.path == ORDERS for r in exchange.requests)  # paper: nothing sent to the exchange


def test_the_bot_runs_live_cycles_on_the_server_and_records_what_it_sent(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey
) -> None:
    ws = WsTestServer.beside(exchange).start()  # spot's market data and order updates are WebSockets by default
    env = env_for(exchange, cdp_key, tmp_path, ws)
    fast, slow = crossing_windows(exchange, cdp_key, tmp_path)
    env.update(STRATEGY_FAST_WINDOW=str(fast), STRATEGY_SLOW_WINDOW=str(slow))
    exchange.clear_requests()  # crossing_windows' own reads

    result = perps_bot(tmp_path, "--profile", "spot", "--cycles", "3", "--interval", "0", **env)

    assert result.returncode == 0, result.stderr
    assert "3 cycle(s)" in result.stdout
    ledger = ledger_of(tmp_path)
    [session] = ledger.list_sessions()
    assert (session.profile, session.status, session.cycles) == ("spot", "stopped", 3)
    sent = {o.client_order_id for o in exchange.orders.values()}
    assert sent, result.stdout
    assert {o.client_order_id for o in ledger.list_orders()} == sent  # every order sent is in the ledger, once
    assert any(r.path == "/api/v3/brokerage/accounts" for r in exchange.requests)
    events = [json.loads(line) for line in (tmp_path / "var/logs/orders.log").read_text().splitlines()]
    assert {e["client_order_id"] for e in events if e["event"] == "order_sent"} == sent  # JSON lines, one per order
    ws.stop()
    assert {(s.channel, s.authenticated) for s in ws.subscribes} == {
        ("heartbeats", True),  # the user channel's connection: a JWT with every subscribe
        ("user", True),
        ("heartbeats", False),  # the market data's: public
        ("ticker", False),
        ("level2", False),
    }
    paths = [r.path for r in exchange.requests]
    assert not any(p.startswith("/api/v3/brokerage/products/BTC-USD/candles") for p in paths)  # no window per cycle
    assert any(p.startswith("/api/v3/brokerage/market/products/BTC-USD/candles") for p in paths)  # bars once closed


def test_a_local_rest_exchange_with_coinbases_websocket_is_refused_before_anything_is_sent(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey
) -> None:
    env = env_for(exchange, cdp_key, tmp_path)
    del env["ORDER_UPDATES"]  # spot's default, coinbase-ws, with COINBASE_WS_USER_URL left at Coinbase's

    result = perps_bot(tmp_path, "--profile", "spot", "--cycles", "1", **env)

    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "COINBASE_WS_USER_URL is wss://advanced-trade-ws-user.coinbase.com while COINBASE_API_BASE" in result.stderr
    assert "or ORDER_UPDATES=poll" in result.stderr
    assert not exchange.requests and not (tmp_path / "var/state/ledger.db").exists()


def crossing_windows(server: AdvancedTradeServer, key: CdpKey, home: Path) -> tuple[int, int]:
    """Moving-average windows that trade on the server's current candles and holdings (computed, not hard-coded)."""
    env = env_for(server, key, home)
    settings = load_settings(
        broker="coinbase",
        coinbase_api_base=env["COINBASE_API_BASE"],
        coinbase_ca_file=env["COINBASE_CA_FILE"],
        coinbase_key_file=env["COINBASE_KEY_FILE"],
    )
    broker = CoinbaseBroker.from_settings(settings)
    product = broker.get_product("BTC-USD")
    history = broker.candles("BTC-USD", 60)
    held = sum((p.quantity for p in broker.positions() if p.symbol == "BTC-USD"), Decimal(0))
    for slow in range(3, 40):
        for fast in range(2, slow):
            strategy = MovingAverageCrossover(fast, slow, Decimal("500"))
            if strategy.decide(product, history[-strategy.warmup :], held):
                return fast, slow
    raise AssertionError("no moving-average pair trades on the server's candles")


def test_rejections_counts_the_refused_orders_of_the_last_hour_by_reason(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey, caplog: pytest.LogCaptureFixture
) -> None:
    env = env_for(exchange, cdp_key, tmp_path)
    settings = live_settings(exchange, tmp_path)  # the CLI's, in this process
    bot = build_bot(settings)
    bot.start()
    lines: list[str] = []
    recorder = logging.Handler()
    recorder.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    events = logging.getLogger(ORDER_EVENTS_LOGGER)
    events.addHandler(recorder)
    level, events.level = events.level, logging.INFO
    try:
        for n, quantity in enumerate(("50", "60", "0.01")):  # the first two: more BTC than the account holds
            request = OrderRequest("BTC-USD", Side.SELL, OrderType.MARKET, Decimal(quantity), f"r{n}")
            bot.orders.send(request, position=Decimal(quantity))
    finally:
        bot.stop()
        events.removeHandler(recorder)
        events.setLevel(level)
    assert "order_rejected client_order_id=r0 symbol=BTC-USD side=sell reason=" in caplog.text
    rejected = [json.loads(line) for line in lines if json.loads(line)["event"] == "order_rejected"]  # orders.log
    assert [(e["client_order_id"], "INSUFFICIENT_FUND" in e["reason"]) for e in rejected] == [
        ("r0", True),
        ("r1", True),
    ]

    result = perps_bot(tmp_path, "--profile", "spot", "rejections", "--last-hour", **env)

    assert result.returncode == 0, result.stderr
    assert "2 of 3 orders refused" in result.stdout
    [row] = [line for line in result.stdout.splitlines() if "│ 2 " in line]
    assert "BTC-USD" in row and "nsufficient" in row

    bad = perps_bot(tmp_path, "--profile", "spot", "rejections", "--hours", "0", **env)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "perps-bot: error: --hours: must be above 0 (got 0); e.g. --hours 24, or --last-hour"
    )
