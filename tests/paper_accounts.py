"""The accounts files the multi-account tests declare: paper accounts on the simulated exchange."""

from __future__ import annotations

from typing import Any

import yaml

# The three accounts most tests use: one symbol each for alpha and beta, both for gamma.
SYMBOLS = {"alpha": ["BTC-USD"], "beta": ["ETH-USD"], "gamma": ["BTC-USD", "ETH-USD"]}


def paper_accounts_yaml(names: tuple[str, ...] = ("alpha", "beta", "gamma"), **extra: dict[str, Any]) -> str:
    """An accounts file declaring `names` as simulated-broker accounts (symbols from SYMBOLS), each with the extra
    fields given under its name (profile, strategy, ...)."""
    accounts = [
        {"name": name, "broker": "simulated", "symbols": SYMBOLS[name], **extra.get(name, {})} for name in names
    ]
    return yaml.safe_dump({"accounts": accounts}, sort_keys=False)
