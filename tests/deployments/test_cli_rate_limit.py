"""Five bots on one Coinbase key: as separate perps-bot processes against the Advanced Trade test server with its
own limit at Coinbase's 30 requests per second, sharing the real Redis's bucket they stay under it (429s rare)
although together they ask for far more. (Five buckets of their own would overrun it: each lets 30 per second go;
tests/trader/brokers/test_rate_limit.py shows that side without five more process start-ups.)"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deployments.test_cli import PERPS_BOT
from tests.deployments.test_cli_coinbase import env_for
from tests.trader.brokers.test_rate_limit import busiest_second
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey

BOTS = 5
CYCLES = 8
PUBLIC = "/api/v3/brokerage/market/"  # public market data counts per IP; every other request per user


def run_bots(server: AdvancedTradeServer, key: CdpKey, home: Path, **extra: str) -> list[str]:
    """BOTS paper-free spot bots on one key, each in its own folder, started together; their stderr if any failed."""
    prefixes = ("COINBASE_", "RISK_", "PERPS_", "BROKER", "MARKET_DATA", "REDIS_URL", "RATE_LIMIT")
    base = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    bots = []
    for n in range(BOTS):
        folder = home / f"bot-{n}"
        folder.mkdir(parents=True)
        env = {
            **base,
            **env_for(server, key, folder),
            "STATE_DIR": str(folder / "var/state"),
            "LOG_DIR": str(folder / "var/logs"),
            "ACCOUNT": f"bot-{n}",
            "METRICS_ENABLED": "0",
            "RISK_KILL_SWITCH_ENABLED": "1",  # reads only: the load is the cycle's reads, no orders between bots
            **extra,
        }
        args = [str(PERPS_BOT), "--profile", "spot", "--cycles", str(CYCLES), "--interval", "0"]
        bots.append(subprocess.Popen(args, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    failed = []
    for bot in bots:
        out, err = bot.communicate(timeout=240)
        if bot.returncode != 0:
            failed.append(err.decode()[-2000:])
    return failed


@pytest.mark.slow
def test_five_bots_on_one_key_share_the_limit_through_redis_and_429s_stay_rare(
    tmp_path: Path, cdp_key: CdpKey, start_exchange: Callable[..., AdvancedTradeServer]
) -> None:
    server = start_exchange(rate_limit_rps=30, public_rate_limit_rps=10)
    assert run_bots(server, cdp_key, tmp_path, REDIS_URL="redis://127.0.0.1:6379/12") == []
    served = [r.at for r in server.requests if not r.path.startswith(PUBLIC) and r.fault is None]
    # Rare, not never: five processes on two cores send a granted request a few ms late now and then. With a bucket
    # each, 92 of 232 requests were refused when this test was written; this bound fails far below that.
    assert server.rate_limited_count <= max(2, len(server.requests) // 50), (
        server.rate_limited_count,
        len(server.requests),
    )
    # Five bots cycling without pause ask for far more: near the limit, the limiter (not their appetite) held them.
    assert busiest_second(served) >= 20, busiest_second(served)
