"""The one place that picks implementations from settings: broker, ledger, strategy, risk, bot."""

from __future__ import annotations

from pathlib import Path

from trader.bot import Mode, TradingBot
from trader.brokers.base import Broker
from trader.errors import ConfigError
from trader.ledger import Ledger
from trader.risk import RiskManager
from trader.settings import Settings
from trader.strategy import MovingAverageCrossover, Strategy


def build_broker(settings: Settings, *, persist: bool = True) -> Broker:
    """The broker for this profile; the simulated exchange keeps its paper account in the state folder."""
    kind = settings.broker_kind
    if kind == "coinbase":
        raise ConfigError(
            "BROKER=coinbase: the Coinbase Advanced Trade adapter is not in this build yet (issue 3); "
            "unset COINBASE_API_KEY/COINBASE_API_SECRET/COINBASE_KEY_FILE or set BROKER=simulated"
        )
    from trader.brokers.simulated import SimulatedExchange
    from trader.market import ReplayMarketData

    market = ReplayMarketData(settings.market_data_file, start=settings.market_data_start)
    state_path = settings.state_dir / "paper_exchange.json" if persist else None
    return SimulatedExchange(market, state_path=state_path)


def build_strategy(settings: Settings) -> Strategy:
    return MovingAverageCrossover(
        settings.strategy_fast_window, settings.strategy_slow_window, settings.position_size_usd
    )


def build_risk(settings: Settings) -> RiskManager:
    return RiskManager(settings.risk_max_position_usd, settings.risk_daily_loss_limit_pct)


def build_bot(
    settings: Settings, *, mode: Mode | None = None, broker: Broker | None = None, ledger: Ledger | None = None
) -> TradingBot:
    """A ready TradingBot: paper on the simulated exchange, live on Coinbase, or dry-run (nothing sent)."""
    broker = broker or build_broker(settings, persist=mode != "dry_run")
    mode = mode or ("paper" if broker.name == "simulated" else "live")
    return TradingBot(
        settings,
        broker,
        ledger or Ledger(settings.database_url),
        build_strategy(settings),
        build_risk(settings),
        mode=mode,
        heartbeat_file=None if mode == "dry_run" else Path(settings.state_dir) / "heartbeat.json",
    )
