"""The runbooks' emergency procedures as plain functions: kill switch, reduce-only, cancel-all, flatten.

Sources: operations runbook "Emergency Procedures" (emergency stop with RISK_KILL_SWITCH_ENABLED=1, reduce-only with
RISK_REDUCE_ONLY_MODE=1, "issue market exits to flatten exposure while reduce-only is active") and the perpetuals
runbook's "Emergency Shutdown" (kill switch, then force-cancel all orders).

The switches are flag files in STATE_DIR (KILL_SWITCH, REDUCE_ONLY) that TradingBot reads every cycle through
trader.bot.read_controls; the environment variables can only be set where the bot starts, so a running bot is
stopped by the file (or by the Prefect Variable, see prefect_adapter/variables.py). Every function is idempotent: a
second call finds nothing left to do and says so.

Flatten is spot-only: it sells what the broker reports held for the given symbols, reduce-only, at market. A short
position (perpetuals, COINBASE_ENABLE_DERIVATIVES=1) or a symbol the broker cannot trade is reported as skipped,
never bought back here: close it on Coinbase (INTX) by hand. (The graceful shutdown's exits, send_exit with
close_shorts, also buy a short futures position back, reduce-only: trader/shutdown/procedure.py.)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal

from trader.account_names import DEFAULT_ACCOUNT
from trader.brokers.base import Broker
from trader.brokers.rules import fmt
from trader.domain import Order, OrderRequest, OrderStatus, OrderType, Side, quantize_down
from trader.errors import OrderRejected, TraderError
from trader.ledger import Ledger
from trader.ledger.lease import Holder, LeaseInfo
from trader.orders.path import OrderPath
from trader.risk.guards import RiskControls
from trader.settings import Settings

log = logging.getLogger(__name__)

Switch = Literal["kill_switch", "reduce_only"]
SWITCHES: tuple[Switch, ...] = ("kill_switch", "reduce_only")
FLAG_FILES: dict[Switch, str] = {"kill_switch": "KILL_SWITCH", "reduce_only": "REDUCE_ONLY"}
ENV_NAMES: dict[Switch, str] = {"kill_switch": "RISK_KILL_SWITCH_ENABLED", "reduce_only": "RISK_REDUCE_ONLY_MODE"}
CANCEL_BATCH = 100  # Coinbase's batch_cancel limit
PROCEDURES: dict[Switch, str] = {"kill_switch": "kill-switch", "reduce_only": "reduce-only"}
# Which incidents a switch turned off resolves: the procedures whose state it ends.
RESOLVED_BY: dict[Switch, list[str]] = {
    "kill_switch": ["kill-switch", "cancel-all"],
    "reduce_only": ["reduce-only", "flatten"],
}
TITLES: dict[Switch, str] = {
    "kill_switch": "kill switch ON: the bot sends no new orders",
    "reduce_only": "reduce-only ON: the bot only shrinks positions",
}


def incident_fingerprint(procedure: str) -> str:
    """One SEV-1 incident per procedure: emergency:kill-switch, emergency:reduce-only, ...:cancel-all, ...:flatten."""
    return f"emergency:{procedure}"


def open_incident(
    settings: Settings, procedure: str, title: str, evidence: str, flow_run_url: str | None = None
) -> int | None:
    """The procedure's SEV-1 incident (an operator stopped trading by hand), announced through Slack when set up."""
    from trader.alerts.incidents import open_incident_desk
    from trader.alerts.severity import IncidentKind

    with open_incident_desk(settings) as desk:
        return desk.raise_incident(
            IncidentKind.EMERGENCY_PROCEDURE,
            title,
            evidence,
            fingerprint=incident_fingerprint(procedure),
            flow_run_url=flow_run_url,
        )


def resolve_incidents(settings: Settings, procedures: list[str]) -> list[str]:
    """Resolve the procedures' open incidents; returns the fingerprints that were open."""
    from trader.alerts.incidents import open_incident_desk

    with open_incident_desk(settings) as desk:
        return [f for f in map(incident_fingerprint, procedures) if desk.resolve(f)]


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def operator_override(ledger: Ledger, settings: Settings, procedure: str) -> Iterator[LeaseInfo]:
    """An emergency procedure takes the account's lease from whoever holds it, recorded in the lease history, so a
    running bot stands down before its next order (its renewal or its next pending write finds a newer token);
    released when the procedure ends, so a restarted or standby bot can take the account again."""
    lease, replaced = ledger.override_lease(
        settings.account, Holder.this_process("operator"), settings.lease_ttl_seconds, f"emergency {procedure}"
    )
    if replaced is not None and not replaced.expired() and replaced.holder.kind == "bot":
        log.warning(
            "emergency %s: operator override of account %s; the running %s stands down before its next order",
            procedure,
            settings.account,
            replaced.holder.describe(),
        )
    try:
        yield lease
    finally:
        ledger.release_lease(lease.fence, f"emergency {procedure} done")


# --- switches -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SwitchChange:
    """One switch set (or cleared) in one place, with its value before."""

    switch: Switch
    where: str  # "flag file /.../KILL_SWITCH", "Prefect Variable kill_switch"
    before: bool | None  # None: could not be read
    after: bool

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def describe(self) -> str:
        return f"{self.switch} {_on_off(self.after)} in {self.where} (was {_on_off(self.before)})"

    def row(self) -> dict[str, str]:
        """One artifact row: step, target, id, before, result."""
        result = _on_off(self.after) + ("" if self.changed else " (unchanged)")
        return _row(f"set {self.switch}", self.where, "", _on_off(self.before), result)


def _on_off(value: bool | None) -> str:
    return "unknown" if value is None else "ON" if value else "OFF"


def flag_file(settings: Settings, switch: Switch) -> Path:
    """STATE_DIR/KILL_SWITCH or STATE_DIR/REDUCE_ONLY: the file read_controls looks for every cycle."""
    return settings.state_dir / FLAG_FILES[switch]


def set_switch(settings: Settings, switch: Switch, enabled: bool, *, reason: str = "") -> SwitchChange:
    """Create (enabled) or remove the switch's flag file; idempotent, returns the value before."""
    path = flag_file(settings, switch)
    before = path.exists()
    if enabled and not before:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{switch} set at {_now().isoformat()}{f': {reason}' if reason else ''}\n")
    elif not enabled and before:
        path.unlink(missing_ok=True)
    change = SwitchChange(switch, f"flag file {path}", before, enabled)
    if change.changed:
        log.warning("%s", change.describe())
    return change


def switch_in_environment(settings: Settings, switch: Switch) -> bool:
    """Whether this process's environment sets the switch (RISK_KILL_SWITCH_ENABLED, RISK_REDUCE_ONLY_MODE)."""
    return settings.risk_kill_switch_enabled if switch == "kill_switch" else settings.risk_reduce_only_mode


def local_switches(settings: Settings) -> dict[Switch, list[str]]:
    """Per switch, where it is on in this process: the environment variable and/or the flag file."""
    on: dict[Switch, list[str]] = {}
    for switch in SWITCHES:
        value = settings.risk_kill_switch_enabled if switch == "kill_switch" else settings.risk_reduce_only_mode
        on[switch] = ([ENV_NAMES[switch]] if value else []) + (
            [f"flag file {flag_file(settings, switch)}"] if flag_file(settings, switch).exists() else []
        )
    return on


# --- cancel-all ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelledOrder:
    order_id: str
    client_order_id: str
    symbol: str
    side: str
    quantity: Decimal
    cancelled: bool  # False: the broker refused (already filled, unknown)


@dataclass
class CancelResult:
    """What cancel-all found working on the broker and what it cancelled."""

    at: datetime
    orders: list[CancelledOrder] = field(default_factory=list)
    batches: int = 0

    @property
    def cancelled(self) -> int:
        return sum(o.cancelled for o in self.orders)

    @property
    def not_cancelled(self) -> int:
        return len(self.orders) - self.cancelled

    def rows(self) -> list[dict[str, str]]:
        """One artifact row per working order found (cancelled or not), or one "nothing to cancel" row."""
        if not self.orders:
            return [_row("cancel", "no working orders on the broker", "", "", "nothing to cancel")]
        return [
            _row(
                "cancel",
                f"{o.symbol} {o.side} {fmt(o.quantity)}",
                f"{o.order_id} ({o.client_order_id})",
                "open",
                "cancelled" if o.cancelled else "not cancelled (filled or gone)",
            )
            for o in self.orders
        ]

    def summary(self) -> str:
        if not self.orders:
            return "cancel-all: no working orders on the broker, nothing to cancel"
        return (
            f"cancel-all: {self.cancelled} of {len(self.orders)} working order(s) cancelled in {self.batches} "
            f"batch(es); {self.not_cancelled} not cancelled"
        )


def cancel_all(
    broker: Broker,
    ledger: Ledger,
    *,
    at: datetime | None = None,
    batch_size: int = CANCEL_BATCH,
    reason: str = "cancelled by emergency cancel-all",
) -> CancelResult:
    """Cancel every working order on the broker in batches and record the cancels in the ledger; idempotent."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
    at = at or broker.now()
    result = CancelResult(at)
    working = broker.list_open_orders()
    for begin in range(0, len(working), batch_size):
        chunk = working[begin : begin + batch_size]
        answers = broker.cancel_orders([o.order_id for o in chunk])
        result.batches += 1
        cancelled = [o for o in chunk if answers.get(o.order_id)]
        done = {o.order_id for o in cancelled}
        ledger.apply_orders(
            [replace(o, status=OrderStatus.CANCELLED, updated_at=at, reject_reason=reason) for o in cancelled]
        )
        refused = [o for o in chunk if o.order_id not in done]
        if refused:  # filled or gone in between: take the broker's view so the ledger does not keep them open
            ledger.apply_orders([_current(broker, o) for o in refused])
        result.orders += [
            CancelledOrder(o.order_id, o.client_order_id, o.symbol, str(o.side), o.quantity, o.order_id in done)
            for o in chunk
        ]
    log.warning("%s", result.summary())
    return result


def operator_cancel_all(settings: Settings, *, migrate: bool = True) -> CancelResult:
    """`cancel_all` on this profile's broker and ledger, under the operator's override of the account's lease."""
    from trader.runtime import build_broker, open_ledger  # runtime builds whole bots: loaded only when this runs

    broker = build_broker(settings)
    with open_ledger(settings, migrate=migrate) as ledger, operator_override(ledger, settings, "cancel-all"):
        return cancel_all(broker, ledger)


def _row(step: str, target: str, ident: str, before: str, result: str) -> dict[str, str]:
    return {"step": step, "target": target, "id": ident, "before": before, "result": result}


def _current(broker: Broker, order: Order) -> Order:
    try:
        return broker.get_order(order.order_id)
    except TraderError:
        return order


# --- flatten ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExitOrder:
    """One reduce-only market exit: sent now, or found already sent by an earlier attempt of the same request."""

    symbol: str
    client_order_id: str
    quantity: Decimal
    status: str
    order_id: str | None
    note: str


@dataclass(frozen=True)
class SkippedPosition:
    symbol: str
    quantity: Decimal
    reason: str


@dataclass
class FlattenResult:
    """Reduce-only turned on, working orders cancelled, one market exit per held position."""

    request_id: str
    reduce_only: SwitchChange
    cancelled: CancelResult
    exits: list[ExitOrder] = field(default_factory=list)
    skipped: list[SkippedPosition] = field(default_factory=list)
    fills_recorded: int = 0

    @property
    def sent(self) -> list[ExitOrder]:
        return [e for e in self.exits if e.note.startswith("sent")]

    def rows(self) -> list[dict[str, str]]:
        """Reduce-only, the cancels, one row per exit and per skipped position."""
        rows = [self.reduce_only.row(), *self.cancelled.rows()]
        rows += [
            _row(
                "exit",
                f"{e.symbol} sell {fmt(e.quantity)} reduce-only market",
                f"{e.order_id or '-'} ({e.client_order_id})",
                "",
                f"{e.status}: {e.note}",
            )
            for e in self.exits
        ]
        rows += [_row("skipped", s.symbol, "", f"held {fmt(s.quantity)}", s.reason) for s in self.skipped]
        if not self.exits and not self.skipped:
            rows.append(_row("exit", "no positions held in the symbols to flatten", "", "", "nothing to sell"))
        return rows

    def title(self) -> str:
        """The SEV-1 incident's title for this flatten."""
        return f"flatten: {len(self.exits)} reduce-only market exit(s), {len(self.skipped)} position(s) skipped"

    def summary(self) -> str:
        return (
            f"flatten {self.request_id}: {len(self.sent)} exit(s) sent, "
            f"{len(self.exits) - len(self.sent)} already sent earlier, {len(self.skipped)} position(s) skipped; "
            f"{self.cancelled.cancelled} working order(s) cancelled; reduce-only "
            f"{'turned on' if self.reduce_only.changed else 'already on'}"
        )


def exit_client_order_id(request_id: str, symbol: str, account: str = DEFAULT_ACCOUNT) -> str:
    """The same id for the same (flatten request, symbol, account), so a retried flatten finds its order instead of
    selling twice; accounts on one Coinbase key flattened by one request never share an exit's id (the default
    account's ids are as before accounts); short enough for Coinbase's client_order_id."""
    scope = request_id if account == DEFAULT_ACCOUNT else f"{request_id}:{account}"
    digest = hashlib.sha256(f"{scope}:{symbol}".encode()).hexdigest()[:20]
    return f"flatten-{symbol}-{digest}"


def flatten(
    broker: Broker,
    ledger: Ledger,
    settings: Settings,
    *,
    request_id: str,
    symbols: list[str],
    at: datetime | None = None,
) -> FlattenResult:
    """Reduce-only on, cancel working orders, then a reduce-only market sell of each spot position in `symbols`.

    Sizes are floored to the product's base_increment and never exceed what the broker reports held; dust below
    base_min_size is left and reported. Idempotent per request_id: each exit's client_order_id is derived from
    (request_id, symbol) and looked up on the broker before anything is sent."""
    if not request_id:
        raise ValueError("flatten needs a request_id (the same one for a retry of the same flatten)")
    at = at or broker.now()
    reduce_only = set_switch(settings, "reduce_only", True, reason=f"flatten {request_id}")
    with operator_override(ledger, settings, "flatten") as lease:
        cancelled = cancel_all(broker, ledger, at=at, reason="cancelled by flatten")
        result = FlattenResult(request_id, reduce_only, cancelled)
        wanted = list(dict.fromkeys(s.upper() for s in symbols))
        held = {p.symbol: p.quantity for p in broker.positions()}
        for symbol, quantity in sorted(held.items()):
            if symbol not in wanted and quantity != 0:
                result.skipped.append(SkippedPosition(symbol, quantity, "not in the symbols to flatten"))
        # The one order path; the exits are the only orders it lets through with the kill switch on.
        path = OrderPath(
            broker,
            ledger,
            controls=lambda: _switches_now(settings),
            fence=lambda: lease.fence,
            max_leverage=settings.risk_max_leverage,
        )
        for symbol in wanted:
            exit_order = send_exit(broker, ledger, path, symbol, held.get(symbol, Decimal(0)), request_id, result)
            if exit_order is not None:
                result.exits.append(exit_order)
    result.fills_recorded += _record_exit_fills(broker, ledger, result, at)
    log.warning("%s", result.summary())
    return result


def flatten_account(settings: Settings, *, request_id: str, symbols: list[str], migrate: bool = True) -> FlattenResult:
    """`flatten` on this profile's broker and ledger (the ledger's connections closed when it is done)."""
    from trader.runtime import build_broker, open_ledger  # runtime builds whole bots: loaded only when this runs

    broker = build_broker(settings)
    with open_ledger(settings, migrate=migrate) as ledger:
        return flatten(broker, ledger, settings, request_id=request_id, symbols=symbols)


def _switches_now(settings: Settings) -> RiskControls:
    from trader.bot import read_controls

    return read_controls(settings)


def send_exit(
    broker: Broker,
    ledger: Ledger,
    path: OrderPath,
    symbol: str,
    quantity: Decimal,
    request_id: str,
    result: FlattenResult,
    *,
    close_shorts: bool = False,
) -> ExitOrder | None:
    """One reduce-only market exit of a held `quantity` through the order path (flatten's sells, and each round of
    the graceful shutdown's wait for flat, which also buys a short back: close_shorts): the exit already sent for
    (request_id, symbol) is found and returned instead of a second one; a short (unless close_shorts), an unknown
    product, dust or a refusal goes to result.skipped; None when nothing was sent or found."""
    client_order_id = exit_client_order_id(request_id, symbol, ledger.account)
    existing = broker.find_order(client_order_id)
    if existing is not None:
        ledger.apply_order(existing)
        return ExitOrder(
            symbol,
            client_order_id,
            existing.quantity,
            str(existing.status),
            existing.order_id,
            "already sent by an earlier attempt",
        )
    if quantity == 0:
        return None
    if quantity < 0 and not close_shorts:
        result.skipped.append(
            SkippedPosition(
                symbol, quantity, "short position (perpetuals): spot flatten only sells; close it on Coinbase INTX"
            )
        )
        return None
    try:
        product = broker.get_product(symbol)
    except OrderRejected as error:
        result.skipped.append(SkippedPosition(symbol, quantity, str(error)))
        return None
    held = abs(quantity)
    size = quantize_down(min(held, product.base_max_size), product.base_increment)
    if size < product.base_min_size:
        result.skipped.append(
            SkippedPosition(
                symbol,
                quantity,
                f"dust: {fmt(held)} {product.base_currency} is below base_min_size "
                f"{fmt(product.base_min_size)} for {symbol}; left in place",
            )
        )
        return None
    side = Side.SELL if quantity > 0 else Side.BUY  # a short (close_shorts) is bought back
    request = OrderRequest(symbol, side, OrderType.MARKET, size, client_order_id, reduce_only=True)
    try:  # a crashed attempt may have recorded it without sending: resume that pending row
        outcome = path.send(request, position=quantity, emergency_exit=True, resume_pending=True)
    except OrderRejected as error:
        result.skipped.append(SkippedPosition(symbol, quantity, f"exit refused before sending: {error}"))
        return None
    result.fills_recorded += outcome.fills_recorded
    note = "sent" if size == held else f"sent; {fmt(held - size)} {product.base_currency} left (increments)"
    if outcome.order is None:
        if outcome.status == OrderStatus.PENDING_SUBMIT:
            note = "broker unreachable; left for reconciliation"
        else:
            note = f"rejected: {outcome.reason}"
        return ExitOrder(symbol, client_order_id, size, str(outcome.status), None, note)
    if not outcome.accepted:
        note = f"rejected: {outcome.order.reject_reason or 'no reason given'}"
    log.warning("flatten: %s %s %s %s reduce-only market: %s", client_order_id, side, fmt(size), symbol, outcome.status)
    return ExitOrder(symbol, client_order_id, size, str(outcome.status), outcome.order.order_id, note)


def _record_exit_fills(broker: Broker, ledger: Ledger, result: FlattenResult, at: datetime) -> int:
    ids = {e.order_id for e in result.exits if e.order_id}
    if not ids:
        return 0
    fills = [f for f in broker.list_fills(since=at - timedelta(seconds=1)) if f.order_id in ids]
    return ledger.record_fills(fills) if fills else 0
