"""The accounts file: what it declares becomes each account's settings; every mistake is one line naming the file,
the account and the field; the values of keys never appear; with no file, the environment's one account."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from trader.accounts import (
    account_settings,
    check_symbols,
    declared,
    load_accounts,
    selected_accounts,
    settings_for,
)
from trader.errors import ConfigError
from trader.settings import load_settings

GOOD = """
accounts:
  - name: alpha
    broker: simulated
    symbols: [btc-usd, ETH-USD]
    profile: canary
    strategy: {fast_window: 3, slow_window: 10, position_size_usd: 250}
    risk: {max_position_usd: 2000, daily_loss_limit_pct: 1.5}
  - name: beta
    broker: coinbase
    credentials: {env_prefix: BETA_}
    symbols: [BTC-USD]
  - name: gamma
    broker: coinbase
    credentials: {secret_blocks: {api_key: gamma-key, api_secret: gamma-secret}}
    symbols: [ETH-USD]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accounts.yaml"
    path.write_text(text)
    return path


def test_each_account_gets_its_own_name_broker_symbols_profile_strategy_risk_and_key(tmp_path: Path) -> None:
    alpha, beta, gamma = load_accounts(write(tmp_path, GOOD))
    env = {"BETA_COINBASE_API_KEY": "organizations/o/apiKeys/beta", "BETA_COINBASE_API_SECRET": "beta-pem"}
    blocks = {"gamma-key": "organizations/o/apiKeys/gamma", "gamma-secret": "gamma-pem"}

    a = settings_for(alpha, environ=env, state_dir=tmp_path)
    b = settings_for(beta, environ=env, state_dir=tmp_path)
    g = settings_for(gamma, environ=env, secret=lambda name: SecretStr(blocks[name]), state_dir=tmp_path)

    assert (a.account, a.broker_kind, a.symbols, a.profile) == ("alpha", "simulated", ["BTC-USD", "ETH-USD"], "canary")
    assert (a.strategy_fast_window, a.strategy_slow_window, str(a.position_size_usd)) == (3, 10, "250")
    assert (str(a.risk_max_position_usd), str(a.risk_daily_loss_limit_pct)) == ("2000", "1.5")
    assert a.cycle_interval_seconds == 60.0  # the canary profile's own defaults still apply
    assert (b.account, b.broker_kind, b.symbols) == ("beta", "coinbase", ["BTC-USD"])
    assert b.coinbase_api_key is not None and b.coinbase_api_key.get_secret_value() == env["BETA_COINBASE_API_KEY"]
    assert g.coinbase_api_secret is not None and g.coinbase_api_secret.get_secret_value() == "gamma-pem"
    assert "beta-pem" not in repr(b) and "gamma-pem" not in repr(g)


def test_an_accounts_key_never_comes_from_the_environments_own_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COINBASE_API_KEY", "organizations/o/apiKeys/default")
    monkeypatch.setenv("COINBASE_API_SECRET", "default-pem")
    [_, beta, _] = load_accounts(write(tmp_path, GOOD))

    settings = settings_for(beta, environ={"BETA_COINBASE_KEY_FILE": "/keys/beta.json"}, state_dir=tmp_path)

    assert settings.coinbase_key_file == Path("/keys/beta.json")
    assert settings.coinbase_api_key is None and settings.coinbase_api_secret is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace("name: beta", "name: alpha"),
            "account 'alpha': name: declared twice; give each account its own name",
        ),
        (
            GOOD.replace("broker: simulated", "broker: kraken"),
            "account 'alpha': broker: must be 'simulated' or 'coinbase' (got 'kraken')",
        ),
        (
            GOOD.replace("    credentials: {env_prefix: BETA_}\n", ""),
            "account 'beta': account: missing: a coinbase account needs credentials (env_prefix or secret_blocks)",
        ),
        (GOOD.replace("symbols: [BTC-USD]", "symbols: []"), "account 'beta': symbols: List should have at least 1"),
        (GOOD.replace("name: gamma", "name: 'gam ma'"), "account 'gam ma': name: 'gam ma' is not an account name"),
        # The name is a path segment, a Redis key part, a metrics label and a deployment name: no way out of them.
        (GOOD.replace("name: gamma", "name: '..'"), "account '..': name: '..' is not an account name"),
        (GOOD.replace("name: gamma", "name: .hidden"), "account '.hidden': name: '.hidden' is not an account name"),
        (GOOD.replace("name: gamma", "name: Gamma"), "account 'Gamma': name: 'Gamma' is not an account name"),
        (GOOD.replace("name: gamma", "name: all"), "and not 'all'"),
        (GOOD.replace("    profile: canary\n", "    profil: canary\n"), "account 'alpha': profil: unknown field"),
        ("accounts: []\n", "accounts: List should have at least 1 item"),
        ("accounts: [\n", "not valid YAML at line 2"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_the_account_and_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_accounts(path)

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ") and expected in message, message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("max_position_usd: 2000", "max_position_usd: -5"), "account 'alpha': risk.max_position_usd: must be greater"),
        (("max_position_usd: 2000", "max_pos: 5"), "account 'alpha': risk.max_pos: unknown field"),
        (("fast_window: 3", "fast_window: 30"), "strategy.fast_window must be smaller than strategy.slow_window"),
        (("fast_window: 3", "fast: 3"), "account 'alpha': strategy.fast: unknown field"),
    ],
)
def test_a_bad_setting_of_an_account_is_one_line_naming_it(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    [alpha, _, _] = load_accounts(write(tmp_path, GOOD.replace(*change)))

    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")) as caught:
        settings_for(alpha, state_dir=tmp_path)
    assert "\n" not in str(caught.value)


def test_a_missing_credential_reference_names_what_to_set_and_never_a_value(tmp_path: Path) -> None:
    [_, beta, gamma] = load_accounts(write(tmp_path, GOOD))

    with pytest.raises(ConfigError) as no_env:
        settings_for(beta, environ={"BETA_COINBASE_API_KEY": "only-the-name"}, state_dir=tmp_path)
    with pytest.raises(ConfigError) as no_block:
        settings_for(gamma, environ={}, secret=lambda name: None, state_dir=tmp_path)

    assert "account 'beta': credentials.env_prefix: neither BETA_COINBASE_KEY_FILE nor" in str(no_env.value)
    assert "only-the-name" not in str(no_env.value)
    assert "account 'gamma': credentials.secret_blocks.api_key: no Prefect Secret block 'gamma-key'" in str(
        no_block.value
    )


def test_a_symbol_the_broker_does_not_list_is_named(tmp_path: Path) -> None:
    [alpha, _, _] = load_accounts(write(tmp_path, GOOD.replace("ETH-USD]", "XRP-EUR]")))

    with pytest.raises(ConfigError, match=r"account 'alpha': symbols: XRP-EUR not listed by its simulated broker"):
        check_symbols(alpha, {"BTC-USD", "ETH-USD"})
    check_symbols(load_accounts(write(tmp_path, GOOD))[0], {"BTC-USD", "ETH-USD"})  # both listed: no error


def test_without_a_file_there_is_one_account_the_environments_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(state_dir=tmp_path)

    assert declared(settings) is None
    assert account_settings(settings, "default") is settings
    with pytest.raises(ConfigError, match="account 'alpha' is not declared: without accounts.yaml the only account"):
        account_settings(settings, "alpha")


def test_a_declared_account_is_found_by_name_and_an_undeclared_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(state_dir=tmp_path)

    assert account_settings(settings, "alpha").account == "alpha"
    with pytest.raises(ConfigError, match=r"account 'delta' is not declared in accounts.yaml \(declared: alpha, beta"):
        account_settings(settings, "delta")
    with pytest.raises(ConfigError, match="ACCOUNTS_FILE: .*nowhere.yaml does not exist"):
        declared(load_settings(state_dir=tmp_path, accounts_file=tmp_path / "nowhere.yaml"))


def test_a_secret_written_into_the_file_is_never_echoed_in_the_error(tmp_path: Path) -> None:
    pem = "-----BEGIN EC PRIVATE KEY-----MHcCAQEEIAbc-----END EC PRIVATE KEY-----"
    pasted = GOOD.replace("{env_prefix: BETA_}", "{api_secret: '" + pem + "'}")
    prefix = GOOD.replace("{env_prefix: BETA_}", "{env_prefix: 'organizations/o/apiKeys/k'}")

    for text in (pasted, prefix):
        with pytest.raises(ConfigError) as caught:
            load_accounts(write(tmp_path, text))
        assert "account 'beta': credentials" in str(caught.value)
        assert "MHcCAQEEIAbc" not in str(caught.value) and "apiKeys" not in str(caught.value)


def test_two_declared_accounts_never_share_a_local_file_or_a_metrics_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        GOOD.replace("    risk: {max_position_usd: 2000", "    metrics_port: 9200\n    risk: {max_position_usd: 2000"),
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BETA_COINBASE_KEY_FILE", "/keys/beta.json")
    settings = load_settings(state_dir=tmp_path / "state", log_dir=tmp_path / "logs", metrics_port=9102)

    alpha, beta, gamma = selected_accounts(settings, None, secret=lambda name: SecretStr("x"))

    assert alpha.state_dir == tmp_path / "state" / "accounts" / "alpha"
    assert beta.log_dir == tmp_path / "logs" / "accounts" / "beta"
    assert (alpha.metrics_port, beta.metrics_port, gamma.metrics_port) == (9200, 9103, 9104)
    # one ledger and one cold tier for every account: the machine's, not a file under each account's folder
    assert {a.database_url for a in (alpha, beta, gamma)} == {settings.database_url}
    assert {a.cold_storage_url for a in (alpha, beta, gamma)} == {settings.cold_storage_url}
    assert account_settings(settings, "beta", secret=lambda name: SecretStr("x")).state_dir == beta.state_dir


def test_a_metrics_port_two_accounts_would_share_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        GOOD.replace("    risk: {max_position_usd: 2000", "    metrics_port: 9103\n    risk: {max_position_usd: 2000"),
    )
    monkeypatch.chdir(tmp_path)
    settings = load_settings(state_dir=tmp_path, metrics_port=9102)

    with pytest.raises(ConfigError, match=r"account 'beta': metrics_port: 9103 is taken by account 'alpha'"):
        selected_accounts(settings, "all")


def test_all_or_no_account_selects_every_declared_one_and_a_name_only_that_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(state_dir=tmp_path)
    assert selected_accounts(settings, None) == [settings]  # no file: the environment's one account
    assert selected_accounts(settings, "default") == [settings]
    write(tmp_path, GOOD.split("  - name: beta")[0])

    assert [a.account for a in selected_accounts(settings, "all")] == ["alpha"]
    with pytest.raises(ConfigError, match=r"account 'nope' is not declared in accounts.yaml \(declared: alpha\)"):
        selected_accounts(settings, "nope")
