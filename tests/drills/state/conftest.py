"""A "live" profile for the state drills: its own redis-server (tests/state's RedisServer), a PostgreSQL database on
the shared server (tests/conftest.py's pg_url) and a bucket on a moto S3 server, each holding a live key the drills
must leave byte for byte as it was."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine

from tests.state.cold.conftest import MotoS3, MotoServer
from tests.state.conftest import RedisServer
from trader.ledger.db import migrate
from trader.settings import Settings, load_settings
from trader.state.base import StateRecord, checksum, encode_value
from trader.state.hot import pack_record
from trader.state.warm import SqlWarmStore

LIVE_KEY = "position:BTC-USD"
LIVE_VALUE = {"quantity": "0.5", "average_entry_price": "64000.00", "note": "live, never touched by a drill"}
LIVE_OBJECT = "checkpoints/live-marker.json"
DRILL_VARIABLES = (
    "DRILL_REDIS_URL",
    "DRILL_REDIS_DB",
    "DRILL_REDIS_PREFIX",
    "DRILL_DATABASE_URL",
    "DRILL_COLD_STORAGE_URL",
)


@pytest.fixture(scope="session")
def live_redis() -> Iterator[RedisServer]:
    """The live profile's Redis: a private redis-server (never the shared 127.0.0.1:6379)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def drill_moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def live_s3(aws_env: None, drill_moto: MotoServer) -> MotoS3:
    return MotoS3(drill_moto)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for moto (as tests/state/cold/conftest.py's aws_env)."""
    for name in ("AWS_PROFILE", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def clean_drill_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DRILL_* variable from the machine changes where the drills run."""
    for name in DRILL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class LiveProfile:
    """The live settings plus the live key in Redis, PostgreSQL and S3, and a way to check them byte for byte."""

    def __init__(self, settings: Settings, redis_url: str, s3: MotoS3 | None) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.s3 = s3
        value = encode_value(LIVE_VALUE)
        self.record = StateRecord(LIVE_KEY, value, checksum(value), 7, datetime(2026, 11, 21, 5, 0, tzinfo=UTC))
        self.redis_bytes = pack_record(self.record)
        client = redis.Redis.from_url(redis_url)
        client.set(f"state:{LIVE_KEY}", self.redis_bytes)
        client.close()
        migrate(settings.database_url)
        warm = SqlWarmStore(settings.database_url)
        warm.put_many([self.record])
        warm.dispose()
        if s3 is not None:
            s3.client().put_object(Bucket=s3.bucket, Key=f"gpt-trader/cold/{LIVE_OBJECT}", Body=value)

    def snapshot(self) -> dict[str, Any]:
        """Everything live: every Redis key and value, the state_entries rows, the database list, the bucket."""
        client = redis.Redis.from_url(self.redis_url)
        keys = sorted(client.scan_iter(match="*", count=1000))
        cached = {key: client.get(key) for key in keys}
        client.close()
        warm = SqlWarmStore(self.settings.database_url)
        stored = warm.get_many(warm.keys("*"))
        warm.dispose()
        objects = {}
        if self.s3 is not None:
            objects = {name: self.s3.read(name) for name in self.s3.keys(prefix="")}
        return {"redis": cached, "warm": stored, "s3": objects}

    def assert_untouched(self, before: dict[str, Any]) -> None:
        after = self.snapshot()
        assert after["redis"] == before["redis"]
        assert after["redis"][f"state:{LIVE_KEY}".encode()] == self.redis_bytes
        assert after["warm"] == before["warm"] and after["warm"][LIVE_KEY] == self.record
        assert after["s3"] == before["s3"]


@pytest.fixture
def live(live_redis: RedisServer, fresh_pg_url: str, tmp_path: Path, clean_drill_env: None) -> LiveProfile:
    """A live profile without S3 (cold tier a local folder): Redis, PostgreSQL, one live key in each."""
    client = redis.Redis.from_url(live_redis.url)
    client.flushall()
    client.close()
    settings = load_settings(
        redis_url=live_redis.url, database_url=fresh_pg_url, state_dir=tmp_path / "state", cold_storage_url=""
    )
    return LiveProfile(settings, live_redis.url, None)


@pytest.fixture
def live_with_s3(
    live_redis: RedisServer, fresh_pg_url: str, tmp_path: Path, clean_drill_env: None, live_s3: MotoS3
) -> LiveProfile:
    """The live profile with its cold tier on S3 (moto) at s3://<bucket>/gpt-trader/cold."""
    client = redis.Redis.from_url(live_redis.url)
    client.flushall()
    client.close()
    settings = load_settings(
        redis_url=live_redis.url,
        database_url=fresh_pg_url,
        state_dir=tmp_path / "state",
        cold_storage_url=live_s3.url("gpt-trader/cold"),
        cold_storage_endpoint_url=live_s3.endpoint,
    )
    return LiveProfile(settings, live_redis.url, live_s3)


def database_exists(url: str, name: str) -> bool:
    """Whether a database of that name exists on url's server (a drill's scratch database left behind)."""
    engine = create_engine(url)
    with engine.connect() as connection:
        found = connection.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).first()
    engine.dispose()
    return found is not None


def drill_redis_keys(redis_url: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    keys = sorted(client.scan_iter(match="drill:*", count=1000))
    client.close()
    return keys
