"""The database engines a backup dumps and restores: PostgreSQL (`pg_dump --format=custom`, `pg_restore`) and
SQLite (the online backup API).

Invariant: the row counts and per-table checksums of a dump are taken in the same snapshot as the dump
(PostgreSQL: pg_dump runs on the snapshot exported by the transaction that counts; SQLite: counted on the backup
copy itself), and a restored copy is counted the same way (md5 over every row's md5 in primary-key order; the rows
of ACCOUNT_TABLES per account), so a restore test compares like with like. These statements are generic over the
catalog (every table, its primary key, whether it has an `account` column): they must run in the dump's own
snapshot, which no Ledger can join. A PostgreSQL password goes to the tools in PGPASSWORD, never on a command line.
"""

from __future__ import annotations

import glob
import hashlib
import os
import platform
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Protocol

from sqlalchemy import Connection, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from trader.backup.models import ACCOUNT_TABLES, BackupError, Engine, Progress, Restored, TableStats, no_progress


class DatabaseEngine(Protocol):
    """Dumps the ledger database with the row counts and checksums of the same snapshot, and restores a dump."""

    name: Engine

    def source(self) -> dict[str, Any]:
        """Where the dump comes from, for the manifest (never a password)."""
        ...

    def dump(self, path: Path, report: Progress) -> tuple[TableStats, dict[str, str]]:
        """Write a consistent dump to path; the counts and checksums of its snapshot, and the tool versions."""
        ...

    def restore(self, dump: Path, *, admin_url: str | None, jobs: int) -> Restored:
        """Restore the dump into a scratch copy (dropped or deleted afterwards) and count it like `dump` does."""
        ...


def engine_for(database_url: str, workdir: Path) -> DatabaseEngine:
    """The engine for DATABASE_URL; tool error output is staged under workdir."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return PostgresEngine(url, workdir)
    if backend == "sqlite":
        return SqliteEngine(url)
    raise BackupError(f"DATABASE_URL: backups support postgresql and sqlite, not {backend}")


def _runtime_versions() -> dict[str, str]:
    try:
        trader = metadata.version("gpt-trader-ops")
    except metadata.PackageNotFoundError:
        trader = "unknown"
    return {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "gpt-trader-ops": trader}


# --- PostgreSQL -------------------------------------------------------------------------------------------------


class PostgresEngine:
    """A PostgreSQL ledger: pg_dump on an exported snapshot, pg_restore into a scratch database that is dropped."""

    name: Engine = "postgresql"

    def __init__(self, url: URL, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir

    def source(self) -> dict[str, Any]:
        return {"engine": "postgresql", "host": self.url.host, "port": self.url.port, "database": self.url.database}

    def dump(self, path: Path, report: Progress) -> tuple[TableStats, dict[str, str]]:
        engine = create_engine(_sqlalchemy_url(self.url), isolation_level="REPEATABLE READ", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                major, server_version = _server_version(connection)
                pg_dump = find_pg_tool("pg_dump", major)
                _session_settings(connection)
                # The dump and the counts share one snapshot: pg_dump imports the one this transaction exports.
                snapshot = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
                args = [
                    pg_dump,
                    "--format=custom",
                    f"--snapshot={snapshot}",
                    f"--file={path}",
                    *_pg_connection_args(self.url),
                ]
                report("dump", 0, 1)
                with _stderr_file(self.workdir) as stderr:
                    process = subprocess.Popen(args, env=_pg_env(self.url), stdout=subprocess.DEVNULL, stderr=stderr)
                    try:
                        stats = _postgres_stats(connection, report)
                    finally:
                        returncode = process.wait()
                    if returncode != 0:
                        path.unlink(missing_ok=True)
                        described = self.url.render_as_string(hide_password=True)
                        raise BackupError(f"pg_dump of {described} failed (exit {returncode}): {_tail(stderr)}")
                report("dump", 1, 1)
                connection.rollback()
        finally:
            engine.dispose()
        tools = {"pg_dump": _tool_version(pg_dump), "server": server_version, **_runtime_versions()}
        return stats, tools

    def restore(self, dump: Path, *, admin_url: str | None, jobs: int) -> Restored:
        """Into a scratch database on the server of admin_url (default: this database's server), then dropped."""
        admin = make_url(admin_url) if admin_url else self.url
        if admin.get_backend_name() != "postgresql":
            raise BackupError(f"restore test target must be a PostgreSQL URL, not {admin.get_backend_name()}")
        scratch = f"restore_test_{datetime.now(UTC):%Y%m%d%H%M%S}_{uuid.uuid4().hex[:6]}"
        engine = create_engine(_sqlalchemy_url(admin), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                major, _ = _server_version(connection)
                connection.exec_driver_sql(f'CREATE DATABASE "{scratch}"')
            try:
                target = admin.set(database=scratch)
                started = time.perf_counter()
                args = [
                    find_pg_tool("pg_restore", major),
                    "--no-owner",
                    "--no-privileges",
                    "--exit-on-error",
                    f"--jobs={max(1, jobs)}",
                    *_pg_connection_args(target),
                    str(dump),
                ]
                with _stderr_file(self.workdir) as stderr:
                    returncode = subprocess.run(args, env=_pg_env(target), stdout=subprocess.DEVNULL, stderr=stderr)
                    if returncode.returncode != 0:
                        raise BackupError(
                            f"pg_restore into scratch database {scratch} failed (exit {returncode.returncode}): "
                            f"{_tail(stderr)}"
                        )
                restore_seconds = time.perf_counter() - started
                started = time.perf_counter()
                check = create_engine(_sqlalchemy_url(target), isolation_level="REPEATABLE READ", poolclass=NullPool)
                try:
                    with check.connect() as connection:
                        _session_settings(connection)
                        stats = _postgres_stats(connection, no_progress)
                        connection.rollback()
                finally:
                    check.dispose()
                compare_seconds = time.perf_counter() - started
            finally:
                with engine.connect() as connection:
                    connection.exec_driver_sql(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                        "AND pid <> pg_backend_pid()",
                        (scratch,),
                    )
                    connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{scratch}"')
        finally:
            engine.dispose()
        return Restored(f"postgresql database {scratch} (dropped)", stats, restore_seconds, compare_seconds)


# psycopg2 reads % as a parameter marker even without parameters: literal percent signs are doubled.
_PG_TABLES = """
SELECT n.nspname, c.relname, format('%%I.%%I', n.nspname, c.relname),
       (SELECT string_agg('_row_.' || quote_ident(a.attname), ', ' ORDER BY k.ord)
          FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = c.oid AND i.indisprimary),
       EXISTS (SELECT 1 FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attname = 'account' AND a.attnum > 0 AND NOT a.attisdropped)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
 ORDER BY 1, 2
"""


def _session_settings(connection: Connection) -> None:
    """Fix the settings that change a row's text, so both sides of a comparison render rows alike."""
    connection.exec_driver_sql("SET TIME ZONE 'UTC'")
    connection.exec_driver_sql("SET datestyle = 'ISO, YMD'")
    connection.exec_driver_sql("SET extra_float_digits = 1")
    connection.exec_driver_sql("SET bytea_output = 'hex'")


def _postgres_stats(connection: Connection, report: Progress) -> TableStats:
    """Row counts and md5 checksums of every user table, in this connection's snapshot."""
    tables = connection.exec_driver_sql(_PG_TABLES).all()
    stats = TableStats()
    for done, (schema, table, qualified, primary_key, has_account) in enumerate(tables, start=1):
        key = table if schema == "public" else f"{schema}.{table}"
        order = primary_key or "_row_::text"
        count, checksum = connection.exec_driver_sql(
            f"SELECT count(*), md5(coalesce(string_agg(md5(_row_::text), '' ORDER BY {order}), '')) "
            f"FROM {qualified} AS _row_"
        ).one()
        stats.row_counts[key] = int(count)
        stats.checksums[key] = str(checksum)
        if key in ACCOUNT_TABLES and has_account:
            grouped = connection.exec_driver_sql(f'SELECT "account", count(*) FROM {qualified} GROUP BY "account"')
            stats.add_account_counts(key, [(str(account), int(rows)) for account, rows in grouped])
        report("snapshot", done, len(tables))
    return stats


def find_pg_tool(tool: str, server_major: int) -> str:
    """The pg_dump/pg_restore for this server major version: /usr/lib/postgresql/<major>/bin, else the newest
    installed one that is not older than the server, else the one on PATH."""
    exact = Path(f"/usr/lib/postgresql/{server_major}/bin/{tool}")
    if exact.is_file() and os.access(exact, os.X_OK):
        return str(exact)
    installed = []
    for candidate in glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"):
        version = Path(candidate).parts[-3]
        if version.isdigit() and int(version) >= server_major:
            installed.append((int(version), candidate))
    if installed:
        return sorted(installed)[0][1]
    on_path = shutil.which(tool)
    if on_path is None:
        raise BackupError(
            f"{tool} not found for PostgreSQL {server_major}: install postgresql-client-{server_major} "
            f"(looked in /usr/lib/postgresql/*/bin and PATH)"
        )
    return on_path


def _tool_version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _server_version(connection: Connection) -> tuple[int, str]:
    number = int(connection.exec_driver_sql("SHOW server_version_num").scalar_one())
    version = str(connection.exec_driver_sql("SHOW server_version").scalar_one()).split()[0]
    return number // 10000, version


def _sqlalchemy_url(url: URL) -> URL:
    return url.set(drivername="postgresql+psycopg2")


def _pg_connection_args(url: URL) -> list[str]:
    """Host, port, user and database on the command line; never the password (that goes in PGPASSWORD)."""
    args = []
    if url.host:
        args.append(f"--host={url.host}")
    if url.port:
        args.append(f"--port={url.port}")
    if url.username:
        args.append(f"--username={url.username}")
    args.append("--no-password")  # fail fast instead of prompting when no password is known
    args.append(f"--dbname={url.database}")
    return args


def _pg_env(url: URL) -> dict[str, str]:
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    for option in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
        value = url.query.get(option)
        if isinstance(value, str):
            env[f"PG{option.upper()}"] = value
    return env


@contextmanager
def _stderr_file(folder: Path) -> Iterator[IO[bytes]]:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as handle:
        yield handle


def _tail(handle: IO[bytes], limit: int = 2000) -> str:
    handle.seek(0)
    text = handle.read().decode("utf-8", "replace").strip()
    return " | ".join(text[-limit:].splitlines()) or "no message"


# --- SQLite -----------------------------------------------------------------------------------------------------


class SqliteEngine:
    """A SQLite ledger file: the online backup API while writers carry on; restored as a temp file, checked."""

    name: Engine = "sqlite"

    def __init__(self, url: URL) -> None:
        self.url = url

    def source(self) -> dict[str, Any]:
        return {"engine": "sqlite", "path": self.url.database}

    def dump(self, path: Path, report: Progress) -> tuple[TableStats, dict[str, str]]:
        source_path = self.url.database
        if not source_path or source_path == ":memory:" or not Path(source_path).is_file():
            raise BackupError(f"no SQLite ledger file at {source_path!r}: check DATABASE_URL")
        path.unlink(missing_ok=True)
        source = sqlite3.connect(source_path)
        target = sqlite3.connect(path)
        try:
            # The online backup API copies a consistent snapshot while writers carry on (in steps of 1024 pages).
            source.backup(target, pages=1024, progress=lambda _status, left, total: report("dump", total - left, total))
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            stats = _sqlite_stats(target, report)
        finally:
            target.close()
            source.close()
        return stats, _runtime_versions()

    def restore(self, dump: Path, *, admin_url: str | None, jobs: int) -> Restored:
        """The downloaded file is the restored copy (deleted with its temp folder): integrity_check, then count."""
        started = time.perf_counter()
        connection = sqlite3.connect(dump)
        try:
            integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
            restore_seconds = time.perf_counter() - started
            if integrity != "ok":
                raise BackupError(f"restored SQLite backup fails PRAGMA integrity_check: {integrity}")
            started = time.perf_counter()
            stats = _sqlite_stats(connection, no_progress)
        finally:
            connection.close()
        return Restored("sqlite temp file (deleted)", stats, restore_seconds, time.perf_counter() - started)


def _sqlite_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_stats(connection: sqlite3.Connection, report: Progress) -> TableStats:
    """Row counts and md5 checksums of every table, rows in primary-key (else rowid) order."""
    tables = [
        row[0]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    stats = TableStats()
    for done, table in enumerate(tables, start=1):
        columns = connection.execute(f"PRAGMA table_info({_sqlite_quote(table)})").fetchall()
        primary_key = [column[1] for column in sorted(columns, key=lambda c: c[5]) if column[5] > 0]
        order = ", ".join(_sqlite_quote(c) for c in primary_key) or "rowid"
        # The rows are read anyway: ACCOUNT_TABLES' accounts are tallied from them (no GROUP BY of its own).
        names = [column[1] for column in columns]
        at = names.index("account") if table in ACCOUNT_TABLES and "account" in names else None
        per_account: Counter[str] = Counter()
        table_digest, count = hashlib.md5(usedforsecurity=False), 0
        for row in connection.execute(f"SELECT * FROM {_sqlite_quote(table)} ORDER BY {order}"):
            table_digest.update(hashlib.md5(repr(row).encode(), usedforsecurity=False).hexdigest().encode())
            count += 1
            if at is not None:
                per_account[row[at]] += 1
        stats.row_counts[table] = count
        stats.checksums[table] = table_digest.hexdigest()
        if at is not None:
            stats.add_account_counts(table, per_account.items())
        report("snapshot", done, len(tables))
    return stats
