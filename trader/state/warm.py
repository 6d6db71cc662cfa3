"""WARM tier: the state_entries table on SQLite or PostgreSQL, written with one bulk upsert per batch.

Invariant: a SqlWarmStore reads and writes only its account's rows: every statement (reads, upserts, key listing,
deletes, the export scan, clear) filters on or sets `account`, and upserts conflict on (account, key), the table's
primary key, so the same key in two accounts is two independent entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Table, create_engine, delete, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from trader.account_names import DEFAULT_ACCOUNT
from trader.ledger.db import make_engine, migrate
from trader.ledger.models import StateEntry
from trader.state.base import BatchResult, StateRecord, TierUnavailable
from trader.state.hot import RecordRow, glob_regex, rows_to_records

_TABLE: Table = StateEntry.metadata.tables["state_entries"]
_COLUMNS = ("account", "key", "value", "checksum", "version", "updated_at")
_KEY = _TABLE.c.key
# Below SQLite's 32766 and PostgreSQL's 65535 bind parameters per statement: a huge STATE_BATCH_SIZE is split.
_MAX_BIND_PARAMS = 30_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# The full scan of an export: updated_at as µs since the epoch (exact: the numeric EXTRACT of PostgreSQL 14+;
# SQLite keeps naive UTC text, converted in Python). No ORDER BY: one account's rows in storage order (on the primary
# key's (account, key) index when the table holds many accounts). The account is the one bind parameter.
# On PostgreSQL values (canonical JSON) travel as text: half the bytes of bytea's hex and a third of its
# client-side cost; a value that is not UTF-8 fails the text scan, which the bytea one then completes.
_MICROS_SQL = '(EXTRACT(EPOCH FROM "updated_at") * 1000000)::bigint'
_EXPORT_PG_TEXT = (
    f'SELECT "key", convert_from("value", \'UTF8\'), "checksum", "version", {_MICROS_SQL} FROM "state_entries" '
    'WHERE "account" = %s'
)
_EXPORT_PG_BYTES = (
    f'SELECT "key", "value", "checksum", "version", {_MICROS_SQL} FROM "state_entries" WHERE "account" = %s'
)
_EXPORT_SQLITE = 'SELECT "key", "value", "checksum", "version", "updated_at" FROM "state_entries" WHERE "account" = ?'


class _NotText(Exception):
    """A stored value is not valid UTF-8 (or not representable in the client encoding): export it as bytea."""


def _unavailable(error: Exception) -> bool:
    """True for errors that mean the database cannot be reached (as opposed to a bad statement or value)."""
    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


class SqlWarmStore:
    """One account's state_entries through SQLAlchemy: bulk upserts, IN reads per batch, glob keys via GLOB (SQLite)
    or LIKE."""

    def __init__(
        self, database_url: str, batch_size: int = 1000, *, account: str = DEFAULT_ACCOUNT, connect_timeout: int = 3
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        self.database_url = database_url
        self.account = account
        self.batch_size = batch_size
        url = make_url(database_url)
        self.dialect = url.get_backend_name()
        self.name = "postgresql" if self.dialect == "postgresql" else self.dialect
        if self.dialect == "postgresql":
            # make_engine has no connect timeout; a blackholed server must fail fast, not hang for minutes.
            timeout = {"connect_timeout": connect_timeout}
            self.engine: Engine = create_engine(url, pool_pre_ping=True, connect_args=timeout)
        else:
            self.engine = make_engine(database_url)
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"the warm tier runs on sqlite or postgresql, not {self.dialect} ({url.drivername})")
        # UTCDateTime's own conversion (naive UTC text on SQLite, aware on PostgreSQL) for the text upsert.
        stamp = _TABLE.c.updated_at.type.bind_processor(self.engine.dialect)
        self._stamp: Callable[[Any], Any] = stamp if stamp is not None else (lambda value: value)

    def ensure_schema(self) -> None:
        """Create or upgrade the ledger schema (state_entries included); TierUnavailable when unreachable."""
        try:
            migrate(self.database_url)
        except SQLAlchemyError as error:
            if _unavailable(error):
                raise TierUnavailable(f"{self.name} warm tier is unreachable: {_first_line(error)}") from error
            raise

    def _chunks(self, items: Sequence[Any]) -> list[Sequence[Any]]:
        size = min(self.batch_size, _MAX_BIND_PARAMS)
        return [items[start : start + size] for start in range(0, len(items), size)]

    def get_many(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        found: dict[str, StateRecord] = {}
        if not keys:
            return found
        try:
            with self.engine.connect() as connection:
                for chunk in self._chunks(list(dict.fromkeys(keys))):
                    rows = connection.execute(select(_TABLE).where(_TABLE.c.account == self.account, _KEY.in_(chunk)))
                    for row in rows:
                        found[row.key] = StateRecord(
                            key=row.key,
                            value=bytes(row.value),
                            checksum=row.checksum,
                            version=int(row.version),
                            updated_at=row.updated_at,
                        )
        except SQLAlchemyError as error:
            if _unavailable(error):
                raise TierUnavailable(f"{self.name} warm tier is unreachable: {_first_line(error)}") from error
            raise
        return found

    def iter_rows(self, page_size: int | None = None) -> Iterator[list[RecordRow]]:
        """Every stored record as RecordRows, page_size a page (batch_size by default), in no particular order.

        The export path of a cache restore: one scan through a server-side cursor on PostgreSQL (one snapshot,
        one FETCH per page, memory bounded by the page), through the raw DBAPI cursor (no key list first, no
        IN lists, no per-row type processing), so a page costs about what the database sends.
        """
        size = page_size or self.batch_size
        if self.dialect == "sqlite":
            micros = self._micros_of()
            for rows in self._scan(_EXPORT_SQLITE, size):
                yield [(key, value, digest, version, micros[stamp]) for key, value, digest, version, stamp in rows]
            return
        seen: set[str] = set()
        try:
            for rows in self._scan(_EXPORT_PG_TEXT, size, text=True):
                seen.update([row[0] for row in rows])
                yield rows
        except _NotText:
            for rows in self._scan(_EXPORT_PG_BYTES, size):
                rest = [row for row in rows if row[0] not in seen]
                if rest:
                    yield rest

    def _scan(self, sql: str, size: int, *, text: bool = False) -> Iterator[list[Any]]:
        """The rows of sql, size a page: a server-side cursor on PostgreSQL, the plain DBAPI cursor on SQLite.

        One row more than a page is read and held back, so a short read ends the scan: a store of one page
        costs one FETCH, not a second one that finds nothing. On PostgreSQL the cursor is declared and first
        read in one round trip, and closed by the transaction's end (the connection's return to the pool).
        """
        dbapi = self.engine.dialect.loaded_dbapi
        server_side = self.dialect == "postgresql"
        try:
            with self.engine.connect() as connection:
                cursor: Any = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                try:
                    if not server_side:
                        cursor.execute(sql, (self.account,))
                    declare = f"DECLARE state_export NO SCROLL CURSOR FOR {sql}; " if server_side else ""
                    held: list[Any] = []
                    while True:
                        wanted = size + 1 - len(held)
                        if server_side:
                            # The account is bound in the DECLARE only (a FETCH has no parameters).
                            params = (self.account,) if declare else None
                            cursor.execute(f"{declare}FETCH FORWARD {wanted} FROM state_export", params)
                            declare = ""
                            rows = held + cursor.fetchall()
                        else:
                            rows = held + cursor.fetchmany(wanted)
                        if len(rows) <= size:
                            if rows:
                                yield rows
                            break
                        held = [rows.pop()]
                        yield rows
                except (dbapi.OperationalError, dbapi.InterfaceError) as error:
                    connection.invalidate()
                    raise TierUnavailable(f"{self.name} warm tier is unreachable: {_first_line(error)}") from error
                except dbapi.DataError as error:
                    if text:
                        raise _NotText(_first_line(error)) from error
                    raise
                finally:
                    cursor.close()
        except SQLAlchemyError as error:
            if _unavailable(error):
                raise TierUnavailable(f"{self.name} warm tier is unreachable: {_first_line(error)}") from error
            raise

    def iter_all(self, page_size: int | None = None) -> Iterator[list[StateRecord]]:
        """Every stored record in key order, page by page (iter_rows as StateRecords)."""
        for rows in self.iter_rows(page_size):
            yield rows_to_records(rows)

    def _micros_of(self) -> dict[Any, int]:
        """Stored updated_at (SQLite text) → µs since the epoch, through UTCDateTime's own result conversion."""
        dialect = self.engine.dialect
        process = _TABLE.c.updated_at.type.dialect_impl(dialect).result_processor(dialect, None)

        class Micros(dict[Any, int]):
            def __missing__(self, stored: Any) -> int:
                stamp = process(stored) if process is not None else stored
                assert isinstance(stamp, datetime), f"updated_at {stored!r} is not a timestamp"
                micros = self[stored] = (stamp - _EPOCH) // _MICROSECOND
                return micros

        return Micros()

    def versions(self, keys: Sequence[str]) -> dict[str, int]:
        """Stored versions of the keys that exist (key and version only: what a write needs to number itself)."""
        found: dict[str, int] = {}
        try:
            with self.engine.connect() as connection:
                for chunk in self._chunks(list(dict.fromkeys(keys))):
                    query = select(_KEY, _TABLE.c.version).where(_TABLE.c.account == self.account, _KEY.in_(chunk))
                    found.update({key: int(version) for key, version in connection.execute(query)})
        except SQLAlchemyError as error:
            if _unavailable(error):
                raise TierUnavailable(f"{self.name} warm tier is unreachable: {_first_line(error)}") from error
            raise
        return found

    def _upsert_sql(self, rows: int) -> str:
        """INSERT … VALUES (…) × rows ON CONFLICT (account, key) DO UPDATE: what the dialects' insert() builds.

        Written as text because SQLAlchemy cannot cache a multi-row VALUES statement: compiling one for 1000
        rows costs ~150 ms, five times the database's own work.
        """
        mark = "%s" if self.dialect == "postgresql" else "?"
        row = "(" + ", ".join([mark] * len(_COLUMNS)) + ")"
        names = ", ".join(f'"{name}"' for name in _COLUMNS)
        updates = ", ".join(f'"{name}" = excluded."{name}"' for name in _COLUMNS[2:])
        return (
            f'INSERT INTO "{_TABLE.name}" ({names}) VALUES {", ".join([row] * rows)} '
            f'ON CONFLICT ("account", "key") DO UPDATE SET {updates}'
        )

    def put_many(self, records: Sequence[StateRecord]) -> BatchResult:
        """One INSERT … ON CONFLICT DO UPDATE per batch, each batch its own transaction.

        A batch the database refuses (a key too long, say) is reported in failed; batches before it stay stored.
        Losing the connection raises TierUnavailable: the batches already committed are stored.
        """
        result = BatchResult()
        latest = {record.key: record for record in records}  # one row per key in a statement
        rows_per_statement = min(self.batch_size, _MAX_BIND_PARAMS // len(_COLUMNS))
        for start in range(0, len(latest), rows_per_statement):
            chunk = list(latest.values())[start : start + rows_per_statement]
            params: list[Any] = []
            account = self.account
            for r in chunk:
                params += [account, r.key, r.value, r.checksum, r.version, self._stamp(r.updated_at)]
            try:
                with self.engine.begin() as connection:
                    connection.exec_driver_sql(self._upsert_sql(len(chunk)), tuple(params))
            except SQLAlchemyError as error:
                if _unavailable(error):
                    raise TierUnavailable(f"{self.name} warm tier is unreachable: {_first_line(error)}") from error
                reason = _first_line(error)
                result.failed.update({r.key: reason for r in chunk})
                continue
            result.stored.extend(r.key for r in chunk)
        return result

    def delete_many(self, keys: Sequence[str]) -> BatchResult:
        result = BatchResult()
        for chunk in self._chunks(list(dict.fromkeys(keys))):
            try:
                with self.engine.begin() as connection:
                    connection.execute(delete(_TABLE).where(_TABLE.c.account == self.account, _KEY.in_(chunk)))
            except SQLAlchemyError as error:
                if _unavailable(error):
                    raise TierUnavailable(f"{self.name} warm tier is unreachable: {_first_line(error)}") from error
                result.failed.update({key: _first_line(error) for key in chunk})
                continue
            result.stored.extend(chunk)
        return result

    def keys(self, pattern: str = "*") -> list[str]:
        """Keys matching a Redis-style glob: narrowed in SQL (GLOB or a LIKE superset), decided by the glob regex."""
        query = select(_KEY).where(_TABLE.c.account == self.account)
        if pattern != "*":
            if self.dialect == "sqlite" and not any(c in pattern for c in "[]\\"):
                query = query.where(_KEY.op("GLOB")(pattern))  # same * and ? as Redis, case-sensitive
            else:
                query = query.where(_KEY.like(_like_superset(pattern), escape="\\"))
        try:
            with self.engine.connect() as connection:
                found = list(connection.execute(query.order_by(_KEY)).scalars())
        except SQLAlchemyError as error:
            if _unavailable(error):
                raise TierUnavailable(f"{self.name} warm tier is unreachable: {_first_line(error)}") from error
            raise
        regex = glob_regex(pattern)
        return [key for key in found if regex.fullmatch(key)]

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except Exception:
            return False
        return True

    def clear(self) -> None:
        """Delete every state entry of this account (tests and drills); other accounts' entries stay."""
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(_TABLE).where(_TABLE.c.account == self.account))
        except SQLAlchemyError as error:
            if _unavailable(error):
                raise TierUnavailable(f"{self.name} warm tier is unreachable: {_first_line(error)}") from error
            raise

    def dispose(self) -> None:
        self.engine.dispose()


def _like_superset(pattern: str) -> str:
    """A LIKE every key matching the glob also matches: * → %, ? → _, a [..] class → _ (the regex decides)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            char = pattern[i + 1]
            out.append("\\" + char if char in "%_\\" else char)
            i += 2
            continue
        end = _class_end(pattern, i) if char == "[" else -1
        if end != -1:
            out.append("_")
            i = end
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _class_end(pattern: str, start: int) -> int:
    """Index of the ] closing the class opened at start, or -1 when the [ is a literal."""
    first = start + 2 if pattern[start + 1 : start + 2] == "^" else start + 1
    return pattern.find("]", first)


def _first_line(error: Exception) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__
