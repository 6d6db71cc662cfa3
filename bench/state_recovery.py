"""State recovery timings on the real services, batch against sequential in the same run.

    .venv/bin/python bench/state_recovery.py [--sizes 1000,10000,100000] [--sequential-cap 10000]

- Redis recovery: N keys stored through the StateManager (Redis hot, PostgreSQL warm), Redis loses them, and
  `recover_hot()` batch-restores them from PostgreSQL (the time the manager reports, without the coherence
  check that follows, which is verified separately). Baseline: the same restore one key at a time (one SELECT
  and one SET per key). Above --sequential-cap keys the baseline runs on the first cap keys and is scaled.
- Checkpoints: a snapshot holding N keys' values, created (gzip) and restored (sha256 + gunzip + JSON).
- Engine crash: 200 orders left working by a dead engine on the paper exchange, ledger on PostgreSQL:
  `recover_engine` (one batch cancel, one ledger transaction) against cancelling and recording one by one.

Uses Redis at --redis-url (its own key prefix in DB 14, removed afterwards) and a scratch PostgreSQL database
(created and dropped). The last line is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trader.brokers.simulated import SimulatedExchange  # noqa: E402
from trader.domain import OrderRequest, OrderStatus, OrderType, Side  # noqa: E402
from trader.drills.seed import synthetic_value as value_for  # noqa: E402
from trader.ledger import Ledger  # noqa: E402
from trader.market import ReplayMarketData  # noqa: E402
from trader.reconcile.engine_recovery import recover_engine  # noqa: E402
from trader.state.checkpoints import CheckpointStore  # noqa: E402
from trader.state.cold import LocalFolderStore  # noqa: E402
from trader.state.hot import RedisCache  # noqa: E402
from trader.state.journal import WriteJournal  # noqa: E402
from trader.state.manager import StateManager  # noqa: E402
from trader.state.warm import SqlWarmStore  # noqa: E402

ENGINE_ORDERS = 200


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return (time.perf_counter() - started) * 1000, result


def redis_recovery(n: int, redis_url: str, pg_url: str, workdir: Path, cap: int) -> dict[str, float | int | bool]:
    warm = SqlWarmStore(pg_url, 1000)
    warm.ensure_schema()
    warm.clear()
    hot = RedisCache(redis_url, prefix=f"bench:{uuid.uuid4().hex[:8]}:")
    manager = StateManager(hot, warm, journal=WriteJournal(workdir / f"journal-{n}.jsonl"), batch_size=1000)
    try:
        keys = [f"position:{i:06d}" for i in range(n)]
        seed_ms, _ = timed(lambda: manager.batch_set({k: value_for(i) for i, k in enumerate(keys)}))
        # Redis loses everything (a restart without persistence); best of three restores.
        runs = []
        for _ in range(3):
            hot.clear()
            manager.recover_hot()
            runs.append(manager.status().last_hot_recovery_ms or 0.0)
        batch_ms = min(runs)
        coherent = manager.verify_coherence().match
        # Baseline: the same restore, one key at a time.
        hot.clear()
        sample = keys[: min(cap, n)]

        def sequential() -> None:
            for key in sample:
                hot.put_many(list(warm.get_many([key]).values()))

        seq_sample_ms, _ = timed(sequential)
        seq_ms = seq_sample_ms * n / len(sample)
        restored_sequentially = len(hot.get_many(sample)) == len(sample)
        return {
            "keys": n,
            "seed_ms": seed_ms,
            "batch_ms": batch_ms,
            "batch_median_ms": statistics.median(runs),
            "sequential_ms": seq_ms,
            "sequential_scaled": len(sample) < n,
            "speedup": seq_ms / batch_ms if batch_ms else float("inf"),
            "coherent": coherent and restored_sequentially,
        }
    finally:
        hot.clear()
        hot.close()
        warm.dispose()


def checkpoints(n: int, pg_url: str, workdir: Path) -> dict[str, float | int]:
    snapshot = {"state": {f"position:{i:06d}": value_for(i) for i in range(n)}}
    raw = len(json.dumps(snapshot, separators=(",", ":")).encode())
    store = CheckpointStore(pg_url, LocalFolderStore(workdir / f"cold-{n}"), retention=3, compress=True)
    try:
        create_ms, info = timed(lambda: store.create(snapshot, reason="bench"))
        restore_runs = []
        for _ in range(3):
            restore_ms, restored = timed(lambda: store.restore(info.id))
            restore_runs.append(restore_ms)
        assert restored == snapshot, "a restored checkpoint must equal what was saved"
        return {
            "keys": n,
            "create_ms": create_ms,
            "restore_ms": min(restore_runs),
            "raw_bytes": raw,
            "stored_bytes": info.size_bytes,
        }
    finally:
        store.dispose()


def crashed_engine(pg_url: str) -> tuple[SimulatedExchange, Ledger]:
    exchange = SimulatedExchange(ReplayMarketData())
    ledger = Ledger(pg_url)
    session = ledger.start_session("dev", "simulated", "paper")
    bid, _ = exchange.best_bid_ask("BTC-USD")
    price = (bid * Decimal("0.9")).quantize(Decimal("0.01"))
    for i in range(ENGINE_ORDERS):
        request = OrderRequest("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.001"), f"eng-{i}", limit_price=price)
        ledger.record_pending(request, session, exchange.now())
        ledger.apply_order(exchange.place_order(request))
    return exchange, ledger


def engine_recovery(admin_url: str) -> dict[str, float]:
    def fresh() -> tuple[SimulatedExchange, Ledger, str]:
        url = scratch_database(admin_url)
        exchange, ledger = crashed_engine(url)
        return exchange, ledger, url

    batch_runs, sequential_runs = [], []
    for _ in range(3):
        exchange, ledger, url = fresh()
        report = recover_engine(exchange, ledger, exchange.now())
        assert report.orders_cancelled == ENGINE_ORDERS and not exchange.list_open_orders()
        batch_runs.append(report.total_ms)
        ledger.dispose()
        drop_database(admin_url, url)

        exchange, ledger, url = fresh()

        def one_by_one(exchange: SimulatedExchange = exchange, ledger: Ledger = ledger) -> None:
            for order in exchange.list_open_orders():
                if exchange.cancel_orders([order.order_id])[order.order_id]:
                    ledger.apply_order(exchange.get_order(order.order_id))

        ms, _ = timed(one_by_one)
        assert all(o.status == OrderStatus.CANCELLED for o in ledger.list_orders())
        sequential_runs.append(ms)
        ledger.dispose()
        drop_database(admin_url, url)
    return {"orders": ENGINE_ORDERS, "batch_ms": min(batch_runs), "sequential_ms": min(sequential_runs)}


def scratch_database(admin_url: str) -> str:
    name = f"bench_state_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--sequential-cap", type=int, default=10_000, help="keys restored one by one, at most")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--pg-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    redis_rows, checkpoint_rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        workdir = Path(tmp)
        pg_url = scratch_database(args.pg_url)
        try:
            print("Redis recovery from the PostgreSQL warm tier (best of 3 batch restores)")
            print(f"{'keys':>8} {'batch ms':>10} {'sequential ms':>14} {'speedup':>8}  coherent")
            for n in sizes:
                row = redis_recovery(n, args.redis_url, pg_url, workdir, args.sequential_cap)
                redis_rows.append(row)
                scaled = " (scaled)" if row["sequential_scaled"] else ""
                print(
                    f"{n:>8,} {row['batch_ms']:>10.2f} {row['sequential_ms']:>14.1f} {row['speedup']:>7.0f}x  "
                    f"{'Match: True' if row['coherent'] else 'Match: False'}{scaled}"
                )
            print("\nCheckpoints (gzip, sha256-verified restore, best of 3 restores)")
            print(f"{'keys':>8} {'create ms':>10} {'restore ms':>11} {'raw bytes':>12} {'stored bytes':>13}")
            for n in sizes:
                row = checkpoints(n, pg_url, workdir)
                checkpoint_rows.append(row)
                print(
                    f"{n:>8,} {row['create_ms']:>10.1f} {row['restore_ms']:>11.1f} {row['raw_bytes']:>12,} "
                    f"{row['stored_bytes']:>13,}"
                )
        finally:
            drop_database(args.pg_url, pg_url)
        engine = engine_recovery(args.pg_url)
        print(f"\nEngine crash recovery, {ENGINE_ORDERS} working orders (best of 3)")
        print(f"  batch: {engine['batch_ms']:.1f} ms   one by one: {engine['sequential_ms']:.1f} ms")

    by_size = {int(r["keys"]): r for r in redis_rows}
    cp_by_size = {int(r["keys"]): r for r in checkpoint_rows}
    summary = {
        "redis_recovery_ms_1000": round(float(by_size[1000]["batch_ms"]), 2) if 1000 in by_size else None,
        "redis_speedup_1000": round(float(by_size[1000]["speedup"]), 1) if 1000 in by_size else None,
        "redis_recovery_ms_100000": round(float(by_size[100000]["batch_ms"]), 1) if 100000 in by_size else None,
        "engine_recovery_ms_200": round(engine["batch_ms"], 2),
        "checkpoint_restore_ms_100000": round(float(cp_by_size[100000]["restore_ms"]), 1)
        if 100000 in cp_by_size
        else None,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
