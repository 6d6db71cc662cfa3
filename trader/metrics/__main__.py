"""`python -m trader.metrics --metrics-file PATH`: the standalone exporter, serving the file until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from trader.errors import ConfigError
from trader.metrics.exporter import DEFAULT_STALE_AFTER_SECONDS, serve_metrics_file


def main(argv: list[str] | None = None) -> int:
    """Serve a --metrics-file's latest contents on /metrics and /health until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m trader.metrics",
        description="Serve the bot's --metrics-file (and its .health.json) over HTTP for Prometheus.",
    )
    parser.add_argument("--metrics-file", type=Path, required=True, help="the file the bot writes (METRICS_FILE)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9102, help="port (default 9102; 0 picks a free port)")
    parser.add_argument(
        "--account",
        default=None,
        help="the bot's account (ACCOUNT) for the file-age gauges (default: the one the bot wrote in its health JSON)",
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=DEFAULT_STALE_AFTER_SECONDS,
        help=f"seconds without an update before /health says stale (default {DEFAULT_STALE_AFTER_SECONDS:.0f})",
    )
    args = parser.parse_args(argv)
    if args.stale_after <= 0:
        parser.error("--stale-after must be above 0")
    if args.account is not None and not args.account.strip():
        parser.error("--account must name the bot's account (ACCOUNT)")
    try:
        server = serve_metrics_file(
            args.metrics_file, args.host, args.port, account=args.account, stale_after_seconds=args.stale_after
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # both end the loop between waits, never inside a request
        signal.signal(signum, lambda *_: stop.set())
    print(f"serving {args.metrics_file} on {server.url}/metrics and {server.url}/health; Ctrl-C stops", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
