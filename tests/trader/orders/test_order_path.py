"""The one order path: controls, product rules, the lease's fence, record-then-send, lookup before any resend."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.trader.brokers.test_coinbase_broker import settings_for
from trader.brokers.coinbase import CoinbaseBroker
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderStatus, OrderType, Side
from trader.errors import OrderRejected
from trader.ledger import Ledger
from trader.ledger.lease import Holder, LeaseInfo, LeaseLost
from trader.market import ReplayMarketData
from trader.orders.path import ControlRefused, OrderPath
from trader.risk import RiskControls
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey, Fault

BTC = "BTC-USD"
OFF = RiskControls(kill_switch=False, reduce_only=False)
KILL = RiskControls(kill_switch=True, reduce_only=False)
REDUCE = RiskControls(kill_switch=False, reduce_only=True)
ORDERS = "/api/v3/brokerage/orders"


@pytest.fixture
def ledger(sqlite_url: str) -> Iterator[Ledger]:
    ledger = Ledger(sqlite_url)
    yield ledger
    ledger.dispose()


@pytest.fixture
def exchange() -> SimulatedExchange:
    exchange = SimulatedExchange(ReplayMarketData())
    exchange.advance()
    return exchange


@pytest.fixture
def lease(ledger: Ledger) -> LeaseInfo:
    return ledger.acquire_lease("default", Holder.this_process("bot"), 30)


def path_for(exchange: object, ledger: Ledger, lease: LeaseInfo | None, controls: RiskControls = OFF) -> OrderPath:
    return OrderPath(
        exchange,  # type: ignore[arg-type]
        ledger,
        controls=lambda: controls,
        fence=lambda: lease.fence if lease is not None else None,
    )


def market(side: Side, quantity: str, client_order_id: str, *, reduce_only: bool = False) -> OrderRequest:
    return OrderRequest(BTC, side, OrderType.MARKET, Decimal(quantity), client_order_id, reduce_only=reduce_only)


def test_a_sent_market_order_is_recorded_under_the_lease_with_its_fills(
    exchange: SimulatedExchange, ledger: Ledger, lease: LeaseInfo
) -> None:
    outcome = path_for(exchange, ledger, lease).send(market(Side.BUY, "0.01", "p-1"), position=Decimal(0))

    assert outcome.accepted and outcome.status == OrderStatus.FILLED and outcome.fills_recorded == 1
    row = ledger.get_order("p-1")
    assert row is not None and row.status == OrderStatus.FILLED.value and row.fencing_token == lease.token
    assert [f.client_order_id for f in ledger.list_fills()] == ["p-1"]
    assert ledger.positions()[BTC].quantity == Decimal("0.01")


@pytest.mark.parametrize(
    ("controls", "side", "position", "control"),
    [
        (KILL, Side.BUY, "0", "kill_switch"),
        (KILL, Side.SELL, "1", "kill_switch"),  # the kill switch stops even a reducing order
        (REDUCE, Side.BUY, "0", "reduce_only"),
        (REDUCE, Side.SELL, "0.005", "reduce_only"),  # selling more than held would open a short
    ],
    ids=["kill-buy", "kill-sell", "reduce-only-buy", "reduce-only-oversell"],
)
def test_the_controls_refuse_before_anything_is_sent_or_written(
    exchange: SimulatedExchange,
    ledger: Ledger,
    lease: LeaseInfo,
    controls: RiskControls,
    side: Side,
    position: str,
    control: str,
) -> None:
    with pytest.raises(ControlRefused) as refused:
        path_for(exchange, ledger, lease, controls).send(market(side, "0.01", "c-1"), position=Decimal(position))

    assert refused.value.control == control
    assert f"perps-bot {control.replace('_', '-')} off" in str(refused.value)
    assert ledger.list_orders() == [] and exchange.list_open_orders() == [] and exchange.list_fills() == []


def test_reduce_only_lets_an_order_that_shrinks_the_position_through(
    exchange: SimulatedExchange, ledger: Ledger, lease: LeaseInfo
) -> None:
    path_for(exchange, ledger, lease).send(market(Side.BUY, "0.02", "r-1"), position=Decimal(0))

    outcome = path_for(exchange, ledger, lease, REDUCE).send(market(Side.SELL, "0.01", "r-2"), position=Decimal("0.02"))

    assert outcome.accepted and ledger.positions()[BTC].quantity == Decimal("0.01")


def test_only_a_reduce_only_shrinking_emergency_exit_passes_the_kill_switch(
    exchange: SimulatedExchange, ledger: Ledger, lease: LeaseInfo
) -> None:
    path_for(exchange, ledger, lease).send(market(Side.BUY, "0.02", "e-0"), position=Decimal(0))
    killed = path_for(exchange, ledger, lease, KILL)

    with pytest.raises(ControlRefused):  # an emergency exit that is not flagged reduce-only
        killed.send(market(Side.SELL, "0.02", "e-1"), position=Decimal("0.02"), emergency_exit=True)
    with pytest.raises(ControlRefused):  # one that would grow the position
        killed.send(market(Side.BUY, "0.02", "e-2", reduce_only=True), position=Decimal("0.02"), emergency_exit=True)
    exit_order = market(Side.SELL, "0.02", "e-3", reduce_only=True)
    outcome = killed.send(exit_order, position=Decimal("0.02"), emergency_exit=True)

    assert outcome.accepted and BTC not in ledger.positions()
    assert [o.client_order_id for o in ledger.list_orders()] == ["e-0", "e-3"]


def test_a_stale_fence_refuses_the_pending_write_and_nothing_reaches_the_exchange(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    old = ledger.acquire_lease("default", Holder.this_process("bot"), 0.2)
    time.sleep(0.25)  # the lease lapses on the wall clock
    ledger.acquire_lease("default", Holder.this_process("bot"), 30)  # a standby takes over

    with pytest.raises(LeaseLost):
        path_for(exchange, ledger, old).send(market(Side.BUY, "0.01", "f-1"), position=Decimal(0))

    assert ledger.get_order("f-1") is None and exchange.list_fills() == [] and exchange.list_open_orders() == []


def test_without_the_accounts_lease_nothing_is_sent(exchange: SimulatedExchange, ledger: Ledger) -> None:
    with pytest.raises(LeaseLost, match="no lease"):
        path_for(exchange, ledger, None).send(market(Side.BUY, "0.01", "n-1"), position=Decimal(0))

    assert ledger.list_orders() == [] and exchange.list_fills() == []


def test_a_request_breaking_the_product_rules_writes_nothing(
    exchange: SimulatedExchange, ledger: Ledger, lease: LeaseInfo
) -> None:
    with pytest.raises(OrderRejected, match="base_min_size"):
        path_for(exchange, ledger, lease).send(market(Side.BUY, "0.0000001", "v-1"), position=Decimal(0))

    assert ledger.list_orders() == []


# --- against the local Advanced Trade server through the real SDK ----------------------------------------------


@pytest.fixture
def coinbase(exchange_server: AdvancedTradeServer, cdp_key: CdpKey, tmp_path: Path) -> CoinbaseBroker:
    """No retries of its own: what happens after an unclear answer is the order path's to decide."""
    return CoinbaseBroker.from_settings(settings_for(exchange_server, cdp_key, tmp_path, coinbase_max_retries=0))


@pytest.fixture
def exchange_server(start_exchange: Callable[..., AdvancedTradeServer]) -> AdvancedTradeServer:
    return start_exchange()


def creates(server: AdvancedTradeServer, client_order_id: str) -> int:
    return sum(
        1
        for r in server.requests
        if r.method == "POST" and r.path == ORDERS and (r.body or {}).get("client_order_id") == client_order_id
    )


def test_an_order_made_while_the_answer_was_lost_is_looked_up_and_never_sent_twice(
    coinbase: CoinbaseBroker, exchange_server: AdvancedTradeServer, ledger: Ledger, lease: LeaseInfo
) -> None:
    # The exchange makes the order, then every answer to a create is a 500: only a lookup can tell it was made.
    exchange_server.inject(Fault(kind="500", method="POST", path=ORDERS, process=True, times=100))

    outcome = path_for(coinbase, ledger, lease).send(market(Side.BUY, "0.01", "lost-1"), position=Decimal(0))

    assert creates(exchange_server, "lost-1") == 1
    made = [o for o in exchange_server.orders.values() if o.client_order_id == "lost-1"]
    assert len(made) == 1 and outcome.order is not None and outcome.order.order_id == made[0].order_id
    row = ledger.get_order("lost-1")
    assert row is not None and row.exchange_order_id == made[0].order_id and row.status != "pending_submit"


def test_an_unreachable_exchange_leaves_the_order_pending_for_reconciliation(
    coinbase: CoinbaseBroker, exchange_server: AdvancedTradeServer, ledger: Ledger, lease: LeaseInfo
) -> None:
    # Creates and the lookups by client_order_id both fail: nothing can tell whether the order exists.
    exchange_server.inject(Fault(kind="503", method="POST", path=ORDERS, times=100))
    exchange_server.inject(Fault(kind="503", method="GET", path=f"{ORDERS}/historical", times=100))

    outcome = path_for(coinbase, ledger, lease).send(market(Side.BUY, "0.01", "down-1"), position=Decimal(0))

    assert outcome.order is None and outcome.status == OrderStatus.PENDING_SUBMIT
    assert creates(exchange_server, "down-1") == 1  # never resent blindly
    row = ledger.get_order("down-1")
    assert row is not None and row.status == "pending_submit" and row.fencing_token == lease.token


def test_leverage_above_the_profiles_cap_is_refused_before_anything_is_written_and_within_it_goes_through(
    ledger: Ledger, lease: LeaseInfo
) -> None:
    futures = SimulatedExchange(ReplayMarketData(), derivatives=True)
    path = OrderPath(futures, ledger, controls=lambda: OFF, fence=lambda: lease.fence, max_leverage=Decimal(3))
    over = OrderRequest("BIP-20DEC30-CDE", Side.BUY, OrderType.MARKET, Decimal(2), "lev-4", leverage=Decimal(4))
    with pytest.raises(OrderRejected, match="above the profile's cap RISK_MAX_LEVERAGE=3"):
        path.send(over, position=Decimal(0))
    assert ledger.get_order("lev-4") is None and futures.list_fills() == []

    within = OrderRequest("BIP-20DEC30-CDE", Side.BUY, OrderType.MARKET, Decimal(2), "lev-3", leverage=Decimal(3))
    outcome = path.send(within, position=Decimal(0))
    assert outcome.status == OrderStatus.FILLED
    assert ledger.positions()["BIP-20DEC30-CDE"].quantity == Decimal(2)  # the ledger counts contracts
    assert futures.futures_account().initial_margin > 0
