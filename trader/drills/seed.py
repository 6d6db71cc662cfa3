"""What a drill's namespace starts with: the live profile's latest good checkpoint as state entries (read only),
topped up with synthetic entries to the drill's workload size (the runbook's 350-1000 keys)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trader.state.base import TierUnavailable

if TYPE_CHECKING:
    from trader.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_KEYS = 1000


@dataclass
class Seed:
    """State entries to write into the drill's tiers, where they came from, and what to tell the operator."""

    entries: dict[str, Any]
    checkpoint_id: str | None = None
    from_checkpoint: int = 0
    synthetic: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def orders(self) -> int:
        return sum(1 for key in self.entries if key.startswith("order:"))


def synthetic_value(i: int) -> dict[str, Any]:
    """About 120 bytes of JSON, like a position or order cache entry (the drills and bench/state_recovery.py)."""
    return {
        "symbol": "BTC-USD" if i % 2 else "ETH-USD",
        "quantity": f"{(i % 997) / 1000:.8f}",
        "average_entry_price": f"{60000 + i % 5000}.{i % 100:02d}",
        "updated_at": "2026-11-21T05:00:00+00:00",
        "seq": i,
    }


def entries_from_snapshot(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint snapshot as state entries: position:<symbol>, order:<client_order_id>, balance:<currency>,
    broker_position:<symbol>, strategy:<name>, guard:<name>."""
    entries: dict[str, Any] = {}
    for symbol, position in (snapshot.get("positions") or {}).items():
        entries[f"position:{symbol}"] = position
    for order in snapshot.get("open_orders") or []:
        entries[f"order:{order.get('client_order_id')}"] = order
    for currency, balance in (snapshot.get("balances") or {}).items():
        entries[f"balance:{currency}"] = balance
    for symbol, position in (snapshot.get("broker_positions") or {}).items():
        entries[f"broker_position:{symbol}"] = position
    for name, value in (snapshot.get("strategy_state") or {}).items():
        entries[f"strategy:{name}"] = value
    for name, value in (snapshot.get("guard_counters") or {}).items():
        entries[f"guard:{name}"] = value
    return entries


def latest_checkpoint_entries(settings: Settings) -> tuple[str | None, dict[str, Any], str | None]:
    """(checkpoint id, entries, why not) from the live profile's newest verified checkpoint; read only."""
    from trader.state.checkpoints import CheckpointError, CheckpointStore
    from trader.state.cold import cold_store_from_settings

    store = None
    try:
        # migrate=False and no local fallback: reading the live checkpoints must not write anything live.
        cold = cold_store_from_settings(settings, fallback=False)
        store = CheckpointStore(settings.database_url, cold, account=settings.account, migrate=False)
        info = store.latest_good()
        if info is None:
            return None, {}, "the live profile has no verified checkpoint"
        return info.id, entries_from_snapshot(store.restore(info.id)), None
    except (CheckpointError, TierUnavailable) as error:
        return None, {}, f"the live checkpoints are unreadable ({error})"
    except Exception as error:  # no checkpoints table yet, database down: the drill still runs, synthetic
        text = str(getattr(error, "orig", None) or error).strip().splitlines()
        return None, {}, f"the live checkpoints are unreadable ({text[0] if text else type(error).__name__})"
    finally:
        if store is not None:
            store.dispose()


def seed_for_drill(settings: Settings, keys: int = DEFAULT_KEYS) -> Seed:
    """The latest good checkpoint's entries plus synthetic ones up to `keys` entries in all."""
    if keys < 1:
        raise ValueError(f"keys must be at least 1 (got {keys})")
    checkpoint_id, entries, why_not = latest_checkpoint_entries(settings)
    seed = Seed(entries=dict(entries), checkpoint_id=checkpoint_id, from_checkpoint=len(entries))
    if checkpoint_id is not None:
        seed.notes.append(f"seeded {len(entries)} entries from the live checkpoint {checkpoint_id}")
    else:
        seed.notes.append(f"no checkpoint seeded: {why_not}")
    i = 0
    while len(seed.entries) < keys:
        seed.entries[f"synthetic:{i:06d}"] = synthetic_value(i)
        i += 1
    seed.synthetic = i
    if i:
        seed.notes.append(f"{i} synthetic entries added to reach the {keys}-key workload")
    return seed
