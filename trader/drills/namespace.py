"""Where a drill runs: its own Redis keys, its own database and its own cold prefix, never the live profile's.

A drill named `drill-<yyyymmddHHMMSS>-<hex>` uses

* Redis: the live REDIS_URL's server (or DRILL_REDIS_URL; a private redis-server when neither is set), database
  DRILL_REDIS_DB if set, keys under `drill:<id>:` (DRILL_REDIS_PREFIX overrides it);
* PostgreSQL: a scratch database `drill_<yyyymmddHHMMSS>_<hex>` created on DATABASE_URL's server (DRILL_DATABASE_URL
  names another server; the role needs CREATEDB) and dropped at the end; on SQLite a file in the drill's folder;
* cold tier: `<COLD_STORAGE_URL>/drills/<id>` (DRILL_COLD_STORAGE_URL overrides it), deleted at the end.

`assert_not_live()` refuses a namespace whose targets are the live profile's before anything is touched.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from trader.errors import TraderError

if TYPE_CHECKING:
    from trader.settings import Settings

# Where every live key lives: an account's are state:<account>:<key> (trader/state/hot.py); a drill keeps out.
LIVE_REDIS_PREFIX = "state:"


class DrillError(TraderError):
    """A drill could not run (a service it needs is missing or failed); the message says what to fix."""


class DrillRefused(DrillError):
    """The drill's namespace would touch the live profile's state; nothing was done."""


class DrillUnavailable(DrillError):
    """The scenario does not apply to this profile (no S3 cold tier, no PostgreSQL, no redis-server)."""


def new_drill_id(at: datetime | None = None) -> str:
    """drill-20261121054517-1a2b3c: sortable by time (UTC), unique enough to share a server with other drills."""
    return f"drill-{(at or datetime.now(UTC)).astimezone(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _with_redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{db}").geturl()


def redis_identity(url: str) -> tuple[str, int, int]:
    """(host, port, db) of a redis:// URL; db from the path (default 0)."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        db = 0
    host = parts.hostname or "localhost"
    return ("127.0.0.1" if host == "localhost" else host, parts.port or 6379, db)


def _database_identity(url: str) -> tuple[str, ...]:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return ("sqlite", str(Path(parsed.database or ":memory:").resolve()))
    host = parsed.host or "localhost"
    host = "127.0.0.1" if host == "localhost" else host
    return (parsed.get_backend_name(), host, str(parsed.port or 5432), parsed.database or "")


def _cold_identity(url: str) -> str:
    if url.startswith("s3://"):
        return url.rstrip("/")
    return Path(url.removeprefix("file://")).resolve().as_posix()


def _prefixes_overlap(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


@dataclass(frozen=True)
class DrillNamespace:
    """The drill's targets; plan() names them, the scenario provisions and removes them."""

    id: str
    redis_url: str | None  # None: the drill starts a private redis-server
    redis_prefix: str
    database_url: str  # the drill's own database (created by create_database, removed by drop_database)
    database_server_url: str  # where CREATE/DROP DATABASE run: DRILL_DATABASE_URL or DATABASE_URL
    cold_url: str
    cold_endpoint_url: str | None
    workdir: Path

    @classmethod
    def plan(
        cls,
        settings: Settings,
        workdir: Path,
        *,
        drill_id: str | None = None,
        redis_url: str | None = None,
        redis_db: int | None = None,
        redis_prefix: str | None = None,
        database_server_url: str | None = None,
        cold_url: str | None = None,
    ) -> DrillNamespace:
        """The namespace for a drill of this profile; arguments beat the DRILL_* variables, which beat defaults."""
        drill_id = drill_id or new_drill_id()
        redis = redis_url or _env("DRILL_REDIS_URL") or settings.redis_url
        db_text = _env("DRILL_REDIS_DB")
        if redis_db is None and db_text is not None:
            try:
                redis_db = int(db_text)
            except ValueError:
                raise DrillError(f"DRILL_REDIS_DB: expected a database index such as 14 (got {db_text!r})") from None
        if redis is not None and redis_db is not None:
            redis = _with_redis_db(redis, redis_db)
        prefix = redis_prefix if redis_prefix is not None else (_env("DRILL_REDIS_PREFIX") or f"drill:{drill_id}:")
        server = database_server_url or _env("DRILL_DATABASE_URL") or settings.database_url
        parsed = make_url(server)
        if parsed.get_backend_name() == "sqlite":
            database = f"sqlite:///{(workdir / 'drill-ledger.db').as_posix()}"
        else:
            name = drill_id.replace("-", "_")
            database = parsed.set(database=name).render_as_string(hide_password=False)
        live_cold = settings.cold_storage_url
        if cold_url is None:
            cold_url = _env("DRILL_COLD_STORAGE_URL")
        if cold_url is None:
            cold_url = (
                f"{live_cold.rstrip('/')}/drills/{drill_id}"
                if live_cold.startswith("s3://")
                else (workdir / "cold").as_posix()
            )
        return cls(
            id=drill_id,
            redis_url=redis,
            redis_prefix=prefix,
            database_url=database,
            database_server_url=server,
            cold_url=cold_url,
            cold_endpoint_url=settings.cold_storage_endpoint_url,
            workdir=workdir,
        )

    @property
    def database_name(self) -> str:
        return make_url(self.database_url).database or ""

    @property
    def is_postgresql(self) -> bool:
        return make_url(self.database_url).get_backend_name() == "postgresql"

    def assert_not_live(self, settings: Settings) -> None:
        """Raise DrillRefused (one line, naming the setting) when a target is the live profile's."""
        if self.redis_url and settings.redis_url:
            same_server = redis_identity(self.redis_url) == redis_identity(settings.redis_url)
            if same_server and _prefixes_overlap(self.redis_prefix, LIVE_REDIS_PREFIX):
                host, port, db = redis_identity(self.redis_url)
                raise DrillRefused(
                    f"drill refused: its Redis keys ({host}:{port}/{db}, prefix {self.redis_prefix!r}) are the live "
                    f"profile's (REDIS_URL, prefix {LIVE_REDIS_PREFIX!r}); set DRILL_REDIS_PREFIX or DRILL_REDIS_DB"
                )
        if _database_identity(self.database_url) == _database_identity(settings.database_url):
            raise DrillRefused(
                f"drill refused: its database {self.database_name!r} is DATABASE_URL's; drills run on a scratch "
                "database of their own"
            )
        drill_cold, live_cold = _cold_identity(self.cold_url), _cold_identity(settings.cold_storage_url)
        if drill_cold == live_cold or live_cold.startswith(drill_cold + "/"):
            raise DrillRefused(
                f"drill refused: its cold prefix {self.cold_url} is COLD_STORAGE_URL's (or holds it); set "
                "DRILL_COLD_STORAGE_URL to a prefix of its own (default COLD_STORAGE_URL/drills/<id>)"
            )

    # --- the scratch database

    def create_database(self) -> None:
        """CREATE DATABASE drill_<id> on the server (connected to database_server_url's database, autocommit)."""
        if not self.is_postgresql:
            return
        engine = create_engine(self.database_server_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{self.database_name}"')
        except Exception as error:
            raise DrillError(
                f"cannot create the drill's scratch database {self.database_name} on DATABASE_URL's server "
                f"(the role needs CREATEDB, or set DRILL_DATABASE_URL): {_first_line(error)}"
            ) from error
        finally:
            engine.dispose()

    def drop_database(self) -> None:
        """DROP DATABASE drill_<id> (its connections terminated first); on SQLite, delete the drill's file."""
        if not self.is_postgresql:
            database = Path(make_url(self.database_url).database or "")
            for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm"), Path(f"{database}-journal")):
                path.unlink(missing_ok=True)
            return
        engine = create_engine(self.database_server_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid()",
                    (self.database_name,),
                )
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.database_name}"')
        finally:
            engine.dispose()

    def database_exists(self) -> bool:
        if not self.is_postgresql:
            return Path(make_url(self.database_url).database or "").exists()
        engine = create_engine(self.database_server_url)
        try:
            with engine.connect() as connection:
                found = connection.exec_driver_sql(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self.database_name,)
                ).first()
        finally:
            engine.dispose()
        return found is not None


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__
