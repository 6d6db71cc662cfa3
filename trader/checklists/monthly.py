"""The runbook's monthly maintenance as checks: security review, dependency audit, cost vs returns.

Thresholds stated here: an API key older than 90 days warns, older than 180 fails; a secret file readable or
writable by group or others fails; a trading key that can transfer warns; installed packages that differ from
requirements.lock warn; fees above half of the gross realized PnL, or a negative net, warn.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from trader.brokers.base import Broker
from trader.checklists.daily import RANK, CheckResult, Status
from trader.checklists.report import trades_between
from trader.ledger import Ledger
from trader.settings import Settings

KEY_AGE_WARN = timedelta(days=90)
KEY_AGE_FAIL = timedelta(days=180)
FEES_OF_GROSS_WARN = 0.5
REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = REPO_ROOT / "requirements.lock"
PROJECT = "gpt-trader-ops"
NOT_FROZEN = frozenset({"pip", "setuptools", "wheel", "distribute", PROJECT})  # pip freeze leaves these out


# --- security review ----------------------------------------------------------------------------------------------


def security_review(settings: Settings, broker: Broker | None, now: datetime, workdir: Path) -> CheckResult:
    """Key age (COINBASE_KEY_FILE mtime), key permissions (Coinbase account snapshot), secret file modes."""
    status: Status = "pass"
    notes: list[str] = []

    def worse(level: Status, note: str) -> None:
        nonlocal status
        status = level if RANK[level] > RANK[status] else status
        notes.append(note)

    key_file = settings.coinbase_key_file
    if key_file is not None:
        modified = datetime.fromtimestamp(key_file.stat().st_mtime, tz=UTC)
        age = now - modified
        level: Status = "fail" if age > KEY_AGE_FAIL else "warn" if age > KEY_AGE_WARN else "pass"
        worse(level, f"key file {key_file} is {age.days} days old (since {modified:%Y-%m-%d})")
    elif settings.has_coinbase_credentials:
        worse("warn", "key from COINBASE_API_KEY: age unknown (COINBASE_KEY_FILE carries it)")
    else:
        notes.append("no Coinbase key (paper trading)")
    if broker is not None and broker.name == "coinbase":
        permissions = broker.account_snapshot().permissions
        note = f"key can_view={permissions.can_view} can_trade={permissions.can_trade} "
        note += f"can_transfer={permissions.can_transfer}"
        worse("warn" if permissions.can_trade and permissions.can_transfer else "pass", note)
    for path in [p for p in (key_file, workdir / ".env") if p is not None and p.exists()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            worse("fail", f"{path} mode {mode:04o} is open to group/others: chmod 600 {path}")
        else:
            notes.append(f"{path} mode {mode:04o}")
    return CheckResult("security review", status, "; ".join(notes))


# --- dependency audit ---------------------------------------------------------------------------------------------


def canonical(name: str) -> str:
    """PEP 503 name normalisation: Foo_Bar.baz -> foo-bar-baz."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(lock_file: Path) -> dict[str, str]:
    """name==version lines of a pip freeze file; comments, options and direct references are skipped."""
    pinned: dict[str, str] = {}
    for line in lock_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "==" not in line:
            continue
        name, _, version = line.partition("==")
        pinned[canonical(name.split("[", 1)[0])] = version.split(";", 1)[0].strip()
    return pinned


def installed_distributions() -> dict[str, str]:
    """Installed distributions (importlib.metadata), editable installs and pip's own tools left out."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonical(dist.metadata["Name"] or "")
        if not name or name in NOT_FROZEN:
            continue
        direct = dist.read_text("direct_url.json")
        if direct and json.loads(direct).get("dir_info", {}).get("editable"):
            continue
        found[name] = dist.version
    return found


def dependency_audit(lock_file: Path, installed: dict[str, str] | None = None) -> CheckResult:
    """Installed distributions against requirements.lock; any drift warns and lists the packages."""
    if not lock_file.exists():
        return CheckResult(
            "dependency audit",
            "warn",
            f"no lock file {lock_file}",
            "create it: .venv/bin/pip freeze --exclude-editable > requirements.lock",
        )
    pinned = read_lock(lock_file)
    current = installed_distributions() if installed is None else {canonical(k): v for k, v in installed.items()}
    changed = [f"{n} {pinned[n]}->{current[n]}" for n in sorted(pinned) if n in current and current[n] != pinned[n]]
    missing = [f"{n} {pinned[n]}" for n in sorted(pinned) if n not in current]
    extra = [f"{n} {current[n]}" for n in sorted(current) if n not in pinned]
    if not (changed or missing or extra):
        return CheckResult("dependency audit", "pass", f"{len(current)} installed distributions match {lock_file.name}")
    parts = [
        f"{label}: {', '.join(items)}"
        for label, items in (("changed", changed), ("missing", missing), ("not in lock", extra))
        if items
    ]
    return CheckResult(
        "dependency audit",
        "warn",
        f"{len(changed) + len(missing) + len(extra)} packages drift from {lock_file.name}: " + "; ".join(parts),
        "update the lock in a reviewed change, or reinstall from it",
    )


# --- cost vs returns ----------------------------------------------------------------------------------------------


def cost_vs_returns(ledger: Ledger, now: datetime, days: int = 30) -> CheckResult:
    """Fees of the window against its realized PnL: fees above 50% of the gross PnL warn, a negative net warns."""
    trades = trades_between(ledger, now - timedelta(days=days), now)
    if trades.empty:
        return CheckResult("cost vs returns", "pass", f"{days}d: no fills")
    fees = float(trades["fee"].sum())
    gross = float(trades["gross"].sum())
    net = gross - fees
    share = f"{fees / gross:.0%} of gross" if gross > 0 else "gross PnL not positive"
    evidence = f"{days}d: {len(trades)} fills, fees {fees:.2f} ({share}), realized {gross:+.2f} gross, {net:+.2f} net"
    notes = []
    if gross > 0 and fees > FEES_OF_GROSS_WARN * gross:
        notes.append(f"fees above {FEES_OF_GROSS_WARN:.0%} of gross PnL")
    if net < 0:
        notes.append("negative net after fees")
    if notes:
        return CheckResult("cost vs returns", "warn", f"{evidence}; {', '.join(notes)}")
    return CheckResult("cost vs returns", "pass", evidence)
