"""The trading engine as a drill's child process: the real TradingBot on a paper exchange, in one drill namespace.

    python -m trader.drills.engine_child --state-dir DIR [--handshake] [--max-cycles N] [--resting N]

Everything lives under DIR: the paper exchange (DIR/paper_exchange.json, written atomically after every call),
the SQLite ledger (DIR/ledger.db), checkpoints (warm in the ledger, cold in DIR/cold), the heartbeat. Nothing is
read from or written to the operator's state: Redis, PostgreSQL, S3, Slack and metrics are switched off.

Each start is a real start: engine recovery of a crashed session, then startup reconciliation. The drill strategy
keeps working orders on the book (buy limits far under the market, up to --max-resting per process), one limit near
the market that fills a few bars later, and one market order per cycle, so every cycle places orders and syncs fills.

Crash points (trader.drills.crash_points): DRILL_KILL_AT="<point>:<n>" SIGKILLs the process at the n-th arrival.
Until the hooks are in TradingBot itself, CrashPointBot calls them around the real methods.

`run_forked` is the same main() for a child forked by a multiprocessing fork server that preloaded these modules
(trader.drills.engine_preload): the crash-safety test starts 50+ engines and skips the interpreter start each time.

Protocol on stdout, one line each: `STANDBY {json}` once imported (--standby: nothing is built until `go`),
`READY {json}` after start (recovery and reconciliation measured), `CYCLE {json}` after every cycle,
`CRASH <point> <n>` just before a crash point kills, `DONE {json}` after a clean stop. With --handshake the child
waits after READY for `go` (trade) or `stop` (close the session and exit) on stdin.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from decimal import ROUND_DOWN, Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from trader.alerts.incidents import IncidentDesk
from trader.alerts.notifier import LogNotifier
from trader.bot import CycleReport, SentOrder, TradingBot
from trader.brokers.base import Broker
from trader.brokers.simulated import SimulatedExchange
from trader.domain import Candle, Fill, Order, OrderRequest, OrderType, Product, Side, quantize_down
from trader.drills.crash_points import ENV as CRASH_ENV
from trader.drills.crash_points import arm, crash_point, parse_plan
from trader.ledger import Ledger, TradingSession
from trader.ledger.fills import FillsRecorded
from trader.market import ReplayMarketData
from trader.market.source import DEFAULT_REPLAY_FILE, load_candles_csv
from trader.orders.path import OrderPath
from trader.risk import RiskControls
from trader.risk.incidents import GuardIncidents
from trader.runtime import build_risk
from trader.settings import Settings, load_settings
from trader.state.checkpoints import CheckpointStore
from trader.state.cold import LocalFolderStore
from trader.state.manager import StateManager
from trader.strategy import OrderIntent, Strategy

PAPER_EXCHANGE_FILE = "paper_exchange.json"
LEDGER_FILE = "ledger.db"


def drill_settings(state_dir: Path, **overrides: Any) -> Settings:
    """Settings confined to state_dir: paper broker on the replay, SQLite ledger, local cold folder, nothing else.

    Risk limits are wide so the drill strategy's orders are never refused; the guards still run every cycle."""
    state_dir = state_dir.resolve()
    values: dict[str, Any] = {
        "profile": "dev",
        "broker": "simulated",
        "market_data": "replay",
        "state_dir": state_dir,
        "log_dir": state_dir / "logs",
        "trading_symbols": "BTC-USD",
        "risk_max_position_usd": Decimal("10000000"),
        "risk_daily_loss_warn_pct": Decimal("50"),
        "risk_daily_loss_limit_pct": Decimal("90"),
        "risk_volatility_warn_pct": 50.0,
        "risk_volatility_critical_pct": 90.0,
        "risk_max_data_age_seconds": 10_000.0,
        # the drill strategy places its working orders in a burst: not runaway trading
        "risk_orders_per_minute_warn": 100_000,
        "risk_orders_per_minute_critical": 200_000,
        "risk_orders_per_hour_warn": 100_000,
        "risk_orders_per_hour_critical": 200_000,
        "data_gate_enabled": False,
        "checkpoint_interval_seconds": 0.2,
        "heartbeat_interval_seconds": 0.0,
        "cycle_interval_seconds": 0.0,
        **overrides,
    }
    settings = load_settings(**values)
    # Never the operator's services, whatever the environment says.
    return settings.model_copy(
        update={
            "database_url": f"sqlite:///{(state_dir / LEDGER_FILE).as_posix()}",
            "cold_storage_url": (state_dir / "cold").as_posix(),
            "redis_url": None,
            "metrics_enabled": False,
            "metrics_file": None,
            "slack_bot_token": None,
            "slack_channel": None,
            "slack_webhook_url": None,
            "risk_kill_switch_enabled": False,
            "risk_reduce_only_mode": False,
        }
    )


class DrillStrategy(Strategy):
    """Keeps working orders on the book and trades a little every cycle (not a trading idea: a load for drills)."""

    name = "drill_load"

    def __init__(self, resting_per_cycle: int = 2, max_resting: int = 150, notional_usd: Decimal = Decimal(25)):
        self.resting_per_cycle = resting_per_cycle
        self.max_resting = max_resting
        self.notional_usd = notional_usd
        self.placed_resting = 0

    @property
    def warmup(self) -> int:
        return 2

    def decide(self, product: Product, candles: Sequence[Candle], position: Decimal) -> list[OrderIntent]:
        if not candles:
            return []
        close = candles[-1].close
        intents = []
        for _ in range(min(self.resting_per_cycle, self.max_resting - self.placed_resting)):
            self.placed_resting += 1
            # Far under the market: rests until engine recovery cancels it. Prices differ so each is distinct.
            price = self._price(close * Decimal("0.7") - product.quote_increment * self.placed_resting, product)
            intents.append(self._limit(product, Side.BUY, price, "working order (drill)"))
        near = self._price(close * Decimal("0.9995"), product)
        intents.append(self._limit(product, Side.BUY, near, "near-market limit (drill)"))
        if position * close < self.notional_usd * 8:
            size = quantize_down(self.notional_usd / close, product.base_increment)
            intents.append(OrderIntent(product.symbol, Side.BUY, size, "market buy (drill)"))
        else:
            size = quantize_down(position / 2, product.base_increment)
            intents.append(OrderIntent(product.symbol, Side.SELL, size, "market sell (drill)", reduce_only=True))
        return intents

    def _limit(self, product: Product, side: Side, price: Decimal, reason: str) -> OrderIntent:
        size = quantize_down(self.notional_usd / price, product.base_increment)
        return OrderIntent(product.symbol, side, size, reason, OrderType.LIMIT, limit_price=price)

    @staticmethod
    def _price(value: Decimal, product: Product) -> Decimal:
        increment = product.quote_increment
        return (value / increment).to_integral_value(rounding=ROUND_DOWN) * increment


class CrashPointExchange(SimulatedExchange):
    """The paper exchange with the crash points that sit on the broker side."""

    def advance(self) -> bool:
        moved = super().advance()
        crash_point("after_advance")
        return moved

    def cancel_orders(self, order_ids: list[str]) -> dict[str, bool]:
        result = super().cancel_orders(order_ids)
        crash_point("mid_recovery")  # only engine recovery cancels in this drill
        return result


class CrashPointLedger(Ledger):
    """The SQLite ledger with the crash points around the fill write; notes when a start first read the sessions
    (that is when crashed_sessions() looks for a dead engine: the drill's detection moment)."""

    sessions_read_wall: float | None = None

    def list_sessions(self) -> list[TradingSession]:
        sessions = super().list_sessions()
        if self.sessions_read_wall is None:
            self.sessions_read_wall = time.time()
        return sessions

    def apply_order_with_fills(self, order: Order, fills: list[Fill], session_id: str | None) -> FillsRecorded:
        crash_point("before_record_fills")  # the order path's answer and fills, written together
        return super().apply_order_with_fills(order, fills, session_id)

    def record_fills(self, fills: list[Fill], session_id: str | None = None) -> int:
        crash_point("before_record_fills")
        inserted = super().record_fills(fills, session_id)
        crash_point("mid_fill_sync")
        return inserted


class CrashPointColdStore(LocalFolderStore):
    """The cold checkpoint folder; dies after a checkpoint's payload, before its manifest and warm row."""

    def put(self, name: str, data: bytes) -> str:
        key = super().put(name, data)
        if not name.endswith(".manifest.json"):
            crash_point("mid_checkpoint")
        return key


class CrashPointOrderPath(OrderPath):
    """The one order path with the crash points on either side of the send."""

    def _place(self, request: OrderRequest) -> Order | None:
        crash_point("before_place")
        order = super()._place(request)
        crash_point("after_place_before_apply")
        return order


class CrashPointBot(TradingBot):
    """TradingBot running its real code paths, with the crash points around the order submission.

    Stand-in until TradingBot calls crash_point() itself at these places."""

    order_path_class = CrashPointOrderPath

    def _submit(self, intent: OrderIntent, controls: RiskControls) -> SentOrder:
        sent = super()._submit(intent, controls)
        crash_point("after_apply")
        return sent


def build_drill_bot(
    settings: Settings, *, broker: Broker | None = None, resting_per_cycle: int = 2, max_resting: int = 150
) -> CrashPointBot:
    """The bot on the drill's settings: the paper exchange file (or `broker`), SQLite ledger, checkpoints,
    in-process hot state."""
    state_dir = settings.state_dir
    if broker is None:
        market = ReplayMarketData(settings.market_data_file, start=settings.market_data_start)
        broker = CrashPointExchange(market, state_path=state_dir / PAPER_EXCHANGE_FILE)
    ledger = CrashPointLedger(settings.database_url, account=settings.account)
    cold = CrashPointColdStore(state_dir / "cold")
    checkpoints = CheckpointStore(
        settings.database_url,
        cold,
        account=settings.account,
        retention=settings.checkpoint_retention_count,
        compress=True,
        migrate=False,
    )
    state = StateManager.from_settings(settings, cold=cold)
    return CrashPointBot(
        settings,
        broker,
        ledger,
        DrillStrategy(resting_per_cycle, max_resting),
        build_risk(settings),
        mode="paper" if broker.name == "simulated" else "live",
        heartbeat_file=state_dir / "heartbeat.json",
        checkpoints=checkpoints,
        state=state,
        incidents=GuardIncidents(IncidentDesk(ledger, LogNotifier())),
    )


class Channel:
    """How the child talks to its drill: lines out on stdout, commands in on stdin."""

    def send(self, line: str) -> None:
        sys.stdout.write(f"{line}\n")
        sys.stdout.flush()

    def receive(self) -> str:
        return sys.stdin.readline().strip()


class PipeChannel(Channel):
    """The same lines over a multiprocessing connection (a child forked by the drill's fork server)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def send(self, line: str) -> None:
        self.connection.send_bytes(line.encode())

    def receive(self) -> str:
        try:
            return self.connection.recv_bytes().decode().strip()
        except EOFError:
            return "stop"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trader.drills.engine_child", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True, help="the drill namespace's folder")
    parser.add_argument("--max-cycles", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between cycles")
    parser.add_argument("--resting", type=int, default=2, help="working orders added per cycle")
    parser.add_argument("--max-resting", type=int, default=150, help="working orders this process keeps at most")
    parser.add_argument("--symbols", default="BTC-USD")
    parser.add_argument("--handshake", action="store_true", help="after READY wait for go/stop on stdin")
    parser.add_argument(
        "--standby", action="store_true", help="say STANDBY once imported; build and start only on go (warm standby)"
    )
    parser.add_argument("--kill-at", default=os.environ.get(CRASH_ENV), help="<point>:<n>, as DRILL_KILL_AT")
    parser.add_argument("--log-file", type=Path, help="log here instead of stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, channel: Channel | None = None) -> int:
    """Start the engine (recovery, reconciliation), say READY, then cycle until --max-cycles or a SIGKILL."""
    entered = time.perf_counter()
    args = parse_args(argv)
    channel = channel or Channel()

    def emit(tag: str, payload: dict[str, Any]) -> None:
        channel.send(f"{tag} {json.dumps(payload, default=str, sort_keys=True)}")

    arm(parse_plan(args.kill_at), channel.send)
    level = os.environ.get("DRILL_LOG_LEVEL", "WARNING")
    if args.log_file is not None:
        logging.basicConfig(level=level, filename=args.log_file, force=True)
    else:
        logging.basicConfig(level=level, stream=sys.stderr)
    settings = drill_settings(args.state_dir, trading_symbols=args.symbols)
    if args.standby:
        # Code and the replay's candles loaded; nothing of the drill's state is read before the takeover.
        load_candles_csv(settings.market_data_file or DEFAULT_REPLAY_FILE)
        emit("STANDBY", {"pid": os.getpid()})
        if channel.receive() != "go":
            return 0
        entered = time.perf_counter()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    bot = build_drill_bot(settings, resting_per_cycle=args.resting, max_resting=args.max_resting)
    built = time.perf_counter()
    start_wall = time.time()
    reconciliation = bot.start()
    recovery = asdict(bot.recovery) if bot.recovery is not None else None
    if recovery is not None:
        recovery.pop("snapshot", None)  # the restored checkpoint itself: large, and the drill needs only its id
    emit(
        "READY",
        {
            "pid": os.getpid(),
            "session_id": bot.session_id,
            "start_wall": start_wall,
            "ready_wall": time.time(),
            "build_ms": (built - entered) * 1000,
            "start_ms": (time.perf_counter() - built) * 1000,
            "sessions_read_wall": bot.ledger.sessions_read_wall if isinstance(bot.ledger, CrashPointLedger) else None,
            "recovery": recovery,
            "reconciliation": asdict(reconciliation) if reconciliation is not None else None,
        },
    )
    if args.handshake and channel.receive() != "go":
        bot.stop("stopped", "drill: stop after start")
        emit("DONE", {"cycles": 0})
        return 0

    def on_cycle(report: CycleReport) -> None:
        emit(
            "CYCLE",
            {
                "cycle": report.cycle,
                "wall": time.time(),
                "orders": len(report.orders),
                "fills": report.fills,
                "ms": round(report.duration_ms, 2),
            },
        )

    status = "crashed"
    try:
        summary = bot.run(args.max_cycles, interval_seconds=args.interval, on_cycle=on_cycle)
        status = "stopped"
    finally:
        bot.stop(status)
    emit("DONE", {"cycles": summary.cycles, "orders": summary.orders, "fills": summary.fills})
    return 0


def run_forked(argv: list[str], connection: Connection) -> None:
    """main() in a process forked by the fork server (trader.drills.engine_preload already imported)."""
    try:
        main(argv, PipeChannel(connection))
    finally:
        connection.close()


if __name__ == "__main__":
    sys.exit(main())
