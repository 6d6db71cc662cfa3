"""The perpetuals runbook's Graceful Shutdown for one account: seven steps, one after another.

Source: runbook-coinbase-perpetuals.md, "Shutdown Procedures / Graceful Shutdown": reduce-only, wait for the
positions to close (timeout 300 s), cancel all open orders, stop order placement, verify no open orders, check the
final positions, save state.

1. reduce-only on: STATE_DIR/REDUCE_ONLY (set_switch). It stays on after the shutdown: `perps-bot reduce-only off`
   before trading again.
2. wait for flat: the shutdown takes the account's lease as an operator override, as flatten and cancel-all do, so a
   running bot stands down before its next order, between cycles, wherever it runs; once it has stopped (its
   process gone or its session ended) the shutdown reads the broker's positions in the account's symbols and sends
   reduce-only market exits through the one order path (flatten's send_exit), round after round, each round's
   exposure valued at the touch, until flat or the timeout. A short (futures) is bought back; like flatten's, the
   exits pass a kill switch that is on (they only shrink positions).
3. cancel all working orders (cancel_all).
4. verify that the broker lists no open order.
5. record the final positions: every position the broker reports, and its balances as a ledger balance snapshot.
6. checkpoint: what `perps-bot checkpoint create` makes (ledger and broker), reason "graceful shutdown".
7. stop the bot: the stop request STATE_DIR/STOP (any bot of the account running on this machine, a standby too,
   stops between cycles: trader/shutdown/stop.py), the account's live trading-bot runs cancelled through the
   orchestrator (an operator's cancel, never restarted: trader/supervision.py), then proof that the bot that held
   the account at step 2 has stopped.

Invariant: a step runs only when every step before it was ok; the first that fails ends the sequence, the later
ones are "not run", and the caller opens the SEV-2 incident (open_shutdown_incident). The lease is held, renewed in
the background, from step 2 until the shutdown is closed, and released then whatever happened. Every step is
idempotent: a retry, or a second shutdown, finds its work done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from contextlib import ExitStack
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from trader.brokers.rules import fmt
from trader.emergency.procedures import (
    CancelResult,
    FlattenResult,
    SkippedPosition,
    SwitchChange,
    cancel_all,
    operator_override,
    send_exit,
    set_switch,
)
from trader.errors import BrokerUnavailable, TraderError
from trader.ledger import Ledger
from trader.ledger.lease import Fence, LeaseInfo, LeaseLost
from trader.orders.path import OrderPath
from trader.risk.guards import RiskControls
from trader.settings import Settings
from trader.shutdown.results import STEPS, FlatProgress, RunStopped, ShutdownResult, Step, StepResult
from trader.shutdown.stop import request_stop

if TYPE_CHECKING:
    from trader.brokers.base import Broker

log = logging.getLogger(__name__)

PROCEDURE = "graceful-shutdown"
INCIDENT_FINGERPRINT = "graceful-shutdown"
CHECKPOINT_REASON = "graceful shutdown"
POLL_SECONDS = 0.25


class StepFailed(TraderError):
    """A step's verdict that the sequence cannot go on: what is left, in the operator's words."""


class BotRuns(Protocol):
    """The orchestrator's runs of the account's bot (Prefect: prefect_adapter/runs.py PrefectBotRuns)."""

    def stop(self, account: str, run_ids: Collection[str], wait_seconds: float) -> list[RunStopped]:
        """Cancel every live trading-bot run of `account`, and the runs named, as an operator's cancel; wait up to
        wait_seconds for each to be final; what each was and became."""
        ...


StepCall = Callable[[Step], str]


class GracefulShutdown:
    """One account's graceful shutdown over its ledger, its broker and, from step 2, the account's lease.

    Use it as a context manager (the lease released and the ledger closed on the way out), then run() the steps, or
    call each step's method in order (perform(step)) from whatever wraps them (the flow's tasks).
    """

    def __init__(
        self,
        settings: Settings,
        timeout_seconds: float,
        *,
        request_id: str,
        reason: str = "",
        bot_runs: BotRuns | None = None,
        progress: Callable[[FlatProgress], None] | None = None,
        poll_seconds: float = POLL_SECONDS,
        migrate: bool = True,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be more than 0 (got {timeout_seconds})")
        self.settings = settings
        self.timeout_seconds = timeout_seconds
        self.request_id = request_id
        self.reason = reason
        self.bot_runs = bot_runs
        self.progress = progress
        self.poll_seconds = poll_seconds
        self.migrate = migrate
        self.result = ShutdownResult(settings.account, timeout_seconds)
        self._stack = ExitStack()
        self._ledger: Ledger | None = None
        self._broker: Broker | None = None
        self._lease: LeaseInfo | None = None
        self._lost: str | None = None
        self._renewer_stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._bot: LeaseInfo | None = None  # the bot that held the account when step 2 took it
        self._bot_sessions: list[str] = []  # the trading sessions running then
        self._reduce_only: SwitchChange | None = None
        self._deadline: float | None = None
        self._exits_since: datetime | None = None  # the broker's clock when the first exit round began
        self._rejected: dict[str, tuple[Decimal, str]] = {}  # symbol -> (quantity, why) of an exit it rejected

    # --- resources ---------------------------------------------------------------------------------------------

    def __enter__(self) -> GracefulShutdown:
        self._ledger = self._stack.enter_context(
            Ledger(self.settings.database_url, account=self.settings.account, migrate=self.migrate)
        )
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()  # the renewer stopped, the lease released (operator_override), the ledger closed

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("GracefulShutdown is used as a context manager: with GracefulShutdown(...) as s")
        return self._ledger

    @property
    def broker(self) -> Broker:
        """Built once the running bot has stopped: the paper exchange's account is a file its bot keeps in memory,
        so one read before that could be overwritten by the bot's next write."""
        if self._broker is None:
            from trader.runtime import build_broker  # runtime builds whole bots: loaded only when this runs

            self._broker = build_broker(self.settings)
        return self._broker

    # --- the sequence ------------------------------------------------------------------------------------------

    def run(self, call: StepCall | None = None, on_step: Callable[[StepResult], None] | None = None) -> ShutdownResult:
        """Every step in order through call(step) (default: perform); the first failure ends the sequence."""
        call = call or self.perform
        failed: Step | None = None
        for step in STEPS:
            if failed is not None:
                outcome = StepResult(step, "not run", f"step {failed.number} ({failed.title}) failed")
            else:
                started = time.monotonic()
                try:
                    outcome = StepResult(step, "ok", call(step), time.monotonic() - started)
                except StepFailed as error:
                    outcome = StepResult(step, "failed", str(error), time.monotonic() - started)
                except Exception as error:  # any step's error is that step's failure: the table says which
                    detail = f"{type(error).__name__}: {error}"
                    outcome = StepResult(step, "failed", detail, time.monotonic() - started)
                failed = step if outcome.status == "failed" else None
                (log.error if failed else log.info)("graceful shutdown %s: %s", step.label, outcome.detail)
            self.result.steps.append(outcome)
            if on_step is not None:
                on_step(outcome)
        log.warning("%s", self.result.summary())
        return self.result

    def perform(self, step: Step) -> str:
        """Run one step by its key; its detail, or StepFailed."""
        steps: dict[str, Callable[[], str]] = {
            "reduce-only": self.reduce_only,
            "wait-for-flat": self.wait_for_flat,
            "cancel-all": self.cancel_all,
            "verify-no-orders": self.verify_no_orders,
            "final-positions": self.final_positions,
            "checkpoint": self.checkpoint,
            "stop-bot": self.stop_bot,
        }
        return steps[step.key]()

    # --- 1. reduce-only ----------------------------------------------------------------------------------------

    def reduce_only(self) -> str:
        """STATE_DIR/REDUCE_ONLY: a bot of this account only shrinks positions from its next cycle."""
        self._reduce_only = set_switch(self.settings, "reduce_only", True, reason=f"{PROCEDURE} {self.request_id}")
        return self._reduce_only.describe()

    # --- 2. wait for flat --------------------------------------------------------------------------------------

    def wait_for_flat(self) -> str:
        """Take the account (the running bot stands down), then reduce-only exits until flat or the timeout."""
        if self._deadline is None:  # a retry of this step keeps the first attempt's deadline
            self._deadline = time.monotonic() + self.timeout_seconds
        started = time.monotonic()
        stood_down = self._take_account()
        symbols = self.settings.symbols
        path = OrderPath(self.broker, self.ledger, controls=self._controls, fence=self._fence)
        exits: dict[str, str] = {}  # symbol -> the order id of its latest exit
        sent = rounds = 0
        exposure_start: Decimal | None = None
        skipped: dict[str, str] = {}
        held: dict[str, Decimal] | None = None  # None until the broker answered once
        problem = ""
        while True:
            self._check_lease()
            try:
                held = self._held(symbols)
                exposure = self._exposure(held)
            except BrokerUnavailable as error:  # a blip: the wait goes on until its deadline
                problem = f"exchange unreachable: {error}"
                log.warning("graceful shutdown: wait for flat: %s", problem)
            else:
                exposure_start = exposure if exposure_start is None else exposure_start
                self._report(
                    FlatProgress(time.monotonic() - started, self.timeout_seconds, held, exposure_start, exposure, sent)
                )
                if not held:
                    took = time.monotonic() - started
                    return f"{stood_down}; flat in {', '.join(symbols)}: {sent} reduce-only exit(s), {took:.1f} s"
                if time.monotonic() < self._deadline:
                    rounds += 1
                    this_round, skipped = self._exit_round(path, held, exits, f"{self.request_id}:{rounds}")
                    sent += this_round
                    if this_round:
                        continue  # a market exit fills at once or soon: look again before waiting
            left = self._deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(self.poll_seconds, left))
        held_now = ", ".join(f"{s} {fmt(q)}" for s, q in sorted(held.items())) if held else "positions unknown"
        why = "; ".join(f"{symbol}: {reason}" for symbol, reason in sorted(skipped.items()))
        stuck = held is not None and bool(held) and set(held) <= set(skipped)  # no exit here can close what is left
        raise StepFailed(
            f"not flat after {self.timeout_seconds:g} s: {held_now} still held after {sent} reduce-only exit(s)"
            + (f" ({why})" if why else "")
            + (f"; last problem: {problem}" if problem else "")
            + (
                "; close it on the exchange by hand, then run the shutdown again"
                if stuck
                else "; run the shutdown again with a longer --timeout, or close it on the exchange"
            )
        )

    def _take_account(self) -> str:
        """The operator's override of the account's lease (once), and the wait for the bot it replaced to stop."""
        if self._lease is not None:
            return "the account was already taken"
        before = self.ledger.current_lease(self.settings.account)
        if before is not None and before.holder.kind == "bot" and not before.expired():
            self._bot = before
            self._bot_sessions = [s.id for s in self.ledger.list_sessions() if s.status == "running"]
        self._lease = self._stack.enter_context(operator_override(self.ledger, self.settings, PROCEDURE))
        self._renewer = threading.Thread(target=self._renew_in_background, name="shutdown-lease-renewer", daemon=True)
        self._renewer.start()
        self._stack.callback(self._stop_renewer)  # before the lease is released (an ExitStack unwinds LIFO)
        if self._bot is None:
            return "no bot held the account"
        assert self._deadline is not None
        how = self._wait_until_stopped(self._deadline)
        who = self._bot.holder.describe()
        if how is None:
            return f"{who} did not show its stand-down in time; fenced (token {self._lease.token}), it sends nothing"
        return f"{who} stood down ({how})"

    def _wait_until_stopped(self, deadline: float) -> str | None:
        """How the bot that held the account stopped (its process gone here, or its session ended), waiting at most
        until `deadline` and one lease TTL plus a cycle (a live bot sees the override at its next cycle); None when
        it did not show it in time."""
        assert self._bot is not None
        bound = min(deadline, time.monotonic() + self.settings.lease_ttl_seconds + self.settings.cycle_interval_seconds)
        while True:
            if self._bot.holder.is_gone_here():
                return "its process has exited"
            if self._bot_sessions and all(self.ledger.get_session(s).status != "running" for s in self._bot_sessions):
                ended = self.ledger.get_session(self._bot_sessions[-1])
                return f"its session {ended.id} ended {ended.status}"
            left = bound - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(self.poll_seconds, left))

    def _held(self, symbols: list[str]) -> dict[str, Decimal]:
        return {p.symbol: p.quantity for p in self.broker.positions() if p.symbol in symbols and p.quantity != 0}

    def _exposure(self, held: dict[str, Decimal]) -> Decimal:
        """What is held, valued at the middle of each symbol's touch (a future's quantity counts contracts)."""
        total = Decimal(0)
        for symbol, quantity in held.items():
            bid, ask = self.broker.best_bid_ask(symbol)
            total += self.broker.get_product(symbol).notional(abs(quantity), (bid + ask) / 2)
        return total

    def _exit_round(
        self, path: OrderPath, held: dict[str, Decimal], exits: dict[str, str], request_id: str
    ) -> tuple[int, dict[str, str]]:
        """A reduce-only market exit of each position whose last exit is no longer working; (exits sent, why each
        position left alone was left). An exit the exchange rejected is not sent again for the same quantity."""
        if self._exits_since is None:
            self._exits_since = self.broker.now()
        record = FlattenResult(request_id, self._reduce_only_change(), CancelResult(self.broker.now()))
        sent = 0
        for symbol, quantity in sorted(held.items()):
            refused = self._rejected.get(symbol)
            if refused is not None and refused[0] == quantity:
                record.skipped.append(SkippedPosition(symbol, quantity, refused[1]))
                continue
            working = exits.get(symbol)
            if working is not None and not self.broker.get_order(working).status.is_terminal:
                continue  # its exit is still working on the exchange: never a second one beside it
            exit_order = send_exit(
                self.broker, self.ledger, path, symbol, quantity, request_id, record, close_shorts=True
            )
            if exit_order is None:
                continue
            if exit_order.order_id is not None:
                exits[symbol] = exit_order.order_id
            if exit_order.note.startswith("rejected"):
                self._rejected[symbol] = (quantity, f"exit {exit_order.note}")
            sent += exit_order.note.startswith("sent")
        self._record_exit_fills(set(exits.values()))
        return sent, {s.symbol: s.reason for s in record.skipped}

    def _record_exit_fills(self, order_ids: set[str]) -> None:
        """Fills of the exits that came after their answers, and their orders' states, into the ledger."""
        if not order_ids or self._exits_since is None:
            return
        since = self._exits_since - timedelta(seconds=1)
        fills = [f for f in self.broker.list_fills(since=since) if f.order_id in order_ids]
        if fills:
            self.ledger.record_fills(fills)
        self.ledger.apply_orders([self.broker.get_order(order_id) for order_id in sorted(order_ids)])

    def _report(self, progress: FlatProgress) -> None:
        if self.progress is not None:
            self.progress(progress)

    def _reduce_only_change(self) -> SwitchChange:
        if self._reduce_only is not None:
            return self._reduce_only
        return set_switch(self.settings, "reduce_only", True, reason=f"{PROCEDURE} {self.request_id}")

    def _controls(self) -> RiskControls:
        """The switches as a bot reads them now (reduce-only is on: the exits only shrink positions)."""
        from trader.bot import read_controls

        return read_controls(self.settings)

    # --- the lease held from step 2 ----------------------------------------------------------------------------

    def _fence(self) -> Fence | None:
        return self._lease.fence if self._lease is not None else None

    def _stop_renewer(self) -> None:
        self._renewer_stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)

    def _renew_in_background(self) -> None:
        ttl = self.settings.lease_ttl_seconds
        while not self._renewer_stop.wait(max(0.05, ttl / 3)):
            lease = self._lease
            if lease is None:
                return
            try:
                self._lease = self.ledger.renew_lease(lease.fence, ttl)
            except LeaseLost as error:
                self._lost = str(error)
                log.critical("graceful shutdown: %s", error)
                return
            except Exception as error:  # the database is away: the fence refuses orders once the lease lapses
                log.warning("graceful shutdown: lease renewal failed (%s: %s); retrying", type(error).__name__, error)

    def _check_lease(self) -> None:
        if self._lost is not None:
            raise StepFailed(f"the account's lease was taken from the shutdown: {self._lost}")

    # --- 3. cancel all, 4. verify ------------------------------------------------------------------------------

    def cancel_all(self) -> str:
        """Every working order on the broker cancelled in batches and recorded in the ledger."""
        self._check_lease()
        return cancel_all(self.broker, self.ledger, reason="cancelled by graceful shutdown").summary()

    def verify_no_orders(self) -> str:
        """StepFailed, naming them, when the broker still lists an open order."""
        still_open = self.broker.list_open_orders()
        if still_open:
            named = ", ".join(f"{o.order_id} ({o.symbol} {o.side} {fmt(o.quantity)})" for o in still_open[:10])
            more = f" and {len(still_open) - 10} more" if len(still_open) > 10 else ""
            raise StepFailed(
                f"{len(still_open)} order(s) still open on the broker: {named}{more}; cancel them on the exchange "
                "(perps-bot cancel-all), then run the shutdown again"
            )
        in_ledger = len(self.ledger.open_orders())
        ledger_note = f"; the ledger still counts {in_ledger} open (reconcile brings it in line)" if in_ledger else ""
        return f"no open order on the broker{ledger_note}"

    # --- 5. final positions, 6. checkpoint ---------------------------------------------------------------------

    def final_positions(self) -> str:
        """Every position the broker reports, and its balances as a ledger balance snapshot."""
        positions = self.broker.positions()
        balances = self.broker.balances()
        self.result.final_positions = {p.symbol: p.quantity for p in positions}
        snapshot = self.ledger.record_balance_snapshot(None, balances, self._valuation(), self.broker.now())
        held = ", ".join(f"{p.symbol} {fmt(p.quantity)}" for p in positions) or "none (flat)"
        cash = ", ".join(f"{b.currency} {fmt(b.total)}" for b in balances if b.total)
        return f"positions: {held}; balances {cash or 'none'} recorded (snapshot {snapshot[:12]})"

    def _valuation(self) -> dict[str, Decimal]:
        """Each currency of the account's products at the middle of its touch (the quote currency at 1)."""
        prices: dict[str, Decimal] = {}
        for symbol in self.settings.symbols:
            product = self.broker.get_product(symbol)
            bid, ask = self.broker.best_bid_ask(symbol)
            prices[product.quote_currency] = Decimal(1)
            prices[product.base_currency] = (bid + ask) / 2
        return prices

    def checkpoint(self) -> str:
        """What `perps-bot checkpoint create` makes: the ledger's positions and open orders, the broker's balances."""
        from trader.state.checkpoints import checkpoint_store_from_settings, snapshot_from_ledger

        store = checkpoint_store_from_settings(self.settings)
        try:
            snapshot = snapshot_from_ledger(self.ledger, self.broker)
            info = store.create(snapshot, reason=CHECKPOINT_REASON)
        finally:
            store.dispose()
        self.result.checkpoint_id = info.id
        return (
            f"checkpoint {info.id}: {len(snapshot['positions'])} position(s), {len(snapshot['open_orders'])} open "
            f"order(s), {len(snapshot['balances'])} balance(s); sha256 {info.sha256[:12]}"
        )

    # --- 7. stop the bot ---------------------------------------------------------------------------------------

    def stop_bot(self) -> str:
        """The stop request, the orchestrator's runs cancelled, and proof that the bot which held the account
        stopped; StepFailed when a bot or a run is still going."""
        self._check_lease()
        path = request_stop(self.settings, f"{PROCEDURE} {self.request_id}{f': {self.reason}' if self.reason else ''}")
        done = [f"stop request {path}"]
        problems: list[str] = []
        wait = max(30.0, 2 * self.settings.cycle_interval_seconds + 10)
        if self.bot_runs is not None:
            named = [self._bot.holder.flow_run_id] if self._bot is not None and self._bot.holder.flow_run_id else []
            try:
                runs = self.bot_runs.stop(self.settings.account, named, wait)
            except Exception as error:  # the orchestrator is away: the lease, the stop file and the proof below decide
                done.append(f"the orchestrator's runs not checked ({type(error).__name__}: {error})")
            else:
                done += [r.describe() for r in runs if r.final] or ["no trading-bot run of the account is live"]
                problems += [f"{r.describe()} after {wait:g} s" for r in runs if not r.final]
        if self._bot is not None:
            how = self._wait_until_stopped(time.monotonic() + wait)
            who = self._bot.holder.describe()
            if how is None:
                problems.append(f"{who} has not stopped: stop it by hand (its lease is fenced: it sends nothing)")
            else:
                done.insert(0, f"{who} stopped ({how})")
        else:
            done.insert(0, "no bot held the account")
        if problems:
            raise StepFailed("; ".join(problems + done))
        return "; ".join(done)


def open_shutdown_incident(
    settings: Settings, result: ShutdownResult, reason: str = "", flow_run_url: str | None = None
) -> int | None:
    """The SEV-2 incident of a shutdown that stopped at a failed step (one per account: graceful-shutdown)."""
    from trader.alerts.incidents import open_incident_desk
    from trader.alerts.severity import IncidentKind

    with open_incident_desk(settings) as desk:
        return desk.raise_incident(
            IncidentKind.SHUTDOWN_FAILED,
            result.title(),
            result.evidence(reason),
            fingerprint=INCIDENT_FINGERPRINT,
            flow_run_url=flow_run_url,
        )


def resolve_shutdown_incident(settings: Settings) -> bool:
    """A shutdown that went through resolves the account's open graceful-shutdown incident; True if one was open."""
    from trader.alerts.incidents import open_incident_desk

    with open_incident_desk(settings) as desk:
        return desk.resolve(INCIDENT_FINGERPRINT)
