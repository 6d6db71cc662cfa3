"""Backup timings on the machine's PostgreSQL: a ledger with 1,000,000 fills, dumped, uploaded to a local folder
cold store, verified (read back + sha256) and restore-tested (pg_restore into a scratch database + checksums).

    .venv/bin/python bench/backup.py [--fills 1000000] [--postgres-url postgresql+psycopg2://postgres@127.0.0.1/test]

The ledger lives in a scratch database created for the run (fills bulk-loaded with COPY) and dropped at the end,
as is the restore test's own scratch database. Prints the workload (rows, database and dump size) next to each
step's time and throughput; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trader.backup import BackupManager  # noqa: E402
from trader.ledger import Ledger  # noqa: E402
from trader.state.cold import LocalFolderStore  # noqa: E402

DEFAULT_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
COPY_BATCH = 100_000
FILL_COLUMNS = (
    "trade_id, exchange_order_id, client_order_id, symbol, side, quantity, price, fee, liquidity, filled_at, session_id"
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fill_rows(start: int, stop: int) -> io.StringIO:
    """COPY text rows for fills start..stop: realistic widths (ids, prices with cents, 8-decimal quantities)."""
    buffer = io.StringIO()
    for i in range(start, stop):
        symbol = ("BTC-USD", "ETH-USD", "SOL-USD")[i % 3]
        side = "BUY" if i % 2 else "SELL"
        filled_at = (T0 + timedelta(seconds=i)).isoformat()
        buffer.write(
            f"trade-{i:09d}\tex-{i // 2:09d}\tbot-{i // 2:09d}\t{symbol}\t{side}\t0.{i % 99999999:08d}\t"
            f"{60000 + i % 5000}.{i % 100:02d}\t0.{i % 997:04d}\t{'MAKER' if i % 3 else 'TAKER'}\t{filled_at}\t"
            f"bench-session\n"
        )
    buffer.seek(0)
    return buffer


def load_fills(url: str, fills: int) -> float:
    """Bulk-load fills with COPY in batches; returns seconds."""
    engine = create_engine(url)
    started = time.perf_counter()
    try:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            for start in range(0, fills, COPY_BATCH):
                rows = fill_rows(start, min(fills, start + COPY_BATCH))
                cursor.copy_expert(f"COPY fills ({FILL_COLUMNS}) FROM STDIN", rows)  # type: ignore[attr-defined]
            raw.commit()
            cursor.execute("ANALYZE fills")
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()
    return time.perf_counter() - started


def sizes(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            database = connection.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
            fills = connection.exec_driver_sql("SELECT pg_total_relation_size('fills')").scalar_one()
    finally:
        engine.dispose()
    return int(database), int(fills)


def mb(size: int) -> float:
    return size / 2**20


def run(admin_url: str, fills: int) -> dict[str, Any]:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"bench_backup_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        ledger = Ledger(url)
        ledger.dispose()
        load_seconds = load_fills(url, fills)
        database_bytes, fills_bytes = sizes(url)
        print(
            f"workload: {fills:,} fills loaded with COPY in {load_seconds:.1f} s ({fills / load_seconds:,.0f} rows/s); "
            f"database {mb(database_bytes):.1f} MiB (fills with indexes {mb(fills_bytes):.1f} MiB)"
        )
        with tempfile.TemporaryDirectory(prefix="bench-backup-") as folder:
            cold = LocalFolderStore(Path(folder) / "cold")
            manager = BackupManager(url, cold, workdir=Path(folder) / "work")

            started = time.perf_counter()
            dump = manager.dump("daily")
            dump_seconds = time.perf_counter() - started
            rows = sum(dump.stats.row_counts.values())
            print(
                f"dump (pg_dump -Fc + counts/md5 of {len(dump.stats.row_counts)} tables, one snapshot): "
                f"{dump_seconds:.2f} s, {rows / dump_seconds:,.0f} rows/s, "
                f"{mb(database_bytes) / dump_seconds:.1f} MB/s of database -> {mb(dump.size_bytes):.1f} MiB dump"
            )
            started = time.perf_counter()
            manager.upload(dump)
            upload_seconds = time.perf_counter() - started
            print(
                f"upload to a local folder cold store (8 MiB chunks, fsync, rename): {upload_seconds:.2f} s, "
                f"{mb(dump.size_bytes) / upload_seconds:.1f} MB/s"
            )
            started = time.perf_counter()
            info = manager.verify(dump)
            verify_seconds = time.perf_counter() - started
            print(
                f"verify (read back + sha256, manifest): {verify_seconds:.2f} s, "
                f"{mb(dump.size_bytes) / verify_seconds:.1f} MB/s; verified={info.verified}"
            )
            started = time.perf_counter()
            report = manager.restore_test()
            restore_total = time.perf_counter() - started
            print(
                f"restore test: {restore_total:.2f} s total = download {report.download_seconds:.2f} s + pg_restore "
                f"{report.restore_seconds:.2f} s + counts/md5 {report.compare_seconds:.2f} s; "
                f"{rows / restore_total:,.0f} rows/s; ok={report.ok}"
            )
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    backup_seconds = dump_seconds + upload_seconds
    return {
        "fills": fills,
        "rows": rows,
        "database_mib": round(mb(database_bytes), 1),
        "dump_mib": round(mb(dump.size_bytes), 1),
        "load_s": round(load_seconds, 2),
        "dump_s": round(dump_seconds, 2),
        "upload_s": round(upload_seconds, 2),
        "backup_s": round(backup_seconds, 2),
        "backup_rows_per_s": round(rows / backup_seconds),
        "verify_s": round(verify_seconds, 2),
        "verify_mb_per_s": round(mb(dump.size_bytes) / verify_seconds, 1),
        "restore_test_s": round(restore_total, 2),
        "restore_rows_per_s": round(rows / restore_total),
        "restore_ok": report.ok,
        "verified": info.verified,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fills", type=int, default=1_000_000)
    parser.add_argument("--postgres-url", default=DEFAULT_URL, help="a database on the server (CREATEDB needed)")
    args = parser.parse_args()
    result = run(args.postgres_url, args.fills)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
