"""One Coinbase key, many bots: a client-side rate limiter every request to Advanced Trade waits on.

Coinbase's documented limits are 30 requests per second per user on private REST endpoints and 10 per second per IP
on public ones; past them it answers 429. Bots that share a key share the private limit, and bots on one machine
share the public one, so the limiter is shared too:
- with REDIS_URL set, one token bucket per scope in Redis (a Lua script: atomic, on Redis's own clock), keyed by
  the API key's fingerprint (private) or this machine's host name (public), so every bot of that key or host draws
  from it;
- otherwise one bucket per scope in this process (a bot alone on its key loses nothing by it).

A bucket holds `burst` tokens and refills at `limit - burst` per second, so no one-second window ever carries more
than `limit` requests (a server that counts a sliding second sees at most its limit). RATE_LIMIT_MAX_RPS lowers
the limit (the runbook's `throttle --max-rps 10`); it never raises it past Coinbase's.

The exchange's own view wins: an answer with x-ratelimit-remaining 0 pauses the bucket until x-ratelimit-reset,
and a 429 pauses it for its Retry-After, for every bot sharing it. Waiting is counted (waits and seconds per scope)
for the exporter. If Redis stops answering, the process falls back to its own bucket (logged once) rather than stop
trading; it goes back to Redis when it answers again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import socket
import threading
import time
from collections import Counter
from typing import Any, Literal

log = logging.getLogger(__name__)

Scope = Literal["private", "public"]
SCOPES: tuple[Scope, ...] = ("private", "public")
DOCUMENTED_RPS: dict[Scope, float] = {"private": 30.0, "public": 10.0}
MAX_PAUSE_SECONDS = 60.0  # a reset or Retry-After further away than this is not believed
MAX_PAUSE_US = int(MAX_PAUSE_SECONDS * 1_000_000)
REDIS_PREFIX = "perps-bot:ratelimit:coinbase"
REDIS_RETRY_SECONDS = 5.0  # after Redis failed, ask it again no sooner than this (each try may wait for a timeout)

# KEYS[1] the bucket; ARGV: refill per second, burst, pause (µs from now, 0 for none), the longest wait (µs). Returns
# µs to wait (0: a token was taken). Time is Redis's own, so bots on machines with different clocks share one bucket
# fairly; a Redis clock that steps back (NTP, a failover) never makes a wait longer than the longest pause.
_TAKE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local rate, burst, pause = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_pause = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at', 'paused_until')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
local paused_until = tonumber(state[3]) or 0
if paused_until > now + max_pause then
  paused_until = 0  -- set before the clock stepped back: no pause is ever longer than the longest
end
if pause > 0 and now + pause > paused_until then
  paused_until = now + pause
  redis.call('HSET', KEYS[1], 'paused_until', paused_until)
  redis.call('PEXPIRE', KEYS[1], 120000)
  return 0
end
if now < paused_until then
  return math.min(paused_until - now, max_pause)
end
tokens = math.min(burst, math.max(tokens, 0) + math.max(now - at, 0) * rate / 1000000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], 120000)
return wait
"""


def shape(limit: float) -> tuple[float, float]:
    """(refill per second, burst) for a limit in requests per second: burst + refill == limit from 2 per second up;
    below 2 per second, one token of burst and the limit as refill (a window may carry one request more)."""
    burst = max(1.0, math.floor(limit / 10))
    return (limit - burst if limit >= 2 else limit), burst


class _LocalBucket:
    """One token bucket in this process (monotonic clock)."""

    def __init__(self, limit: float) -> None:
        self.rate, self.burst = shape(limit)
        self._tokens = self.burst
        self._at = time.monotonic()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 when a token was taken, else the seconds to wait before asking again."""
        with self._lock:
            now = time.monotonic()
            if now < self._paused_until:
                return self._paused_until - now
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)


class _RedisBucket:
    """One token bucket in Redis, shared by every process that names the same key."""

    def __init__(self, client: Any, key: str, limit: float) -> None:
        self.key = key
        self.rate, self.burst = shape(limit)
        self._script = client.register_script(_TAKE)

    def take(self) -> float:
        return int(self._script(keys=[self.key], args=[self.rate, self.burst, 0, MAX_PAUSE_US])) / 1_000_000

    def pause(self, seconds: float) -> None:
        pause = max(1, int(seconds * 1_000_000))
        self._script(keys=[self.key], args=[self.rate, self.burst, pause, MAX_PAUSE_US])


class RateLimiter:
    """Waits before each request until its scope's bucket gives a token; see the module docstring."""

    def __init__(
        self,
        limits: dict[Scope, float],
        *,
        redis_url: str | None = None,
        key_fingerprint: str = "anonymous",
        host: str | None = None,
        public_bucket: _LocalBucket | None = None,
    ) -> None:
        self.limits = dict(limits)
        self.waits: Counter[str] = Counter()  # per scope: requests that had to wait
        self.wait_seconds: dict[str, float] = dict.fromkeys(SCOPES, 0.0)  # per scope: seconds spent waiting
        self._count_lock = threading.Lock()
        self._local = {scope: _LocalBucket(limit) for scope, limit in self.limits.items()}
        if public_bucket is not None:  # one per process: every client of this host counts against it
            self._local["public"] = public_bucket
        self._shared: dict[Scope, _RedisBucket] = {}
        self._redis_down = False
        self._retry_redis_at = 0.0
        if redis_url:
            import redis

            client = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            names: dict[Scope, str] = {
                "private": f"{REDIS_PREFIX}:private:{key_fingerprint}",
                "public": f"{REDIS_PREFIX}:public:{host or socket.gethostname()}",
            }
            self._shared = {scope: _RedisBucket(client, names[scope], self.limits[scope]) for scope in self.limits}

    @property
    def shared(self) -> bool:
        """True when the buckets live in Redis (and Redis answers)."""
        return bool(self._shared) and not self._redis_down

    def acquire(self, scope: Scope) -> float:
        """Block until a request of this scope may go; the seconds waited."""
        waited = 0.0
        while True:
            pause = self._take(scope)
            if pause <= 0:
                break
            pause = min(pause, MAX_PAUSE_SECONDS)
            time.sleep(pause)
            waited += pause
        if waited:
            with self._count_lock:
                self.waits[scope] += 1
                self.wait_seconds[scope] += waited
        return waited

    def pause(self, scope: Scope, seconds: float) -> None:
        """Hold every request of this scope (every bot sharing the bucket) for `seconds` (capped)."""
        seconds = min(max(seconds, 0.0), MAX_PAUSE_SECONDS)
        if seconds <= 0:
            return
        log.warning("coinbase %s rate limit reached: requests held for %.2f s", scope, seconds)
        self._local[scope].pause(seconds)
        if self.shared:
            try:
                self._shared[scope].pause(seconds)
            except Exception as error:  # noqa: BLE001 - Redis down: the local pause still holds
                self._lost_redis(error)

    def _take(self, scope: Scope) -> float:
        if self._shared and time.monotonic() >= self._retry_redis_at:
            try:
                wait = self._shared[scope].take()
            except Exception as error:  # noqa: BLE001 - any Redis failure: this process's bucket, Redis later
                self._lost_redis(error)
            else:
                if self._redis_down:
                    self._redis_down = False
                    log.warning("coinbase rate limiter: Redis answers again; the shared buckets are back")
                return wait
        return self._local[scope].take()

    def _lost_redis(self, error: Exception) -> None:
        self._retry_redis_at = time.monotonic() + REDIS_RETRY_SECONDS
        if not self._redis_down:
            self._redis_down = True
            log.warning(
                "coinbase rate limiter: Redis did not answer (%s); this process limits itself until it does",
                type(error).__name__,
            )


def key_fingerprint(key_name: str | None) -> str:
    """A stable, non-secret name for an API key (its name's SHA-256, shortened): the shared private bucket's key."""
    if not key_name:
        return "anonymous"
    return hashlib.sha256(key_name.encode()).hexdigest()[:16]


def limits_for(max_rps: float | None) -> dict[Scope, float]:
    """Coinbase's documented limits, each lowered to max_rps when that is set and lower."""
    if max_rps is None:
        return dict(DOCUMENTED_RPS)
    return {scope: min(limit, max_rps) for scope, limit in DOCUMENTED_RPS.items()}


_limiters: dict[tuple[Any, ...], RateLimiter] = {}
_limiters_lock = threading.Lock()
_public_buckets: dict[float, _LocalBucket] = {}


def shared_limiter(max_rps: float | None, redis_url: str | None, key_name: str | None) -> RateLimiter:
    """The process's limiter for these settings and key. Every limiter of the process shares one public bucket (the
    market data's keyless client and the broker's keyed one count against one per-IP limit); the private bucket is
    the key's. (Coinbase counts private requests per user: bots with several keys of one user each get the limit.)"""
    fingerprint = key_fingerprint(key_name)
    identity = (max_rps, redis_url, fingerprint)
    limits = limits_for(max_rps)
    with _limiters_lock:
        if identity not in _limiters:
            public = _public_buckets.setdefault(limits["public"], _LocalBucket(limits["public"]))
            _limiters[identity] = RateLimiter(
                limits, redis_url=redis_url, key_fingerprint=fingerprint, public_bucket=public
            )
        return _limiters[identity]


def totals() -> dict[Scope, tuple[int, float]]:
    """Per scope, (requests that waited, seconds waited) over every limiter of this process: the exporter's counters,
    which label them with the account of the bot exporting them (one bot, so one account, per process)."""
    with _limiters_lock:
        limiters = list(_limiters.values())
    return {
        scope: (sum(x.waits[scope] for x in limiters), sum(x.wait_seconds[scope] for x in limiters)) for scope in SCOPES
    }
