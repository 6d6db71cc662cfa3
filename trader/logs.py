"""Logging to var/logs/perps_bot.log (the file the runbook greps) and stderr.

One naming rule: every module logs through `logging.getLogger(__name__)`. So the domain logs under the one root
"trader" (trader.bot, trader.state.manager, trader.coinbase.http, …) and the layers above it under their own
package names (prefect_adapter.controls, flows.bot, deployments.cli.drill, tasks.…). `configure_logging` attaches
the file handler (and stderr) to each top-level package logger in LOGGER_NAMES, so a record from any module of
the project reaches perps_bot.log exactly once, as `<time> <LEVEL> <module> <message>`.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# The project's top-level packages, in layer order (DESIGN.md): every module logger sits below one of them.
LOGGER_NAMES = ("trader", "prefect_adapter", "tasks", "flows", "deployments")
# Order events as JSON lines in orders.log beside perps_bot.log (the perpetuals runbook's
# `grep "order_rejected" orders.log | jq -r .reason | sort | uniq -c`); not repeated in perps_bot.log.
ORDER_EVENTS_LOGGER = "trader.orders.path.events"  # the order path's events logger (trader/orders/path.py)
ORDER_EVENTS_FILE = "orders.log"


def configure_logging(log_file: Path, *, level: int = logging.INFO, stderr: bool = True) -> None:
    """Attach one rotating file handler (and optionally one stderr handler) to the project's loggers, once per file.

    One handler instance serves every package logger: one stream and one rotation for perps_bot.log (handlers of
    their own would each rotate the file and keep writing to the renamed one)."""
    loggers = [logging.getLogger(name) for name in LOGGER_NAMES]
    target = str(log_file.resolve())
    handlers = [h for logger in loggers for h in logger.handlers]
    file_handler = next((h for h in handlers if getattr(h, "baseFilename", None) == target), None)
    if file_handler is None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=50 * 2**20, backupCount=10)
        file_handler.setFormatter(logging.Formatter(FORMAT))
    console = next((h for h in handlers if type(h) is logging.StreamHandler), None)
    if stderr and console is None:
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    for logger in loggers:
        logger.setLevel(level)
        if file_handler not in logger.handlers:
            logger.addHandler(file_handler)
        if stderr and console is not None and console not in logger.handlers:
            logger.addHandler(console)
    events = logging.getLogger(ORDER_EVENTS_LOGGER)
    events.propagate = False
    events_target = str((log_file.parent / ORDER_EVENTS_FILE).resolve())
    if not any(getattr(h, "baseFilename", None) == events_target for h in events.handlers):
        events_handler = logging.handlers.RotatingFileHandler(events_target, maxBytes=50 * 2**20, backupCount=10)
        events_handler.setFormatter(logging.Formatter("%(message)s"))
        events.addHandler(events_handler)
    events.setLevel(level)
