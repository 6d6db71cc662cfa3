"""Two accounts on one ledger database: each Ledger reads and writes only its own account's rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.trader.ledger.test_ledger_queries import a_checkpoint
from trader.domain import Balance, Fill, Liquidity, Order, OrderRequest, OrderStatus, OrderType, Side
from trader.ledger import Ledger, LedgerError
from trader.ledger.lease import Holder

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """One empty database on each backend, for both accounts."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url"))


@pytest.fixture
def alpha(database_url: str) -> Iterator[Ledger]:
    with Ledger(database_url, account="alpha") as ledger:
        yield ledger


@pytest.fixture
def beta(database_url: str, alpha: Ledger) -> Iterator[Ledger]:
    with Ledger(database_url, account="beta", migrate=False) as ledger:  # alpha migrated the database
        yield ledger


def a_request(client_order_id: str, quantity: str) -> OrderRequest:
    return OrderRequest(
        "BTC-USD", Side.BUY, OrderType.LIMIT, Decimal(quantity), client_order_id, limit_price=Decimal("65000")
    )


def an_order(client_order_id: str, quantity: str, status: OrderStatus, at: datetime) -> Order:
    return Order(
        order_id=f"ex-{client_order_id}-{quantity}",
        client_order_id=client_order_id,
        symbol="BTC-USD",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal(quantity),
        status=status,
        created_at=at,
        limit_price=Decimal("65000"),
        updated_at=at,
    )


def a_fill(trade_id: str, quantity: str, price: str, at: datetime) -> Fill:
    return Fill(
        trade_id=trade_id,
        order_id=f"ex-{trade_id}",
        client_order_id="bot-1",
        symbol="BTC-USD",
        side=Side.BUY,
        quantity=Decimal(quantity),
        price=Decimal(price),
        fee=Decimal("1"),
        liquidity=Liquidity.MAKER,
        filled_at=at,
    )


# --- the account's name --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "two words", "slash/ed", "x" * 65, "trailing\n", "..", ".hidden", "Alpha", "all"])
def test_a_ledger_refuses_an_account_name_settings_would_refuse(sqlite_url: str, name: str) -> None:
    with pytest.raises(LedgerError, match=r"^account: .* is not an account name"):
        Ledger(sqlite_url, account=name)


def test_a_ledger_keeps_its_account_and_defaults_to_the_default_account(sqlite_url: str) -> None:
    with Ledger(sqlite_url) as default, Ledger(sqlite_url, account="a-1_b2", migrate=False) as named:
        assert (default.account, named.account) == ("default", "a-1_b2")


# --- orders --------------------------------------------------------------------------------------------------


def test_the_same_client_order_id_is_recorded_once_per_account(alpha: Ledger, beta: Ledger) -> None:
    alpha.record_pending(a_request("bot-1", "0.01"), None, T0)
    beta.record_pending(a_request("bot-1", "0.02"), None, T0)

    alpha_order, beta_order = alpha.get_order("bot-1"), beta.get_order("bot-1")
    assert alpha_order is not None and beta_order is not None
    assert (alpha_order.account, alpha_order.quantity) == ("alpha", Decimal("0.01"))
    assert (beta_order.account, beta_order.quantity) == ("beta", Decimal("0.02"))


def test_each_account_reads_only_its_own_orders(alpha: Ledger, beta: Ledger) -> None:
    alpha.record_pending(a_request("shared", "0.01"), None, T0)
    alpha.record_pending(a_request("alpha-only", "0.01"), None, T0)
    alpha.apply_order(an_order("alpha-filled", "0.01", OrderStatus.FILLED, T0 + HOUR))
    beta.record_pending(a_request("shared", "0.03"), None, T0)

    assert [o.client_order_id for o in alpha.open_orders()] == ["shared", "alpha-only"]
    assert [(o.client_order_id, o.quantity) for o in beta.open_orders()] == [("shared", Decimal("0.03"))]
    assert [o.client_order_id for o in beta.orders_to_reconcile(changed_since=T0)] == ["shared"]
    assert [o.client_order_id for o in alpha.orders_to_reconcile(changed_since=T0)] == [
        "shared",
        "alpha-only",
        "alpha-filled",
    ]
    assert [o.client_order_id for o in beta.list_orders()] == ["shared"]
    assert len(alpha.list_orders()) == 3
    assert beta.get_order("alpha-only") is None and beta.get_order("alpha-filled") is None
    by_id = beta.orders_by_client_id(["shared", "alpha-only", "alpha-filled"])
    assert {cid: (o.account, o.quantity) for cid, o in by_id.items()} == {"shared": ("beta", Decimal("0.03"))}
    assert [o.client_order_id for o in beta.orders_created_between(T0, T0 + 2 * HOUR)] == ["shared"]


def test_the_brokers_answer_updates_only_the_own_accounts_order(alpha: Ledger, beta: Ledger) -> None:
    alpha.record_pending(a_request("bot-1", "0.01"), None, T0)
    beta.record_pending(a_request("bot-1", "0.01"), None, T0)

    recorded = beta.apply_order_with_fills(
        an_order("bot-1", "0.01", OrderStatus.FILLED, T0 + HOUR), [a_fill("t-1", "0.01", "65000", T0 + HOUR)], None
    )

    assert recorded.new == 1
    alpha_order, beta_order = alpha.get_order("bot-1"), beta.get_order("bot-1")
    assert alpha_order is not None and beta_order is not None
    assert (alpha_order.status, alpha_order.exchange_order_id) == ("pending_submit", None)
    assert (beta_order.status, beta_order.exchange_order_id) == ("filled", "ex-bot-1-0.01")
    assert alpha.list_fills() == [] and alpha.positions() == {}


def test_an_order_only_on_another_account_is_inserted_for_this_one(alpha: Ledger, beta: Ledger) -> None:
    alpha.record_pending(a_request("bot-1", "0.01"), None, T0)

    beta.apply_order(an_order("bot-1", "0.05", OrderStatus.OPEN, T0 + HOUR))

    alpha_order, beta_order = alpha.get_order("bot-1"), beta.get_order("bot-1")
    assert alpha_order is not None and beta_order is not None
    assert (alpha_order.status, alpha_order.quantity) == ("pending_submit", Decimal("0.01"))
    assert (beta_order.account, beta_order.status, beta_order.quantity) == ("beta", "open", Decimal("0.05"))


def test_another_account_cannot_fail_or_edit_this_accounts_order(alpha: Ledger, beta: Ledger) -> None:
    alpha.record_pending(a_request("bot-1", "0.01"), None, T0)

    with pytest.raises(LedgerError, match="no order with client_order_id bot-1 in the ledger for account beta"):
        beta.mark_failed("bot-1", "refused", T0 + HOUR)
    with pytest.raises(LedgerError, match="for account beta"):
        beta.apply_order_terms(an_order("bot-1", "0.09", OrderStatus.OPEN, T0 + HOUR))

    row = alpha.get_order("bot-1")
    assert row is not None
    assert (row.status, row.reject_reason, row.quantity, row.updated_at) == (
        "pending_submit",
        None,
        Decimal("0.01"),
        T0,
    )


# --- fills and positions -------------------------------------------------------------------------------------


def test_the_same_trade_id_is_a_new_fill_on_each_account(alpha: Ledger, beta: Ledger) -> None:
    assert alpha.record_fills([a_fill("t-1", "0.01", "60000", T0)]) == 1
    assert beta.record_fills([a_fill("t-1", "0.02", "70000", T0 + HOUR)]) == 1
    assert beta.record_fills([a_fill("t-1", "0.02", "70000", T0 + HOUR)]) == 0  # a repeat within beta

    assert [(f.account, f.quantity) for f in alpha.list_fills()] == [("alpha", Decimal("0.01"))]
    assert [(f.account, f.quantity) for f in beta.list_fills()] == [("beta", Decimal("0.02"))]
    assert beta.fills_by_trade_id(["t-1"])["t-1"].price == Decimal("70000")


def test_each_account_reads_only_its_own_fills_and_positions(alpha: Ledger, beta: Ledger) -> None:
    alpha.record_fills([a_fill("a-1", "0.01", "60000", T0), a_fill("a-2", "0.01", "62000", T0 + HOUR)])
    beta.record_fills([a_fill("b-1", "0.5", "70000", T0 + 2 * HOUR)])

    assert [f.trade_id for f in alpha.fills_after(T0 - HOUR)] == ["a-1", "a-2"]
    assert [f.trade_id for f in beta.fills_after(T0 - HOUR)] == ["b-1"]
    assert alpha.last_fill_time() == T0 + HOUR
    assert beta.last_fill_time() == T0 + 2 * HOUR
    assert alpha.fill_times_among([T0, T0 + 2 * HOUR]) == {T0}
    assert alpha.fills_by_trade_id(["a-1", "b-1"]).keys() == {"a-1"}

    alpha_btc, beta_btc = alpha.positions()["BTC-USD"], beta.positions()["BTC-USD"]
    assert (alpha_btc.quantity, alpha_btc.average_entry_price) == (Decimal("0.02"), Decimal("61000"))
    assert (beta_btc.quantity, beta_btc.average_entry_price) == (Decimal("0.5"), Decimal("70000"))
    assert alpha.realized_pnl("BTC-USD") == Decimal("-2")  # two fees of 1
    assert beta.realized_pnl("BTC-USD") == Decimal("-1")


def test_the_book_holds_only_the_accounts_positions_and_open_orders(alpha: Ledger, beta: Ledger) -> None:
    alpha.record_fills([a_fill("t-1", "0.01", "60000", T0)])
    alpha.record_pending(a_request("bot-1", "0.01"), None, T0)
    beta.record_pending(a_request("bot-2", "0.02"), None, T0)

    alpha_book, beta_book = alpha.book(), beta.book()

    assert [(p.account, p.symbol, p.quantity) for p in alpha_book.positions] == [("alpha", "BTC-USD", Decimal("0.01"))]
    assert [o.client_order_id for o in alpha_book.open_orders] == ["bot-1"]
    assert beta_book.positions == []
    assert [o.client_order_id for o in beta_book.open_orders] == ["bot-2"]


def test_setting_a_position_touches_only_the_accounts_row(alpha: Ledger, beta: Ledger) -> None:
    alpha.record_fills([a_fill("t-1", "0.01", "60000", T0)])

    beta.set_position("BTC-USD", Decimal("3"), Decimal("50000"), T0 + HOUR)

    assert alpha.positions()["BTC-USD"].quantity == Decimal("0.01")
    assert alpha.realized_pnl("BTC-USD") == Decimal("-1")
    assert beta.positions()["BTC-USD"].quantity == Decimal("3")
    assert beta.realized_pnl("BTC-USD") == Decimal("0")


# --- sessions ------------------------------------------------------------------------------------------------


def test_each_account_sees_and_beats_only_its_own_sessions(alpha: Ledger, beta: Ledger) -> None:
    alpha_session = alpha.start_session("spot", "simulated", "paper", flow_run_id="run-1", at=T0)
    beta_session = beta.start_session("spot", "simulated", "paper", flow_run_id="run-1", at=T0 + HOUR)

    assert [s.id for s in alpha.list_sessions()] == [alpha_session]
    assert [s.id for s in beta.list_sessions()] == [beta_session]
    found = beta.find_session_by_flow_run("run-1")
    assert found is not None and found.id == beta_session
    with pytest.raises(LedgerError, match=f"no trading session {alpha_session} of account beta"):
        beta.get_session(alpha_session)
    with pytest.raises(LedgerError, match="of account beta"):
        beta.heartbeat(alpha_session, 99)
    with pytest.raises(LedgerError, match="of account beta"):
        beta.end_session(alpha_session, "crashed")

    alpha.heartbeat(alpha_session, 7, at=T0 + HOUR)
    row = alpha.get_session(alpha_session)
    assert (row.account, row.cycles, row.last_heartbeat_at, row.status) == ("alpha", 7, T0 + HOUR, "running")


# --- balances, incidents, checklist runs ---------------------------------------------------------------------


def test_each_account_reads_only_its_own_balance_snapshots(alpha: Ledger, beta: Ledger) -> None:
    usd = {"USD": Decimal(1)}
    alpha_id = alpha.record_balance_snapshot(None, [Balance("USD", Decimal("1000"), Decimal(0))], usd, T0)
    beta_id = beta.record_balance_snapshot(None, [Balance("USD", Decimal("5"), Decimal(0))], usd, T0 - HOUR)

    assert alpha.equity_at_start_of_day(T0.date()) == Decimal("1000")
    assert beta.equity_at_start_of_day(T0.date()) == Decimal("5")
    assert beta.balance_snapshot(alpha_id) == []
    assert [r.account for r in alpha.balance_snapshot(alpha_id)] == ["alpha"]
    assert [r.snapshot_id for r in beta.balance_snapshots_between(T0 - 2 * HOUR, T0 + HOUR)] == [beta_id]
    assert alpha.balance_snapshots_around(T0, 5) == [(alpha_id, T0)]


def test_each_account_has_its_own_incidents_under_one_fingerprint(alpha: Ledger, beta: Ledger) -> None:
    alpha_id = alpha.open_incident("drift", "SEV-2", "drift", "alpha drifted", "reconcile", T0)
    beta_id = beta.open_incident("drift", "SEV-2", "drift", "beta drifted", "reconcile", T0)

    assert alpha_id != beta_id
    assert beta.resolve_incident("drift", T0 + HOUR) is True
    assert [(i.id, i.detail) for i in alpha.open_incidents()] == [(alpha_id, "alpha drifted")]
    assert beta.open_incidents() == []
    assert [i.id for i in beta.incidents_opened_between(T0, T0 + HOUR)] == [beta_id]
    with pytest.raises(LedgerError, match=f"no incident {alpha_id} of account beta"):
        beta.mark_incident_notified(alpha_id, "ts-1")
    assert alpha.open_incidents()[0].notified is False


def test_each_account_reads_only_its_own_checklist_runs(alpha: Ledger, beta: Ledger) -> None:
    alpha.record_checklist_run("daily", "pass", [{"check": "a"}], T0, T0 + HOUR)
    beta.record_checklist_run("daily", "fail", [{"check": "b"}], T0, T0 + HOUR)

    assert [(r.account, r.status) for r in alpha.checklist_runs("daily")] == [("alpha", "pass")]
    assert [(r.account, r.status) for r in beta.checklist_runs()] == [("beta", "fail")]


# --- checkpoints and housekeeping ----------------------------------------------------------------------------


def test_each_account_keeps_and_prunes_only_its_own_checkpoints(alpha: Ledger, beta: Ledger) -> None:
    alpha.add_checkpoint(a_checkpoint("alpha-1", T0))
    alpha.add_checkpoint(a_checkpoint("alpha-2", T0 + HOUR))
    beta.add_checkpoint(a_checkpoint("beta-1", T0 + 2 * HOUR))

    pruned = beta.prune_checkpoints(keep=0)

    assert [c.id for c in pruned] == ["beta-1"]
    assert [(c.id, c.account) for c in alpha.checkpoints()] == [("alpha-2", "alpha"), ("alpha-1", "alpha")]
    assert beta.checkpoints() == []
    assert beta.get_checkpoint("alpha-1") is None
    found = alpha.get_checkpoint("alpha-1")
    assert found is not None and found.account == "alpha"


def test_counts_and_dated_rows_are_the_accounts_unless_every_account_is_asked(alpha: Ledger, beta: Ledger) -> None:
    alpha.record_pending(a_request("bot-1", "0.01"), None, T0)
    alpha.record_fills([a_fill("t-1", "0.01", "60000", T0)])
    beta.record_pending(a_request("bot-1", "0.01"), None, T0)

    alpha_counts, beta_counts = alpha.counts(), beta.counts()
    assert (alpha_counts["orders"], alpha_counts["fills"], alpha_counts["positions"]) == (1, 1, 1)
    assert (beta_counts["orders"], beta_counts["fills"], beta_counts["positions"]) == (1, 0, 0)
    assert beta.counts(every_account=True)["orders"] == 2
    assert sorted(t for t, _ in beta.rows_dated_between(T0, T0 + HOUR)) == ["orders"]
    assert sorted(t for t, _ in beta.rows_dated_between(T0, T0 + HOUR, every_account=True)) == [
        "fills",
        "orders",
        "orders",
        "positions",
    ]


def test_known_accounts_are_those_with_a_session_an_order_or_a_lease(
    database_url: str, alpha: Ledger, beta: Ledger
) -> None:
    assert alpha.known_accounts() == []
    alpha.start_session("spot", "simulated", "paper", at=T0)
    beta.record_pending(a_request("bot-1", "0.01"), None, T0)
    beta.acquire_lease("gamma", Holder.this_process("bot"), 30)
    with Ledger(database_url, account="delta", migrate=False) as delta:  # only a checklist run: not trading
        delta.record_checklist_run("daily", "pass", [], T0, T0)

    assert alpha.known_accounts() == ["alpha", "beta", "gamma"]
