"""The Coinbase rate limiter: buckets that never let a one-second window carry more than the limit, shared through
the real Redis on 127.0.0.1:6379 by limiters that know nothing of each other, the exchange's x-ratelimit headers
honoured through the SDK, and Redis going away without stopping anything."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from trader.brokers.coinbase import CoinbaseBroker
from trader.coinbase import ratelimit
from trader.coinbase.ratelimit import RateLimiter, Scope, shape, shared_limiter
from trader.metrics.exporter import BotMetrics
from trader.settings import load_settings
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey

REDIS = "redis://127.0.0.1:6379/12"


def busiest_second(times: list[float]) -> int:
    """The most grants any one-second window [t, t + 1) holds, t a grant's own time. Times are read after acquire()
    returns, so a thread descheduled between a grant and its reading can shift one grant: callers allow one more."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def grants(limiters: list[RateLimiter], each: int, scope: Scope = "private") -> list[float]:
    """Every limiter asks for `each` grants from its own thread at once; the moments they were granted."""
    times: list[float] = []
    lock = threading.Lock()
    go = threading.Barrier(len(limiters))

    def ask(limiter: RateLimiter) -> None:
        go.wait()
        for _ in range(each):
            limiter.acquire(scope)
            with lock:
                times.append(time.monotonic())

    threads = [threading.Thread(target=ask, args=(limiter,)) for limiter in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(times) == len(limiters) * each
    return times


def test_a_bucket_never_lets_a_second_carry_more_than_its_limit_and_counts_the_waits() -> None:
    limiter = RateLimiter({"private": 40.0, "public": 10.0})

    times = grants([limiter], 70)

    rate, burst = shape(40.0)
    assert busiest_second(times) <= 40 + 1
    assert max(times) - min(times) >= (70 - burst) / rate * 0.95  # it waited: 70 grants cannot go at once
    assert limiter.waits["private"] >= 70 - burst - 1 and limiter.wait_seconds["private"] > 1.0
    assert limiter.waits["public"] == 0


def test_limiters_sharing_redis_share_one_limit_and_separate_ones_do_not() -> None:
    key = f"test-{uuid.uuid4().hex}"
    shared = [RateLimiter({"private": 30.0, "public": 10.0}, redis_url=REDIS, key_fingerprint=key) for _ in range(4)]
    alone = [RateLimiter({"private": 30.0, "public": 10.0}) for _ in range(4)]

    assert all(limiter.shared for limiter in shared)
    together = grants(shared, 15)
    apart = grants(alone, 15)

    assert busiest_second(together) <= 30 + 1
    assert busiest_second(apart) > 30 + 10  # four buckets of 30/s each: what a shared key must never do


def test_the_public_bucket_is_shared_per_host_apart_from_the_private_one() -> None:
    host = f"host-{uuid.uuid4().hex}"
    limiters = [RateLimiter({"private": 30.0, "public": 10.0}, redis_url=REDIS, host=host) for _ in range(3)]

    public = grants(limiters, 6, "public")

    assert busiest_second(public) <= 10 + 1
    assert all(limiter.waits["private"] == 0 for limiter in limiters)


def test_redis_going_away_falls_back_to_the_process_bucket_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter({"private": 50.0, "public": 10.0}, redis_url="redis://127.0.0.1:1/0")

    with caplog.at_level(logging.WARNING, logger="trader.coinbase.ratelimit"):
        times = grants([limiter], 20)

    assert not limiter.shared
    assert busiest_second(times) <= 50 + 1
    said = [r.getMessage() for r in caplog.records if "Redis did not answer" in r.getMessage()]
    assert len(said) == 1, said


def test_a_pause_holds_every_limiter_sharing_the_bucket() -> None:
    key = f"test-{uuid.uuid4().hex}"
    first, second = (RateLimiter({"private": 30.0, "public": 10.0}, redis_url=REDIS, key_fingerprint=key) for _ in "ab")

    first.pause("private", 0.6)
    started = time.monotonic()
    waited = second.acquire("private")

    assert 0.45 <= time.monotonic() - started < 3 and waited > 0.4
    assert second.waits["private"] == 1


def broker_on(server: AdvancedTradeServer, key: CdpKey, home: Path, **settings: object) -> CoinbaseBroker:
    key_file = home / "cdp_api_key.json"
    key.write_key_file(key_file)
    return CoinbaseBroker.from_settings(
        load_settings(
            broker="coinbase",
            coinbase_api_base=server.base_url,
            coinbase_ca_file=server.ca_file,
            coinbase_key_file=key_file,
            state_dir=home,
            **settings,
        )
    )


def test_the_exchanges_ratelimit_headers_hold_requests_before_it_answers_429(
    tmp_path: Path, cdp_key: CdpKey, start_exchange: Callable[..., AdvancedTradeServer]
) -> None:
    server = start_exchange(rate_limit_rps=4)  # far below the client's own 30/s: only the headers can hold it
    broker = broker_on(server, cdp_key, tmp_path)

    started = time.monotonic()
    for _ in range(10):
        broker.balances()
    took = time.monotonic() - started

    assert server.rate_limited_count == 0
    assert took >= 1.0  # 10 requests at 4 per second: at least two windows waited out
    assert len([r for r in server.requests if r.path == "/api/v3/brokerage/accounts"]) == 10


def test_rate_limit_max_rps_lowers_the_limit_and_the_exporter_counts_the_waits(
    tmp_path: Path,
    cdp_key: CdpKey,
    start_exchange: Callable[..., AdvancedTradeServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)  # this process's own bucket, the one looked up below
    server = start_exchange()
    broker = broker_on(server, cdp_key, tmp_path, rate_limit_max_rps=5)
    limiter = shared_limiter(5, None, cdp_key.name)
    before = ratelimit.totals()["private"][0]

    started = time.monotonic()
    for _ in range(12):
        broker.balances()
    took = time.monotonic() - started

    rate, burst = shape(5)
    assert limiter.limits == {"private": 5, "public": 5}
    assert took >= (12 - burst) / rate * 0.95
    assert ratelimit.totals()["private"][0] - before >= 12 - burst - 1
    scrape = generate_latest(BotMetrics().registry).decode()
    series = 'perps_bot_rate_limit_waits_total{account="default",scope="private"}'
    line = next(x for x in scrape.splitlines() if x.startswith(series))
    assert float(line.split()[-1]) >= 12 - burst - 1


def test_a_redis_clock_that_steps_back_an_hour_does_not_hold_anyone() -> None:
    import redis

    key = f"test-{uuid.uuid4().hex}"
    limiter = RateLimiter({"private": 30.0, "public": 10.0}, redis_url=REDIS, key_fingerprint=key)
    client = redis.Redis.from_url(REDIS)
    seconds, micros = client.time()
    now = seconds * 1_000_000 + micros
    bucket = f"{ratelimit.REDIS_PREFIX}:private:{key}"
    # As left by bots before Redis's clock went back an hour: a refill time and a pause an hour "ahead".
    ahead = str(now + 3_600_000_000)
    client.hset(bucket, mapping={"tokens": "0", "at": ahead, "paused_until": ahead})

    started = time.monotonic()
    limiter.acquire("private")
    limiter.acquire("private")

    assert time.monotonic() - started < 1.0
    client.delete(bucket)
