"""The command line: `python -m trader.testing.advanced_trade --state-dir DIR [--port N]` serves until SIGTERM/SIGINT.

It writes DIR/cdp_key.json and DIR/cert.pem, then DIR/server.json {"base_url", "ca_file", "key_file"} once
listening, and removes server.json when it stops.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import FrameType

from trader.fsio import atomic_write
from trader.testing.advanced_trade.keys import generate_cdp_key
from trader.testing.advanced_trade.server import AdvancedTradeServer
from trader.testing.advanced_trade.wire import ZERO


def _parse_balance(text: str) -> tuple[str, Decimal]:
    currency, _, amount = text.partition("=")
    try:
        return currency.strip().upper(), Decimal(amount)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"balance {text!r} is not CURRENCY=AMOUNT") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trader.testing.advanced_trade",
        description="Serve a local Coinbase Advanced Trade v3 REST API over HTTPS until SIGTERM or SIGINT.",
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="where cdp_key.json, cert.pem, server.json go")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see server.json)")
    parser.add_argument("--key-name", default="organizations/local-test/apiKeys/advanced-trade-server")
    parser.add_argument(
        "--balance", type=_parse_balance, action="append", default=[], metavar="CUR=AMOUNT", help="repeatable"
    )
    parser.add_argument("--derivatives", action="store_true", help="serve the INTX perpetuals endpoints")
    args = parser.parse_args(argv)

    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    key = generate_cdp_key(args.key_name)
    key_file = key.write_key_file(state_dir / "cdp_key.json")
    balances: dict[str, Decimal] = {"USD": Decimal("100000"), "BTC": ZERO, "ETH": ZERO}
    balances.update(dict(args.balance))
    server = AdvancedTradeServer(
        key_name=key.name,
        public_key_pem=key.public_key_pem,
        cert_dir=state_dir,
        host=args.host,
        port=args.port,
        balances=balances,
        derivatives=args.derivatives,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    info_path = state_dir / "server.json"
    try:
        info = {"base_url": server.base_url, "ca_file": str(server.ca_file), "key_file": str(key_file)}
        atomic_write(info_path, json.dumps(info, indent=2) + "\n", mode=0o644)
        print(f"Advanced Trade test server on https://{server.base_url} (state in {state_dir})", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        info_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
