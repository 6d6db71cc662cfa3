"""perps-bot accounts list|check: the declared accounts as a table (key sources, never key values); check asks each
account's broker, a coinbase account over its own key against the Advanced Trade test server; bad input is one
line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

from tests.deployments.test_cli import perps_bot
from tests.deployments.test_cli_coinbase import env_for
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey

FILE = """
accounts:
  - name: paper-a
    broker: simulated
    symbols: [BTC-USD, ETH-USD]
    risk: {max_position_usd: 2000}
  - name: live-b
    broker: coinbase
    credentials: {env_prefix: LIVEB_}
    symbols: [SYMBOLS_B]
"""


def test_list_shows_every_account_and_where_its_key_comes_from_never_the_key(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey
) -> None:
    (tmp_path / "accounts.yaml").write_text(FILE.replace("SYMBOLS_B", "BTC-USD"))
    key_file = env_for(exchange, cdp_key, tmp_path)["COINBASE_KEY_FILE"]

    result = perps_bot(tmp_path, "accounts", LIVEB_COINBASE_KEY_FILE=key_file)

    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 6}
    assert set(rows) == {"paper-a", "live-b"}
    assert "simulated" in rows["paper-a"] and "max position 2000 USD" in rows["paper-a"]
    assert "env LIVEB_COINBASE_*" in rows["live-b"]
    assert cdp_key.private_key_pem.splitlines()[1] not in result.stdout + result.stderr
    assert exchange.requests == []  # list asks no broker


def test_check_asks_each_broker_and_names_a_symbol_it_does_not_list(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey
) -> None:
    env = env_for(exchange, cdp_key, tmp_path)
    live = {
        "LIVEB_COINBASE_KEY_FILE": env["COINBASE_KEY_FILE"],
        "COINBASE_API_BASE": env["COINBASE_API_BASE"],
        "COINBASE_CA_FILE": env["COINBASE_CA_FILE"],
    }
    (tmp_path / "accounts.yaml").write_text(FILE.replace("SYMBOLS_B", "BTC-USD, ETH-USD"))

    good = perps_bot(tmp_path, "accounts", "check", **live)

    assert good.returncode == 0, good.stderr
    assert "2 account(s) checked" in good.stdout
    assert any(r.path == "/api/v3/brokerage/products" for r in exchange.requests)  # with live-b's own key

    (tmp_path / "accounts.yaml").write_text(FILE.replace("SYMBOLS_B", "BTC-USD, DOGE-XYZ"))
    bad = perps_bot(tmp_path, "accounts", "check", **live)

    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert "account 'live-b': symbols: DOGE-XYZ not listed by its coinbase broker" in bad.stderr


def test_a_bad_accounts_file_is_one_line_exit_2_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "accounts.yaml").write_text(
        FILE.replace("SYMBOLS_B", "BTC-USD").replace("name: live-b", "name: paper-a")
    )

    result = perps_bot(tmp_path, "accounts")

    assert result.returncode == 2
    assert result.stderr == (
        "perps-bot: error: accounts.yaml: account 'paper-a': name: declared twice; give each account its own name\n"
    )
    assert not (tmp_path / "var").exists()


def test_without_a_file_the_one_account_is_the_environments(tmp_path: Path) -> None:
    result = perps_bot(tmp_path, "accounts", ACCOUNT="solo")

    assert result.returncode == 0, result.stderr
    assert (
        "no accounts.yaml: one account, 'solo', from the environment (simulated, BTC-USD, profile dev)" in result.stdout
    )
