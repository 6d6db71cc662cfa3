from __future__ import annotations

from decimal import Decimal

import pytest

from trader.errors import ConfigError
from trader.settings import load_settings

RUNBOOK_VARIABLES = [
    "PERPS_PROFILE",
    "BROKER",
    "COINBASE_ENABLE_DERIVATIVES",
    "COINBASE_API_KEY",
    "COINBASE_API_SECRET",
    "COINBASE_KEY_FILE",
    "RISK_KILL_SWITCH_ENABLED",
    "RISK_REDUCE_ONLY_MODE",
    "CHECKPOINT_RETENTION_COUNT",
    "CHECKPOINT_ENABLE_COMPRESSION",
    "STATE_BATCH_SIZE",
    "DATABASE_URL",
    "CYCLE_INTERVAL_SECONDS",
    "LEASE_TTL_SECONDS",
    "RESTART_MAX_PER_HOUR",
    "RESTART_BACKOFF_MAX_SECONDS",
    "ORCHESTRATOR_POLL_SECONDS",
    "ACCOUNT",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RUNBOOK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_runbook_variables_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISK_KILL_SWITCH_ENABLED", "1")
    monkeypatch.setenv("RISK_REDUCE_ONLY_MODE", "true")
    monkeypatch.setenv("CHECKPOINT_RETENTION_COUNT", "7")
    monkeypatch.setenv("CHECKPOINT_ENABLE_COMPRESSION", "0")
    monkeypatch.setenv("STATE_BATCH_SIZE", "250")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1/test")

    settings = load_settings()

    assert settings.risk_kill_switch_enabled and settings.risk_reduce_only_mode
    assert settings.checkpoint_retention_count == 7
    assert settings.checkpoint_enable_compression is False
    assert settings.state_batch_size == 250
    assert settings.database_url.startswith("postgresql")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RISK_KILL_SWITCH_ENABLED", "maybe", "RISK_KILL_SWITCH_ENABLED: expected one of 1, 0, true, false"),
        ("STATE_BATCH_SIZE", "0", "STATE_BATCH_SIZE: must be greater than or equal to 1"),
        ("CHECKPOINT_RETENTION_COUNT", "ten", "CHECKPOINT_RETENTION_COUNT:"),
        ("PERPS_PROFILE", "live", "PERPS_PROFILE: must be 'dev', 'canary', 'spot', 'prod' or 'perps'"),
        ("LEASE_TTL_SECONDS", "soon", "LEASE_TTL_SECONDS: must be a valid number"),
        ("LEASE_TTL_SECONDS", "0", "LEASE_TTL_SECONDS: must be greater than 0"),
        ("LEASE_TTL_SECONDS", "2", "LEASE_TTL_SECONDS: must be at least 3 cycle intervals (3 s"),
        ("RESTART_MAX_PER_HOUR", "five", "RESTART_MAX_PER_HOUR: must be a valid integer"),
        ("RESTART_MAX_PER_HOUR", "-1", "RESTART_MAX_PER_HOUR: must be greater than 0"),
        ("RESTART_BACKOFF_MAX_SECONDS", "-2", "RESTART_BACKOFF_MAX_SECONDS: must be greater than or equal to 0"),
        ("ORCHESTRATOR_POLL_SECONDS", "0.1", "ORCHESTRATOR_POLL_SECONDS: must be greater than or equal to 0.5"),
        ("ORCHESTRATOR_POLL_SECONDS", "600", "ORCHESTRATOR_POLL_SECONDS: must be less than or equal to 60"),
        ("ACCOUNT", "my account", "ACCOUNT: 'my account' is not an account name: use 1 to 64 lowercase"),
        ("ACCOUNT", "..", "ACCOUNT: '..' is not an account name"),
        ("ACCOUNT", "all", "ACCOUNT: 'all' is not an account name"),
    ],
)
def test_invalid_value_stops_startup_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError) as error:
        load_settings()

    assert str(error.value).startswith(expected)
    assert "\n" not in str(error.value)


def test_perps_profile_is_refused_without_derivatives_enabled() -> None:
    with pytest.raises(ConfigError, match="COINBASE_ENABLE_DERIVATIVES=1"):
        load_settings(profile="perps")


def test_perps_profile_is_allowed_with_derivatives_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINBASE_ENABLE_DERIVATIVES", "1")

    assert load_settings(profile="perps").profile == "perps"


def test_unknown_profile_flag_names_the_allowed_profiles() -> None:
    with pytest.raises(ConfigError, match="expected one of dev, canary, spot, prod, perps"):
        load_settings(profile="staging")


def test_dev_and_canary_use_the_simulated_exchange_without_credentials() -> None:
    assert load_settings(profile="dev").broker_kind == "simulated"
    assert load_settings(profile="canary").broker_kind == "simulated"


def test_live_profile_without_credentials_is_refused_not_paper_traded() -> None:
    with pytest.raises(ConfigError, match="BROKER=simulated"):
        _ = load_settings(profile="spot").broker_kind


def test_half_configured_credentials_are_refused_without_echoing_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINBASE_API_SECRET", "-----BEGIN EC PRIVATE KEY-----s3cr3t")

    with pytest.raises(ConfigError) as error:
        load_settings()

    assert "COINBASE_API_KEY is missing" in str(error.value)
    assert "s3cr3t" not in str(error.value)


def test_profile_defaults_apply_unless_the_variable_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(profile="canary").position_size_usd == Decimal("100")
    monkeypatch.setenv("POSITION_SIZE_USD", "250")

    assert load_settings(profile="canary").position_size_usd == Decimal("250")


def test_secrets_do_not_appear_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINBASE_API_KEY", "organizations/x/apiKeys/topsecretkey")
    monkeypatch.setenv("COINBASE_API_SECRET", "pem-topsecret")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-topsecret")

    text = repr(load_settings())

    assert "topsecret" not in text


def test_the_lease_ttl_defaults_to_three_cycles_when_the_profile_cycles_slowly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER", "simulated")

    assert load_settings(profile="dev").lease_ttl_seconds == 30  # 1-second cycles
    assert load_settings(profile="spot").lease_ttl_seconds == 180  # 60-second cycles: 30 s would lapse between two
    monkeypatch.setenv("LEASE_TTL_SECONDS", "200")
    assert load_settings(profile="spot").lease_ttl_seconds == 200


def test_live_profiles_use_the_websockets_live_and_replay_when_paper_traded() -> None:
    live = load_settings(profile="spot", broker="coinbase")
    assert (live.market_data, live.order_updates) == ("coinbase-ws", "coinbase-ws")
    paper = load_settings(profile="prod", broker="simulated")
    assert paper.market_data == "replay"  # nothing reaches Coinbase unless MARKET_DATA says so
    assert load_settings(profile="prod", broker="simulated", market_data="coinbase").market_data == "coinbase"
    assert load_settings(profile="canary").market_data == "coinbase-ws"
