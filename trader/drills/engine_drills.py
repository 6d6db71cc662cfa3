"""Failover drills for the trading engine and the exchange: engine-crash and exchange-degradation.

engine-crash: the engine runs as its own process (python -m trader.drills.engine_child) on the drill's namespace
(paper exchange file, SQLite ledger, checkpoints, all under the drill's folder) with working orders on the book.
The drill SIGKILLs it mid-cycle; a warm standby (a second interpreter, imported, nothing built) takes over, runs
engine recovery of the crashed session and startup reconciliation, and trades on. Measured: detection (the kill
until the standby's start reads the crashed session), engine recovery (EngineRecovery.total_ms), orders recovered
(the dead engine's working orders cancelled), positions validated, total downtime (the kill until the first good
cycle), data loss (orders and fills the ledger lost) and coherence (ledger against the paper exchange).

exchange-degradation: the local Advanced Trade server (HTTPS, a self-signed certificate and a CDP key made for the
drill) answers one request in four with a 429 (Retry-After) or a time-out (some creates time out *after* the order
was made) for a while; the bot trades through it with CoinbaseBroker (coinbase-advanced-py). Measured: detection
(the faults start until the api_latency/error_rate guards leave ok), the first retry, recovery (the faults stop
until the guards are back to ok and an order is accepted again), duplicates (client_order_id once on the server)
and coherence (ledger against the server's orders and fills).
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from trader.drills.base import (
    EXPECTED_DETECTION_MS,
    EXPECTED_ENGINE_RECOVERY_MS,
    DrillContext,
    DrillResult,
    scenario,
)
from trader.drills.coherence import (
    COINBASE_STATUSES,
    BrokerOrder,
    BrokerTruth,
    Coherence,
    compare,
    paper_exchange_truth,
)
from trader.drills.engine_process import EngineProcess, Line
from trader.drills.namespace import DrillError, DrillRefused
from trader.settings import Settings, load_settings

log = logging.getLogger(__name__)

WORKING_ORDERS = 120  # the runbook's engine-crash example recovers 80-200 pending orders
WORKING_PER_CYCLE = 10
CYCLES_AFTER_RESTART = 5
# exchange-degradation. The guards judge exchange-call latency p95 over RISK_GUARD_WINDOW_SECONDS (and need
# RISK_GUARD_MIN_SAMPLES calls in it), and the bot reads them once per cycle. Under the drill's faults a cycle waits
# out Retry-After (0.6 s) and time-outs (0.5 s), and looks an unclear create up by client_order_id (~2 s) before it
# ends, so detection is expected within two degraded cycles (6 s; the runbook's 1-2 s holds for the first retry,
# details["first_retry_ms"]). Recovery: the slow calls age out of the window and an order is accepted again, within
# the window plus two seconds. The production window (300 s) would need minutes of faults: the drill shortens it.
DEGRADATION_GUARD_WINDOW_SECONDS = 2.0
DEGRADATION_GUARD_MIN_SAMPLES = 3
DEGRADATION_FAULT_SECONDS = 6.0
DEGRADATION_CLIENT_TIMEOUT_SECONDS = 0.5
DEGRADATION_RETRY_AFTER_SECONDS = 0.6
DEGRADATION_EXPECTED = {
    "detection_ms": 6000.0,
    "recovery_ms": DEGRADATION_GUARD_WINDOW_SECONDS * 1000 + 2000,
}
CREATE_TIMEOUT_EVERY_SECONDS = 3.0  # a create that times out after the order was made, now and then
CLEAN_BETWEEN_FAULTS = 3  # requests served normally after a fault before the next: a retry never meets two


def drill_folder(ctx: DrillContext, name: str) -> Path:
    """ctx.workdir/<name>, refused (DrillRefused, nothing touched) when it is or holds the live state folder."""
    settings: Settings = ctx.options.get("settings") or load_settings()
    live = Path(settings.state_dir).resolve()
    folder = (Path(ctx.workdir) / name).resolve()
    if folder == live or live in folder.parents or folder in live.parents:
        raise DrillRefused(
            f"drill folder {folder} overlaps the live state folder {live} (STATE_DIR): a drill never runs on the "
            "live state; give the drill a scratch folder outside it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _expect(engine: EngineProcess, tag: str, what: str, timeout: float = 120.0) -> Line:
    line = engine.wait_for(tag, timeout=timeout)
    if line is None:
        raise DrillError(f"engine-crash: the engine process {engine.pid} exited before {what}; see its log")
    return line


def _data_loss(report: Coherence) -> str:
    lost_orders = sum("not in the ledger" in p and p.startswith("order") for p in report.problems)
    lost_fills = sum("not in the ledger" in p and p.startswith("fill") for p in report.problems)
    if not lost_orders and not lost_fills:
        return "none"
    return f"{lost_orders} order(s) and {lost_fills} fill(s) missing from the ledger"


@scenario("engine-crash")
def engine_crash(ctx: DrillContext) -> DrillResult:
    """SIGKILL the engine mid-cycle with working orders; a standby recovers the session and trades on."""
    folder = drill_folder(ctx, "engine-crash")
    working = int(ctx.options.get("working_orders", WORKING_ORDERS))
    result = DrillResult(
        "engine-crash",
        ctx.namespace,
        datetime.now(UTC),
        expected={"detection_ms": EXPECTED_DETECTION_MS, "recovery_ms": EXPECTED_ENGINE_RECOVERY_MS},
    )
    engine_log = folder / "engine.log"
    args = ["--resting", str(WORKING_PER_CYCLE), "--max-resting", str(working)]
    ctx.progress(0.05, f"starting the engine in {folder}")
    with EngineProcess(folder, args=[*args, "--max-cycles", "1000000"], stderr_path=engine_log) as engine:
        ready = _expect(engine, "READY", "it started")
        result.details["first_start_ms"] = round((ready.at - engine.launched) * 1000, 1)
        cycles_needed = math.ceil(working / WORKING_PER_CYCLE) + 2
        cycle_ms: list[float] = []
        while not cycle_ms or len(cycle_ms) < cycles_needed:
            cycle_ms.append(_expect(engine, "CYCLE", f"{working} working orders were placed").payload["ms"])
        ctx.progress(0.3, f"{working} working orders on the book; starting the standby engine")
        with EngineProcess(
            folder, args=[*args, "--standby", "--max-cycles", str(CYCLES_AFTER_RESTART)], stderr_path=engine_log
        ) as standby:
            _expect(standby, "STANDBY", "it was ready to take over")
            # Mid-cycle: half a cycle after one ended (cycles run back to back).
            _expect(engine, "CYCLE", "the kill")
            time.sleep(statistics.median(cycle_ms) / 2000)
            killed_wall = time.time()
            engine.kill()
            code = engine.wait(timeout=30)
            noticed_wall = time.time()
            if code != -9:
                raise DrillError(f"engine-crash: the engine exited with {code}, not by the SIGKILL")
            ctx.progress(0.5, "engine killed (SIGKILL) mid-cycle; the standby takes over")
            at_kill = paper_exchange_truth(folder / "paper_exchange.json")
            working_at_kill = {o.client_order_id for o in at_kill.orders if o.status == "open"}
            standby.send("go")
            restarted = _expect(standby, "READY", "it recovered the crashed session")
            first_cycle = _expect(standby, "CYCLE", "its first cycle")
            _expect(standby, "DONE", "it stopped", timeout=60)
            standby.wait(timeout=30)

    recovery: dict[str, Any] | None = restarted.payload["recovery"]
    if recovery is None:
        raise DrillError("engine-crash: the restarted engine found no crashed session to recover")
    result.detection_ms = (restarted.payload["sessions_read_wall"] - killed_wall) * 1000
    result.recovery_ms = float(recovery["total_ms"])
    result.downtime_ms = (first_cycle.payload["wall"] - killed_wall) * 1000
    result.orders_recovered = int(recovery["orders_cancelled"])

    ctx.progress(0.8, "comparing the ledger with the paper exchange")
    from trader.drills.engine_child import drill_settings
    from trader.ledger import Ledger

    traded = drill_settings(folder)  # what the engine child ran on: its ledger file and its account
    ledger = Ledger(traded.database_url, account=traded.account, migrate=False)
    try:
        after = paper_exchange_truth(folder / "paper_exchange.json")
        report = compare(ledger, after)
    finally:
        ledger.dispose()
    still_working = sorted(
        o.client_order_id for o in after.orders if o.client_order_id in working_at_kill and o.status == "open"
    )
    if still_working:
        report.problems.append(f"{len(still_working)} of the dead engine's working orders are still open")
    result.coherence_match = report.match
    result.data_loss_estimate = _data_loss(report)
    result.details.update(
        {
            "folder": str(folder),
            "working_orders_at_kill": len(working_at_kill),
            "orders_cancelled": recovery["orders_cancelled"],
            "orders_not_cancelled": recovery["orders_not_cancelled"],
            "positions_checked": recovery["positions_checked"],
            "positions_dropped": recovery["positions_dropped"],
            "checkpoint_id": recovery["checkpoint_id"],
            "cancel_ms": round(recovery["cancel_ms"], 2),
            "validation_ms": round(recovery["validation_ms"], 2),
            "death_noticed_ms": round((noticed_wall - killed_wall) * 1000, 1),
            "standby_start_ms": round(restarted.payload["build_ms"] + restarted.payload["start_ms"], 1),
            "reconciliation": restarted.payload["reconciliation"],
            "cycle_ms_median": statistics.median(cycle_ms),
            "coherence": report.summary(),
        }
    )
    result.notes.append(
        f"Cancelled {recovery['orders_cancelled']} pending orders of {len(working_at_kill)} working at the kill; "
        f"position validation: {recovery['positions_checked']} checked, {len(recovery['positions_dropped'])} dropped"
    )
    result.notes.extend(report.problems[:10])
    ctx.progress(1.0, "engine-crash drill done")
    return result


# --- exchange degradation ---------------------------------------------------------------------------------------


@dataclass
class _Sample:
    at: float
    error_rate: str
    api_latency: str
    orders_sent: int


@dataclass
class _Watch:
    """What the drill sees of the bot while it trades in its thread."""

    samples: list[_Sample] = field(default_factory=list)
    retries: list[float] = field(default_factory=list)  # monotonic time of every policy retry
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def poll(self, levels: Mapping[str, str], orders_sent: int) -> None:
        """The guards' levels right now (the bot moves them once per cycle, in its own thread)."""
        sample = _Sample(time.monotonic(), levels.get("error_rate", "ok"), levels.get("api_latency", "ok"), orders_sent)
        with self.lock:
            self.samples.append(sample)

    def first(self, since: float, test: Callable[[_Sample], bool]) -> _Sample | None:
        with self.lock:
            return next((s for s in self.samples if s.at >= since and test(s)), None)


def _flagged(sample: _Sample) -> bool:
    return sample.error_rate != "ok" or sample.api_latency != "ok"


def _server_truth(server: Any, symbol: str, base_currency: str) -> BrokerTruth:
    orders = [
        BrokerOrder(o.client_order_id, o.order_id, str(COINBASE_STATUSES.get(o.status, o.status)), o.filled_size)
        for o in server.orders.values()
    ]
    available, hold = server.balance(base_currency)
    held: Decimal = available + hold
    return BrokerTruth(orders, [f.trade_id for f in server.fills], {symbol: held} if held else {})


@scenario("exchange-degradation")
def exchange_degradation(ctx: DrillContext) -> DrillResult:
    """429s with Retry-After and time-outs from the exchange for a while; the guards flag it, nothing is duplicated."""
    from trader.brokers.coinbase import CoinbaseBroker
    from trader.drills.engine_child import build_drill_bot, drill_settings
    from trader.reconcile import reconcile_on_start
    from trader.testing.advanced_trade import AdvancedTradeServer, Fault, generate_cdp_key

    folder = drill_folder(ctx, "exchange-degradation")
    fault_seconds = float(ctx.options.get("fault_seconds", DEGRADATION_FAULT_SECONDS))
    result = DrillResult("exchange-degradation", ctx.namespace, datetime.now(UTC), expected=dict(DEGRADATION_EXPECTED))
    key = generate_cdp_key(f"organizations/drill/apiKeys/{ctx.namespace}")
    server = AdvancedTradeServer(key_name=key.name, public_key_pem=key.public_key_pem, cert_dir=folder / "tls")
    ctx.progress(0.05, "starting the local Advanced Trade server (HTTPS)")
    server.start()
    try:
        settings = drill_settings(
            folder,
            broker="coinbase",
            coinbase_key_file=key.write_key_file(folder / "cdp_key.json"),
            coinbase_api_base=server.base_url,
            coinbase_ca_file=server.ca_file,
            coinbase_timeout_seconds=DEGRADATION_CLIENT_TIMEOUT_SECONDS,
            coinbase_max_retries=4,
            risk_guard_window_seconds=DEGRADATION_GUARD_WINDOW_SECONDS,
            risk_guard_min_samples=DEGRADATION_GUARD_MIN_SAMPLES,
        )
        broker = CoinbaseBroker.from_settings(settings)
        bot = build_drill_bot(settings, broker=broker, resting_per_cycle=0, max_resting=0)
        watch = _Watch()
        plain_sleep = broker.policy.sleep

        def sleep_and_note(seconds: float) -> None:
            watch.retries.append(time.monotonic())
            plain_sleep(seconds)

        broker.policy.sleep = sleep_and_note
        bot.start()
        stop = threading.Event()

        def on_cycle(_report: Any) -> None:
            watch.poll(bot.risk.monitor.levels, bot.orders_sent)

        def trade() -> None:
            try:
                bot.run(None, interval_seconds=0.05, should_stop=stop.is_set, on_cycle=on_cycle)
            except BaseException as error:  # noqa: BLE001 - reported as the drill's failure
                watch.error = error
                log.exception("exchange-degradation: the bot stopped on an error")

        thread = threading.Thread(target=trade, name="drill-bot", daemon=True)
        thread.start()
        try:
            ctx.progress(0.2, "trading normally: baseline")
            baseline_until = time.monotonic() + 30
            while time.monotonic() < baseline_until and watch.error is None:
                # Enough cycles for the guards to have readings (their stats belong to the bot's thread).
                with watch.lock:
                    ready = bot.cycles >= 5 and bool(watch.samples) and not _flagged(watch.samples[-1])
                if ready:
                    break
                time.sleep(0.05)
            else:
                raise DrillError("exchange-degradation: the bot did not trade normally before the faults")

            ctx.progress(0.4, f"injecting 429s and time-outs for {fault_seconds:g} s")
            faults_started = time.monotonic()
            injected: Counter[str] = Counter()
            general: Fault | None = None  # 429 / time-out on any call, CLEAN_BETWEEN_FAULTS clean ones between
            create: Fault | None = None  # a create that times out after the order was made
            served_at_fault = 0
            next_create = faults_started
            while time.monotonic() - faults_started < fault_seconds and watch.error is None:
                watch.poll(bot.risk.monitor.levels, bot.orders_sent)
                served = len(server.requests)
                if general is not None and general.times <= 0:
                    general, served_at_fault = None, served  # consumed: count clean requests from here
                if general is None and served > served_at_fault + CLEAN_BETWEEN_FAULTS:
                    if injected["429"] <= injected["timeout"]:
                        general = server.inject(Fault("429", retry_after=DEGRADATION_RETRY_AFTER_SECONDS))
                        injected["429"] += 1
                    else:
                        general = server.inject(Fault("timeout", delay=DEGRADATION_CLIENT_TIMEOUT_SECONDS + 0.5))
                        injected["timeout"] += 1
                if (create is None or create.times <= 0) and time.monotonic() >= next_create:
                    next_create = time.monotonic() + CREATE_TIMEOUT_EVERY_SECONDS
                    create = server.inject(
                        Fault(
                            "timeout",
                            method="POST",
                            path="/api/v3/brokerage/orders",
                            delay=DEGRADATION_CLIENT_TIMEOUT_SECONDS + 0.5,
                            process=True,
                        )
                    )
                    injected["create-timeout"] += 1
                time.sleep(0.002)
            server.clear_faults()
            if create is not None and create.times > 0:
                injected["create-timeout"] -= 1  # armed, never met a create
            faults_stopped = time.monotonic()
            ctx.progress(0.6, "faults stopped; waiting for the guards to clear and orders to flow")

            sent_at_stop = bot.orders_sent
            recovered: _Sample | None = None
            deadline = faults_stopped + DEGRADATION_GUARD_WINDOW_SECONDS + 30
            while recovered is None and time.monotonic() < deadline and watch.error is None:
                watch.poll(bot.risk.monitor.levels, bot.orders_sent)
                recovered = watch.first(faults_stopped, lambda s: not _flagged(s) and s.orders_sent > sent_at_stop)
                time.sleep(0.002)
        finally:
            stop.set()
            thread.join(timeout=30)
        if watch.error is not None:
            raise DrillError(f"exchange-degradation: the bot stopped trading on {watch.error!r}")
        bot.stop("stopped", "exchange-degradation drill")

        flagged = watch.first(faults_started, _flagged)
        retries = [t for t in watch.retries if t >= faults_started]
        result.detection_ms = (flagged.at - faults_started) * 1000 if flagged else None
        result.recovery_ms = (recovered.at - faults_stopped) * 1000 if recovered else None
        if flagged and recovered:
            result.downtime_ms = (recovered.at - flagged.at) * 1000

        ctx.progress(0.8, "comparing the ledger with the server's orders and fills")
        symbol = settings.symbols[0]
        base_currency = bot.products[symbol].base_currency
        creates = [r for r in server.requests if r.method == "POST" and r.path.endswith("/orders")]
        unclear = [r for r in creates if r.fault is not None]
        result.orders_recovered = len({str((r.body or {}).get("client_order_id")) for r in unclear})
        report = compare(bot.ledger, _server_truth(server, symbol, base_currency))
        first_pass = report.summary()
        if not report.match:
            # What the next start (or the hourly reconcile) does: settle orders left pending_submit.
            reconciliation = reconcile_on_start(bot.broker, bot.ledger, bot.broker.now())
            result.details["reconciliation"] = reconciliation.summary()
            report = compare(bot.ledger, _server_truth(server, symbol, base_currency))
        duplicates = {c: n for c, n in Counter(o.client_order_id for o in server.orders.values()).items() if n > 1}
        result.coherence_match = report.match and not duplicates
        result.data_loss_estimate = _data_loss(report)
        result.details.update(
            {
                "folder": str(folder),
                "server": f"https://{server.base_url}",
                "faults_injected": dict(injected),
                "fault_seconds": round(faults_stopped - faults_started, 2),
                "first_retry_ms": round((retries[0] - faults_started) * 1000, 1) if retries else None,
                "retries": len(retries),
                "guards_flagged": {"error_rate": flagged.error_rate, "api_latency": flagged.api_latency}
                if flagged
                else None,
                "creates_sent": len(creates),
                "creates_unclear": len(unclear),
                "duplicate_client_order_ids": duplicates,
                "orders_sent": bot.orders_sent,
                "coherence_first_pass": first_pass,
                "coherence": report.summary(),
                "guard_window_seconds": DEGRADATION_GUARD_WINDOW_SECONDS,
            }
        )
        if result.detection_ms is not None and result.detection_ms > EXPECTED_DETECTION_MS:
            result.notes.append(
                f"guards flagged after {result.detection_ms:.0f} ms, beyond the runbook's "
                f"{EXPECTED_DETECTION_MS:g} ms: "
                "they are read once per cycle and a degraded cycle is slow; the first retry came after "
                f"{result.details['first_retry_ms']} ms"
            )
        result.notes.append(
            f"{sum(injected.values())} faults ({dict(injected)}); {len(retries)} retries; "
            f"{len(unclear)} creates without a clear answer settled by client_order_id; "
            f"{len(duplicates)} duplicated client_order_id"
        )
        result.notes.extend(report.problems[:10])
        ctx.progress(1.0, "exchange-degradation drill done")
        return result
    finally:
        server.stop()
