"""Run drills by name: plan the namespace, refuse a live one, give the scenario a scratch folder, clean up.

The failover-drill flow and `perps-bot drill <scenario>` both call run_drill(); scenarios register themselves with
@scenario in the modules trader.drills.*_drills, which load_scenarios() imports.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trader.drills
from trader.drills.base import SCENARIOS, DrillContext, DrillResult, Scenario
from trader.drills.namespace import DrillError, DrillNamespace, new_drill_id
from trader.drills.seed import DEFAULT_KEYS
from trader.settings import Settings

log = logging.getLogger(__name__)

# The runbook's order ("Failover: Redis, trading-engine crash, PostgreSQL, S3 outages", then the broker).
RUNBOOK_ORDER = ("redis-outage", "engine-crash", "postgres-outage", "s3-outage", "exchange-degradation")


def load_scenarios() -> dict[str, Scenario]:
    """Import every trader.drills.*_drills module (each registers its scenarios) and return the registry."""
    for module in pkgutil.iter_modules(trader.drills.__path__):
        if module.name.endswith("_drills"):
            importlib.import_module(f"trader.drills.{module.name}")
    return SCENARIOS


def scenario_names(requested: str = "all") -> list[str]:
    """ "all" -> every registered scenario in the runbook's order; a name -> [name]; else DrillError listing them."""
    registry = load_scenarios()
    ordered = [name for name in RUNBOOK_ORDER if name in registry] + sorted(set(registry) - set(RUNBOOK_ORDER))
    wanted = requested.strip()
    if wanted == "all":
        return ordered
    if wanted not in registry:
        raise DrillError(f"unknown drill scenario {wanted!r}; expected one of: all, {', '.join(ordered)}")
    return [wanted]


def run_drill(
    settings: Settings,
    name: str,
    *,
    keys: int = DEFAULT_KEYS,
    progress: Callable[[float, str], None] | None = None,
    options: dict[str, Any] | None = None,
    namespace: DrillNamespace | None = None,
) -> DrillResult:
    """Run one scenario on a fresh namespace of this profile; DrillRefused before anything is touched when the
    namespace is the live one, DrillUnavailable when the scenario does not apply, DrillError when it failed.

    The scenario gets ctx.options with "settings", "drill_namespace" and "keys" besides the caller's options.
    """
    scenario = load_scenarios().get(name)
    if scenario is None:
        scenario_names(name)  # raises the one-line error listing the valid names
        raise AssertionError("unreachable")
    if keys < 1:
        raise DrillError(f"keys: must be at least 1 (got {keys})")
    drill_id = namespace.id if namespace is not None else new_drill_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"{drill_id}-"))
    try:
        ns = namespace or DrillNamespace.plan(settings, workdir, drill_id=drill_id)
        ns.assert_not_live(settings)
        ctx = DrillContext(
            namespace=ns.id,
            workdir=workdir,
            progress=progress or (lambda _fraction, _message: None),
            options={**(options or {}), "settings": settings, "drill_namespace": ns, "keys": keys},
        )
        log.info("Failover drill %s started in namespace %s (%d keys)", name, ns.id, keys)
        result = scenario(ctx)
        log.info(
            "Failover drill %s finished: %s; Match: %s",
            name,
            "passed" if result.passed else "; ".join(result.misses()),
            result.coherence_match,
        )
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
