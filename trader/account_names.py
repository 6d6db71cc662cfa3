"""What an account may be called. The name keys the ledger's rows, the lease, Redis keys, cold-tier prefixes, local
folders, metrics labels, artifact keys and deployment names, so it is one safe path segment: lowercase letters,
digits, '_' and '-', starting with a letter or digit, at most 64 characters, and never `all` (the runbook flows'
"every account")."""

from __future__ import annotations

import re

DEFAULT_ACCOUNT = "default"  # the one account of a single-bot install, and the owner of rows older than accounts
ALL_ACCOUNTS = "all"  # a runbook flow's `account` parameter: every declared account
ACCOUNT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
RULE = "1 to 64 lowercase letters, digits, '_' or '-', starting with a letter or digit, and not 'all'"


def valid_account_name(name: str) -> str:
    """`name`, or ValueError saying what an account name may hold (a pydantic validator's way to refuse it)."""
    problem = account_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def account_name_problem(name: str) -> str | None:
    """What is wrong with `name` as an account name (None: nothing)."""
    if name == ALL_ACCOUNTS or re.fullmatch(ACCOUNT_NAME_PATTERN, name) is None:
        return f"{name!r} is not an account name: use {RULE}"
    return None
