"""HOT tier: a bounded in-process LRU (MemoryCache) or Redis (RedisCache); both keep whole StateRecords.

Invariant: a RedisCache reads, lists and deletes only keys under its own prefix; the state of an account lives
under `state:<account>:` (state_prefix), the default account's included, so no key of one account is ever another's
(an account name holds no ':').
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from trader.account_names import DEFAULT_ACCOUNT
from trader.state.base import BatchResult, StateRecord, TierUnavailable

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
MSET_CHUNK = 250  # keys per MSET in put_rows: Redis stores a chunk while the next one is framed

# A StateRecord as plain fields, updated_at in microseconds since the epoch: (key, value, checksum, version,
# micros); a str value stands for its UTF-8 bytes. The bulk form recovery moves from the warm tier to the cache
# without building a record per key.
RecordRow = tuple[str, bytes | memoryview | str, str, int, int]


def record_row(record: StateRecord) -> RecordRow:
    micros = (record.updated_at - _EPOCH) // _MICROSECOND
    return (record.key, record.value, record.checksum, record.version, micros)


def state_prefix(account: str) -> str:
    """The Redis key prefix of one account's state: `state:<account>:`."""
    if not account or ":" in account:
        raise ValueError(f"account {account!r} cannot name a Redis prefix: use the ACCOUNT setting's letters")
    return f"state:{account}:"


class _Stamps(dict[int, datetime]):
    """Microseconds since the epoch → aware UTC datetime, each distinct instant built once (a batch shares one)."""

    def __missing__(self, micros: int) -> datetime:
        stamp = self[micros] = _EPOCH + timedelta(microseconds=micros)
        return stamp


def _as_bytes(value: bytes | memoryview | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def rows_to_records(rows: Iterable[RecordRow]) -> list[StateRecord]:
    stamps = _Stamps()
    return [
        StateRecord(key=key, value=_as_bytes(value), checksum=digest, version=version, updated_at=stamps[micros])
        for key, value, digest, version, micros in rows
    ]


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A compiled regex with Redis MATCH semantics: * any run, ? one char, [abc] [^a-z] classes, \\x literal."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            end = pattern.find("]", i + 2 if i + 1 < n and pattern[i + 1] == "^" else i + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("^")
                body = body[1:] if negate else body
                members = "".join("\\" + c if c in "\\]^[" else c for c in body)
                if members:
                    out.append(f"[{'^' if negate else ''}{members}]")
                else:
                    out.append("." if negate else "(?!)")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, key: str) -> bool:
    """True when key matches the Redis-style glob pattern."""
    return glob_regex(pattern).fullmatch(key) is not None


class MemoryCache:
    """An in-process bounded LRU of StateRecords: reads refresh recency, the least recently used key is evicted."""

    name = "memory"

    def __init__(self, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1 (got {max_keys})")
        self.max_keys = max_keys
        self._records: OrderedDict[str, StateRecord] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0  # the manager reads it: after an eviction a cache miss no longer means "absent"

    def get_many(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        found: dict[str, StateRecord] = {}
        with self._lock:
            for key in keys:
                record = self._records.get(key)
                if record is not None:
                    self._records.move_to_end(key)
                    found[key] = record
        return found

    def put_many(self, records: Sequence[StateRecord]) -> BatchResult:
        with self._lock:
            for record in records:
                self._records[record.key] = record
                self._records.move_to_end(record.key)
            while len(self._records) > self.max_keys:
                self._records.popitem(last=False)
                self.evictions += 1
        return BatchResult(stored=[record.key for record in records])

    def delete_many(self, keys: Sequence[str]) -> BatchResult:
        with self._lock:
            for key in keys:
                self._records.pop(key, None)
        return BatchResult(stored=list(keys))

    def put_rows(self, rows: Sequence[RecordRow]) -> BatchResult:
        return self.put_many(rows_to_records(rows))

    def keys(self, pattern: str = "*") -> list[str]:
        regex = glob_regex(pattern)
        with self._lock:
            return [key for key in self._records if regex.fullmatch(key)]

    def ping(self) -> bool:
        return True

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        return len(self._records)


def pack_record(record: StateRecord) -> bytes:
    """One Redis string per key: b"<version>:<checksum>:<updated_at µs since epoch>:<value bytes>"."""
    micros = (record.updated_at - _EPOCH) // timedelta(microseconds=1)
    return b"%d:%s:%d:" % (record.version, record.checksum.encode("ascii"), micros) + record.value


def unpack_record(key: str, data: bytes) -> StateRecord:
    """The StateRecord packed by pack_record (the value may itself contain colons)."""
    version, digest, micros, value = data.split(b":", 3)
    return StateRecord(
        key=key,
        value=value,
        checksum=digest.decode("ascii"),
        version=int(version),
        updated_at=_EPOCH + timedelta(microseconds=int(micros)),
    )


class RedisCache:
    """Redis as the HOT tier: one packed string per key under a prefix; MGET/MSET in batches, SCAN for keys."""

    name = "redis"

    def __init__(self, url: str, prefix: str = state_prefix(DEFAULT_ACCOUNT), socket_timeout: float = 0.5) -> None:
        self.url = url
        self.prefix = prefix
        # One immediate retry lets a pooled connection broken by a Redis restart reconnect; no backoff sleeps,
        # so an outage is reported within about socket_timeout.
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 1),
        )

    def _full(self, key: str) -> str:
        return self.prefix + key

    def get_many(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        if not keys:
            return {}
        try:
            values = self._client.mget([self._full(key) for key in keys])
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise TierUnavailable(f"Redis at {self._safe_url} is unreachable: {error}") from error
        return {
            key: unpack_record(key, bytes(data) if isinstance(data, bytes) else str(data).encode("utf-8"))
            for key, data in zip(keys, values, strict=True)
            if data is not None
        }

    def put_many(self, records: Sequence[StateRecord]) -> BatchResult:
        return self.put_rows([record_row(record) for record in records])

    def put_rows(self, rows: Sequence[RecordRow]) -> BatchResult:
        """MSETs of the rows packed as pack_record does, framed here (redis-py's packer costs ~3 µs a key).

        Each MSET_CHUNK rows go out as soon as they are framed, so Redis stores one chunk while the next is
        framed; the replies are read once all are sent.
        """
        if not rows:
            return BatchResult()
        prefix = self.prefix
        ascii_prefix = prefix.isascii()

        def frame() -> Iterator[bytes]:
            # A chunk is built as text and encoded once as Latin-1 (one byte per character): an ASCII key and
            # value (the usual canonical JSON) take two f-strings; anything else is framed as bytes and mapped.
            for start in range(0, len(rows), MSET_CHUNK):
                part = rows[start : start + MSET_CHUNK]
                frames = [f"*{2 * len(part) + 1}\r\n$4\r\nMSET\r\n"]
                add = frames.append
                for key, value, digest, version, micros in part:
                    if isinstance(value, str) and ascii_prefix and key.isascii() and value.isascii():
                        packed = f"{version}:{digest}:{micros}:{value}"
                        add(f"${len(prefix) + len(key)}\r\n{prefix}{key}\r\n${len(packed)}\r\n{packed}\r\n")
                        continue
                    name = (prefix + key).encode("utf-8")
                    data = value.encode("utf-8") if isinstance(value, str) else value
                    packed_bytes = b"%d:%s:%d:%s" % (version, digest.encode("ascii"), micros, data)
                    add(
                        (b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(name), name, len(packed_bytes), packed_bytes)).decode(
                            "latin-1"
                        )
                    )
                yield "".join(frames).encode("latin-1")

        self._pipeline(frame())
        return BatchResult(stored=[row[0] for row in rows])

    def _pipeline(self, commands: Iterator[bytes]) -> list[Any]:
        """Send RESP commands as they come, then read every reply.

        A broken connection (a Redis restart leaves the pool's) is reconnected and all the commands are sent
        once more, as the client's own single retry does (MSET is idempotent). An error reply is raised once
        every reply is read; anything else going wrong midway drops the connection, never leaving replies
        unread on a pooled one.
        """
        pool = self._client.connection_pool
        try:
            connection = pool.get_connection()
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise TierUnavailable(f"Redis at {self._safe_url} is unreachable: {error}") from error
        sent: list[bytes] = []
        try:
            try:
                for command in commands:
                    sent.append(command)
                    connection.send_packed_command([command], check_health=False)
                return _read_replies(connection, len(sent))
            except (RedisConnectionError, RedisTimeoutError):
                connection.disconnect()
            sent.extend(commands)  # the rest, framed now
            try:
                connection.send_packed_command(sent)
                return _read_replies(connection, len(sent))
            except (RedisConnectionError, RedisTimeoutError) as error:
                raise TierUnavailable(f"Redis at {self._safe_url} is unreachable: {error}") from error
        except ResponseError:
            raise  # every reply was read
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    def delete_many(self, keys: Sequence[str]) -> BatchResult:
        if not keys:
            return BatchResult()
        try:
            self._client.delete(*[self._full(key) for key in keys])
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise TierUnavailable(f"Redis at {self._safe_url} is unreachable: {error}") from error
        return BatchResult(stored=list(keys))

    def keys(self, pattern: str = "*") -> list[str]:
        start = len(self.prefix)
        try:
            found = [
                raw.decode("utf-8")[start:]
                for raw in self._client.scan_iter(match=_escape_glob(self.prefix) + pattern, count=1000)
            ]
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise TierUnavailable(f"Redis at {self._safe_url} is unreachable: {error}") from error
        return sorted(set(found))

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return False

    def clear(self) -> None:
        """Delete every key under this cache's prefix (never the rest of the Redis database)."""
        keys = self.keys("*")
        for start in range(0, len(keys), 1000):
            self.delete_many(keys[start : start + 1000])

    def close(self) -> None:
        self._client.close()

    @property
    def _safe_url(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def _read_replies(connection: Any, count: int) -> list[Any]:
    """count replies; the first error reply is raised after all are read (the connection stays in step)."""
    replies: list[Any] = []
    failed: ResponseError | None = None
    for _ in range(count):
        try:
            replies.append(connection.read_response())
        except ResponseError as error:
            failed = failed or error
    if failed is not None:
        raise failed
    return replies


def _escape_glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
