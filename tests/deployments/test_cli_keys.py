"""perps-bot keys status | audit | rotate against the local Advanced Trade server: the key without its secret, an
order placed behind the platform's back (another client on the same key) flagged with a SEV-1 incident, and the switch
to the backup key under a running bot, from the environment or from Prefect Secret blocks on the session's real
Prefect server."""

from __future__ import annotations

import contextlib
import stat
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from prefect_adapter.secrets import BACKUP_API_KEY_BLOCK, BACKUP_API_SECRET_BLOCK
from tests.deployments.test_cli import ledger_of, perps_bot
from tests.deployments.test_cli_coinbase import env_for, live_settings
from tests.processes import wait_for
from tests.trader.test_bot_user_orders import Buyer
from trader.brokers.coinbase import CoinbaseBroker
from trader.domain import OrderRequest, OrderType, Side
from trader.runtime import build_bot
from trader.settings import load_settings
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey, generate_cdp_key


def test_keys_status_shows_the_key_without_its_secret(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey
) -> None:
    result = perps_bot(tmp_path, "keys", "status", "--profile", "spot", **env_for(exchange, cdp_key, tmp_path))

    assert result.returncode == 0, result.stderr
    assert f"primary key …{cdp_key.name[-4:]} (key file written 0 days ago)" in result.stdout
    assert (
        "can_trade=True can_transfer=False portfolio_type=DEFAULT" in result.stdout and "clock: local" in result.stdout
    )
    assert cdp_key.name not in result.stdout + result.stderr
    assert cdp_key.private_key_pem.splitlines()[1] not in result.stdout + result.stderr


def test_an_order_placed_behind_the_platforms_back_is_flagged_with_a_sev1_incident(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey
) -> None:
    env = env_for(exchange, cdp_key, tmp_path)
    settings = live_settings(exchange, tmp_path)
    bot = build_bot(settings)
    bot.start()
    try:
        bot.orders.send(
            OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), "ours-1"), position=Decimal(0)
        )
    finally:
        bot.stop()

    clean = perps_bot(tmp_path, "keys", "audit", "--hours", "1", "--profile", "spot", **env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "1 orders on the exchange" in clean.stdout and "0 not placed by this platform" in clean.stdout

    intruder = CoinbaseBroker.from_settings(settings)  # the same key, used elsewhere
    theirs = intruder.place_order(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.02"), "theirs-1"))

    flagged = perps_bot(tmp_path, "keys", "audit", "--hours", "1", "--profile", "spot", **env)

    assert flagged.returncode == 1, flagged.stdout + flagged.stderr
    assert "1 not placed by this platform" in flagged.stdout
    [row] = [line for line in flagged.stdout.splitlines() if theirs.order_id in line]
    assert "theirs-1" in row and "BTC-USD" in row and "ours-1" not in flagged.stdout
    [incident] = ledger_of(tmp_path).open_incidents()
    assert (incident.fingerprint, incident.severity) == ("security:unauthorized-orders", "SEV-1")


def test_bad_keys_input_is_one_line_and_exit_2(tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey) -> None:
    env = env_for(exchange, cdp_key, tmp_path)
    for args, message in (
        (("keys",), "keys: expected one of status, audit, rotate; e.g. perps-bot keys audit --hours 24"),
        (
            ("keys", "rotate", "--to", "backup"),
            "keys rotate: no backup key is configured; set COINBASE_BACKUP_KEY_FILE (or COINBASE_BACKUP_API_KEY and "
            "COINBASE_BACKUP_API_SECRET), or create the Prefect Secret blocks coinbase-backup-api-key and "
            "coinbase-backup-api-secret",
        ),
        (
            ("keys", "rotate", "--to", "spare"),
            "--to: expected one of primary, backup (got 'spare'); e.g. perps-bot keys rotate --to backup",
        ),
        (("keys", "audit", "--hours", "0"), "--hours: must be above 0 (got 0); e.g. --hours 24"),
        (("keys", "audit", "--hours", "nan"), "--hours: must be above 0 (got nan); e.g. --hours 24"),
    ):
        result = perps_bot(tmp_path, *args, "--profile", "spot", **env)
        assert result.returncode == 2 and result.stderr.strip() == f"perps-bot: error: {message}", result.stderr
    assert exchange.orders == {} and not (tmp_path / "var/state/ACTIVE_KEY").exists()  # nothing switched
    assert not (tmp_path / "var/state/backup_key.json").exists()


def test_rotating_to_the_backup_key_under_a_running_bot_fails_no_order(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey
) -> None:
    backup = generate_cdp_key(f"organizations/test/apiKeys/backup-{cdp_key.name[-6:]}")
    exchange.add_key(backup.name, backup.public_key_pem)
    backup_file = backup.write_key_file(tmp_path / "backup_key.json")
    env = {**env_for(exchange, cdp_key, tmp_path), "COINBASE_BACKUP_KEY_FILE": str(backup_file)}
    settings = load_settings(
        profile="dev",
        broker="coinbase",
        coinbase_api_base=exchange.base_url,
        coinbase_ca_file=exchange.ca_file,
        coinbase_key_file=tmp_path / "cdp_api_key.json",
        coinbase_backup_key_file=backup_file,
        state_dir=tmp_path / "var/state",
        log_dir=tmp_path / "var/logs",
        data_gate_enabled=False,
        heartbeat_interval_seconds=0,
        risk_orders_per_minute_warn=1000,  # a buy every 0.2 s is this test's load, not runaway trading
        risk_orders_per_minute_critical=2000,
    )
    bot = build_bot(settings)
    bot.strategy = Buyer()
    bot.start()
    stop = threading.Event()
    loop = threading.Thread(target=lambda: bot.run(interval_seconds=0.2, should_stop=stop.is_set), daemon=True)
    loop.start()
    try:
        wait_for(lambda: bot.orders_sent >= 5, 30, "orders on the primary key")
        rotated = perps_bot(tmp_path, "keys", "rotate", "--to", "backup", "--profile", "dev", BROKER="coinbase", **env)
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        assert f"switched to the backup key (…{backup.name[-4:]})" in rotated.stdout
        wait_for(lambda: bot.broker.inner.key_slot == "backup", 10, "the bot on the backup key")  # type: ignore[attr-defined]
        exchange.revoke_key(cdp_key.name)  # the compromised key stops working
        sent = bot.orders_sent
        wait_for(lambda: bot.orders_sent >= sent + 5, 30, "orders on the backup key")
    finally:
        stop.set()
        loop.join(10)
        bot.stop()

    orders = ledger_of(tmp_path).list_orders()
    assert len(orders) >= 10 and {o.status for o in orders} == {"filled"}  # not one failed or left pending
    assert bot.stats.error_rate_pct() in (None, 0.0)
    incidents = {i.fingerprint: i.severity for i in ledger_of(tmp_path).open_incidents()}
    assert incidents["security:key-rotation"] == "SEV-1"
    assert cdp_key.private_key_pem.splitlines()[1] not in rotated.stdout + rotated.stderr
    status = perps_bot(tmp_path, "keys", "status", "--profile", "dev", BROKER="coinbase", **env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"backup key …{backup.name[-4:]} (key file written 0 days ago)" in status.stdout  # the key in use now


# --- the backup key from Prefect Secret blocks ---------------------------------------------------------------------

BlockMaker = Callable[..., None]


@pytest.fixture
def backup_blocks(prefect_server: dict[str, str]) -> Iterator[BlockMaker]:
    """Creates the backup key's Secret blocks through the Prefect API (the session's server); deleted after the test
    (the server is shared: no later test may find them)."""
    from prefect.blocks.system import Secret

    def create(key: CdpKey, *, with_secret: bool = True) -> None:
        Secret(value=key.name).save(BACKUP_API_KEY_BLOCK, overwrite=True)
        if with_secret:
            Secret(value=key.private_key_pem).save(BACKUP_API_SECRET_BLOCK, overwrite=True)

    yield create
    for name in (BACKUP_API_KEY_BLOCK, BACKUP_API_SECRET_BLOCK):
        with contextlib.suppress(Exception):  # not created by this test
            Secret.delete(name)  # type: ignore[attr-defined]


def secret_lines(key: CdpKey) -> list[str]:
    """The private key's base64 lines: none of them may appear anywhere but in the key's own files and blocks."""
    return [line for line in key.private_key_pem.splitlines() if line and not line.startswith("-----")]


def backup_key_on(exchange: AdvancedTradeServer, cdp_key: CdpKey) -> CdpKey:
    backup = generate_cdp_key(f"organizations/test/apiKeys/backup-{cdp_key.name[-6:]}")
    exchange.add_key(backup.name, backup.public_key_pem)
    return backup


def test_a_backup_key_from_secret_blocks_takes_over_a_running_bot_without_showing_its_secret(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey, backup_blocks: BlockMaker
) -> None:
    backup = backup_key_on(exchange, cdp_key)
    backup_blocks(backup)
    env = env_for(exchange, cdp_key, tmp_path)  # no COINBASE_BACKUP_*: the blocks are the only backup key
    bot = build_bot(live_settings(exchange, tmp_path, data_gate_enabled=False, heartbeat_interval_seconds=0))
    bot.strategy = Buyer()
    bot.start()
    try:
        bot.run(1, interval_seconds=0)
        rotated = perps_bot(tmp_path, "keys", "rotate", "--to", "backup", "--profile", "spot", **env)
        exchange.revoke_key(cdp_key.name)  # the compromised key stops working
        bot.run(2, interval_seconds=0)  # its next cycles: on the backup key, which its own settings never had
    finally:
        bot.stop()

    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert f"switched to the backup key (…{backup.name[-4:]})" in rotated.stdout
    assert "backup key read from the Prefect Secret blocks" in rotated.stdout
    assert bot.broker.inner.key_slot == "backup"  # type: ignore[attr-defined]
    orders = ledger_of(tmp_path).list_orders()
    assert len(orders) == 3 and {o.status for o in orders} == {"filled"}
    copy = tmp_path / "var/state/backup_key.json"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    [incident] = [i for i in ledger_of(tmp_path).open_incidents() if i.fingerprint == "security:key-rotation"]
    assert incident.severity == "SEV-1" and BACKUP_API_SECRET_BLOCK in incident.detail
    logs = "".join(p.read_text() for p in (tmp_path / "var/logs").rglob("*") if p.is_file())
    shown = rotated.stdout + rotated.stderr + incident.title + incident.detail + logs
    assert not [line for line in secret_lines(backup) if line in shown]


def test_a_backup_key_in_the_environment_wins_over_the_secret_blocks(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey, backup_blocks: BlockMaker
) -> None:
    backup_blocks(generate_cdp_key("organizations/test/apiKeys/in-the-blocks"))  # unknown to the exchange
    backup = backup_key_on(exchange, cdp_key)
    env = {
        **env_for(exchange, cdp_key, tmp_path),
        "COINBASE_BACKUP_KEY_FILE": str(backup.write_key_file(tmp_path / "backup_env_key.json")),
    }

    rotated = perps_bot(tmp_path, "keys", "rotate", "--to", "backup", "--profile", "spot", **env)

    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert f"switched to the backup key (…{backup.name[-4:]})" in rotated.stdout
    assert "Secret blocks" not in rotated.stdout and not (tmp_path / "var/state/backup_key.json").exists()


def test_rotating_back_to_primary_removes_the_blocks_key_from_state_dir(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey, backup_blocks: BlockMaker
) -> None:
    backup_blocks(backup_key_on(exchange, cdp_key))
    env = env_for(exchange, cdp_key, tmp_path)
    to_backup = perps_bot(tmp_path, "keys", "rotate", "--to", "backup", "--profile", "spot", **env)
    assert to_backup.returncode == 0, to_backup.stdout + to_backup.stderr

    back = perps_bot(tmp_path, "keys", "rotate", "--to", "primary", "--profile", "spot", **env)

    assert back.returncode == 0, back.stdout + back.stderr
    assert (tmp_path / "var/state/ACTIVE_KEY").read_text() == "primary\n"
    assert not (tmp_path / "var/state/backup_key.json").exists()


def test_only_one_backup_block_is_one_line_and_exit_2(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey, backup_blocks: BlockMaker
) -> None:
    backup_blocks(backup_key_on(exchange, cdp_key), with_secret=False)

    result = perps_bot(
        tmp_path, "keys", "rotate", "--to", "backup", "--profile", "spot", **env_for(exchange, cdp_key, tmp_path)
    )

    assert result.returncode == 2 and result.stderr.strip() == (
        "perps-bot: error: Prefect Secret block coinbase-backup-api-secret is missing (coinbase-backup-api-key "
        "exists): create both, or neither and set COINBASE_BACKUP_KEY_FILE"
    ), result.stderr
    assert not (tmp_path / "var/state/ACTIVE_KEY").exists() and not (tmp_path / "var/state/backup_key.json").exists()
