"""The account lease on SQLite and PostgreSQL: one holder, a token that only increases, a fence on order writes."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from trader.domain import OrderRequest, OrderType, Side
from trader.ledger import Ledger
from trader.ledger.lease import Holder, LeaseHeld, LeaseLost


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """A migrated ledger on each backend (a fresh database: the lease row is per database)."""
    url = str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url"))
    ledger = Ledger(url)
    yield ledger
    ledger.dispose()


def bot(pid: int = 4242, host: str = "host-a") -> Holder:
    return Holder("bot", host, pid, flow_run_url="http://127.0.0.1:4200/runs/flow-run/abc")


def order(client_order_id: str) -> OrderRequest:
    return OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), client_order_id)


def test_second_holder_is_refused_with_the_holder_named_and_nothing_written(ledger: Ledger) -> None:
    first = ledger.acquire_lease("default", bot(), 30)

    with pytest.raises(LeaseHeld) as refused:
        ledger.acquire_lease("default", bot(pid=777, host="host-b"), 30)

    message = str(refused.value)
    assert "host-a" in message and "pid 4242" in message and "runs/flow-run/abc" in message and "s ago" in message
    assert "\n" not in message
    assert ledger.current_lease("default") == first
    assert [e.event for e in ledger.lease_history("default")] == ["acquired"]


def test_an_expired_lease_is_taken_with_a_higher_token_and_the_old_fence_refuses_orders(ledger: Ledger) -> None:
    old = ledger.acquire_lease("default", bot(), 0.3)
    time.sleep(0.35)  # wall-clock expiry is what is under test

    new = ledger.acquire_lease("default", bot(pid=777, host="host-b"), 30)

    assert new.token == old.token + 1
    with pytest.raises(LeaseLost):
        ledger.record_pending(order("stale-1"), None, datetime.now(UTC), fence=old.fence)
    with pytest.raises(LeaseLost):
        ledger.renew_lease(old.fence, 30)
    assert ledger.get_order("stale-1") is None
    ledger.record_pending(order("fresh-1"), None, datetime.now(UTC), fence=new.fence)
    recorded = ledger.get_order("fresh-1")
    assert recorded is not None and recorded.fencing_token == new.token


def test_renewal_keeps_the_lease_and_release_frees_it_at_once(ledger: Ledger) -> None:
    lease = ledger.acquire_lease("default", bot(), 0.5)
    time.sleep(0.3)
    renewed = ledger.renew_lease(lease.fence, 0.5)
    time.sleep(0.3)  # past the first expiry, inside the renewed one

    with pytest.raises(LeaseHeld):
        ledger.acquire_lease("default", bot(pid=1), 30)
    assert renewed.token == lease.token and renewed.expires_at > lease.expires_at
    assert ledger.release_lease(renewed.fence)
    assert ledger.acquire_lease("default", bot(pid=1), 30).token == lease.token + 1


def test_a_lapsed_but_untaken_lease_refuses_orders_until_renewed(ledger: Ledger) -> None:
    lease = ledger.acquire_lease("default", bot(), 0.2)
    time.sleep(0.25)

    with pytest.raises(LeaseLost):
        ledger.record_pending(order("lapsed-1"), None, datetime.now(UTC), fence=lease.fence)
    ledger.renew_lease(lease.fence, 30)
    ledger.record_pending(order("lapsed-1"), None, datetime.now(UTC), fence=lease.fence)


def test_operator_override_takes_a_live_lease_and_is_recorded(ledger: Ledger) -> None:
    held = ledger.acquire_lease("default", bot(), 30)

    taken, replaced = ledger.override_lease("default", Holder.this_process("operator"), 30, "perps-bot cancel-all")

    assert replaced == held and taken.token == held.token + 1
    with pytest.raises(LeaseLost):
        ledger.renew_lease(held.fence, 30)
    override = ledger.lease_history("default")[-2]
    assert (
        override.event == "override" and "cancel-all" in (override.note or "") and "pid 4242" in (override.note or "")
    )


def test_a_holder_proven_gone_is_broken_at_once_and_one_only_suspected_is_waited_for(ledger: Ledger) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = Holder.this_process("bot")
    gone = Holder("bot", gone.host, dead.pid)
    held = ledger.acquire_lease("default", gone, 30)

    with pytest.raises(LeaseHeld):  # no proof offered: wait for the TTL
        ledger.acquire_lease("default", bot(pid=1), 30)
    taken = ledger.acquire_lease(
        "default", Holder.this_process("bot"), 30, holder_gone=lambda lease: lease.holder.is_gone_here()
    )

    assert taken.token == held.token + 1
    assert ledger.lease_history("default")[-1].event == "broken"
    alive = Holder.this_process("bot")
    assert not Holder("bot", alive.host, 1).is_gone_here()  # pid 1 runs: never broken
    assert not Holder("bot", "another-host", dead.pid).is_gone_here()  # other hosts' pids prove nothing
    # a container with the host's name but its own pids (docker --network host) proves nothing either
    assert not Holder("bot", alive.host, dead.pid, instance="0123456789:container").is_gone_here()


def _contend(url: str, barrier: object, index: int, results: object) -> None:
    ledger = Ledger(url, migrate=False)
    barrier.wait()  # type: ignore[attr-defined]
    try:
        lease = ledger.acquire_lease("default", Holder.this_process("bot"), 30)
        results.put((index, "won", lease.token))  # type: ignore[attr-defined]
    except LeaseHeld:
        results.put((index, "refused", None))  # type: ignore[attr-defined]
    finally:
        ledger.dispose()


@pytest.mark.parametrize("contenders", [8])
def test_contenders_starting_at_the_same_instant_get_exactly_one_lease(ledger: Ledger, contenders: int) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(contenders), context.Queue()
    processes = [
        context.Process(target=_contend, args=(ledger.database_url, barrier, i, results)) for i in range(contenders)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert [o[1] for o in outcomes].count("won") == 1
    assert [o[1] for o in outcomes].count("refused") == contenders - 1
    assert ledger.current_lease("default").token == 1  # type: ignore[union-attr]


def test_an_order_is_refused_when_less_than_a_third_of_the_ttl_is_left(ledger: Ledger) -> None:
    lease = ledger.acquire_lease("default", bot(), 0.9)
    time.sleep(0.65)  # 0.25 s left, under the 0.3 s margin: the order could reach the exchange after a takeover

    with pytest.raises(LeaseLost, match="0.3 s left"):
        ledger.record_pending(order("late-1"), None, datetime.now(UTC), fence=lease.fence)
    renewed = ledger.renew_lease(lease.fence, 0.9)
    ledger.record_pending(order("late-1"), None, datetime.now(UTC), fence=renewed.fence)


# A holder whose machine is lost mid-transaction: the process is frozen (SIGSTOP: its connection stays open, as behind
# a network partition) right after check_fence locked the lease row, before its commit.
FROZEN_HOLDER = """
import sys
import threading
from datetime import UTC, datetime
from trader.ledger import Ledger
from trader.ledger.lease import Holder, check_fence

ledger = Ledger(sys.argv[1], migrate=False, idle_in_transaction_seconds=float(sys.argv[2]))
lease = ledger.acquire_lease("default", Holder("bot", "lost-host", 4242), 1.0)
with ledger._transaction() as session:
    check_fence(session, lease.fence, datetime.now(UTC))
    print("locked", flush=True)
    sys.stdin.readline()
"""


def frozen_holder(url: str, idle_seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", FROZEN_HOLDER, url, str(idle_seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGSTOP)
    return holder


@pytest.mark.parametrize("idle_seconds", [2.0, 3600.0])
def test_a_holder_frozen_inside_a_transaction_keeps_the_lease_row_only_until_its_idle_cap(
    fresh_pg_url: str, idle_seconds: float
) -> None:
    Ledger(fresh_pg_url).dispose()  # migrated
    holder = frozen_holder(fresh_pg_url, idle_seconds)
    successor = Ledger(fresh_pg_url, migrate=False)
    taken: list[int] = []
    time.sleep(1.1)  # past the frozen holder's 1 s TTL (wall-clock expiry): only its row lock stands in the way
    try:
        thread = threading.Thread(
            target=lambda: taken.append(successor.acquire_lease("default", bot(pid=777, host="host-b"), 30).token),
            daemon=True,
        )
        started = time.monotonic()
        thread.start()
        thread.join(timeout=8)  # the 2 s cap with room to spare; the uncapped holder would hold the row for hours
        if idle_seconds < 60:
            # PostgreSQL ended the frozen session after its cap: the lock went with it, the successor took over.
            assert taken == [2], f"the successor was still waiting after {time.monotonic() - started:.1f} s"
        else:
            # Without a cap the frozen holder keeps the row locked (until TCP gives up: hours); what the cap is for.
            assert taken == [] and thread.is_alive()
    finally:
        holder.kill()  # the connection closes: a still-waiting successor gets the row now
        holder.wait()
        thread.join(timeout=10)
        successor.dispose()
    assert taken == [2] and not thread.is_alive()
    assert [e.event for e in Ledger(fresh_pg_url, migrate=False).lease_history("default")][-2:] == ["acquired"] * 2
