"""The bot core: market data -> strategy -> risk -> orders -> ledger -> heartbeat, one plain-Python cycle.

No Prefect here: the trading-bot flow drives run() and only supplies should_stop. A flow run keeps
every task run in memory (PrefectHQ/prefect#12668), so a cycle never creates task runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.exc import SQLAlchemyError

from trader.brokers.base import Broker
from trader.domain import Order, OrderRequest, OrderStatus, Product
from trader.errors import BrokerUnavailable, OrderRejected, TraderError
from trader.ledger import Ledger
from trader.reconcile import StartupReconciliation, reconcile_on_start
from trader.reconcile.engine_recovery import CheckpointSource, EngineRecovery, crashed_sessions, recover_engine
from trader.risk import RiskControls, RiskManager
from trader.settings import Settings
from trader.state.base import TierUnavailable
from trader.state.checkpoints import CheckpointStore, snapshot_from_ledger
from trader.state.manager import StateManager
from trader.strategy import OrderIntent, Strategy

log = logging.getLogger("perps_bot.bot")

Mode = Literal["paper", "live", "dry_run"]
BALANCE_SNAPSHOT_EVERY = timedelta(minutes=15)


@dataclass
class SentOrder:
    request: OrderRequest
    status: str
    reason: str


@dataclass
class CycleReport:
    cycle: int
    at: datetime
    prices: dict[str, Decimal] = field(default_factory=dict)
    intents: list[OrderIntent] = field(default_factory=list)
    orders: list[SentOrder] = field(default_factory=list)
    refused: list[tuple[OrderIntent, str]] = field(default_factory=list)
    fills: int = 0
    daily_pnl_pct: Decimal = Decimal(0)
    duration_ms: float = 0.0


@dataclass
class RunSummary:
    cycles: int
    orders: int
    fills: int
    stopped_by: str


def read_controls(settings: Settings) -> RiskControls:
    """The kill switch and reduce-only as of now: settings, or a flag file the operator can touch."""
    state_dir = settings.state_dir
    return RiskControls(
        kill_switch=settings.risk_kill_switch_enabled or (state_dir / "KILL_SWITCH").exists(),
        reduce_only=settings.risk_reduce_only_mode or (state_dir / "REDUCE_ONLY").exists(),
    )


class TradingBot:
    """One trading session over one broker and one ledger."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        ledger: Ledger,
        strategy: Strategy,
        risk: RiskManager,
        *,
        mode: Mode,
        controls: Callable[[], RiskControls] | None = None,
        heartbeat_file: Path | None = None,
        checkpoint_source: CheckpointSource | None = None,
        checkpoints: CheckpointStore | None = None,
        state: StateManager | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.ledger = ledger
        self.strategy = strategy
        self.risk = risk
        self.mode = mode
        self.controls = controls or (lambda: read_controls(settings))
        self.heartbeat_file = heartbeat_file
        self.checkpoints = checkpoints
        self.state = state
        self._published: dict[str, Any] = {}
        # After a crash the portfolio state comes from the newest good checkpoint (when there is a store).
        self.checkpoint_source = checkpoint_source or (self._latest_checkpoint if checkpoints else None)
        self._last_checkpoint = 0.0
        self.recovery: EngineRecovery | None = None  # set when this start recovered a crashed engine
        self.session_id: str | None = None
        self.last_session_id: str | None = None
        self.cycles = 0
        self.orders_sent = 0
        self.fills_recorded = 0
        self.products: dict[str, Product] = {}
        self.positions: dict[str, Decimal] = {}
        self._fill_cursor: datetime | None = None
        self._last_heartbeat = 0.0
        self._last_snapshot: datetime | None = None
        self._equity_day: tuple[date, Decimal] | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self, flow_run_id: str | None = None) -> StartupReconciliation | None:
        """Load products, reconcile with the broker (unless dry-run), open the trading session."""
        self.products = {symbol: self.broker.get_product(symbol) for symbol in self.settings.symbols}
        report = None
        if self.mode != "dry_run":
            crashed = crashed_sessions(self.ledger)
            if crashed:
                self.recovery = recover_engine(
                    self.broker, self.ledger, self.broker.now(), sessions=crashed, checkpoint=self.checkpoint_source
                )
                if self.recovery.snapshot:
                    self.risk.counters.update(self.recovery.snapshot.get("guard_counters") or {})
            report = reconcile_on_start(self.broker, self.ledger, self.broker.now())
            self.session_id = self.last_session_id = self.ledger.start_session(
                self.settings.profile, self.broker.name, self.mode, flow_run_id=flow_run_id
            )
            log.info(
                "session %s started: profile=%s broker=%s mode=%s",
                self.session_id,
                self.settings.profile,
                self.broker.name,
                self.mode,
            )
        self._load_positions()
        self._fill_cursor = self.ledger.last_fill_time()
        self._checkpoint("start", force=True)
        return report

    def stop(self, status: str = "stopped", note: str | None = None) -> None:
        """Write the last heartbeat and close the session."""
        if self.session_id is None:
            return
        self._heartbeat(force=True)
        self._checkpoint(status, force=True)
        self.ledger.end_session(self.session_id, status, note)
        log.info("session %s %s after %d cycles", self.session_id, status, self.cycles)
        self.session_id = None

    def run(
        self,
        max_cycles: int | None = None,
        *,
        interval_seconds: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_cycle: Callable[[CycleReport], None] | None = None,
    ) -> RunSummary:
        """Cycle until max_cycles, market data runs out, or should_stop() is true between cycles."""
        interval = self.settings.cycle_interval_seconds if interval_seconds is None else interval_seconds
        stopped_by = "max_cycles"
        done = 0
        while max_cycles is None or done < max_cycles:
            if should_stop():
                stopped_by = "stop requested"
                break
            started = time.monotonic()
            # Each cycle trades a new bar; a dry run looks at the current one first and never moves the market.
            if (done or self.mode != "dry_run") and not self.broker.advance():
                stopped_by = "market data exhausted"
                break
            report = self.run_cycle()
            done += 1
            if on_cycle is not None:
                on_cycle(report)
            remaining = interval - (time.monotonic() - started)
            if remaining > 0 and (max_cycles is None or done < max_cycles):
                _sleep_unless(remaining, should_stop)
        return RunSummary(done, self.orders_sent, self.fills_recorded, stopped_by)

    # --- one cycle -------------------------------------------------------------------------------------------

    def run_cycle(self) -> CycleReport:
        """market data -> strategy -> risk checks -> orders -> ledger -> heartbeat (run() moves the market)."""
        started = time.perf_counter()
        self.cycles += 1
        report = CycleReport(self.cycles, self.broker.now())
        if self.mode != "dry_run":
            report.fills += self._sync_fills()
        controls = self.controls()
        candles = {s: self.broker.candles(s, self.strategy.warmup) for s in self.products}
        report.prices = {s: c[-1].close for s, c in candles.items() if c}
        report.daily_pnl_pct = self._update_daily_loss(report.prices, report.at)
        for symbol, product in self.products.items():
            position = self.positions.get(symbol, Decimal(0))
            for intent in self.strategy.decide(product, candles[symbol], position):
                report.intents.append(intent)
                decision = self.risk.check(intent, position, report.prices.get(symbol, Decimal(0)), controls)
                if not decision.approved:
                    report.refused.append((intent, decision.reason))
                    continue
                report.orders.append(self._submit(intent))
        if self.mode != "dry_run" and report.orders:
            report.fills += self._sync_fills()
        report.duration_ms = (time.perf_counter() - started) * 1000
        self._heartbeat()
        self._publish_state()
        self._checkpoint("periodic")
        log.debug(
            "cycle %d at %s: %d intents, %d orders, %d fills, %.2f ms",
            report.cycle,
            report.at.isoformat(),
            len(report.intents),
            len(report.orders),
            report.fills,
            report.duration_ms,
        )
        return report

    def _submit(self, intent: OrderIntent) -> SentOrder:
        request = OrderRequest(
            symbol=intent.symbol,
            side=intent.side,
            order_type=intent.order_type,
            quantity=intent.quantity,
            client_order_id=f"bot-{uuid.uuid4().hex[:20]}",
            limit_price=intent.limit_price,
            reduce_only=intent.reduce_only,
        )
        try:
            self.broker.validate(request)
        except OrderRejected as error:
            log.warning("order refused before sending: %s", error)
            return SentOrder(request, "refused", str(error))
        if self.mode == "dry_run":
            log.info(
                "dry-run: would send %s %s %s %s (%s)",
                request.side,
                request.quantity,
                request.symbol,
                request.order_type,
                intent.reason,
            )
            return SentOrder(request, "dry_run", intent.reason)
        # Record first, then send: a crash in between leaves a pending_submit row that startup
        # reconciliation resolves by client_order_id, so no order is ever sent twice or lost.
        self.ledger.record_pending(request, self.session_id, self.broker.now())
        order = self._place(request)
        if order is None:
            return SentOrder(request, OrderStatus.PENDING_SUBMIT, "broker unreachable; left for reconciliation")
        self.ledger.apply_order(order)
        if order.status in (OrderStatus.REJECTED, OrderStatus.FAILED):
            return SentOrder(request, order.status, order.reject_reason or "")
        self.orders_sent += 1
        log.info(
            "order %s %s %s %s %s: %s",
            order.client_order_id,
            request.side,
            request.quantity,
            request.symbol,
            order.status,
            intent.reason,
        )
        return SentOrder(request, order.status, intent.reason)

    def _place(self, request: OrderRequest) -> Order | None:
        try:
            return self.broker.place_order(request)
        except OrderRejected as error:
            self.ledger.mark_failed(request.client_order_id, str(error), self.broker.now())
            log.error("order %s rejected by broker: %s", request.client_order_id, error)
            return None
        except BrokerUnavailable as error:
            # Never retry a create blindly: look the order up by client_order_id first.
            log.error("order %s: broker unavailable (%s); looking it up", request.client_order_id, error)
            try:
                return self.broker.find_order(request.client_order_id)
            except BrokerUnavailable:
                return None

    # --- ledger, positions, heartbeat ------------------------------------------------------------------------

    def _sync_fills(self) -> int:
        last = self._fill_cursor
        # A second of overlap: fills stamped in the same second as the cursor are deduped by trade id.
        fills = self.broker.list_fills(since=last - timedelta(seconds=1) if last else None)
        new = self.ledger.record_fills(fills, self.session_id) if fills else 0
        if fills:
            self._fill_cursor = max(f.filled_at for f in fills)
        if new:
            self.fills_recorded += new
            for order_id in dict.fromkeys(f.order_id for f in fills):
                self.ledger.apply_order(self.broker.get_order(order_id))
            self._load_positions()
            for fill in fills:
                if last is None or fill.filled_at > last:
                    log.info(
                        "order %s filled %s %s %s @ %s fee %s",
                        fill.client_order_id,
                        fill.side,
                        fill.quantity,
                        fill.symbol,
                        fill.price,
                        fill.fee,
                    )
        return new

    def _load_positions(self) -> None:
        self.positions = {symbol: p.quantity for symbol, p in self.ledger.positions().items()}

    def _update_daily_loss(self, prices: dict[str, Decimal], at: datetime) -> Decimal:
        balances = self.broker.balances()
        valuation = self._valuation(prices)
        equity = sum((b.total * valuation.get(b.currency, Decimal(0)) for b in balances), Decimal(0))
        day = at.date()
        if self._equity_day is None or self._equity_day[0] != day:
            start = self.ledger.equity_at_start_of_day(day) if self.mode != "dry_run" else None
            self._equity_day = (day, start if start is not None else equity)
        due = self._last_snapshot is None or at - self._last_snapshot >= BALANCE_SNAPSHOT_EVERY
        if self.mode != "dry_run" and due:
            self.ledger.record_balance_snapshot(self.session_id, balances, valuation, at)
            self._last_snapshot = at
        return self.risk.update_daily_loss(equity, self._equity_day[1])

    def _valuation(self, prices: dict[str, Decimal]) -> dict[str, Decimal]:
        valuation = {p.quote_currency: Decimal(1) for p in self.products.values()}
        valuation.update({p.base_currency: prices.get(s, Decimal(0)) for s, p in self.products.items()})
        return valuation

    def _checkpoint(self, reason: str, *, force: bool = False) -> None:
        """A consistent snapshot every CHECKPOINT_INTERVAL_SECONDS (and at start and stop); never stops trading."""
        if self.checkpoints is None or self.session_id is None:
            return
        now = time.monotonic()
        if not force and now - self._last_checkpoint < self.settings.checkpoint_interval_seconds:
            return
        self._last_checkpoint = now
        try:
            snapshot = snapshot_from_ledger(
                self.ledger, guard_counters=dict(self.risk.counters), strategy_state=self.strategy.state()
            )
            info = self.checkpoints.create(snapshot, reason=reason, session_id=self.session_id)
            if self.state is not None:
                self.state.note_checkpoint(info.created_at)
        except (TraderError, SQLAlchemyError, OSError) as error:
            log.warning("checkpoint (%s) failed, trading continues: %s", reason, error)

    def _publish_state(self) -> None:
        """The bot's hot state (positions, guard counters, session) through the tiered StateManager: only what
        changed, so a quiet cycle writes nothing. A tier outage is the manager's to handle; trading continues."""
        if self.state is None or self.session_id is None:
            return
        current = {
            "bot:session": {"id": self.session_id, "profile": self.settings.profile, "mode": self.mode},
            "bot:positions": {s: str(q) for s, q in sorted(self.positions.items())},
            "bot:guard_counters": dict(sorted(self.risk.counters.items())),
        }
        changed = {k: v for k, v in current.items() if self._published.get(k) != v}
        if not changed:
            return
        try:
            result = self.state.batch_set(changed)
        except (TierUnavailable, TraderError, SQLAlchemyError) as error:
            log.warning("state write failed, trading continues: %s", error)
            return
        self._published.update({k: changed[k] for k in result.stored})

    def _latest_checkpoint(self) -> tuple[str, dict[str, Any]] | None:
        assert self.checkpoints is not None
        good = self.checkpoints.latest_good()
        return (good.id, self.checkpoints.restore(good.id)) if good is not None else None

    def _heartbeat(self, *, force: bool = False) -> None:
        if self.session_id is None:
            return
        now = time.monotonic()
        if not force and now - self._last_heartbeat < self.settings.heartbeat_interval_seconds and self.cycles > 1:
            return
        self._last_heartbeat = now
        at = self.broker.now()
        self.ledger.heartbeat(self.session_id, self.cycles, at)
        if self.heartbeat_file is not None:
            _write_json_atomic(
                self.heartbeat_file,
                {
                    "session_id": self.session_id,
                    "cycles": self.cycles,
                    "market_time": at.isoformat(),
                    "wall_time": time.time(),
                    "positions": {s: str(q) for s, q in self.positions.items()},
                    "guard_counters": dict(self.risk.counters),
                },
            )
        log.info("heartbeat session=%s cycles=%d market_time=%s", self.session_id, self.cycles, at.isoformat())


def _sleep_unless(seconds: float, should_stop: Callable[[], bool], step: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if should_stop():
            return
        time.sleep(min(step, left))


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True))
    os.replace(tmp, path)
