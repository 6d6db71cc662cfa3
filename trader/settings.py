"""Settings from the environment (pydantic-settings), with the runbook's profiles and variables."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trader.account_names import DEFAULT_ACCOUNT, valid_account_name
from trader.errors import ConfigError

Profile = Literal["dev", "canary", "spot", "prod", "perps"]
PROFILES: tuple[str, ...] = ("dev", "canary", "spot", "prod", "perps")
BrokerChoice = Literal["auto", "simulated", "coinbase"]
MarketDataChoice = Literal["replay", "coinbase", "coinbase-ws"]
OrderUpdatesChoice = Literal["poll", "coinbase-ws"]

LIVE_PROFILES = ("spot", "prod", "perps")
# Per-profile defaults; an explicitly set environment variable always wins.
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "dev": {"cycle_interval_seconds": 1.0, "position_size_usd": Decimal("1000")},
    "canary": {
        "cycle_interval_seconds": 60.0,
        "position_size_usd": Decimal("100"),
        "max_position_usd": Decimal("500"),
        # paper fills on live public prices, the touch from the WebSocket ticker; no key needed
        "market_data": "coinbase-ws",
    },
    # Live profiles read the touch from the WebSocket ticker and hear of their fills on the user channel (REST
    # polling goes on beside both, and carries them while a socket is down).
    "spot": {"cycle_interval_seconds": 60.0, "order_updates": "coinbase-ws", "market_data": "coinbase-ws"},
    "prod": {"cycle_interval_seconds": 60.0, "order_updates": "coinbase-ws", "market_data": "coinbase-ws"},
    "perps": {
        "cycle_interval_seconds": 60.0,
        "order_updates": "coinbase-ws",
        "market_data": "coinbase-ws",
        "risk_max_leverage": Decimal("5"),
    },
}

_BOOL_HELP = "one of 1, 0, true, false"
# (warning, critical) pairs where the warning must come first.
_THRESHOLD_PAIRS = (
    ("risk_daily_loss_warn_pct", "risk_daily_loss_limit_pct"),
    ("risk_error_rate_warn_pct", "risk_error_rate_halt_pct"),
    ("risk_feed_down_warn_seconds", "risk_feed_down_critical_seconds"),
    ("risk_ws_disconnects_warn", "risk_ws_disconnects_critical"),
    ("risk_position_count_warn", "risk_position_count_critical"),
    ("risk_exposure_warn_pct", "risk_exposure_critical_pct"),
    ("risk_drawdown_warn_pct", "risk_drawdown_critical_pct"),
    ("risk_volatility_warn_pct", "risk_volatility_critical_pct"),
    ("risk_latency_p95_warn_ms", "risk_latency_p95_critical_ms"),
    ("risk_orders_per_minute_warn", "risk_orders_per_minute_critical"),
    ("risk_orders_per_hour_warn", "risk_orders_per_hour_critical"),
    ("risk_drawdown_1h_warn_pct", "risk_drawdown_1h_critical_pct"),
)


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def ws_url_problem(value: str) -> str | None:
    """Why `value` is not a URL the feed may use, or None: wss:// with a host, or ws:// to a loopback address only
    (a JWT never crosses a network in the clear)."""
    parsed = urlparse(value.strip())
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        return "is not a WebSocket URL; use wss://host[:port] (ws:// only on loopback)"
    if parsed.scheme == "ws" and not _loopback(parsed.hostname):
        return "is plain ws:// off loopback; use wss://"
    return None


class Settings(BaseSettings):
    """Everything the bot reads from its environment; field names are the variables' names."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", validate_default=True, populate_by_name=True
    )

    profile: Profile = Field("dev", validation_alias="PERPS_PROFILE")
    broker: BrokerChoice = "auto"

    coinbase_enable_derivatives: bool = False
    coinbase_api_key: SecretStr | None = None
    coinbase_api_secret: SecretStr | None = None
    coinbase_key_file: Path | None = None
    # A backup key for perps-bot keys rotate --to backup (the key-compromise procedure); never logged.
    coinbase_backup_api_key: SecretStr | None = None
    coinbase_backup_api_secret: SecretStr | None = None
    coinbase_backup_key_file: Path | None = None
    coinbase_api_base: str = "api.coinbase.com"
    coinbase_ca_file: Path | None = None
    # Advanced Trade WebSockets: market data (public) and the user's order updates (JWT); COINBASE_CA_FILE also
    # verifies wss:// (trader/coinbase/ws.py).
    coinbase_ws_url: str = "wss://advanced-trade-ws.coinbase.com"
    coinbase_ws_user_url: str = "wss://advanced-trade-ws-user.coinbase.com"
    # BROKER=coinbase: order status and fills also pushed over the user channel (coinbase-ws), or REST polling only.
    order_updates: OrderUpdatesChoice = "poll"
    coinbase_timeout_seconds: float = Field(10.0, gt=0, le=120)
    coinbase_max_retries: int = Field(4, ge=0, le=10)
    # Lowers Coinbase's documented limits (30 private / 10 public requests per second) for every bot of this key.
    rate_limit_max_rps: float | None = Field(None, gt=0)

    risk_kill_switch_enabled: bool = False
    risk_reduce_only_mode: bool = False
    risk_max_position_usd: Decimal = Field(Decimal("10000"), gt=0)
    # The highest leverage a futures order may carry (the order path refuses more before anything is sent); the
    # product's own max_leverage still applies below it.
    risk_max_leverage: Decimal = Field(Decimal("3"), ge=1, le=100)
    # The leverage the bot's futures orders carry (at most RISK_MAX_LEVERAGE).
    futures_leverage: Decimal = Field(Decimal("1"), ge=1, le=100)
    risk_daily_loss_limit_pct: Decimal = Field(Decimal("2"), gt=0, le=100)
    # Alert thresholds: the runbooks' tables (operations runbook "Alert Thresholds", perpetuals runbook
    # "Key Metrics", AI-bot runbook drawdown) as defaults; warning opens an incident, critical forces the action.
    risk_daily_loss_warn_pct: Decimal = Field(Decimal("1"), gt=0, le=100)
    risk_error_rate_warn_pct: float = Field(10.0, gt=0, le=100)
    risk_error_rate_halt_pct: float = Field(25.0, gt=0, le=100)
    risk_max_data_age_seconds: float = Field(180.0, gt=0)
    risk_feed_down_warn_seconds: float = Field(300.0, gt=0)
    risk_feed_down_critical_seconds: float = Field(900.0, gt=0)
    # WebSocket disconnects in the last hour (operations runbook: > 3 warning, > 10 critical); alerts only.
    risk_ws_disconnects_warn: int = Field(3, gt=0)
    risk_ws_disconnects_critical: int = Field(10, gt=0)
    risk_position_count_warn: int = Field(10, ge=1)
    risk_position_count_critical: int = Field(20, ge=1)
    risk_exposure_warn_pct: float = Field(75.0, gt=0, le=100)
    risk_exposure_critical_pct: float = Field(90.0, gt=0, le=100)
    risk_drawdown_warn_pct: float = Field(15.0, gt=0, le=100)
    risk_drawdown_critical_pct: float = Field(20.0, gt=0, le=100)
    risk_volatility_warn_pct: float = Field(1.5, gt=0)
    risk_volatility_critical_pct: float = Field(3.0, gt=0)
    risk_latency_p95_warn_ms: float = Field(500.0, gt=0)
    risk_latency_p95_critical_ms: float = Field(1000.0, gt=0)
    risk_order_success_warn_pct: float = Field(95.0, gt=0, le=100)
    risk_order_success_critical_pct: float = Field(90.0, gt=0, le=100)
    # Runaway trading (AI-bot runbook, emergency scenario 2): orders per minute and per hour of the account's clock.
    risk_orders_per_minute_warn: int = Field(10, ge=1)
    risk_orders_per_minute_critical: int = Field(20, ge=1)
    risk_orders_per_hour_warn: int = Field(60, ge=1)
    risk_orders_per_hour_critical: int = Field(120, ge=1)
    # A massive drawdown within one hour (scenario 3: > 20 % -> stop trading) and no fill for a day (informational).
    risk_drawdown_1h_warn_pct: float = Field(10.0, gt=0, le=100)
    risk_drawdown_1h_critical_pct: float = Field(20.0, gt=0, le=100)
    risk_no_trades_hours: float = Field(24.0, gt=0)
    # Derivatives (COINBASE_ENABLE_DERIVATIVES=1): the perpetuals runbook's funding_rate_spike (|rate| > 0.001 ->
    # alert the trader) and the futures account's liquidation buffer (below warning, below critical -> reduce-only).
    risk_funding_rate_abs: float = Field(0.001, gt=0)
    risk_liquidation_buffer_warn_pct: float = Field(30.0, gt=0, le=100)
    risk_liquidation_buffer_critical_pct: float = Field(15.0, gt=0, le=100)
    risk_guard_window_seconds: float = Field(300.0, gt=0)
    risk_guard_min_samples: int = Field(20, ge=1)

    # Great Expectations gate on the candles each cycle trades on (blocks new exposure when it fails).
    data_gate_enabled: bool = True

    # Prometheus exporter and /health (METRICS_PORT=0 picks a free port; METRICS_ENABLED=0 turns it off).
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9102, ge=0, le=65535)
    metrics_file: Path | None = None

    checkpoint_retention_count: int = Field(10, ge=1, le=10_000)
    checkpoint_enable_compression: bool = True
    checkpoint_interval_seconds: float = Field(300.0, gt=0)
    state_batch_size: int = Field(1000, ge=1, le=100_000)

    database_url: str = ""
    redis_url: str | None = None
    cold_storage_url: str = ""
    cold_storage_endpoint_url: str | None = None
    state_dir: Path = Path("var/state")
    log_dir: Path = Path("var/logs")

    slack_bot_token: SecretStr | None = None
    slack_channel: str | None = None
    slack_webhook_url: SecretStr | None = None

    # One account = one lease = one active bot (DESIGN.md "The bot's contract"); the id keys the lease row.
    account: str = DEFAULT_ACCOUNT
    accounts_file: Path = Path("accounts.yaml")  # the declared accounts (trader/accounts.py); none: just `account`
    # How many accounts a runbook flow works on at once (one task run each; flows/accounts.py).
    accounts_max_concurrency: int = Field(4, ge=1, le=64)
    lease_ttl_seconds: float = Field(30.0, gt=0)
    restart_max_per_hour: int = Field(5, gt=0)
    restart_backoff_max_seconds: float = Field(30.0, ge=0)  # the longest wait before a crash loop's next restart
    # How often each bot reads its run's state (a cancel) and the switch Variables from the Prefect API: the latency
    # of a UI cancel or a Variable switch, against ~1 API request per second per bot at 2 s (docs/performance.md).
    orchestrator_poll_seconds: float = Field(2.0, ge=0.5, le=60)

    trading_symbols: str = "BTC-USD"
    cycle_interval_seconds: float = Field(60.0, ge=0)
    heartbeat_interval_seconds: float = Field(5.0, ge=0)
    position_size_usd: Decimal = Field(Decimal("500"), gt=0)
    strategy_fast_window: int = Field(5, ge=1)
    strategy_slow_window: int = Field(20, ge=2)
    market_data: MarketDataChoice = "replay"
    market_data_file: Path | None = None
    market_data_start: int | None = Field(None, ge=0)
    # The replay plays forwards, backwards, forwards... so a paper bot left alone never runs out of bars.
    market_data_loop: bool = True

    @field_validator("database_url", "cold_storage_url", mode="after")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("account", mode="after")
    @classmethod
    def _account_name(cls, value: str) -> str:
        return valid_account_name(value)

    @field_validator("coinbase_api_base", mode="after")
    @classmethod
    def _api_host(cls, value: str) -> str:
        """The SDK takes a bare host[:port] and always speaks https."""
        host = value.strip().removeprefix("https://").rstrip("/")
        if host.startswith("http://"):
            raise ValueError("plain http is refused: give the host (api.coinbase.com) or an https:// address")
        if not host or "/" in host or " " in host:
            raise ValueError("must be a host or host:port such as api.coinbase.com")
        return host

    @field_validator("coinbase_ws_url", "coinbase_ws_user_url", mode="after")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        problem = ws_url_problem(value)
        if problem is not None:
            raise ValueError(problem.removeprefix("is "))
        return value.strip()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.profile == "perps" and not self.coinbase_enable_derivatives:
            raise ValueError(
                "profile perps is refused: US futures need futures (CFM) access and COINBASE_ENABLE_DERIVATIVES=1"
            )
        if self.coinbase_key_file and (self.coinbase_api_key or self.coinbase_api_secret):
            raise ValueError("set COINBASE_KEY_FILE or COINBASE_API_KEY/COINBASE_API_SECRET, not both")
        if self.coinbase_backup_key_file and (self.coinbase_backup_api_key or self.coinbase_backup_api_secret):
            raise ValueError(
                "set COINBASE_BACKUP_KEY_FILE or COINBASE_BACKUP_API_KEY/COINBASE_BACKUP_API_SECRET, not both"
            )
        if bool(self.coinbase_backup_api_key) != bool(self.coinbase_backup_api_secret):
            raise ValueError("set both COINBASE_BACKUP_API_KEY and COINBASE_BACKUP_API_SECRET, or neither")
        if bool(self.coinbase_api_key) != bool(self.coinbase_api_secret):
            missing = "COINBASE_API_SECRET" if self.coinbase_api_key else "COINBASE_API_KEY"
            raise ValueError(f"{missing} is missing: set both COINBASE_API_KEY and COINBASE_API_SECRET, or neither")
        for low, high in _THRESHOLD_PAIRS:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low.upper()} must not exceed {high.upper()} (warning comes before critical)")
        if self.risk_order_success_critical_pct > self.risk_order_success_warn_pct:
            raise ValueError("RISK_ORDER_SUCCESS_CRITICAL_PCT must be below RISK_ORDER_SUCCESS_WARN_PCT")
        if self.risk_liquidation_buffer_critical_pct > self.risk_liquidation_buffer_warn_pct:
            raise ValueError("RISK_LIQUIDATION_BUFFER_CRITICAL_PCT must be below RISK_LIQUIDATION_BUFFER_WARN_PCT")
        if self.futures_leverage > self.risk_max_leverage:
            raise ValueError(
                f"FUTURES_LEVERAGE {self.futures_leverage} is above RISK_MAX_LEVERAGE {self.risk_max_leverage}: "
                "lower FUTURES_LEVERAGE or raise RISK_MAX_LEVERAGE"
            )
        if self.strategy_fast_window >= self.strategy_slow_window:
            raise ValueError("STRATEGY_FAST_WINDOW must be smaller than STRATEGY_SLOW_WINDOW")
        self._check_one_exchange()
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.state_dir / 'ledger.db').as_posix()}"
        if not self.cold_storage_url:
            self.cold_storage_url = (self.state_dir / "cold").as_posix()
        return self

    def _check_one_exchange(self) -> None:
        """REST on a local test exchange with a WebSocket left at Coinbase's: two exchanges, and traffic off this
        machine that nobody meant. Refused, naming the variable to set."""
        if not _loopback(self.coinbase_api_base.rpartition(":")[0] or self.coinbase_api_base):
            return
        live_broker = self.broker == "coinbase" or (self.broker == "auto" and self.has_coinbase_credentials)
        for name, url, used, off in (
            (
                "COINBASE_WS_USER_URL",
                self.coinbase_ws_user_url,
                live_broker and self.order_updates == "coinbase-ws",
                "ORDER_UPDATES=poll",
            ),
            ("COINBASE_WS_URL", self.coinbase_ws_url, self.market_data == "coinbase-ws", "MARKET_DATA=coinbase"),
        ):
            if used and not _loopback(urlparse(url).hostname or ""):
                raise ValueError(
                    f"{name} is {url} while COINBASE_API_BASE is the local {self.coinbase_api_base}: set {name} to "
                    f"that exchange's WebSocket server (ws://127.0.0.1:PORT), or {off}"
                )

    @property
    def symbols(self) -> list[str]:
        return [s.strip().upper() for s in self.trading_symbols.split(",") if s.strip()]

    @property
    def has_coinbase_credentials(self) -> bool:
        return bool(self.coinbase_key_file or (self.coinbase_api_key and self.coinbase_api_secret))

    @property
    def broker_kind(self) -> Literal["simulated", "coinbase"]:
        """Which Broker this profile trades on; live profiles never fall back to paper silently."""
        if self.broker != "auto":
            return self.broker
        if self.has_coinbase_credentials:
            return "coinbase"
        if self.profile in ("dev", "canary"):
            return "simulated"
        raise ConfigError(
            f"profile {self.profile} trades live and needs COINBASE_API_KEY and COINBASE_API_SECRET "
            "(or COINBASE_KEY_FILE); set BROKER=simulated to paper-trade this profile"
        )

    @property
    def log_file(self) -> Path:
        return self.log_dir / "perps_bot.log"


def _variable_name(loc: tuple[Any, ...]) -> str:
    if not loc:
        return "settings"
    name = str(loc[0])
    return "PERPS_PROFILE" if name == "profile" else name.upper()


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    loc = first.get("loc", ())
    if not loc:
        return message
    name = _variable_name(loc)
    field = Settings.model_fields.get(str(loc[0]))
    secret = field is not None and "SecretStr" in str(field.annotation)
    got = "" if secret else f" (got {first.get('input')!r})"
    if first["type"].startswith("bool"):
        message = f"expected {_BOOL_HELP}"
    else:
        message = message.replace("Input should be", "must be")
    return f"{name}: {message}{got}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment plus overrides; raise ConfigError with one line on bad input."""
    profile = overrides.get("profile")
    if profile is not None and profile not in PROFILES:
        raise ConfigError(f"--profile: unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    try:
        base = Settings(**{k: v for k, v in overrides.items() if v is not None})
        defaults = PROFILE_DEFAULTS.get(base.profile, {})
        # model_fields_set holds what came from the environment or the overrides: those beat the profile.
        fill = {k: v for k, v in defaults.items() if k not in base.model_fields_set}
        if base.profile in LIVE_PROFILES and base.broker == "simulated":
            fill.pop("market_data", None)  # paper trading a live profile replays, as before (MARKET_DATA to change)
        settings = base.model_copy(update=fill) if fill else base
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None
    try:
        settings._check_one_exchange()  # again with the profile's defaults (model_copy does not validate)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _check_lease_ttl(settings)
    return settings


def _check_lease_ttl(settings: Settings) -> None:
    """A lease shorter than three cycles would lapse between two renewals of a healthy bot. Unset, the TTL is 30 s
    or three cycle intervals, whichever is longer (60-second profiles get 180 s)."""
    floor = 3 * settings.cycle_interval_seconds
    if "lease_ttl_seconds" not in settings.model_fields_set:
        settings.lease_ttl_seconds = max(settings.lease_ttl_seconds, floor)
    elif settings.lease_ttl_seconds < floor:
        raise ConfigError(
            f"LEASE_TTL_SECONDS: must be at least 3 cycle intervals ({floor:g} s with CYCLE_INTERVAL_SECONDS "
            f"{settings.cycle_interval_seconds:g}) (got {settings.lease_ttl_seconds:g})"
        )
