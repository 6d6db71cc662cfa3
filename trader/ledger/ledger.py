"""The trading ledger: every session, order, fill, position, balance snapshot, incident, checklist run,
checkpoint and account lease, and the only code that speaks SQL to the ledger database.

One database holds many accounts; a Ledger is opened for one of them (`account`, default "default") and reads and
writes only that account's rows. The lease methods alone take the account they act on.

The Ledger is put together from one section per area (trader/ledger/sessions.py, orders.py, fills.py, funding.py,
balances.py, incidents.py, checkpoints.py, housekeeping.py, and the lease below); records become domain objects
in trader/ledger/mappers.py.
"""

from __future__ import annotations

from collections.abc import Callable

from trader.ledger import lease
from trader.ledger.balances import BalancesMixin
from trader.ledger.base import now
from trader.ledger.checkpoints import CheckpointsMixin
from trader.ledger.fills import FillsMixin
from trader.ledger.funding import FundingMixin
from trader.ledger.housekeeping import HousekeepingMixin
from trader.ledger.incidents import IncidentsMixin
from trader.ledger.lease import Fence, Holder, LeaseEvent, LeaseInfo
from trader.ledger.orders import OrdersMixin
from trader.ledger.sessions import SessionsMixin


class Ledger(
    SessionsMixin,
    OrdersMixin,
    FillsMixin,
    FundingMixin,
    BalancesMixin,
    IncidentsMixin,
    CheckpointsMixin,
    HousekeepingMixin,
):
    """One account's durable record on SQLite or PostgreSQL; every method is one short transaction."""

    # --- the account lease (one active bot per account; trader/ledger/lease.py) -----------------------------------

    def acquire_lease(
        self,
        account: str,
        holder: Holder,
        ttl_seconds: float,
        *,
        holder_gone: Callable[[LeaseInfo], bool] | None = None,
    ) -> LeaseInfo:
        """Take the account's lease (free, expired, or its holder proven gone); LeaseHeld otherwise, with nothing
        written."""
        return lease.acquire(self._session, account, holder, ttl_seconds, holder_gone=holder_gone)

    def renew_lease(self, fence: Fence, ttl_seconds: float) -> LeaseInfo:
        """Extend the lease by its TTL from now; LeaseLost when fence's token is no longer current."""
        return lease.renew(self._session, fence, ttl_seconds)

    def release_lease(self, fence: Fence, note: str = "") -> bool:
        """Expire this holder's lease now so a standby or a restart can take it at once; False if not current."""
        return lease.expire(self._session, fence, "released", "holder", note)

    def break_lease(self, account: str, token: int, reason: str) -> bool:
        """Expire the lease iff `token` is still current (its holder is known dead); False otherwise."""
        return lease.expire(self._session, Fence(account, token), "broken", "supervisor", reason)

    def override_lease(
        self, account: str, holder: Holder, ttl_seconds: float, reason: str
    ) -> tuple[LeaseInfo, LeaseInfo | None]:
        """An operator's emergency command takes the lease from whoever holds it (recorded); (new, replaced)."""
        return lease.override(self._session, account, holder, ttl_seconds, reason)

    def check_lease(self, fence: Fence) -> None:
        """LeaseLost unless fence's token is the account's current unexpired lease (before an unrecorded write)."""
        with self._transaction() as session:
            lease.check_fence(session, fence, now())

    def current_lease(self, account: str) -> LeaseInfo | None:
        """The account's lease row (held, or expired), or None if no bot ever held it."""
        return lease.current(self._session, account)

    def lease_token(self, account: str) -> int | None:
        """The account's current fencing token (None: never held): one indexed read, cheap enough for every cycle."""
        return lease.token(self.engine, account)

    def lease_history(self, account: str, limit: int = 50) -> list[LeaseEvent]:
        """The newest `limit` lease events of the account, oldest first."""
        return lease.history(self._session, account, limit)

    # --- lifetime ----------------------------------------------------------------------------------------------

    def dispose(self) -> None:
        """Close every pooled database connection."""
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.dispose()
