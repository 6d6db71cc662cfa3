"""The fault proxy in front of a private redis-server: forwards, refuses, blackholes, and forwards again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.state.conftest import RedisServer
from trader.drills.proxy import FaultProxy
from trader.state.base import TierUnavailable
from trader.state.hot import RedisCache


@pytest.fixture
def cache_through_proxy(live_redis: RedisServer) -> Iterator[tuple[FaultProxy, RedisCache]]:
    proxy = FaultProxy("127.0.0.1", live_redis.port, name="test").start()
    cache = RedisCache(f"redis://127.0.0.1:{proxy.port}/0", prefix="proxy-test:")
    yield proxy, cache
    cache.close()
    proxy.close()


def test_cut_resets_connections_and_refuses_new_ones(cache_through_proxy: tuple[FaultProxy, RedisCache]) -> None:
    proxy, cache = cache_through_proxy
    assert cache.ping()

    proxy.cut()
    started = time.perf_counter()
    with pytest.raises(TierUnavailable, match="Connection refused"):
        cache.get_many(["k"])

    assert (time.perf_counter() - started) < 0.2
    assert proxy.connections_reset >= 1
    proxy.restore()
    assert cache.ping()


def test_blackhole_leaves_clients_waiting_for_their_timeout(cache_through_proxy: tuple[FaultProxy, RedisCache]) -> None:
    proxy, cache = cache_through_proxy
    assert cache.ping()

    proxy.cut("blackhole")
    started = time.perf_counter()
    with pytest.raises(TierUnavailable, match="Timeout"):
        cache.get_many(["k"])

    assert (time.perf_counter() - started) >= 0.45  # RedisCache's 0.5 s socket timeout
    proxy.restore()
    assert cache.ping()


def test_a_closed_proxy_refuses_to_be_cut(live_redis: RedisServer) -> None:
    proxy = FaultProxy("127.0.0.1", live_redis.port).start()
    proxy.close()

    with pytest.raises(Exception, match="closed"):
        proxy.cut()
