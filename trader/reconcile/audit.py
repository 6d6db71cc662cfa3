"""The periodic audit: every difference between the ledger and the broker, classified, and repaired from the
broker's truth without ever placing or cancelling an order.

What is compared, with `at` the audit time and `since = at - lookback`:
- orders: every ledger order still open, every ledger order the broker acknowledged that changed since `since`, and
  every order the broker reports open; status, size, filled size, limit price and average fill price, by the order
  rules startup reconciliation applies too (trader/reconcile/orders.py).
- fills: the broker's fills after `since` against the ledger's, by trade id.
- positions: quantity per symbol (average entry prices differ by method between brokers and are not compared).
- balances: the total (available + hold) per currency against the expected balance derived from the ledger:

      expected = baseline snapshot total + the effect of every fill after the snapshot
      (buy: base + quantity, quote - quantity x price - fee; sell: base - quantity, quote + quantity x price - fee)

  The baseline is the newest balance snapshot taken at or before `since` (or, when there is none, the oldest one
  after it), so a deposit, withdrawal, untracked fee or manual trade shows as drift for one whole `lookback`
  window instead of vanishing at the bot's next snapshot. A snapshot that shares its timestamp with a fill is
  skipped: the paper exchange stamps a bar's fills with the same time as the bot's snapshot, so which side of it
  they fell on is unknown. Fills the broker has and the ledger is missing count as ledger fills (they are exchange
  truth being imported), so a missed fill is reported once, as missing_locally, not again as drift. Fees are
  charged in the quote currency (Coinbase spot and the paper exchange). Drift is valued in `quote_currency` at the
  snapshot's price (or the broker's mid when the snapshot has none); drift that cannot be valued counts as beyond
  tolerance.

Before any comparison the broker's answers go through the reconciliation inputs' data-quality suite
(trader/quality/reconciliation.py): when they fail it, the run repairs nothing (it reports what it would do), its
artifact says why, and record_data_quality_incident() opens a DATA_QUALITY incident that a clean run resolves.

An audit racing the bot (a fill between the broker's balance and fill reads) can show a transient difference;
the next run clears it. A fill the bot records after the broker was read is no difference: the ledger's fills are
listed before the read, and positions are compared as of the read (see _audit_positions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from trader.alerts.severity import IncidentKind, Severity, severity_for
from trader.brokers.base import Broker
from trader.domain import Fill, Order, Position, Side
from trader.errors import TraderError, UnknownSymbol
from trader.ledger import BalanceSnapshot, FillRecord, Ledger
from trader.ledger.mappers import fill_of
from trader.ledger.types import canonical_decimal
from trader.quality.gx_runtime import GateResult
from trader.quality.reconciliation import check_reconciliation_inputs
from trader.reconcile.orders import OrderCheck, Verdict, audit_scope, check_orders, repair_order, same

if TYPE_CHECKING:
    from trader.alerts.incidents import IncidentDesk

log = logging.getLogger(__name__)

DRIFT_INCIDENT = "reconcile:balance_drift"
DATA_QUALITY_INCIDENT = "reconcile:data_quality"
# Runbook severity matrix: the ledger no longer explains the account, like "account telemetry stalled" (SEV-2);
# nothing is offline or halted (SEV-1), and it is not free of financial impact (SEV-3).
DRIFT_SEVERITY: Severity = "SEV-2"
# A pending_submit order this young may be on its way to the broker from the running bot: left alone.
IN_FLIGHT_GRACE = timedelta(minutes=2)
BASELINE_CANDIDATES = 50
ZERO = Decimal(0)


class DifferenceKind(StrEnum):
    MISSING_LOCALLY = "missing_locally"  # the broker has an order or fill the ledger does not
    UNKNOWN_ON_EXCHANGE = "unknown_on_exchange"  # the ledger has an open order (or a fill) the broker does not know
    STATUS_MISMATCH = "status_mismatch"
    QUANTITY_MISMATCH = "quantity_mismatch"
    PRICE_MISMATCH = "price_mismatch"
    POSITION_MISMATCH = "position_mismatch"
    BALANCE_DRIFT = "balance_drift"


Entity = Literal["order", "fill", "position", "balance"]
# How a compared order field that differs is classified (the fields are trader/reconcile/orders.py's).
FIELD_KINDS = {
    "status": DifferenceKind.STATUS_MISMATCH,
    "quantity": DifferenceKind.QUANTITY_MISMATCH,
    "filled_quantity": DifferenceKind.QUANTITY_MISMATCH,
    "limit_price": DifferenceKind.PRICE_MISMATCH,
    "average_fill_price": DifferenceKind.PRICE_MISMATCH,
}


@dataclass(frozen=True)
class Difference:
    """One way the ledger disagrees with the broker, and what the audit did about it."""

    kind: DifferenceKind
    entity: Entity
    entity_id: str  # client_order_id, trade_id, symbol or currency
    symbol: str | None
    field: str
    ledger_value: str | None
    broker_value: str | None
    action: str

    def row(self) -> dict[str, str]:
        """The difference as one row of a table (artifact, log)."""
        return {
            "kind": str(self.kind),
            "entity": self.entity,
            "id": self.entity_id,
            "symbol": self.symbol or "",
            "field": self.field,
            "ledger": self.ledger_value or "",
            "broker": self.broker_value or "",
            "action": self.action,
        }


@dataclass
class AuditReport:
    at: datetime
    repair: bool
    balance_tolerance_quote: Decimal
    differences: list[Difference] = field(default_factory=list)
    orders_checked: int = 0
    orders_in_flight: int = 0
    fills_checked: int = 0
    positions_checked: int = 0
    balances_checked: int = 0
    balance_baseline: datetime | None = None  # taken_at of the snapshot balances were derived from
    inputs: GateResult | None = None  # the data-quality suite on the broker's answers

    @property
    def repair_blocked(self) -> bool:
        """True when the broker's answers failed their data-quality suite, so nothing was repaired."""
        return self.inputs is not None and not self.inputs.passed

    @property
    def drift_beyond_tolerance(self) -> bool:
        """True when some balance drifted beyond tolerance: an incident is needed."""
        return any(d.kind == DifferenceKind.BALANCE_DRIFT for d in self.differences)

    @property
    def clean(self) -> bool:
        return not self.differences

    def counts(self) -> dict[str, int]:
        """Differences per kind (every kind listed, zeros included)."""
        counts = dict.fromkeys((str(k) for k in DifferenceKind), 0)
        for difference in self.differences:
            counts[str(difference.kind)] += 1
        return counts

    def rows(self) -> list[dict[str, str]]:
        """One table row per failed input check and per difference, or a single "no differences" row."""
        empty = dict.fromkeys(("entity", "id", "symbol", "field", "ledger", "broker"), "")
        blocked = [
            {"kind": "data_quality", **empty, "entity": "input", "broker": line, "action": "repair skipped"}
            for line in (self.inputs.failures if self.inputs is not None and self.repair_blocked else ())
        ]
        if not self.differences and not blocked:
            return [{"kind": "none", **empty, "action": "no differences"}]
        return blocked + [d.row() for d in self.differences]

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in self.counts().items() if n) or "no differences"
        baseline = self.balance_baseline.isoformat() if self.balance_baseline else "none (no balance snapshot)"
        return (
            f"reconciliation audit at {self.at.isoformat()}: {kinds}; {self.orders_checked} orders, "
            f"{self.fills_checked} fills, {self.positions_checked} positions, {self.balances_checked} balances "
            f"checked; balance baseline {baseline}; "
            f"{'drift beyond tolerance' if self.drift_beyond_tolerance else 'balances within tolerance'}"
            + ("; broker answers failed their data-quality checks: repair skipped" if self.repair_blocked else "")
        )

    def markdown(self) -> str:
        """A short operator summary: counts per kind, then what the audit did."""
        lines = [
            "# Reconciliation audit",
            "",
            f"- at: {self.at.isoformat()}",
            f"- repair: {self._repair_mode()}",
            f"- balance tolerance: {self.balance_tolerance_quote} (quote currency)",
            f"- balance baseline: {self.balance_baseline.isoformat() if self.balance_baseline else 'none'}",
            f"- checked: {self.orders_checked} orders ({self.orders_in_flight} in flight, skipped), "
            f"{self.fills_checked} fills, {self.positions_checked} positions, {self.balances_checked} balances",
            f"- **{'BALANCE DRIFT BEYOND TOLERANCE' if self.drift_beyond_tolerance else 'balances within tolerance'}**",
            "",
            "| kind | count |",
            "|---|---|",
            *(f"| {k} | {n} |" for k, n in self.counts().items()),
        ]
        if self.inputs is not None and self.repair_blocked:
            lines += ["", "## Broker answers that failed their data-quality checks", ""]
            lines += [f"- {line}" for line in self.inputs.failures]
        return "\n".join(lines)

    def _repair_mode(self) -> str:
        if self.repair_blocked:
            return "**off: the broker's answers failed their data-quality checks (nothing repaired, see below)**"
        return "on" if self.repair else "off (report only)"


def audit(
    broker: Broker,
    ledger: Ledger,
    at: datetime,
    *,
    balance_tolerance_quote: Decimal = Decimal("1"),
    repair: bool = True,
    lookback: timedelta = timedelta(days=1),
    quote_currency: str = "USD",
) -> AuditReport:
    """Compare the ledger's orders, fills, positions and balances with the broker; repair the ledger from the
    broker's truth when `repair`. Never places or cancels an order."""
    since = at - lookback
    report = AuditReport(at=at, repair=repair, balance_tolerance_quote=balance_tolerance_quote)
    # The ledger's fills before the broker is read: a ledger fill that is not among them was recorded by the running
    # bot after the read began, so the broker's answer may lack it without the ledger being wrong.
    recorded_before_read = {row.trade_id for row in ledger.fills_after(since)}
    # Read everything the broker says first, so the repairs below work from one view of it.
    broker_open = broker.list_open_orders()
    broker_fills = broker.list_fills(since=since)
    positions = broker.positions()
    balances = broker.balances()
    broker_positions = {p.symbol: p for p in positions}
    broker_balances = {b.currency: b.total for b in balances}
    symbols = _listed_symbols(broker, {o.symbol for o in broker_open} | {f.symbol for f in broker_fills})
    report.inputs = check_reconciliation_inputs(broker_open, broker_fills, balances, positions, known_symbols=symbols)
    if report.repair_blocked:
        # Bad broker answers must not be written into the ledger: compare and report only, for this run.
        report.repair = False
        for line in report.inputs.failures:
            log.error("reconcile input failed its data-quality check: %s", line)

    _audit_orders(broker, ledger, at, since, broker_open, broker_fills, report)
    missing_fills, since_read = _audit_fills(ledger, since, broker_fills, recorded_before_read, report)
    _audit_positions(ledger, at, broker_positions, missing_fills, since_read, report)
    _audit_balances(broker, ledger, since, broker_balances, missing_fills, quote_currency, report)
    for difference in report.differences:
        log.warning("reconcile %s", difference.row())
    log.info(report.summary())
    return report


# --- orders ----------------------------------------------------------------------------------------------------


def _audit_orders(
    broker: Broker,
    ledger: Ledger,
    at: datetime,
    since: datetime,
    broker_open: list[Order],
    broker_fills: list[Fill],
    report: AuditReport,
) -> None:
    """Judge the window's orders by the reconciliation's order rules (trader/reconcile/orders.py); report every
    difference and, when repairing, bring the ledger to the broker's orders."""
    scope = audit_scope(since, IN_FLIGHT_GRACE)
    for check in check_orders(broker, ledger, scope, at, broker_open, broker_fills):
        if check.verdict == Verdict.IN_FLIGHT:
            report.orders_in_flight += 1
            continue
        report.orders_checked += 1
        report.differences.extend(_order_differences(check, report))
        if report.repair:
            repair_order(ledger, check, at, scope)


def _order_differences(check: OrderCheck, report: AuditReport) -> list[Difference]:
    """The differences one judged order shows, with what the audit does (or would do) about them."""
    coid, symbol = check.client_order_id, check.symbol
    if check.verdict == Verdict.MISSING_LOCALLY and check.order is not None:
        described = _describe_order(check.order)
        action = _act(report, "imported from the broker")
        return [Difference(DifferenceKind.MISSING_LOCALLY, "order", coid, symbol, "order", None, described, action)]
    if check.verdict in (Verdict.NEVER_SENT, Verdict.VANISHED) and check.record is not None:
        if check.verdict == Verdict.NEVER_SENT:
            action = _act(report, "marked failed: never reached the broker")
        else:
            action = _act(report, "marked cancelled: vanished from the broker")
        status = check.record.status
        return [Difference(DifferenceKind.UNKNOWN_ON_EXCHANGE, "order", coid, symbol, "order", status, None, action)]
    action = _act(report, "ledger set to the broker's order")
    return [
        Difference(
            FIELD_KINDS[f.field], "order", coid, symbol, f.field, _text(f.ledger_value), _text(f.broker_value), action
        )
        for f in check.fields
    ]


# --- fills -----------------------------------------------------------------------------------------------------


def _audit_fills(
    ledger: Ledger, since: datetime, broker_fills: list[Fill], recorded_before_read: set[str], report: AuditReport
) -> tuple[list[Fill], list[FillRecord]]:
    """Classify fill differences; import the fills the ledger is missing. Returns those missing fills, and the
    ledger's fills recorded after the broker was read (which its answer cannot hold yet).

    A ledger fill the broker lacks that was already recorded before the read is unknown on the exchange (reported);
    one recorded since is the running bot's latest trade, not a difference."""
    theirs = {f.trade_id: f for f in broker_fills}
    mine = {row.trade_id: row for row in ledger.fills_after(since)} | ledger.fills_by_trade_id(theirs)
    report.fills_checked = len(set(theirs) | set(mine))
    missing = [f for trade_id, f in theirs.items() if trade_id not in mine]
    for fill in missing:
        report.differences.append(
            Difference(
                DifferenceKind.MISSING_LOCALLY,
                "fill",
                fill.trade_id,
                fill.symbol,
                "fill",
                None,
                f"{fill.side} {fill.quantity} @ {fill.price} fee {fill.fee} ({fill.client_order_id})",
                _act(report, "imported from the broker"),
            )
        )
    for trade_id, fill in theirs.items():
        row = mine.get(trade_id)
        if row is None:
            continue
        for kind, name, a, b in (
            (DifferenceKind.QUANTITY_MISMATCH, "quantity", row.quantity, fill.quantity),
            (DifferenceKind.PRICE_MISMATCH, "price", row.price, fill.price),
            (DifferenceKind.PRICE_MISMATCH, "fee", row.fee, fill.fee),
        ):
            if not same(a, b):
                report.differences.append(
                    Difference(
                        kind, "fill", trade_id, fill.symbol, name, _text(a), _text(b), "none: fills are append-only"
                    )
                )
    ledger_only = [row for trade_id, row in mine.items() if trade_id not in theirs]
    since_read = [row for row in ledger_only if row.trade_id not in recorded_before_read]
    for row in ledger_only:
        if row.filled_at > since and row.trade_id in recorded_before_read:
            report.differences.append(
                Difference(
                    DifferenceKind.UNKNOWN_ON_EXCHANGE,
                    "fill",
                    row.trade_id,
                    row.symbol,
                    "fill",
                    f"{row.side} {row.quantity} @ {row.price} fee {row.fee} ({row.client_order_id})",
                    None,
                    "none: fills are append-only",
                )
            )
    if report.repair and missing:
        ledger.record_fills(missing)
    return missing, since_read


# --- positions -------------------------------------------------------------------------------------------------


def _audit_positions(
    ledger: Ledger,
    at: datetime,
    broker_positions: dict[str, Position],
    missing_fills: list[Fill],
    recorded_since_read: list[FillRecord],
    report: AuditReport,
) -> None:
    """Compare quantities after the missing fills (imported, or about to be): a missed fill is no position error.

    The fills the running bot recorded after the broker was read are taken out before comparing and kept in a
    repair (otherwise such a fill would be undone, the position set to the broker's older view). A ledger fill the
    broker lacks that was there before the read stays in: the position it moved is compared, and repaired."""
    expected = {symbol: p.quantity for symbol, p in ledger.positions().items()}
    if not report.repair:  # repaired: record_fills has already moved the ledger's positions
        for fill in missing_fills:
            expected[fill.symbol] = expected.get(fill.symbol, ZERO) + _signed(fill)
    since_read: dict[str, Decimal] = {}
    for row in recorded_since_read:
        since_read[row.symbol] = since_read.get(row.symbol, ZERO) + _signed(fill_of(row))
    for symbol, moved in since_read.items():
        expected[symbol] = expected.get(symbol, ZERO) - moved
    symbols = sorted(set(expected) | set(broker_positions))
    report.positions_checked = len(symbols)
    for symbol in symbols:
        mine = expected.get(symbol, ZERO)
        position = broker_positions.get(symbol)
        theirs = position.quantity if position is not None else ZERO
        if same(mine, theirs):
            continue
        report.differences.append(
            Difference(
                DifferenceKind.POSITION_MISMATCH,
                "position",
                symbol,
                symbol,
                "quantity",
                _text(mine),
                _text(theirs),
                _act(report, "ledger set to the broker's position"),
            )
        )
        if report.repair:
            entry = position.average_entry_price if position is not None else ZERO
            ledger.set_position(symbol, theirs + since_read.get(symbol, ZERO), entry, at)


# --- balances --------------------------------------------------------------------------------------------------


def _audit_balances(
    broker: Broker,
    ledger: Ledger,
    since: datetime,
    broker_balances: dict[str, Decimal],
    missing_fills: list[Fill],
    quote_currency: str,
    report: AuditReport,
) -> None:
    """Broker totals against the baseline snapshot plus every fill after it (see the module docstring)."""
    baseline = _baseline(ledger, since, missing_fills)
    if baseline is None:
        return
    taken_at, rows = baseline
    fills = {row.trade_id: fill_of(row) for row in ledger.fills_after(taken_at)}
    fills.update({f.trade_id: f for f in missing_fills if f.filled_at > taken_at})
    report.balance_baseline = taken_at

    expected = {row.currency: row.available + row.hold for row in rows}
    prices = {row.currency: row.price_quote for row in rows if row.price_quote > 0}
    currencies: dict[str, tuple[str, str]] = {}
    for fill in fills.values():
        if fill.symbol not in currencies:
            currencies[fill.symbol] = _currencies(broker, fill.symbol)
        base, quote = currencies[fill.symbol]
        notional = fill.quantity * fill.price
        sign = 1 if fill.side == Side.BUY else -1
        expected[base] = expected.get(base, ZERO) + sign * fill.quantity
        expected[quote] = expected.get(quote, ZERO) - sign * notional - fill.fee

    names = sorted(set(expected) | set(broker_balances))
    report.balances_checked = len(names)
    for currency in names:
        mine, theirs = expected.get(currency, ZERO), broker_balances.get(currency, ZERO)
        drift = theirs - mine
        if drift == 0:
            continue
        price = (
            Decimal(1) if currency == quote_currency else prices.get(currency) or _mid(broker, currency, quote_currency)
        )
        value = abs(drift) * price if price is not None else None
        if value is not None and value <= report.balance_tolerance_quote:
            continue
        valued = f"{value:.2f} {quote_currency}" if value is not None else f"unvalued (no {currency} price)"
        report.differences.append(
            Difference(
                DifferenceKind.BALANCE_DRIFT,
                "balance",
                currency,
                None,
                "total",
                _text(canonical_decimal(mine)),
                _text(theirs),
                f"none: drift {_text(canonical_decimal(drift))} {currency} ({valued}) beyond tolerance "
                f"{report.balance_tolerance_quote} {quote_currency}; investigate deposits, withdrawals, fees, "
                "manual trades",
            )
        )


def _baseline(
    ledger: Ledger, since: datetime, missing_fills: list[Fill]
) -> tuple[datetime, list[BalanceSnapshot]] | None:
    """The newest snapshot at or before `since`, else the oldest after it; skipping those a fill shares a time with."""
    candidates = ledger.balance_snapshots_around(since, BASELINE_CANDIDATES)
    if not candidates:
        return None
    shared = ledger.fill_times_among({taken_at for _, taken_at in candidates})
    shared |= {f.filled_at for f in missing_fills}
    snapshot_id, taken_at = next(((s, t) for s, t in candidates if t not in shared), candidates[0])
    return taken_at, ledger.balance_snapshot(snapshot_id)


def _currencies(broker: Broker, symbol: str) -> tuple[str, str]:
    """(base, quote) of a product; "BTC-USD" split on its dash when the broker does not list it."""
    try:
        product = broker.get_product(symbol)
        return product.base_currency, product.quote_currency
    except TraderError:
        base, _, quote = symbol.partition("-")
        return base, quote


def _mid(broker: Broker, currency: str, quote_currency: str) -> Decimal | None:
    try:
        bid, ask = broker.best_bid_ask(f"{currency}-{quote_currency}")
    except TraderError:
        return None
    return (bid + ask) / 2


def _listed_symbols(broker: Broker, symbols: set[str]) -> set[str]:
    """The symbols among these that the broker lists as products."""
    listed = set()
    for symbol in symbols:
        try:
            broker.get_product(symbol)
        except UnknownSymbol:
            continue
        listed.add(symbol)
    return listed


# --- incidents -------------------------------------------------------------------------------------------------


def record_data_quality_incident(
    ledger: Ledger, report: AuditReport, at: datetime, *, desk: IncidentDesk | None = None
) -> int | None:
    """Open (or refresh) the DATA_QUALITY incident when the broker's answers failed their suite (nothing was
    repaired), resolve it otherwise; returns the open incident's id, or None when there is none."""
    if not report.repair_blocked or report.inputs is None:
        resolved = desk.resolve(DATA_QUALITY_INCIDENT) if desk else ledger.resolve_incident(DATA_QUALITY_INCIDENT, at)
        if resolved:
            log.info("reconciliation data-quality incident resolved: the broker's answers pass their checks")
        return None
    title = "Reconciliation skipped its repairs: the broker's answers failed their data-quality checks"
    detail = "; ".join(report.inputs.failures) + f". {report.summary()}"
    if desk is not None:
        return desk.raise_incident(IncidentKind.DATA_QUALITY, title, detail, fingerprint=DATA_QUALITY_INCIDENT)
    return ledger.open_incident(
        fingerprint=DATA_QUALITY_INCIDENT,
        severity=severity_for(IncidentKind.DATA_QUALITY),
        title=title,
        detail=detail,
        source=IncidentKind.DATA_QUALITY.value,
        at=at,
    )


def record_drift_incident(
    ledger: Ledger, report: AuditReport, at: datetime, *, desk: IncidentDesk | None = None
) -> int | None:
    """Open (or refresh) the balance-drift incident when drift is beyond tolerance, resolve it otherwise;
    returns the open incident's id, or None when there is none. With a desk the incident is also announced."""
    if not report.drift_beyond_tolerance:
        resolved = desk.resolve(DRIFT_INCIDENT) if desk else ledger.resolve_incident(DRIFT_INCIDENT, at)
        if resolved:
            log.info("balance drift incident resolved: balances within tolerance")
        return None
    drifts = [d for d in report.differences if d.kind == DifferenceKind.BALANCE_DRIFT]
    detail = "; ".join(f"{d.entity_id}: ledger {d.ledger_value}, broker {d.broker_value}" for d in drifts)
    if desk is not None:
        return desk.raise_incident(
            IncidentKind.PARTIAL_FUNCTIONALITY_LOSS,
            f"Balance drift beyond tolerance in {', '.join(d.entity_id for d in drifts)}",
            f"{detail}. {report.summary()}",
            fingerprint=DRIFT_INCIDENT,
            severity=DRIFT_SEVERITY,
        )
    return ledger.open_incident(
        fingerprint=DRIFT_INCIDENT,
        severity=DRIFT_SEVERITY,
        title=f"Balance drift beyond tolerance in {', '.join(d.entity_id for d in drifts)}",
        detail=f"{detail}. {report.summary()}",
        source="reconcile",
        at=at,
    )


# --- small helpers ---------------------------------------------------------------------------------------------


def _act(report: AuditReport, action: str) -> str:
    return action if report.repair else f"none (repair off): would be {action}"


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(canonical_decimal(value), "f")
    return str(value)


def _signed(fill: Fill) -> Decimal:
    return fill.quantity if fill.side == Side.BUY else -fill.quantity


def _describe_order(order: Order) -> str:
    price = f" @ {order.limit_price}" if order.limit_price is not None else ""
    return f"{order.side} {order.order_type} {order.quantity}{price} {order.status} ({order.order_id})"
