"""perps-bot checkpoint list | create | restore ID, run as the installed console script on a temporary state folder."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlmodel import Session

from tests.deployments.test_cli import ledger_of, perps_bot
from trader.ledger.models import Checkpoint

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def create(home: Path, *args: str, **env: str) -> str:
    result = perps_bot(home, "checkpoint", "create", *args, **env)
    assert result.returncode == 0, result.stderr
    match = re.search(r"created checkpoint (cp-[0-9a-f-]+)", result.stdout)
    assert match, result.stdout
    return match.group(1)


def warm_row(home: Path, checkpoint_id: str) -> Checkpoint:
    with Session(ledger_of(home).engine) as session:
        row = session.get(Checkpoint, checkpoint_id)
    assert row is not None
    return row


def flip_warm_byte(home: Path, checkpoint_id: str) -> None:
    with Session(ledger_of(home).engine) as session, session.begin():
        row = session.get(Checkpoint, checkpoint_id)
        assert row is not None
        data = bytearray(row.payload)
        data[len(data) // 2] ^= 0x01
        row.payload = bytes(data)


def cold_file(home: Path, checkpoint_id: str) -> Path:
    return home / "var/state/cold" / str(warm_row(home, checkpoint_id).cold_key)


def test_list_without_checkpoints_says_so(home: Path) -> None:
    result = perps_bot(home, "checkpoint", "list")

    assert result.returncode == 0, result.stderr
    assert "no checkpoints yet" in result.stdout


def test_create_then_list_shows_the_table(home: Path) -> None:
    first = create(home, "--reason", "before-deploy")
    second = create(home, "--no-broker")

    result = perps_bot(home, "checkpoint", "list")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "sha256" in line)
    assert all(word in header for word in ("id", "created (UTC)", "reason", "size", "compressed"))
    rows = [line for line in lines if "cp-" in line]
    assert [re.search(r"cp-[0-9a-f-]+", row).group(0) for row in rows] == [second, first]  # type: ignore[union-attr]
    assert "before-deploy" in rows[1] and "manual" in rows[0] and "yes" in rows[0]
    assert warm_row(home, first).sha256[:12] in rows[1]
    assert (home / "var/state/cold/accounts/default/checkpoints" / f"{first}.json.gz").exists()


def test_create_with_the_broker_records_paper_balances(home: Path) -> None:
    result = perps_bot(home, "checkpoint", "create")

    assert result.returncode == 0, result.stderr
    balances = re.search(r"(\d+) balance\(s\)", result.stdout)
    assert balances and int(balances.group(1)) > 0, result.stdout


def test_restore_writes_the_checkpoint_positions_into_the_ledger(home: Path) -> None:
    ledger = ledger_of(home)
    ledger.set_position("BTC-USD", Decimal("0.25"), Decimal("64000.5"), T0)
    checkpoint_id = create(home, "--no-broker")
    ledger.set_position("BTC-USD", Decimal("0.5"), Decimal("65000"), T0)
    ledger.set_position("ETH-USD", Decimal("2"), Decimal("3000"), T0)

    result = perps_bot(home, "checkpoint", "restore", checkpoint_id)

    assert result.returncode == 0, result.stderr
    assert f"restored checkpoint {checkpoint_id}" in result.stdout and "from the warm copy" in result.stdout
    assert "set position BTC-USD: 0.5 @ 65000 -> 0.25 @ 64000.5" in result.stdout
    assert "wrote 2 position(s) to the ledger" in result.stdout
    positions = ledger.positions()
    assert {s: (p.quantity, p.average_entry_price) for s, p in positions.items()} == {
        "BTC-USD": (Decimal("0.25"), Decimal("64000.5"))
    }
    assert f"Restored from checkpoint {checkpoint_id}" in (home / "var/logs/perps_bot.log").read_text()


def test_restore_dry_run_shows_the_changes_and_writes_nothing(home: Path) -> None:
    ledger = ledger_of(home)
    checkpoint_id = create(home, "--no-broker")
    ledger.set_position("BTC-USD", Decimal("0.5"), Decimal("65000"), T0)

    result = perps_bot(home, "checkpoint", "restore", checkpoint_id, "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "would set position BTC-USD: 0.5 @ 65000 -> 0 @ 0" in result.stdout
    assert "nothing written" in result.stdout
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.5")


def test_restore_of_an_unknown_id_is_one_line_exit_2(home: Path) -> None:
    good = create(home, "--no-broker")

    result = perps_bot(home, "checkpoint", "restore", "cp-nope")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"perps-bot: error: no checkpoint cp-nope; newest good checkpoint: {good}"
    ]


def test_restore_refuses_a_corrupt_checkpoint_naming_the_newest_good(home: Path) -> None:
    good = create(home, "--no-broker")
    bad = create(home, "--no-broker")
    flip_warm_byte(home, bad)
    path = cold_file(home, bad)
    path.write_bytes(path.read_bytes()[:-5])

    result = perps_bot(home, "checkpoint", "restore", bad)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"checkpoint {bad} is corrupt (sha256 mismatch" in lines[0] and "truncated" in lines[0]
    assert lines[0].endswith(f"newest good checkpoint: {good}")


def test_restore_uses_the_cold_copy_when_the_warm_row_is_corrupt(home: Path) -> None:
    checkpoint_id = create(home, "--no-broker")
    flip_warm_byte(home, checkpoint_id)

    result = perps_bot(home, "checkpoint", "restore", checkpoint_id)

    assert result.returncode == 0, result.stderr
    assert "from the cold copy" in result.stdout and "warm copy" in result.stdout and "corrupt" in result.stdout


def test_retention_count_comes_from_the_environment(home: Path) -> None:
    ids = [create(home, "--no-broker", CHECKPOINT_RETENTION_COUNT="2") for _ in range(3)]

    result = perps_bot(home, "checkpoint", "list")

    assert ids[0] not in result.stdout and ids[1] in result.stdout and ids[2] in result.stdout


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["checkpoint"], "expected one of list, create, restore"),
        (["checkpoint", "frob"], "'frob'"),
        (["checkpoint", "restore"], "checkpoint ID"),
        (["checkpoint", "list", "cp-1"], "takes no ID"),
        (["run", "list"], "only perps-bot checkpoint takes an action"),
    ],
    ids=["no-action", "unknown-action", "restore-without-id", "list-with-id", "action-without-checkpoint"],
)
def test_bad_checkpoint_input_is_one_line_exit_2(home: Path, args: list[str], names: str) -> None:
    result = perps_bot(home, *args)

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert names in result.stderr


def test_restore_warns_when_a_bot_session_is_marked_running(home: Path) -> None:
    checkpoint_id = create(home, "--no-broker")
    session_id = ledger_of(home).start_session("dev", "simulated", "paper")

    result = perps_bot(home, "checkpoint", "restore", checkpoint_id)

    assert result.returncode == 0, result.stderr
    assert f"bot session {session_id} (dev) is marked running" in result.stdout
