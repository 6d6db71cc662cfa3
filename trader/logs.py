"""Logging to var/logs/perps_bot.log (the file the runbook greps) and stderr."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


# Every logger the runbook greps for lives under one of these names (perps_bot.*, trader.state, trader.coinbase).
LOGGER_NAMES = ("perps_bot", "trader")


def configure_logging(log_file: Path, *, level: int = logging.INFO, stderr: bool = True) -> logging.Logger:
    """Attach a rotating file handler (and optionally stderr) to the bot's loggers, once per file."""
    for name in LOGGER_NAMES[1:]:
        _attach(logging.getLogger(name), log_file, level, stderr)
    return _attach(logging.getLogger(LOGGER_NAMES[0]), log_file, level, stderr)


def _attach(logger: logging.Logger, log_file: Path, level: int, stderr: bool) -> logging.Logger:
    logger.setLevel(level)
    target = str(log_file.resolve())
    if not any(getattr(h, "baseFilename", None) == target for h in logger.handlers):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=50 * 2**20, backupCount=10)
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    if stderr and not any(type(h) is logging.StreamHandler for h in logger.handlers):
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger.addHandler(console)
    return logger
