"""HOT tier: a bounded in-process LRU (MemoryCache) or Redis (RedisCache); both keep whole StateRecords."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from trader.state.base import BatchResult, StateRecord, TierUnavailable

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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

    def __init__(self, url: str, prefix: str = "state:", socket_timeout: float = 0.5) -> None:
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
        if not records:
            return BatchResult()
        try:
            self._client.mset({self._full(record.key): pack_record(record) for record in records})
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise TierUnavailable(f"Redis at {self._safe_url} is unreachable: {error}") from error
        return BatchResult(stored=[record.key for record in records])

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


def _escape_glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
