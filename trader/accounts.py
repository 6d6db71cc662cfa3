"""The declared accounts: one file (ACCOUNTS_FILE, default ./accounts.yaml), one supervised bot per account.

    accounts:
      - name: alpha
        broker: coinbase                 # simulated | coinbase
        credentials:                     # where the key comes from, never the key itself
          env_prefix: ALPHA_             # ALPHA_COINBASE_KEY_FILE, or ALPHA_COINBASE_API_KEY + _API_SECRET
          # secret_blocks: {api_key: coinbase-alpha-key, api_secret: coinbase-alpha-secret}   (Prefect Secret blocks)
        symbols: [BTC-USD, ETH-USD]
        profile: spot                    # default: the environment's (PERPS_PROFILE)
        strategy: {fast_window: 5, slow_window: 20, position_size_usd: 250}
        risk: {max_position_usd: 2000, daily_loss_limit_pct: 2}   # any RISK_* setting, without the prefix
        metrics_port: 9110               # default: METRICS_PORT + the account's position in the file (0, 1, 2...)

With no file there is one account, named by ACCOUNT (`default`), with the environment's settings: nothing changes
for a single bot.

Two bots on one machine never share a local file or a port: a declared account's STATE_DIR is
`<STATE_DIR>/accounts/<name>` (heartbeat.json, the paper exchange's account, the flag files, the warm journal) and
its LOG_DIR `<LOG_DIR>/accounts/<name>` (perps_bot.log rotates per process); its metrics port is the file's
`metrics_port`, else METRICS_PORT + its position in the file, so adding an account at the end moves no other's.
The ledger database and the cold tier stay the machine's (DATABASE_URL, COLD_STORAGE_URL, or their defaults under
the machine's STATE_DIR): rows and prefixes there are scoped by account, and one backup covers every account.

Every mistake is one line naming the file, the account and the field, with the fix; the values of credentials never
appear in the file, in errors or in logs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from trader.account_names import ALL_ACCOUNTS, valid_account_name
from trader.errors import ConfigError
from trader.settings import Profile, Settings, load_settings

STRATEGY_FIELDS = {
    "fast_window": "strategy_fast_window",
    "slow_window": "strategy_slow_window",
    "position_size_usd": "position_size_usd",
}
SecretLookup = Callable[[str], SecretStr | None]


class SecretBlocks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=1)
    api_secret: str = Field(min_length=1)


class Credentials(BaseModel):
    """Where an account's Coinbase key comes from: environment variables under a prefix, or Prefect Secret blocks."""

    model_config = ConfigDict(extra="forbid")

    env_prefix: str | None = Field(None, pattern=r"^[A-Z][A-Z0-9_]*$")
    secret_blocks: SecretBlocks | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Credentials:
        if (self.env_prefix is None) == (self.secret_blocks is None):
            raise ValueError("give exactly one of env_prefix or secret_blocks")
        return self

    def describe(self) -> str:
        """Where the key comes from, for listings (names only, never values)."""
        if self.env_prefix is not None:
            return f"env {self.env_prefix}COINBASE_*"
        assert self.secret_blocks is not None
        return f"secret blocks {self.secret_blocks.api_key}, {self.secret_blocks.api_secret}"


class AccountSpec(BaseModel):
    """One declared account, as written in the file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    broker: Literal["simulated", "coinbase"]
    credentials: Credentials | None = None
    symbols: list[str] = Field(min_length=1)
    profile: Profile | None = None
    strategy: dict[str, Any] = Field(default_factory=dict)
    risk: dict[str, Any] = Field(default_factory=dict)
    metrics_port: int | None = Field(None, ge=1, le=65535)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return valid_account_name(name)

    @model_validator(mode="after")
    def _coinbase_needs_a_key(self) -> AccountSpec:
        if self.broker == "coinbase" and self.credentials is None:
            raise ValueError("missing: a coinbase account needs credentials (env_prefix or secret_blocks)")
        self.symbols = [symbol.strip().upper() for symbol in self.symbols]
        return self


class AccountsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accounts: list[AccountSpec] = Field(min_length=1)


def load_accounts(path: Path) -> list[AccountSpec]:
    """The accounts a file declares; ConfigError with one line (file, account, field, fix) on any mistake."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(
            f"ACCOUNTS_FILE: {path} cannot be read ({error.strerror}); fix the path or unset it"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the file's syntax") from None
    try:
        declared = AccountsFile.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: {_where(raw, error)}") from None
    seen: set[str] = set()
    for spec in declared.accounts:
        if spec.name in seen:
            raise ConfigError(f"{path}: account {spec.name!r}: name: declared twice; give each account its own name")
        seen.add(spec.name)
    return declared.accounts


def _where(raw: Any, error: ValidationError) -> str:
    """The first problem as `account 'NAME': field.path: message`."""
    first = error.errors()[0]
    loc = list(first.get("loc", ()))
    message = first["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    if first["type"] == "extra_forbidden":
        message = "unknown field; remove it or check its spelling"
    if first["type"] == "missing":
        message = "missing; add it"
    got = first.get("input")
    # What was written is echoed only where it cannot be a secret: never under credentials, never an unknown field.
    private = "credentials" in loc or first["type"] in ("extra_forbidden", "missing")
    shown = f" (got {got!r})" if isinstance(got, str | int | float) and not private else ""
    if len(loc) >= 2 and loc[0] == "accounts" and isinstance(loc[1], int):
        accounts = raw.get("accounts") if isinstance(raw, dict) else None
        entry = accounts[loc[1]] if isinstance(accounts, list) and loc[1] < len(accounts) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        who = f"account {name!r}" if name else f"account #{loc[1] + 1}"
        field = ".".join(str(part) for part in loc[2:]) or "account"
        return f"{who}: {field}: {message}{shown}"
    field = ".".join(str(part) for part in loc) or "file"
    return f"{field}: {message}{shown}; the file holds `accounts:`, a list of accounts"


def settings_for(
    spec: AccountSpec,
    *,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    secret: SecretLookup | None = None,
    index: int = 0,
    **overrides: Any,
) -> Settings:
    """The settings this account's bot runs with: the environment's, with the account's name, broker, symbols,
    profile, strategy, risk limits and key (from its env prefix or Secret blocks), its own state and log folders
    and metrics port (index: its position in the file). ConfigError, one line, naming the account and the field."""
    who = f"account {spec.name!r}"
    try:
        machine = load_settings(**overrides)
    except ConfigError as error:
        raise ConfigError(f"{who}: {error}") from None
    fields: dict[str, Any] = {
        "account": spec.name,
        "broker": spec.broker,
        "trading_symbols": ",".join(spec.symbols),
        "profile": spec.profile or profile,
        **own_files(machine, spec, index),
    }
    for key, value in spec.strategy.items():
        if key not in STRATEGY_FIELDS:
            raise ConfigError(f"{who}: strategy.{key}: unknown field; expected one of {', '.join(STRATEGY_FIELDS)}")
        fields[STRATEGY_FIELDS[key]] = value
    for key, value in spec.risk.items():
        if f"risk_{key}" not in Settings.model_fields:
            raise ConfigError(
                f"{who}: risk.{key}: unknown field; expected a RISK_* setting without its prefix (max_position_usd…)"
            )
        fields[f"risk_{key}"] = value
    try:
        settings = load_settings(**{**overrides, **fields})
    except ConfigError as error:
        raise ConfigError(f"{who}: {_account_field(str(error))}") from None
    if spec.broker == "coinbase":
        assert spec.credentials is not None
        keys = _credentials(who, spec.credentials, os.environ if environ is None else environ, secret)
        settings = settings.model_copy(update=keys)
    return settings


def own_files(machine: Settings, spec: AccountSpec, index: int) -> dict[str, Any]:
    """The account's own STATE_DIR, LOG_DIR and metrics port on this machine; the machine's ledger and cold tier
    (fixed here, or their defaults would follow the account's STATE_DIR into a ledger of its own)."""
    port = spec.metrics_port
    if port is None:
        port = machine.metrics_port + index if machine.metrics_port else 0  # 0: a free port each, as METRICS_PORT=0
    return {
        "state_dir": machine.state_dir / "accounts" / spec.name,
        "log_dir": machine.log_dir / "accounts" / spec.name,
        "database_url": machine.database_url,
        "cold_storage_url": machine.cold_storage_url,
        "metrics_port": port,
    }


def _check_ports(path: Path, specs: list[AccountSpec], base_port: int) -> None:
    """ConfigError when two accounts would export metrics on one port (a file's metrics_port or base + position)."""
    if not base_port and all(spec.metrics_port is None for spec in specs):
        return
    owner: dict[int, str] = {}
    for index, spec in enumerate(specs):
        port = spec.metrics_port if spec.metrics_port is not None else base_port + index if base_port else 0
        if port and port in owner:
            raise ConfigError(
                f"{path}: account {spec.name!r}: metrics_port: {port} is taken by account {owner[port]!r} "
                f"(METRICS_PORT {base_port} + position in the file, unless metrics_port is set); give each its own"
            )
        owner[port] = spec.name


def _account_field(message: str) -> str:
    """A Settings error line in the file's words: RISK_MAX_POSITION_USD -> risk.max_position_usd,
    STRATEGY_FAST_WINDOW -> strategy.fast_window, PERPS_PROFILE -> profile."""
    for key, field in STRATEGY_FIELDS.items():
        message = message.replace(field.upper(), f"strategy.{key}")
    message = message.replace("PERPS_PROFILE", "profile")
    return re.sub(r"\bRISK_([A-Z0-9_]+)", lambda m: f"risk.{m.group(1).lower()}", message)


def _credentials(
    who: str, source: Credentials, environ: Mapping[str, str], secret: SecretLookup | None
) -> dict[str, Any]:
    """The Coinbase key fields of Settings from the account's source; every one set, so the environment's own key
    (another account's) never leaks in."""
    if source.env_prefix is not None:
        prefix = source.env_prefix
        key_file = environ.get(f"{prefix}COINBASE_KEY_FILE")
        key, secret_value = environ.get(f"{prefix}COINBASE_API_KEY"), environ.get(f"{prefix}COINBASE_API_SECRET")
        if key_file:
            return {"coinbase_key_file": Path(key_file), "coinbase_api_key": None, "coinbase_api_secret": None}
        if key and secret_value:
            return {
                "coinbase_key_file": None,
                "coinbase_api_key": SecretStr(key),
                "coinbase_api_secret": SecretStr(secret_value),
            }
        raise ConfigError(
            f"{who}: credentials.env_prefix: neither {prefix}COINBASE_KEY_FILE nor {prefix}COINBASE_API_KEY and "
            f"{prefix}COINBASE_API_SECRET is set; export them where this account's bot runs"
        )
    assert source.secret_blocks is not None
    values: dict[str, SecretStr] = {}
    for field in ("api_key", "api_secret"):
        block = getattr(source.secret_blocks, field)
        value = secret(block) if secret is not None else None
        if value is None:
            raise ConfigError(
                f"{who}: credentials.secret_blocks.{field}: no Prefect Secret block {block!r} can be read; create it "
                "(prefect block create secret) and set PREFECT_API_URL, or use env_prefix"
            )
        values[f"coinbase_{field}"] = value
    return {"coinbase_key_file": None, **values}


def check_symbols(spec: AccountSpec, listed: set[str]) -> None:
    """ConfigError unless the broker lists every symbol the account trades."""
    missing = [symbol for symbol in spec.symbols if symbol not in listed]
    if missing:
        shown = ", ".join(sorted(listed)[:8]) + (", ..." if len(listed) > 8 else "")
        raise ConfigError(
            f"account {spec.name!r}: symbols: {', '.join(missing)} not listed by its {spec.broker} broker "
            f"(it lists {shown}); fix the symbol or remove it"
        )


def declared(settings: Settings) -> list[AccountSpec] | None:
    """The accounts ACCOUNTS_FILE declares, or None when there is no such file (one account: the environment's)."""
    path = settings.accounts_file
    if not path.exists():
        if "accounts_file" in settings.model_fields_set:
            raise ConfigError(f"ACCOUNTS_FILE: {path} does not exist; fix the path or unset it")
        return None
    return load_accounts(path)


# What an account takes from the settings it is chosen from: the machine's folders, ledger, cold tier and base port.
MACHINE_FIELDS = ("state_dir", "log_dir", "database_url", "cold_storage_url", "metrics_port")


def account_settings(
    settings: Settings, name: str, *, profile: str | None = None, secret: SecretLookup | None = None
) -> Settings:
    """The settings of the declared account `name` (without a file: only the environment's own account)."""
    specs = declared(settings)
    if specs is None:
        if name != settings.account:
            raise ConfigError(
                f"account {name!r} is not declared: without {settings.accounts_file} the only account is "
                f"{settings.account!r}; declare it there"
            )
        return settings
    for index, spec in enumerate(specs):
        if spec.name == name:
            _check_ports(settings.accounts_file, specs, settings.metrics_port)
            return settings_for(spec, profile=profile, secret=secret, index=index, **_machine(settings))
    names = ", ".join(spec.name for spec in specs)
    raise ConfigError(f"account {name!r} is not declared in {settings.accounts_file} (declared: {names}); add it there")


def selected_accounts(
    settings: Settings, account: str | None, *, profile: str | None = None, secret: SecretLookup | None = None
) -> list[Settings]:
    """The settings of each account a runbook run works on: None or "all" is every declared account (without a file,
    the environment's one), a name is that account only. ConfigError, one line, before anything is done."""
    if account is not None and account != ALL_ACCOUNTS:
        return [account_settings(settings, account, profile=profile, secret=secret)]
    specs = declared(settings)
    if specs is None:
        return [settings]
    _check_ports(settings.accounts_file, specs, settings.metrics_port)
    return [
        settings_for(spec, profile=profile, secret=secret, index=index, **_machine(settings))
        for index, spec in enumerate(specs)
    ]


def _machine(settings: Settings) -> dict[str, Any]:
    return {field: getattr(settings, field) for field in MACHINE_FIELDS}


__all__ = [
    "ALL_ACCOUNTS",
    "AccountSpec",
    "Credentials",
    "account_settings",
    "check_symbols",
    "declared",
    "load_accounts",
    "selected_accounts",
    "settings_for",
]
