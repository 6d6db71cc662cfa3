"""One active bot per account: a lease row with a fencing token, in the ledger database.

Invariants:
- The token of an account only ever increases: every change of holder (acquire after expiry, a broken lease, an
  operator override) adds one, so an older holder's token is never current again.
- Every acquire, renew, fence check, break, override and release is one conditional UPDATE (or one INSERT for the
  first holder) whose WHERE clause carries the condition, so it is atomic on PostgreSQL (row lock) and on SQLite
  (database write lock) alike; the write comes first in its transaction, so SQLite's WAL never sees a stale read.
- Times are wall-clock UTC. A pending-order write is refused unless, in the same transaction, the writer's token is
  the current one and the lease has not expired (`check_fence`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import Engine, bindparam, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from trader.errors import TraderError
from trader.ledger.models import AccountLease, LeaseEventRecord

HolderKind = Literal["bot", "manual", "operator"]


def _now() -> datetime:
    return datetime.now(UTC)


@functools.cache
def local_node() -> str:
    """This boot of this machine and this pid namespace: where a pid means the same process."""
    parts = []
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(source).read_text().strip() if "boot_id" in source else os.readlink(source))
        except OSError:
            parts.append("?")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Holder:
    """Who holds (or asks for) a lease: a bot, the manual order tooling, or an operator's emergency command."""

    kind: HolderKind
    host: str
    pid: int
    instance: str = field(default_factory=lambda: f"{local_node()}:{uuid.uuid4().hex[:12]}")
    flow_run_id: str | None = None
    flow_run_url: str | None = None

    @classmethod
    def this_process(cls, kind: HolderKind, flow_run_id: str | None = None, flow_run_url: str | None = None) -> Holder:
        """A holder for this process (a new instance id each time: two bots in one process are two holders)."""
        return cls(kind, socket.gethostname(), os.getpid(), flow_run_id=flow_run_id, flow_run_url=flow_run_url)

    def describe(self) -> str:
        run = f", run {self.flow_run_url or self.flow_run_id}" if (self.flow_run_url or self.flow_run_id) else ""
        return f"{self.kind} on host {self.host} pid {self.pid}{run}"

    def on_this_node(self) -> bool:
        """The holder's pid means a process here: same host name, same boot, same pid namespace."""
        return self.host == socket.gethostname() and self.instance.partition(":")[0] == local_node()

    def is_gone_here(self) -> bool:
        """True only with proof: the holder ran on this host, in this pid namespace, since this boot, and its process
        no longer exists (or is a zombie). A container sharing the host's name but not its pids proves nothing."""
        if not self.on_this_node() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        try:  # a SIGKILLed child its parent has not reaped yet still answers kill(0)
            with open(f"/proc/{self.pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (OSError, IndexError):
            return False


@dataclass(frozen=True)
class LeaseInfo:
    account: str
    token: int
    holder: Holder
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    ttl_seconds: float

    @property
    def fence(self) -> Fence:
        """What the holder presents with each order: its token, and a third of its TTL that must still be left."""
        return Fence(self.account, self.token, self.ttl_seconds / 3)

    def seconds_since_renewal(self, now: datetime | None = None) -> float:
        return ((now or _now()) - self.renewed_at).total_seconds()

    def expired(self, now: datetime | None = None) -> bool:
        return (now or _now()) >= self.expires_at

    def describe(self, now: datetime | None = None) -> str:
        return (
            f"account {self.account} is held by {self.holder.describe()}, "
            f"last renewed {self.seconds_since_renewal(now):.0f} s ago (token {self.token}, TTL {self.ttl_seconds:g} s)"
        )


@dataclass(frozen=True)
class Fence:
    """What a writer presents: the account and the token it holds. margin_seconds: how much of the lease must still
    be left when an order is recorded, so it is sent well before the lease could pass to a successor (a live
    holder renews every TTL/3 and always has more)."""

    account: str
    token: int
    margin_seconds: float = 0.0


@dataclass(frozen=True)
class LeaseEvent:
    account: str
    token: int
    event: str
    holder: str
    at: datetime
    note: str | None


class LeaseHeld(TraderError):
    """Another live holder has the account's lease; nothing was written."""

    def __init__(self, lease: LeaseInfo, hint: str | None = None) -> None:
        self.lease = lease
        super().__init__(
            f"{lease.describe()}; "
            + (hint or "stop that bot first, or start this one with --standby to take over when it stops or dies")
        )


class LeaseLost(TraderError):
    """This holder's token is no longer current (another bot or an operator took the account): stand down."""


def _info(row: AccountLease) -> LeaseInfo:
    holder = Holder(
        row.holder_kind,  # type: ignore[arg-type]  # stored from a HolderKind
        row.holder_host,
        row.holder_pid,
        row.holder_instance,
        row.flow_run_id,
        row.flow_run_url,
    )
    return LeaseInfo(row.account, row.token, holder, row.acquired_at, row.renewed_at, row.expires_at, row.ttl_seconds)


def _holder_values(holder: Holder) -> dict[str, object]:
    return {
        "holder_kind": holder.kind,
        "holder_host": holder.host,
        "holder_pid": holder.pid,
        "holder_instance": holder.instance,
        "flow_run_id": holder.flow_run_id,
        "flow_run_url": holder.flow_run_url,
    }


def _record(session: Session, account: str, token: int, event: str, holder: str, at: datetime, note: str = "") -> None:
    session.add(LeaseEventRecord(account=account, token=token, event=event, holder=holder, at=at, note=note or None))


def _row(session: Session, account: str) -> AccountLease | None:
    return session.exec(select(AccountLease).where(AccountLease.account == account)).first()


def _take(
    session: Session, account: str, holder: Holder, ttl: float, now: datetime, condition: object
) -> LeaseInfo | None:
    """Give the lease to holder (token + 1) where `condition` holds; the new lease, or None when it did not."""
    result = session.execute(
        update(AccountLease)
        .where(col(AccountLease.account) == account, condition)  # type: ignore[arg-type]
        .values(
            token=AccountLease.token + 1,  # type: ignore[operator]
            acquired_at=now,
            renewed_at=now,
            expires_at=now + timedelta(seconds=ttl),
            ttl_seconds=ttl,
            **_holder_values(holder),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    row = _row(session, account)
    assert row is not None
    session.refresh(row)
    return _info(row)


def acquire(
    session_factory: Callable[[], Session],
    account: str,
    holder: Holder,
    ttl_seconds: float,
    *,
    holder_gone: Callable[[LeaseInfo], bool] | None = None,
    now: datetime | None = None,
) -> LeaseInfo:
    """Take the account's lease if it is free, expired, already this holder's, or its holder is proven gone."""
    now = now or _now()
    try:
        with session_factory() as session, session.begin():
            row = AccountLease(
                account=account,
                token=1,
                acquired_at=now,
                renewed_at=now,
                expires_at=now + timedelta(seconds=ttl_seconds),
                ttl_seconds=ttl_seconds,
                **_holder_values(holder),  # type: ignore[arg-type]
            )
            session.add(row)
            session.flush()
            _record(session, account, 1, "acquired", holder.describe(), now, "first holder of this account")
            return _info(row)
    except IntegrityError:
        pass  # the row exists: take it over below if it may be taken
    with session_factory() as session, session.begin():
        taken = _take(
            session,
            account,
            holder,
            ttl_seconds,
            now,
            (col(AccountLease.expires_at) <= now) | (col(AccountLease.holder_instance) == holder.instance),
        )
        if taken is not None:
            _record(session, account, taken.token, "acquired", holder.describe(), now)
            return taken
    with session_factory() as session:
        existing = _row(session, account)
        assert existing is not None
        current = _info(existing)
    if holder_gone is not None and holder_gone(current):
        with session_factory() as session, session.begin():
            taken = _take(session, account, holder, ttl_seconds, now, col(AccountLease.token) == current.token)
            if taken is not None:
                note = f"previous holder {current.holder.describe()} (token {current.token}) is gone: lease broken"
                _record(session, account, taken.token, "broken", holder.describe(), now, note)
                return taken
        return acquire(session_factory, account, holder, ttl_seconds, now=now)  # someone else moved first
    raise LeaseHeld(current)  # nothing written: the refused process prints one line and exits


def renew(session_factory: Callable[[], Session], fence: Fence, ttl_seconds: float) -> LeaseInfo:
    """Extend this holder's lease by its TTL from now; LeaseLost when the token is no longer current."""
    now = _now()
    with session_factory() as session, session.begin():
        result = session.execute(
            update(AccountLease)
            .where(col(AccountLease.account) == fence.account, col(AccountLease.token) == fence.token)
            .values(renewed_at=now, expires_at=now + timedelta(seconds=ttl_seconds), ttl_seconds=ttl_seconds)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            row = _row(session, fence.account)
            assert row is not None
            session.refresh(row)
            return _info(row)
        held = _row(session, fence.account)
        now_held = held.token if held is not None else None
        taker = _info(held).holder.describe() if held is not None else "nobody"
        _record(session, fence.account, fence.token, "lost", "renewal", now, f"token is now {now_held} ({taker})")
    raise LeaseLost(f"lease of account {fence.account} lost: token {fence.token} is stale, now held by {taker}")


# The fence runs before every pending order: prebuilt (as _TOKEN below), with the deadline bound through the column's
# own type so SQLite and PostgreSQL compare timestamps exactly as the ORM statements do.
_EXPIRES_AT = AccountLease.__table__.c.expires_at.type  # type: ignore[attr-defined]
_FENCE = text(
    "UPDATE account_leases SET renewed_at = renewed_at"
    " WHERE account = :account AND token = :token AND expires_at > :deadline"
).bindparams(bindparam("deadline", type_=_EXPIRES_AT))


def check_fence(session: Session, fence: Fence, now: datetime) -> None:
    """Inside the caller's transaction, first statement: the token is current and the lease unexpired, else
    LeaseLost. The UPDATE takes the row's lock, so a takeover waits for this transaction or happens before it."""
    deadline = now + timedelta(seconds=fence.margin_seconds)
    result = session.connection().execute(
        _FENCE, {"account": fence.account, "token": fence.token, "deadline": deadline}
    )
    if result.rowcount != 1:
        raise LeaseLost(
            f"fence refused the write: token {fence.token} of account {fence.account} is not the current lease "
            f"with {fence.margin_seconds:g} s left (another holder took the account, or this one let it lapse)"
        )


def expire(session_factory: Callable[[], Session], fence: Fence, event: str, who: str, note: str = "") -> bool:
    """Expire the lease now if fence's token is still current (release, or break a dead holder's lease)."""
    now = _now()
    with session_factory() as session, session.begin():
        result = session.execute(
            update(AccountLease)
            .where(col(AccountLease.account) == fence.account, col(AccountLease.token) == fence.token)
            .values(expires_at=now)
            .execution_options(synchronize_session=False)
        )
        done = result.rowcount == 1  # type: ignore[attr-defined]
        if done:
            _record(session, fence.account, fence.token, event, who, now, note)
    return done


def override(
    session_factory: Callable[[], Session], account: str, holder: Holder, ttl_seconds: float, reason: str
) -> tuple[LeaseInfo, LeaseInfo | None]:
    """An operator's emergency command takes the lease whoever holds it; returns (new lease, the one it replaced)."""
    now = _now()
    with session_factory() as session:
        row = _row(session, account)
        previous = _info(row) if row is not None else None
    if previous is None:
        try:
            lease = acquire(session_factory, account, holder, ttl_seconds, now=now)
        except LeaseHeld:
            return override(session_factory, account, holder, ttl_seconds, reason)
        return lease, None
    with session_factory() as session, session.begin():
        taken = _take(session, account, holder, ttl_seconds, now, col(AccountLease.token) == previous.token)
        if taken is not None:
            note = f"{reason}; replaced {previous.holder.describe()} (token {previous.token})"
            _record(session, account, taken.token, "override", holder.describe(), now, note)
    if taken is None:  # the holder changed in between: override whoever holds it now
        return override(session_factory, account, holder, ttl_seconds, reason)
    return taken, previous


def current(session_factory: Callable[[], Session], account: str) -> LeaseInfo | None:
    with session_factory() as session:
        row = _row(session, account)
        return _info(row) if row is not None else None


# One column by primary key, as a prebuilt textual statement on a bare connection: no ORM session, no row object, no
# statement built and cache-keyed per call, so a bot can ask every cycle whether its token is still the account's (an
# operator's override) for a fraction of current()'s cost.
_TOKEN = text("SELECT token FROM account_leases WHERE account = :account")


def token(engine: Engine, account: str) -> int | None:
    with engine.connect() as connection:
        value = connection.execute(_TOKEN, {"account": account}).scalar()
    return None if value is None else int(value)


def history(session_factory: Callable[[], Session], account: str, limit: int) -> list[LeaseEvent]:
    query = (
        select(LeaseEventRecord)
        .where(LeaseEventRecord.account == account)
        .order_by(col(LeaseEventRecord.id).desc())
        .limit(limit)
    )
    with session_factory() as session:
        rows = session.exec(query).all()
    return [LeaseEvent(r.account, r.token, r.event, r.holder, r.at, r.note) for r in reversed(rows)]
