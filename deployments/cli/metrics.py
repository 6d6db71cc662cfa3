"""perps-bot metrics --metrics-file PATH: the standalone Prometheus exporter for a bot that writes its metrics file."""

from __future__ import annotations

import argparse

from trader.errors import ConfigError
from trader.settings import Settings


def serve_metrics_file(settings: Settings, args: argparse.Namespace) -> int:
    """perps-bot metrics --metrics-file PATH: the standalone exporter for a bot that writes its metrics file."""
    from trader.metrics.__main__ import main as exporter_main

    if args.metrics_file is None:
        raise ConfigError("metrics: --metrics-file PATH is required (the file the bot writes with --metrics-file)")
    return exporter_main(
        [
            "--metrics-file",
            str(args.metrics_file),
            "--host",
            settings.metrics_host,
            "--port",
            str(settings.metrics_port),
            "--account",
            settings.account,
        ]
    )
