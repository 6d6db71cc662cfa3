"""Emergency procedures on the paper exchange and a SQLite ledger: switches, cancel-all, flatten."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from trader.bot import read_controls
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderStatus, OrderType, Side
from trader.emergency.procedures import (
    cancel_all,
    exit_client_order_id,
    flag_file,
    flatten,
    local_switches,
    set_switch,
)
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.runtime import build_bot
from trader.settings import Settings, load_settings

BTC = "BTC-USD"


class BatchRecordingExchange(SimulatedExchange):
    """The paper exchange, remembering how many ids each cancel_orders call carried."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.cancel_batches: list[int] = []

    def cancel_orders(self, order_ids: list[str]) -> dict[str, bool]:
        self.cancel_batches.append(len(order_ids))
        return super().cancel_orders(order_ids)


@pytest.fixture
def settings(paper_settings: Settings) -> Settings:
    return paper_settings


@pytest.fixture
def exchange() -> BatchRecordingExchange:
    return BatchRecordingExchange(ReplayMarketData())


@pytest.fixture
def ledger(settings: Settings) -> Ledger:
    return Ledger(settings.database_url)


def send(exchange: SimulatedExchange, ledger: Ledger, request: OrderRequest) -> None:
    """Record, then place: the bot's discipline."""
    ledger.record_pending(request, None, exchange.now())
    ledger.apply_order(exchange.place_order(request))
    ledger.record_fills(exchange.list_fills())


def rest_limit_buys(exchange: SimulatedExchange, ledger: Ledger, count: int) -> None:
    """`count` small limit buys far below the market: they rest on the book."""
    bid, _ = exchange.best_bid_ask(BTC)
    price = (bid / 2).quantize(Decimal("0.01"))
    for n in range(count):
        request = OrderRequest(BTC, Side.BUY, OrderType.LIMIT, Decimal("0.0001"), f"rest-{n}", limit_price=price)
        send(exchange, ledger, request)


def buy(exchange: SimulatedExchange, ledger: Ledger, quantity: str, client_order_id: str = "entry") -> None:
    send(exchange, ledger, OrderRequest(BTC, Side.BUY, OrderType.MARKET, Decimal(quantity), client_order_id))


# --- switches -----------------------------------------------------------------------------------------------------


def test_set_switch_creates_the_flag_file_the_bot_reads_and_reports_the_value_before(settings: Settings) -> None:
    first = set_switch(settings, "kill_switch", True, reason="test")
    second = set_switch(settings, "kill_switch", True)

    assert (first.before, first.after, first.changed) == (False, True, True)
    assert (second.before, second.changed) == (True, False)
    assert flag_file(settings, "kill_switch").exists()
    assert read_controls(settings).kill_switch and not read_controls(settings).reduce_only


def test_clearing_a_switch_removes_the_flag_file_and_is_idempotent(settings: Settings) -> None:
    set_switch(settings, "reduce_only", True)

    cleared = set_switch(settings, "reduce_only", False)
    again = set_switch(settings, "reduce_only", False)

    assert (cleared.before, cleared.after) == (True, False)
    assert not again.changed
    assert not read_controls(settings).reduce_only


def test_local_switches_name_the_environment_variable_and_the_flag_file(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISK_KILL_SWITCH_ENABLED", "1")
    with_env = load_settings(profile="dev", state_dir=settings.state_dir)
    set_switch(with_env, "kill_switch", True)

    on = local_switches(with_env)

    assert on["kill_switch"] == ["RISK_KILL_SWITCH_ENABLED", f"flag file {settings.state_dir / 'KILL_SWITCH'}"]
    assert on["reduce_only"] == []


def test_kill_switch_by_environment_stops_new_orders_and_is_counted(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISK_KILL_SWITCH_ENABLED", "1")
    killed = load_settings(
        profile="dev",
        state_dir=settings.state_dir,
        broker="simulated",
        strategy_fast_window=2,
        strategy_slow_window=4,
        heartbeat_interval_seconds=0,
    )
    exchange = SimulatedExchange(ReplayMarketData())
    bot = build_bot(killed, broker=exchange, ledger=Ledger(killed.database_url))
    bot.start()

    summary = bot.run(80, interval_seconds=0)
    bot.stop()

    assert summary.orders == 0 and exchange.list_fills() == []
    assert bot.risk.counters["kill_switch"] > 0


# --- cancel-all ---------------------------------------------------------------------------------------------------


def test_cancel_all_cancels_more_than_100_working_orders_in_batches_of_at_most_100(
    exchange: BatchRecordingExchange, ledger: Ledger
) -> None:
    rest_limit_buys(exchange, ledger, 150)

    result = cancel_all(exchange, ledger)

    assert exchange.cancel_batches == [100, 50]
    assert (result.cancelled, result.not_cancelled, result.batches) == (150, 0, 2)
    assert exchange.list_open_orders() == []
    assert ledger.open_orders() == []
    statuses = {o.status for o in ledger.list_orders()}
    assert statuses == {OrderStatus.CANCELLED.value}
    assert {o.client_order_id for o in result.orders} == {f"rest-{n}" for n in range(150)}


def test_cancel_all_a_second_time_finds_nothing_to_cancel(exchange: BatchRecordingExchange, ledger: Ledger) -> None:
    rest_limit_buys(exchange, ledger, 3)
    cancel_all(exchange, ledger)

    again = cancel_all(exchange, ledger)

    assert (again.cancelled, len(again.orders), again.batches) == (0, 0, 0)
    assert exchange.cancel_batches == [3]
    assert "nothing to cancel" in again.summary()


# --- flatten ------------------------------------------------------------------------------------------------------


def test_flatten_turns_reduce_only_on_cancels_and_sells_the_position_reduce_only_at_market(
    settings: Settings, exchange: BatchRecordingExchange, ledger: Ledger
) -> None:
    buy(exchange, ledger, "0.0123")
    rest_limit_buys(exchange, ledger, 2)
    held = {p.symbol: p.quantity for p in exchange.positions()}[BTC]

    result = flatten(exchange, ledger, settings, request_id="req-1", symbols=[BTC])

    assert read_controls(settings).reduce_only and result.reduce_only.changed
    assert result.cancelled.cancelled == 2
    [exit_order] = result.exits
    assert exit_order.client_order_id == exit_client_order_id("req-1", BTC)
    assert exit_order.quantity == held and exit_order.status == OrderStatus.FILLED.value
    placed = exchange.find_order(exit_order.client_order_id)
    assert placed is not None and placed.reduce_only and placed.order_type == OrderType.MARKET
    assert placed.side == Side.SELL
    assert exchange.positions() == []
    recorded = ledger.get_order(exit_order.client_order_id)
    assert recorded is not None and recorded.status == OrderStatus.FILLED.value
    assert result.fills_recorded == 1 and BTC not in ledger.positions()
    assert ledger.open_orders() == []


def test_flatten_twice_with_the_same_request_sends_one_set_of_exits(
    settings: Settings, exchange: BatchRecordingExchange, ledger: Ledger
) -> None:
    buy(exchange, ledger, "0.02")
    first = flatten(exchange, ledger, settings, request_id="req-2", symbols=[BTC])
    buy(exchange, ledger, "0.01", "entry-again")  # even with a position again, the same request sends nothing new

    second = flatten(exchange, ledger, settings, request_id="req-2", symbols=[BTC])

    assert [e.note for e in first.exits] == ["sent"]
    assert [e.note for e in second.exits] == ["already sent by an earlier attempt"]
    assert second.exits[0].order_id == first.exits[0].order_id
    sells = [f for f in exchange.list_fills() if f.side == Side.SELL]
    assert len(sells) == 1 and sells[0].quantity == Decimal("0.02")
    assert not second.reduce_only.changed


def test_one_request_flattening_two_accounts_on_one_key_sends_each_its_own_exit_and_a_retry_finds_it(
    settings: Settings, exchange: BatchRecordingExchange
) -> None:
    alpha, beta = (settings.model_copy(update={"account": name}) for name in ("alpha", "beta"))
    alpha_ledger, beta_ledger = (
        Ledger(settings.database_url, account="alpha"),
        Ledger(settings.database_url, account="beta"),
    )
    buy(exchange, alpha_ledger, "0.02", "alpha-entry")
    first = flatten(exchange, alpha_ledger, alpha, request_id="incident-7", symbols=[BTC])
    buy(exchange, beta_ledger, "0.01", "beta-entry")  # the same key's other account, flattened by the same request

    other = flatten(exchange, beta_ledger, beta, request_id="incident-7", symbols=[BTC])
    retry = flatten(exchange, alpha_ledger, alpha, request_id="incident-7", symbols=[BTC])

    assert [e.note for e in first.exits] == [e.note for e in other.exits] == ["sent"]
    assert first.exits[0].client_order_id == exit_client_order_id("incident-7", BTC, "alpha")
    assert other.exits[0].client_order_id == exit_client_order_id("incident-7", BTC, "beta")
    assert first.exits[0].client_order_id != other.exits[0].client_order_id
    assert [e.note for e in retry.exits] == ["already sent by an earlier attempt"]
    assert retry.exits[0].order_id == first.exits[0].order_id
    assert [f.quantity for f in exchange.list_fills() if f.side == Side.SELL] == [Decimal("0.02"), Decimal("0.01")]
    # A single bot's ids are those from before accounts: a retry across the upgrade still finds its exit.
    assert exit_client_order_id("incident-7", BTC) == exit_client_order_id("incident-7", BTC, "default")
    assert beta_ledger.get_order(first.exits[0].client_order_id) is None  # each exit in its own account's ledger


def test_flatten_floors_to_the_increment_and_never_sells_more_than_held(settings: Settings, ledger: Ledger) -> None:
    # A balance finer than the product's increment (Coinbase credits rewards that way): edit the paper account.
    path = settings.state_dir / "paper_exchange.json"
    buy(SimulatedExchange(ReplayMarketData(), state_path=path), ledger, "0.01")
    account = json.loads(path.read_text())
    account["balances"]["BTC"] = str(Decimal(account["balances"]["BTC"]) + Decimal("0.0000000049"))
    account["positions"][BTC]["quantity"] = str(
        Decimal(account["positions"][BTC]["quantity"]) + Decimal("0.0000000049")
    )
    path.write_text(json.dumps(account))
    exchange = SimulatedExchange(ReplayMarketData(), state_path=path)

    result = flatten(exchange, ledger, settings, request_id="req-3", symbols=[BTC])

    [exit_order] = result.exits
    assert exit_order.quantity == Decimal("0.01")
    assert "0.0000000049 BTC left" in exit_order.note
    assert sum(f.quantity for f in exchange.list_fills() if f.side == Side.SELL) == Decimal("0.01")
    assert {p.symbol: p.quantity for p in exchange.positions()} == {BTC: Decimal("0.0000000049")}


def test_flatten_leaves_dust_below_base_min_size_and_says_so(
    settings: Settings, exchange: BatchRecordingExchange, ledger: Ledger
) -> None:
    buy(exchange, ledger, "0.01")
    # Sell all but 0.000005 BTC, below BTC-USD's base_min_size of 0.00001.
    send(exchange, ledger, OrderRequest(BTC, Side.SELL, OrderType.MARKET, Decimal("0.009995"), "partial-exit"))

    result = flatten(exchange, ledger, settings, request_id="req-4", symbols=[BTC])

    assert result.exits == []
    [skipped] = result.skipped
    assert skipped.symbol == BTC and skipped.quantity == Decimal("0.000005")
    assert "below base_min_size 0.00001 for BTC-USD" in skipped.reason
    assert {p.symbol: p.quantity for p in exchange.positions()} == {BTC: Decimal("0.000005")}


def test_flatten_reports_positions_outside_the_requested_symbols_without_selling_them(
    settings: Settings, exchange: BatchRecordingExchange, ledger: Ledger
) -> None:
    buy(exchange, ledger, "0.01")

    result = flatten(exchange, ledger, settings, request_id="req-5", symbols=["ETH-USD"])

    assert result.exits == []
    assert [(s.symbol, s.reason) for s in result.skipped] == [(BTC, "not in the symbols to flatten")]
    assert {p.symbol for p in exchange.positions()} == {BTC}


def test_flatten_with_nothing_held_sends_nothing(
    settings: Settings, exchange: BatchRecordingExchange, ledger: Ledger
) -> None:
    result = flatten(exchange, ledger, settings, request_id="req-6", symbols=[BTC, "ETH-USD"])

    assert result.exits == [] and result.skipped == []
    assert exchange.list_fills() == []
