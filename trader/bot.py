"""The bot core: market data -> strategy -> risk -> orders -> ledger -> heartbeat, one plain-Python cycle.

No Prefect here: the trading-bot flow drives run() and only supplies should_stop. A flow run keeps
every task run in memory (PrefectHQ/prefect#12668), so a cycle never creates task runs.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from trader.brokers.base import Broker
from trader.coinbase.http import active_key_slot
from trader.coinbase.ws import WsFeed, ws_jwt_maker
from trader.domain import Candle, FuturesAccount, Order, OrderRequest, OrderStatus, OrderType, Product, Side
from trader.errors import BrokerUnavailable, ConfigError, OrderRejected, TraderError
from trader.fsio import atomic_write
from trader.funding import FundingTracker
from trader.ledger import LEDGER_UNANSWERED, Ledger
from trader.ledger.lease import Fence, Holder, LeaseHeld, LeaseInfo, LeaseLost
from trader.orders.path import OrderPath, order_event
from trader.reconcile import StartupReconciliation, reconcile_on_start
from trader.reconcile.engine_recovery import CheckpointSource, EngineRecovery, crashed_sessions, recover_engine
from trader.risk import RiskControls, RiskManager
from trader.risk.incidents import GuardIncidents
from trader.risk.monitor import GuardEvent, exposure_pct, open_positions, volatility_pct
from trader.risk.telemetry import MeteredBroker, OperationStats
from trader.settings import Settings
from trader.state.base import TierUnavailable
from trader.state.checkpoints import CheckpointStore, snapshot_from_ledger
from trader.state.manager import StateManager
from trader.strategy import OrderIntent, Strategy

if TYPE_CHECKING:
    from trader.brokers.coinbase_user import UserOrderStream
    from trader.metrics.exporter import BotMetrics
    from trader.quality.market_data import MarketDataGate

log = logging.getLogger(__name__)

Mode = Literal["paper", "live", "dry_run"]
_T = TypeVar("_T")
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
    values: dict[str, Decimal] = field(default_factory=dict)  # one unit's worth (a future: one contract's notional)
    intents: list[OrderIntent] = field(default_factory=list)
    orders: list[SentOrder] = field(default_factory=list)
    refused: list[tuple[OrderIntent, str]] = field(default_factory=list)
    fills: int = 0
    daily_pnl_pct: Decimal = Decimal(0)
    equity: Decimal = Decimal(0)
    readings: dict[str, float | None] = field(default_factory=dict)  # every guard's value this cycle
    guard_events: list[GuardEvent] = field(default_factory=list)
    gate_failures: tuple[str, ...] = ()
    gate_ms: float = 0.0
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

    order_path_class: type[OrderPath] = OrderPath  # the drills' crash-point bot swaps in its own

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
        gate: MarketDataGate | None = None,
        incidents: GuardIncidents | None = None,
        metrics: BotMetrics | None = None,
        user_orders: UserOrderStream | None = None,
    ) -> None:
        self.settings = settings
        self._raw_broker = broker  # the broker itself: its key is switched in place (perps-bot keys rotate)
        # Every exchange call is timed: error rate, latency p95 and order success feed the guards.
        self.stats = OperationStats(settings.risk_guard_window_seconds, settings.risk_guard_min_samples)
        self.broker: Broker = MeteredBroker(broker, self.stats)
        # The paper exchange's WebSocket market data (MARKET_DATA=coinbase-ws): its feed's state goes to the metrics.
        feed = getattr(getattr(broker, "market", None), "feed", None)
        self.market_feed: WsFeed | None = feed if isinstance(feed, WsFeed) else None
        # ORDER_UPDATES=coinbase-ws: order status and fills pushed on the user channel, applied between cycles.
        self.user_orders = user_orders
        # COINBASE_ENABLE_DERIVATIVES=1 on a broker with a futures account: its funding and liquidation buffer
        # are guard readings every cycle (read on the broker itself: not exchange calls the error-rate guard counts).
        self.futures: Any = (
            broker if settings.coinbase_enable_derivatives and hasattr(broker, "futures_account") else None
        )
        self._funding_rates: dict[str, float] = {}
        self.funding = FundingTracker(ledger)  # rates and payments into the ledger (trader/funding.py)
        self._futures_now: FuturesAccount | None = None  # this cycle's futures account read (equity, then guards)
        self.order_resync_due = False  # a reconnect or gap's REST resync has not succeeded yet: no new orders
        self.ledger = ledger
        self.strategy = strategy
        self.risk = risk
        self.mode = mode
        self.controls = controls or (lambda: read_controls(settings))
        self.heartbeat_file = heartbeat_file
        self.checkpoints = checkpoints
        self.state = state
        self.gate = gate
        self.incidents = incidents
        self.metrics: BotMetrics | None = None
        if metrics is not None:
            self.attach_metrics(metrics)
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
        self._orders_reported = self._fills_reported = 0  # what the metrics' counters have been given
        # The runaway-trading, hour-drawdown and no-trades guards, on the account's clock (replay time on replay).
        self._order_times: collections.deque[datetime] = collections.deque(maxlen=10_000)
        self._equity_hour: collections.deque[tuple[datetime, Decimal]] = collections.deque()
        self._trading_since: datetime | None = None
        self.products: dict[str, Product] = {}
        self.positions: dict[str, Decimal] = {}
        self._fill_cursor: datetime | None = None
        self._synced_trade_ids: set[str] = set()  # fills at the cursor the ledger already has
        self._orders_to_refresh: set[str] = set()
        self._last_heartbeat = 0.0
        self._last_snapshot: datetime | None = None
        self._equity_day: tuple[date, Decimal] | None = None
        self._peak_equity: Decimal | None = None
        self._feed_ok_at: dict[str, float] = {}
        self._last_data: datetime | None = None
        self._trading_state = "trading"
        self._last_pnl: tuple[Decimal, Decimal] = (Decimal(0), Decimal(0))
        self._gate_failures: tuple[str, ...] = ()
        self.lease: LeaseInfo | None = None  # the account's lease while this bot holds it
        self.lease_lost: str | None = None  # why the bot stood down, once it lost the lease
        self._lease_lock = threading.Lock()
        self._renewer_stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.orders = self.order_path_class(
            self.broker,
            ledger,
            controls=lambda: self.controls(),  # late-bound: the flow swaps in controls that read Prefect Variables
            fence=lambda: self.fence,
            session_id=lambda: self.session_id,
            on_answer=self.stats.record_order,
            max_leverage=settings.risk_max_leverage,
        )

    @property
    def fence(self) -> Fence | None:
        """What this bot presents with every pending-order write: the account and its lease token."""
        lease = self.lease
        return lease.fence if lease is not None else None

    # --- lifecycle -------------------------------------------------------------------------------------------

    def attach_metrics(self, metrics: BotMetrics) -> None:
        """Feed the Prometheus exporter: every exchange call, every cycle, guard trips, checkpoints, recoveries."""
        self.metrics = metrics
        self.stats.listeners.append(metrics.observe_api_call)
        for ws_feed in self._ws_feeds():
            metrics.attach_ws_feed(ws_feed)
        if self.state is not None:  # Redis and PostgreSQL recoveries, and the S3 fallback's sync
            self.state.on_recovery(metrics.record_recovery)

    def start(
        self, flow_run_id: str | None = None, flow_run_url: str | None = None, *, lease_wait_seconds: float = 0.0
    ) -> StartupReconciliation | None:
        """Take the account's lease (unless dry-run), then recover a crashed engine, reconcile with the broker and
        open the trading session. LeaseHeld, with nothing written, when a live bot holds the account."""
        self.take_lease(flow_run_id, flow_run_url, lease_wait_seconds=lease_wait_seconds)
        try:
            return self._open_session(flow_run_id)
        except BaseException:
            if self.session_id is None:  # nothing opened: give the account back at once, not after the TTL
                self.stop()
            raise

    def _open_session(self, flow_run_id: str | None) -> StartupReconciliation | None:
        if self.gate is not None:
            # Great Expectations takes seconds to import: load it beside start-up, not in the first cycle.
            threading.Thread(target=self.gate.warm_up, name="data-gate-warm-up", daemon=True).start()
        self.products = {symbol: self.broker.get_product(symbol) for symbol in self.settings.symbols}
        report = None
        if self.mode != "dry_run":
            if self.user_orders is not None:  # connecting while the start-up reconciliation reads REST
                self.user_orders.start()
            crashed = crashed_sessions(self.ledger)
            if crashed:
                self.recovery = recover_engine(
                    self.broker, self.ledger, self.broker.now(), sessions=crashed, checkpoint=self.checkpoint_source
                )
                if self.recovery.snapshot:
                    self.risk.counters.update(self.recovery.snapshot.get("guard_counters") or {})
                if self.metrics is not None:
                    self.metrics.record_recovery("engine", self.recovery.total_ms / 1000)
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
        self._synced_trade_ids = set()
        self._checkpoint("start", force=True)
        return report

    def validate_startup(self, wait_seconds: float = 5.0) -> list[tuple[str, bool, str]]:
        """The perpetuals runbook's post-startup validation, after start(): (check, ok, detail) for the exchange
        authenticated, the market and user channels connected (waiting up to `wait_seconds` for each socket), the
        risk limits loaded, positions synchronized and monitoring up. Logged as one line; the flow publishes it."""
        checks: list[tuple[str, bool, str]] = []
        checks.append(("authenticated", bool(self.products), f"{self.broker.name}: {len(self.products)} products read"))
        for name, feed in (("market channel", self.market_feed), ("user channel", self._user_feed())):
            if feed is None:
                checks.append((name, True, "not used (REST polling)"))
                continue
            connected = feed.wait_for(lambda stats: stats.connected, wait_seconds)
            checks.append((name, connected, "connected" if connected else f"not connected after {wait_seconds:g} s"))
        rules = self.risk.monitor.rules
        checks.append(("risk limits", bool(rules), f"{len(rules)} guards, max position {self.risk.max_position_usd}"))
        held = {s: q for s, q in self.positions.items() if q}
        synced = self.session_id is not None or self.mode == "dry_run"
        checks.append(("positions synchronized", synced, f"{len(held)} open after the start-up reconciliation"))
        checks.append(("monitoring", self.metrics is not None, "exporter attached" if self.metrics else "no exporter"))
        line = "; ".join(f"{name} {'ok' if ok else 'FAILED'} ({detail})" for name, ok, detail in checks)
        (log.info if all(ok for _, ok, _ in checks) else log.error)("post-startup validation: %s", line)
        return checks

    def _user_feed(self) -> WsFeed | None:
        return self.user_orders.feed if self.user_orders is not None else None

    def stop(self, status: str = "stopped", note: str | None = None) -> None:
        """Write the last heartbeat, close the session and release the lease (a standby may take it at once)."""
        self._stop_renewer()
        if self.user_orders is not None:
            self.user_orders.stop()
        if self.session_id is None:
            self._release_lease()
            return
        if self.lease_lost is not None:  # another holder owns the account now: write nothing of ours over it
            status, note = "stood_down", self.lease_lost
            if self.ledger.get_session(self.session_id).status == "running":  # unless its new holder recovered it
                self.ledger.end_session(self.session_id, status, note)
        else:
            self._heartbeat(force=True)
            self._checkpoint(status, force=True)
            self.ledger.end_session(self.session_id, status, note)
        self._release_lease()
        if self.incidents is not None:
            self.incidents.flush()
        if self.metrics is not None:
            self.metrics.mark_stopped()
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
            if self.lease_lost is not None:
                stopped_by = f"lease lost: {self.lease_lost}"
                break
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
            if self.lease_lost is not None:
                stopped_by = f"lease lost: {self.lease_lost}"
                break
            if on_cycle is not None:
                on_cycle(report)
            remaining = interval - (time.monotonic() - started)
            if remaining > 0 and (max_cycles is None or done < max_cycles):
                self._wait(remaining, should_stop)
        return RunSummary(done, self.orders_sent, self.fills_recorded, stopped_by)

    # --- the account lease ---------------------------------------------------------------------------------------

    def take_lease(
        self, flow_run_id: str | None = None, flow_run_url: str | None = None, *, lease_wait_seconds: float = 0.0
    ) -> None:
        """Hold the account's lease (not for a dry run, which sends nothing); LeaseHeld if a live bot has it after
        lease_wait_seconds (inf: a warm standby). start() takes it when it is not held yet."""
        if self.mode == "dry_run" or self.lease is not None:
            return
        self._acquire_lease(Holder.this_process("bot", flow_run_id, flow_run_url), lease_wait_seconds)

    def _acquire_lease(self, holder: Holder, wait_seconds: float) -> None:
        """Acquire, or wait up to wait_seconds (a standby: forever) for the lease to expire or its holder to die."""
        deadline = time.monotonic() + wait_seconds
        ttl = self.settings.lease_ttl_seconds
        announced = False
        unanswered = ""
        while True:
            try:
                self.lease = self.ledger.acquire_lease(
                    self.settings.account, holder, ttl, holder_gone=lambda lease: lease.holder.is_gone_here()
                )
                break
            except LeaseHeld as held:
                if time.monotonic() >= deadline:
                    raise
                if not announced:
                    log.warning("standby: %s; taking over when it expires", held.lease.describe())
                    announced = True
            except LEDGER_UNANSWERED as error:  # the ledger is busy or down: a standby waits on; a start fails now
                if time.monotonic() >= deadline:
                    raise
                if type(error).__name__ != unanswered:  # once per kind of failure, not every retry
                    unanswered = type(error).__name__
                    log.warning("standby: the ledger did not answer (%s: %s); retrying", unanswered, error)
            time.sleep(min(1.0, max(0.05, ttl / 20), max(0.0, deadline - time.monotonic())))
        log.info(
            "lease of account %s acquired: token %d, TTL %g s (%s)",
            self.settings.account,
            self.lease.token,
            ttl,
            holder.describe(),
        )
        self._renewer_stop.clear()
        # A long cycle (a slow exchange) must never let a live bot's lease lapse: renew from a thread as well.
        self._renewer = threading.Thread(target=self._renew_in_background, name="lease-renewer", daemon=True)
        self._renewer.start()

    def _renew_lease(self) -> None:
        """Renew now; a lost lease makes the bot stand down before its next order."""
        with self._lease_lock:
            fence = self.fence
            if fence is None or self.lease_lost is not None:
                return
            try:
                ttl = self.settings.lease_ttl_seconds
                # Renewed moments ago: a read (no write, no fsync in every cycle) still sees an override at once.
                renewed_lately = self.lease is not None and self.lease.seconds_since_renewal() < ttl / 6
                if renewed_lately and self.ledger.lease_token(fence.account) == fence.token:
                    return
                self.lease = self.ledger.renew_lease(fence, ttl)  # LeaseLost (recorded) when the token moved on
            except LeaseLost as error:
                self._stand_down(str(error))
            except Exception as error:  # the database is down (or worse): the fence refuses orders once it lapses
                log.warning("lease renewal failed (%s: %s); retrying", type(error).__name__, error)

    def _renew_in_background(self) -> None:
        interval = max(0.05, self.settings.lease_ttl_seconds / 3)
        while not self._renewer_stop.wait(interval):
            self._renew_lease()
            if self.lease_lost is not None:
                return

    def _stop_renewer(self) -> None:
        self._renewer_stop.set()
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(timeout=5)

    def _stand_down(self, reason: str) -> None:
        if self.lease_lost is None:
            self.lease_lost = reason
            # An operator's procedure (graceful shutdown, flatten, cancel-all) taking the account is planned: a
            # warning; another bot taking it, or a lapsed lease, is what the ERROR/CRITICAL scan should find.
            (log.warning if self._taken_by_operator() else log.critical)("standing down: %s", reason)

    def _taken_by_operator(self) -> bool:
        try:
            now_held = self.ledger.current_lease(self.settings.account)
        except Exception:  # the database is down: assume the worst
            return False
        return now_held is not None and now_held.holder.kind == "operator" and not now_held.expired()

    def _release_lease(self) -> None:
        with self._lease_lock:
            fence, self.lease = self.fence, None
        if fence is None or self.lease_lost is not None:
            return
        try:
            self.ledger.release_lease(fence, "bot stopped")
        except SQLAlchemyError as error:
            log.warning("lease not released (%s): it expires after its TTL", error)

    # --- one cycle -------------------------------------------------------------------------------------------

    def run_cycle(self) -> CycleReport:
        """market data -> data gate -> guards -> strategy -> risk checks -> orders -> ledger -> heartbeat."""
        started = time.perf_counter()
        self.cycles += 1
        report = CycleReport(self.cycles, self.broker.now())
        self._renew_lease()
        if self.lease_lost is not None:  # another holder trades this account now: write nothing more
            return report
        self._follow_active_key()
        if self.mode != "dry_run":
            report.fills += self._apply_order_updates()
            report.fills += self._unless_unreachable(self._sync_fills, 0, "fill sync")
        controls = self.controls()
        candles = self._market_data()
        self._gate(candles, report)
        report.prices = {s: c[-1].close for s, c in candles.items() if c}
        # What one unit of each position is worth (a future's unit is a contract of contract_size): exposure,
        # the position limit and the exposure sell-down value positions with these.
        values = {
            s: self.products[s].notional(Decimal(1), p) if s in self.products else p for s, p in report.prices.items()
        }
        report.values = values
        report.daily_pnl_pct, report.equity = self._unless_unreachable(
            lambda: self._update_daily_loss(report.prices, report.at), self._last_pnl, "balances"
        )
        self._last_pnl = (report.daily_pnl_pct, report.equity)
        self._guards(candles, report)
        if self.mode != "dry_run":
            report.orders.extend(self._reduce_exposure(values, controls))
        for symbol, product in self.products.items():
            if not candles[symbol]:
                continue  # no market data for this symbol this cycle: nothing to decide on
            position = self.positions.get(symbol, Decimal(0))
            for intent in self.strategy.decide(product, candles[symbol], position):
                report.intents.append(intent)
                decision = self.risk.check(intent, position, values.get(symbol, Decimal(0)), controls)
                if not decision.approved:
                    report.refused.append((intent, decision.reason))
                    continue
                if self.order_resync_due:
                    report.refused.append((intent, "order updates resync pending (REST unreachable)"))
                    continue
                report.orders.append(self._submit(intent, controls))
                if self.lease_lost is not None:
                    break
        if self.mode != "dry_run" and report.orders:
            report.fills += self._unless_unreachable(self._sync_fills, 0, "fill sync")
        report.duration_ms = (time.perf_counter() - started) * 1000
        forced = {guard: action for guard, action in self.risk.monitor.forced().items() if action != "alert"}
        if controls.kill_switch or "halt" in forced.values():
            self._trading_state = "halted"
        elif controls.reduce_only or forced or self.risk.gate_blocked:
            self._trading_state = "reduce_only"
        else:
            self._trading_state = "trading"
        if self.lease_lost is None:  # lost mid-cycle (renewal thread or fence): leave state to the new holder
            self._heartbeat()
            self._publish_state()
            self._checkpoint("periodic")
        self._record_metrics(report)
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

    def _follow_active_key(self) -> None:
        """perps-bot keys rotate wrote STATE_DIR/ACTIVE_KEY: from this cycle the broker (and the user channel) use
        that key, without a restart."""
        broker = self._raw_broker
        use_key = getattr(broker, "use_key", None)
        if use_key is None:
            return
        slot = active_key_slot(self.settings)
        if slot == getattr(broker, "key_slot", slot):
            return
        try:
            use_key(slot)
            if self.user_orders is not None:
                self.user_orders.use_jwt(ws_jwt_maker(self.settings, "the user channel", slot))
        except ConfigError as error:
            log.error("API key not switched to %s: %s", slot, error)
            return
        log.warning("API key switched to the %s key: every request from this cycle on goes out with it", slot)

    def _ws_feeds(self) -> list[WsFeed]:
        """The bot's WebSocket connections: market data (MARKET_DATA=coinbase-ws), order updates (ORDER_UPDATES)."""
        return [feed for feed in (self.market_feed, self._user_feed()) if feed is not None]

    def _unless_unreachable(self, read: Callable[[], _T], fallback: _T, what: str) -> _T:
        """A read the cycle can do without: an unreachable exchange is logged (and counted by the error-rate
        guard through the metered broker) instead of ending the run; the next cycle reads again."""
        try:
            return read()
        except BrokerUnavailable as error:
            log.error("%s skipped this cycle, exchange unreachable: %s", what, error)
            return fallback

    # --- market data, data gate, guards --------------------------------------------------------------------

    def _market_data(self) -> dict[str, list[Candle]]:
        """Each symbol's candle window; a symbol whose feed fails gets none (and the feed guard counts the time)."""
        candles: dict[str, list[Candle]] = {}
        now = time.monotonic()
        for symbol in self.products:
            try:
                candles[symbol] = self.broker.candles(symbol, self.strategy.warmup)
                self._feed_ok_at[symbol] = now
            except BrokerUnavailable as error:
                candles[symbol] = []
                self._feed_ok_at.setdefault(symbol, now)
                log.error("market data for %s unavailable: %s", symbol, error)
        newest = [c[-1].start for c in candles.values() if c]
        if newest:
            self._last_data = max(newest)
        return candles

    def _gate(self, candles: dict[str, list[Candle]], report: CycleReport) -> None:
        """The Great Expectations suite on this cycle's market data: a failure blocks new exposure this cycle."""
        if self.gate is None:
            return
        result = self.gate.check(candles, report.at)
        report.gate_ms = result.duration_ms
        report.gate_failures = result.failures
        self.risk.gate_blocked = not result.passed
        if not result.passed:
            self.risk.counters["data_gate_failed"] += 1
            log.warning("data gate failed, no new exposure this cycle: %s", "; ".join(result.failures))

    def _readings(self, candles: dict[str, list[Candle]], report: CycleReport) -> dict[str, float | None]:
        """This cycle's value for every guard."""
        now = time.monotonic()
        ages = [(report.at - c[-1].start).total_seconds() for c in candles.values() if c]
        volatilities = [v for v in (volatility_pct(c) for c in candles.values()) if v is not None]
        equity = report.equity
        if equity > 0:
            self._peak_equity = max(self._peak_equity or equity, equity)
        peak = self._peak_equity
        feeds = self._ws_feeds()
        readings: dict[str, float | None] = {
            "daily_loss": float(-report.daily_pnl_pct),
            "error_rate": self.stats.error_rate_pct(),
            "market_data_staleness": max(ages) if ages else None,
            # REST fetches failing, or (MARKET_DATA=coinbase-ws) the WebSocket down: the runbook's "WebSocket Down"
            "market_data_feed": max(
                [now - t for t in self._feed_ok_at.values()]
                + ([self.market_feed.stats.down_seconds()] if self.market_feed is not None else []),
                default=0.0,
            ),
            "websocket_disconnects": float(sum(f.stats.disconnects_within(3600) for f in feeds)) if feeds else None,
            "position_count": float(open_positions(self.positions.values())),
            "exposure": exposure_pct(self.positions, report.values, self.risk.max_position_usd),
            "drawdown": float((peak - equity) / peak * 100) if peak and equity > 0 else None,
            "volatility": max(volatilities) if volatilities else None,
            "api_latency": self.stats.latency_p95_ms(),
            "order_success": self.stats.order_success_pct(),
        }
        none: dict[str, float | None] = {}
        derivatives = self._unless_unreachable(self._derivatives_readings, none, "futures account")
        return {**readings, **self._activity_readings(report), **derivatives}

    def _derivatives_readings(self) -> dict[str, float | None]:
        """The futures account's liquidation buffer (while positions are open) and the largest funding rate of the
        futures held or traded; nothing without derivatives."""
        if self.futures is None:
            return {}
        account, self._futures_now = self._futures_now or self.futures.futures_account(), None
        held = {p.symbol for p in account.positions}
        traded = {s for s, product in self.products.items() if product.funding_rate is not None}
        products = [self.futures.fresh_product(symbol) for symbol in sorted(held | traded)]
        rates = {p.symbol: p.funding_rate for p in products if p.funding_rate is not None}
        self._funding_rates = {symbol: float(rate) for symbol, rate in rates.items()}
        self.funding.track(self.futures, products, account, self.broker.now())
        return {
            "liquidation_buffer": float(account.liquidation_buffer_pct) if account.positions else None,
            "funding_rate": max((abs(rate) for rate in self._funding_rates.values()), default=None),
        }

    def _activity_readings(self, report: CycleReport) -> dict[str, float | None]:
        """Orders in the last minute and hour, the drawdown from the last hour's highest equity, and the hours since
        the last fill (or since trading started), all on the account's clock (report.at)."""
        at = report.at
        hour_ago = at - timedelta(hours=1)
        self._trading_since = self._trading_since or at
        while self._order_times and self._order_times[0] < hour_ago:
            self._order_times.popleft()
        if report.equity > 0:
            self._equity_hour.append((at, report.equity))
        while self._equity_hour and self._equity_hour[0][0] < hour_ago:
            self._equity_hour.popleft()
        high = max((equity for _, equity in self._equity_hour), default=None)
        last_activity = max(self._fill_cursor or self._trading_since, self._trading_since)
        return {
            "orders_per_minute": float(sum(1 for t in self._order_times if t >= at - timedelta(minutes=1))),
            "orders_per_hour": float(len(self._order_times)),
            "drawdown_1h": float((high - report.equity) / high * 100) if high and report.equity > 0 else None,
            "no_trades": max((at - last_activity).total_seconds(), 0.0) / 3600,
        }

    def _guards(self, candles: dict[str, list[Candle]], report: CycleReport) -> None:
        """Move every guard; each change is counted, logged, sent to the incident desk and to the exporter."""
        report.readings = self._readings(candles, report)
        readings = {k: v for k, v in report.readings.items() if k in self.risk.monitor.rules}
        report.guard_events.extend(self.risk.observe(readings))
        exposure_open = any(q != 0 for q in self.positions.values())
        for event in report.guard_events:
            if event.level != "ok" and event.escalated and self.metrics is not None:
                self.metrics.record_guard_trip(event.guard, event.level)
            if self.incidents is not None:
                self.incidents.report(event, open_exposure=exposure_open)
            if event.guard == "market_data_feed" and event.level == "critical":
                # Once per trip: the guard stays critical (and its incident open) until a fetch succeeds again.
                log.warning("market-data feed down past its critical threshold: restarting the feed")
                self.broker.restart_market_data()

    def _reduce_exposure(self, prices: dict[str, Decimal], controls: RiskControls) -> list[SentOrder]:
        """With the exposure guard critical, sell each position above the warning level down to it (prices: what
        one unit of each position is worth)."""
        if self.risk.monitor.levels.get("exposure") != "critical" or controls.kill_switch:
            return []
        rule = self.risk.monitor.rules["exposure"]
        target_usd = self.risk.max_position_usd * Decimal(str(rule.warning or rule.critical)) / 100
        orders = []
        for symbol, quantity in self.positions.items():
            price = prices.get(symbol, Decimal(0))
            product = self.products.get(symbol)
            if product is None or price <= 0 or quantity <= 0 or quantity * price <= target_usd:
                continue
            excess = quantity - target_usd / price
            size = (excess / product.base_increment).to_integral_value(
                rounding="ROUND_CEILING"
            ) * product.base_increment
            size = min(size, quantity)
            if size < product.base_min_size:
                continue
            intent = OrderIntent(
                symbol,
                Side.SELL,
                size,
                f"guard exposure critical: sell down to {rule.warning:g}% of the limit",
                OrderType.MARKET,
                reduce_only=True,
            )
            decision = self.risk.check(intent, quantity, price, controls)
            if decision.approved:
                orders.append(self._submit(intent, controls))
        return orders

    def _is_future(self, symbol: str) -> bool:
        product = self.products.get(symbol)
        return product is not None and product.futures is not None

    def _submit(self, intent: OrderIntent, controls: RiskControls) -> SentOrder:
        """One intent through the one order path (trader/orders/path.py)."""
        request = OrderRequest(
            symbol=intent.symbol,
            side=intent.side,
            order_type=intent.order_type,
            quantity=intent.quantity,
            client_order_id=f"bot-{uuid.uuid4().hex[:20]}",
            limit_price=intent.limit_price,
            reduce_only=intent.reduce_only,
            leverage=self.settings.futures_leverage if self._is_future(intent.symbol) else None,
        )
        position = self.positions.get(intent.symbol, Decimal(0))
        try:
            outcome = self.orders.send(request, position=position, controls=controls, dry_run=self.mode == "dry_run")
        except LeaseLost as error:
            self._stand_down(str(error))
            return SentOrder(request, "refused", f"not sent: {error}")
        except OrderRejected as error:  # the controls or the product rules: nothing sent or written
            log.warning("order refused before sending: %s", error)
            return SentOrder(request, "refused", str(error))
        if outcome.status == "dry_run":
            log.info(
                "dry-run: would send %s %s %s %s (%s)",
                request.side,
                request.quantity,
                request.symbol,
                request.order_type,
                intent.reason,
            )
            return SentOrder(request, "dry_run", intent.reason)
        if not outcome.accepted:
            return SentOrder(request, outcome.status, outcome.reason)
        self.orders_sent += 1
        self._order_times.append(self.broker.now())
        # Recorded with the answer: the fill sync after the orders need not hand them to the ledger again.
        self._synced_trade_ids |= {fill.trade_id for fill in outcome.fills}
        if outcome.fills_recorded:
            self.fills_recorded += outcome.fills_recorded
            for symbol, quantity in outcome.positions.items():  # as the ledger now holds them (no re-read of all)
                if quantity:
                    self.positions[symbol] = quantity
                else:
                    self.positions.pop(symbol, None)  # flat: gone, as _load_positions leaves it
        log.info(
            "order %s %s %s %s %s: %s",
            request.client_order_id,
            request.side,
            request.quantity,
            request.symbol,
            outcome.status,
            intent.reason,
        )
        return SentOrder(request, outcome.status, intent.reason)

    # --- ledger, positions, heartbeat ------------------------------------------------------------------------

    def _wait(self, seconds: float, should_stop: Callable[[], bool]) -> None:
        """Sleep until the next cycle; with the user channel, wake at each order update and apply it at once."""
        stream = self.user_orders
        if stream is None or self.mode == "dry_run":
            _sleep_unless(seconds, should_stop)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not should_stop() and self.lease_lost is None:
            if stream.wake.wait(min(0.5, left)):
                self._apply_order_updates()

    def _apply_order_updates(self) -> int:
        """What the user channel collected: statuses applied to the ledger, fills read over REST for each order that
        filled further (trade ids keep it idempotent), and after a reconnect or gap a REST resync first. An
        unreachable exchange leaves the resync due (no new orders) until the next cycle's try; returns fills."""
        stream = self.user_orders
        if stream is None or self.mode == "dry_run" or self.lease_lost is not None or self.session_id is None:
            return 0
        updates = stream.take()
        if not (updates.orders or updates.resync or updates.filled_further or self.order_resync_due):
            return 0
        fills = 0
        try:
            current = self._apply_streamed_orders(updates.orders)
            if updates.resync or self.order_resync_due:
                fills = self._resync_orders()
            elif updates.filled_further:
                fills = self._sync_fills(current=current)
        except BrokerUnavailable as error:
            log.error("order updates: REST resync failed, new orders wait for it: %s", error)
            self.order_resync_due = True
            return fills
        if self.order_resync_due:
            log.info("order updates: REST resync done, trading resumes")
        self.order_resync_due = False
        return fills

    def _apply_streamed_orders(self, orders: list[Order]) -> set[str]:
        """Apply the streamed state of the ledger's own orders unless the ledger holds a newer one; the exchange
        ids applied. Orders the ledger does not know are left to reconciliation."""
        if not orders:
            return set()
        known = self.ledger.orders_by_client_id(o.client_order_id for o in orders if o.client_order_id)
        fresh = []
        for order in orders:
            record = known.get(order.client_order_id)
            if record is None:
                log.info("order updates: order %s is not in the ledger; reconciliation reports it", order.order_id)
                continue
            if record.filled_quantity > order.filled_quantity or (
                OrderStatus(record.status).is_terminal and not order.status.is_terminal
            ):
                continue  # the ledger already has a newer state (from REST)
            fresh.append(order)
        if fresh:
            self.ledger.apply_orders(fresh)
        return {order.order_id for order in fresh}

    def _resync_orders(self) -> int:
        """After a reconnect or a gap: the exchange's open orders, the ledger's open orders the exchange no longer
        lists (they ended while the socket was down), and the fills since the last one seen, all over REST."""
        open_now = {order.order_id: order for order in self.broker.list_open_orders()}
        ours = self.ledger.orders_by_client_id(o.client_order_id for o in open_now.values() if o.client_order_id)
        self.ledger.apply_orders([o for o in open_now.values() if o.client_order_id in ours])
        for record in self.ledger.open_orders():
            if record.exchange_order_id and record.exchange_order_id not in open_now:
                self._orders_to_refresh.add(record.exchange_order_id)
        return self._sync_fills()

    def _sync_fills(self, current: Collection[str] = ()) -> int:
        """Record the fills since the cursor; refresh the orders they belong to from the broker, except those
        whose `current` state the user channel just applied."""
        last = self._fill_cursor
        # A second of overlap: fills stamped in the same second as the cursor are deduped by trade id.
        fills = self.broker.list_fills(since=last - timedelta(seconds=1) if last else None)
        # The overlap hands back the fills recorded last cycle: only the others go to the ledger (a quiet cycle
        # opens no transaction).
        unsynced = [f for f in fills if f.trade_id not in self._synced_trade_ids]
        new = self.ledger.record_fills(unsynced, self.session_id) if unsynced else 0
        if fills:
            self._fill_cursor = cursor = max(f.filled_at for f in fills)
            self._synced_trade_ids = {f.trade_id for f in fills if f.filled_at >= cursor - timedelta(seconds=1)}
        if new:
            self.fills_recorded += new
            self._orders_to_refresh.update(f.order_id for f in fills if f.order_id not in current)
        # Orders whose fills are recorded are refreshed from the broker; one left by an unreachable exchange
        # is refreshed next cycle (its fills are not new any more, so the set remembers it).
        refreshed = bool(self._orders_to_refresh)
        for order_id in list(self._orders_to_refresh):
            self.ledger.apply_order(self.broker.get_order(order_id))
            self._orders_to_refresh.discard(order_id)
        if new or refreshed:
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
                    order_event(
                        "order_filled",
                        fill.filled_at,
                        client_order_id=fill.client_order_id,
                        order_id=fill.order_id,
                        trade_id=fill.trade_id,
                        symbol=fill.symbol,
                        side=fill.side,
                        quantity=fill.quantity,
                        price=fill.price,
                        fee=fill.fee,
                    )
        return new

    def _load_positions(self) -> None:
        self.positions = {symbol: p.quantity for symbol, p in self.ledger.positions().items()}

    def _update_daily_loss(self, prices: dict[str, Decimal], at: datetime) -> tuple[Decimal, Decimal]:
        """Today's PnL in percent (the daily-loss guard's reading) and the account's equity."""
        balances = self.broker.balances()
        valuation = self._valuation(prices)
        equity = sum((b.total * valuation.get(b.currency, Decimal(0)) for b in balances), Decimal(0))
        if self.futures is not None:  # futures' unrealized PnL and accrued funding (read once a cycle, reused below)
            self._futures_now = self.futures.futures_account()
            equity += self._futures_now.open_pnl
        day = at.date()
        if self._equity_day is None or self._equity_day[0] != day:
            start = self.ledger.equity_at_start_of_day(day) if self.mode != "dry_run" else None
            self._equity_day = (day, start if start is not None else equity)
        due = self._last_snapshot is None or at - self._last_snapshot >= BALANCE_SNAPSHOT_EVERY
        if self.mode != "dry_run" and due:
            self.ledger.record_balance_snapshot(self.session_id, balances, valuation, at)
            self._last_snapshot = at
        return self.risk.daily_pnl_pct(equity, self._equity_day[1]), equity

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
            if self.metrics is not None:
                self.metrics.set_last_checkpoint(time.time())
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
            atomic_write(
                self.heartbeat_file,
                json.dumps(
                    {
                        "session_id": self.session_id,
                        "cycles": self.cycles,
                        "market_time": at.isoformat(),
                        "wall_time": time.time(),
                        "positions": {s: str(q) for s, q in self.positions.items()},
                        "guard_counters": dict(self.risk.counters),
                        "guards": self.risk.monitor.snapshot(),
                        "trading_state": self._trading_state,
                        "data_gate": self._gate_summary(),
                    },
                    sort_keys=True,
                ),
                mode=0o644,  # read by the checklists and status, as before (it was created under the umask)
            )
        daily_pct, equity = self._last_pnl
        log.info(
            "heartbeat session=%s cycles=%d market_time=%s PnL daily=%+.2f%% equity=%s positions=%d state=%s",
            self.session_id,
            self.cycles,
            at.isoformat(),
            daily_pct,
            equity,
            open_positions(self.positions.values()),
            self._trading_state,
        )

    def _gate_summary(self) -> dict[str, Any] | None:
        if self.gate is None:
            return None
        return {
            "checked": self.gate.counters["checked"],
            "failed": self.gate.counters["failed"],
            "last_failures": list(self._gate_failures),
        }

    def _record_metrics(self, report: CycleReport) -> None:
        if report.gate_failures:
            self._gate_failures = report.gate_failures
        if self.metrics is None:
            return
        from trader.metrics.telemetry import CycleTelemetry

        ages = report.at - self._last_data if self._last_data is not None else None
        self.metrics.record_cycle(
            CycleTelemetry(
                cycle=report.cycle,
                duration_ms=report.duration_ms,
                position_count=open_positions(self.positions.values()),
                daily_pnl_pct=float(report.daily_pnl_pct),
                balance=float(report.equity),
                error_rate_pct=report.readings.get("error_rate"),
                order_success_pct=report.readings.get("order_success"),
                market_data_age_seconds=ages.total_seconds() if ages is not None else None,
                last_data_update=self._last_data,
                guard_levels=dict(self.risk.monitor.levels),
                trading_state=self._trading_state,
                gate_checked=int(self.gate is not None),
                gate_failed=int(bool(report.gate_failures)),
                guard_readings={g: float(v) for g, v in report.readings.items() if v is not None},
                orders=self.orders_sent - self._orders_reported,
                fills=self.fills_recorded - self._fills_reported,
                funding_rates=dict(self._funding_rates),
            )
        )
        self._orders_reported, self._fills_reported = self.orders_sent, self.fills_recorded
        if self.settings.metrics_file is not None:
            try:
                self.metrics.write_metrics_file(self.settings.metrics_file)
            except OSError as error:
                log.warning("metrics file %s not written: %s", self.settings.metrics_file, error)


def _sleep_unless(seconds: float, should_stop: Callable[[], bool], step: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if should_stop():
            return
        time.sleep(min(step, left))
