"""One logger naming rule (getLogger(__name__)) and one log file: every module of the project reaches perps_bot.log."""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from trader.logs import LOGGER_NAMES, ORDER_EVENTS_LOGGER, configure_logging

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<name>\S+) (?P<message>.*)$")
# Libraries' own loggers, quieted on purpose: the SDK's (trader/coinbase/http.py), Prefect's events worker's "Still
# processing items" at a CLI's exit (prefect_adapter/secrets.py).
THIRD_PARTY = {"coinbase.RESTClient", "EventsWorker"}


def module_names() -> list[str]:
    names = []
    for package in LOGGER_NAMES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """configure_logging on a file in tmp_path, on loggers without the handlers earlier tests (or the CLI in this
    process) attached; theirs are put back and the test's taken off afterwards."""
    loggers = [logging.getLogger(name) for name in LOGGER_NAMES]
    before = [(logger.level, list(logger.handlers)) for logger in loggers]
    for logger in loggers:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    path = tmp_path / "logs" / "perps_bot.log"
    yield path
    for logger, (level, handlers) in zip(loggers, before, strict=True):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            if handler not in handlers:
                handler.close()
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)


def test_every_module_logger_reaches_the_log_file_once_in_the_runbook_format(log_file: Path) -> None:
    configure_logging(log_file, stderr=False)
    configure_logging(log_file, stderr=False)  # a second call (the CLI, then the flow) adds no second handler
    names = module_names()

    for name in names:
        logging.getLogger(name).info("Recovered %d keys to Redis", 3)

    lines = [LINE.match(line) for line in log_file.read_text().splitlines()]
    assert all(lines), log_file.read_text()
    assert [(m["level"], m["name"], m["message"]) for m in lines if m] == [
        ("INFO", name, "Recovered 3 keys to Redis") for name in names
    ]


def test_all_package_loggers_share_one_file_handler(log_file: Path) -> None:
    configure_logging(log_file, stderr=False)

    handlers = {id(h) for name in LOGGER_NAMES for h in logging.getLogger(name).handlers if hasattr(h, "baseFilename")}

    assert len(handlers) == 1  # one stream, one rotation: handlers of their own would each rotate the file


def test_every_module_names_its_logger_after_itself() -> None:
    offenders = []
    for package in LOGGER_NAMES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "trader" / "logs.py":  # configures the package loggers; logs nothing itself
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "logging.getLogger" and node.args):
                    continue
                arg = node.args[0]
                named_after_module = "__name__" in {n.id for n in ast.walk(arg) if isinstance(n, ast.Name)}
                literal = arg.value if isinstance(arg, ast.Constant) else None
                if not named_after_module and literal not in THIRD_PARTY:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: logging.getLogger({ast.unparse(arg)})")
    assert offenders == [], "use logging.getLogger(__name__):\n" + "\n".join(offenders)


def test_the_order_events_logger_is_the_order_paths_own() -> None:
    from trader.orders import path

    assert path.events.name == ORDER_EVENTS_LOGGER
