"""A drill refuses a namespace that is the live profile's (Redis keys, database, cold prefix) before touching
anything, with one line naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.drills.state.conftest import LiveProfile
from trader.drills.namespace import DrillNamespace, DrillRefused
from trader.drills.runner import run_drill
from trader.settings import load_settings

SHARED_REDIS = "redis://127.0.0.1:6379/0"  # only ever named here: a refused drill never connects to it


def test_redis_prefix_of_the_live_keys_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_drill_env: None
) -> None:
    settings = load_settings(redis_url=SHARED_REDIS, state_dir=tmp_path / "state", cold_storage_url="")
    monkeypatch.setenv("DRILL_REDIS_PREFIX", "state:")

    ns = DrillNamespace.plan(settings, tmp_path)

    with pytest.raises(DrillRefused) as refused:
        ns.assert_not_live(settings)
    message = str(refused.value)
    assert "\n" not in message and "REDIS_URL" in message and "DRILL_REDIS_PREFIX" in message


def test_an_empty_prefix_on_the_live_redis_database_is_refused(tmp_path: Path, clean_drill_env: None) -> None:
    settings = load_settings(redis_url=SHARED_REDIS, state_dir=tmp_path / "state", cold_storage_url="")

    ns = DrillNamespace.plan(settings, tmp_path, redis_prefix="", redis_db=0)

    with pytest.raises(DrillRefused, match="REDIS_URL"):
        ns.assert_not_live(settings)


def test_the_live_prefix_in_another_redis_database_is_allowed(tmp_path: Path, clean_drill_env: None) -> None:
    settings = load_settings(redis_url=SHARED_REDIS, state_dir=tmp_path / "state", cold_storage_url="")

    ns = DrillNamespace.plan(settings, tmp_path, redis_prefix="state:", redis_db=14)

    ns.assert_not_live(settings)
    assert ns.redis_url == "redis://127.0.0.1:6379/14"


def test_the_live_database_is_refused(tmp_path: Path, clean_drill_env: None) -> None:
    settings = load_settings(
        database_url="postgresql+psycopg2://postgres@127.0.0.1:5432/ledger", state_dir=tmp_path, cold_storage_url=""
    )
    planned = DrillNamespace.plan(settings, tmp_path)
    ns = DrillNamespace(**{**planned.__dict__, "database_url": "postgresql+psycopg2://postgres@localhost/ledger"})

    with pytest.raises(DrillRefused, match="DATABASE_URL"):
        ns.assert_not_live(settings)


def test_the_live_cold_prefix_and_its_parents_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_drill_env: None
) -> None:
    settings = load_settings(state_dir=tmp_path, cold_storage_url="s3://bucket/gpt-trader/cold")
    for prefix in ("s3://bucket/gpt-trader/cold", "s3://bucket/gpt-trader/cold/", "s3://bucket/gpt-trader"):
        monkeypatch.setenv("DRILL_COLD_STORAGE_URL", prefix)
        ns = DrillNamespace.plan(settings, tmp_path)
        with pytest.raises(DrillRefused, match="COLD_STORAGE_URL"):
            ns.assert_not_live(settings)
    monkeypatch.delenv("DRILL_COLD_STORAGE_URL")
    default = DrillNamespace.plan(settings, tmp_path)
    assert default.cold_url == f"s3://bucket/gpt-trader/cold/drills/{default.id}"
    default.assert_not_live(settings)


def test_a_refused_drill_touches_nothing_live(live: LiveProfile, monkeypatch: pytest.MonkeyPatch) -> None:
    before = live.snapshot()
    monkeypatch.setenv("DRILL_REDIS_PREFIX", "state:")

    with pytest.raises(DrillRefused):
        run_drill(live.settings, "redis-outage", keys=50)

    live.assert_untouched(before)


def test_perps_bot_drill_on_the_default_sqlite_profile_leaves_nothing_behind(tmp_path: Path) -> None:
    """The command an operator types first: SQLite ledger, in-process cache, local cold folder."""
    perps_bot = Path(sys.executable).parent / "perps-bot"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_", "COLD_", "DRILL_"))}
    env.update({"STATE_DIR": str(tmp_path / "state"), "LOG_DIR": str(tmp_path / "logs")})

    ran = subprocess.run(
        [str(perps_bot), "drill", "redis-outage", "--keys", "400"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.rstrip().endswith("Match: True")
    assert "left behind" not in ran.stdout and "400" in ran.stdout
    assert "Recovered 400 keys to Redis" in (tmp_path / "logs" / "perps_bot.log").read_text()
