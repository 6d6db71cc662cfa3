"""Great Expectations, imported lazily: one ephemeral context per process, and suites validated on DataFrames.

Two ways to validate: validate() is GX's public path (a batch of the context's pandas data source, every result
format), and WarmSuite is the same suite made ready once for a caller that validates many small DataFrames of one
layout (the bot's data gate, every cycle): the part of GX's Validator.graph_validate that depends only on the suite
(expectation parameters substituted, the metrics each expectation needs, the order to compute them in) runs once;
per DataFrame, GX's pandas execution engine computes those metrics and each expectation's own _validate decides.

`import great_expectations` takes seconds, so nothing in `trader/` imports it at module level: the first call to
gx() pays the import (the bot calls MarketDataGate.warm_up() off its hot path). The context is ephemeral with
in-memory stores and no data docs site (nothing written to disk, not even a temporary folder); analytics are off
(GX_ANALYTICS_ENABLED=False is set before the import unless the environment already says otherwise) and so are
progress bars, so a validation neither phones home nor prints "Calculating Metrics" to stderr.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

DATA_SOURCE = "trader"
_ANALYTICS_ENV = "GX_ANALYTICS_ENABLED"

# Imported by great_expectations at load for expectations and metrics this project never runs (KL divergence, KS
# tests): scipy.stats and what it pulls in are ~35% of `import great_expectations`. Deferred with the standard
# library's LazyLoader, so the real import happens on first attribute access (if anything ever uses them).
DEFERRED_MODULES = ("scipy.stats",)

_lock = threading.RLock()  # the context, its data source and every validation: one thread at a time
_context: Any = None
_batch_definitions: dict[str, Any] = {}


def gx() -> ModuleType:
    """The great_expectations module, imported on first use with analytics off and DEFERRED_MODULES deferred."""
    os.environ.setdefault(_ANALYTICS_ENV, "False")
    if "great_expectations" not in sys.modules:
        for name in DEFERRED_MODULES:
            _defer(name)
    import great_expectations

    return great_expectations


def _defer(name: str) -> None:
    """Put a lazily loading module for `name` into sys.modules (and on its parent package), unless already there."""
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    try:
        if parent:
            __import__(parent)
        spec = importlib.util.find_spec(name)
    except ImportError:
        return
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    if parent:
        setattr(sys.modules[parent], child, module)


def context() -> Any:
    """The process's ephemeral data context (created once, progress bars off)."""
    global _context
    with _lock:
        if _context is None:
            module = gx()
            from great_expectations.data_context.types.base import (
                DataContextConfig,
                InMemoryStoreBackendDefaults,
                ProgressBarsConfig,
            )

            # In-memory stores and no temporary data docs site (the default ephemeral context makes a temp dir).
            config = DataContextConfig(
                store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                analytics_enabled=False,
                progress_bars=ProgressBarsConfig(globally=False),
            )
            built = module.get_context(mode="ephemeral", project_config=config)
            built.variables.progress_bars = ProgressBarsConfig(globally=False)
            built.data_sources.add_pandas(DATA_SOURCE)
            _context = built
        return _context


def _batch_definition(asset: str) -> Any:
    """The whole-DataFrame batch definition of one named asset of the process's pandas data source."""
    with _lock:
        if asset not in _batch_definitions:
            source = context().data_sources.get(DATA_SOURCE)
            _batch_definitions[asset] = source.add_dataframe_asset(asset).add_batch_definition_whole_dataframe(asset)
        return _batch_definitions[asset]


@dataclass(frozen=True)
class Check:
    """One expectation of a suite, with the operator's name for it and how to word a failure."""

    name: str  # short and stable: the counter is "failed:<name>"
    problem: str  # what a failure means, e.g. "gap/out-of-order bars (step_seconds != 60)"
    build: Callable[[ModuleType], Any]  # gx.expectations -> the Expectation


def suite(name: str, checks: Iterable[Check]) -> Any:
    """An ExpectationSuite of these checks; each expectation's meta carries its check name."""
    module = gx()
    context()  # a suite resolves the current context as soon as an expectation is added
    built = module.ExpectationSuite(name=name)
    for check in checks:
        expectation = check.build(module.expectations)
        expectation.meta = {"check": check.name}
        built.add_expectation(expectation)
    return built


@dataclass(frozen=True)
class Outcome:
    """What one expectation found on one batch."""

    check: str
    success: bool
    element_count: int
    unexpected_count: int
    unexpected_percent: float
    observed_value: str
    unexpected_rows: tuple[Mapping[str, Any], ...]  # index columns and the offending values (richer formats only)
    error: str | None = None  # the expectation raised instead of deciding


def validate(
    asset: str,
    frame: pd.DataFrame,
    expectation_suite: Any,
    *,
    parameters: Mapping[str, Any] | None = None,
    detail: bool = False,
    index_columns: tuple[str, ...] = (),
) -> list[Outcome]:
    """Validate a DataFrame against a suite: BOOLEAN_ONLY (cheapest), or with counts and every offending row
    (named by `index_columns`) when `detail`. One Outcome per expectation, in suite order."""
    if detail:
        result_format: Any = {
            "result_format": "COMPLETE",
            "unexpected_index_column_names": list(index_columns),
            "return_unexpected_index_query": False,
        }
    else:
        result_format = "BOOLEAN_ONLY"
    with _lock:
        batch = _batch_definition(asset).get_batch(batch_parameters={"dataframe": frame})
        validation = batch.validate(
            expectation_suite, result_format=result_format, expectation_parameters=dict(parameters or {})
        )
    return [_outcome(result) for result in validation.results]


def _outcome(result: Any) -> Outcome:
    details: Mapping[str, Any] = result.result or {}
    raised = result.exception_info.get("raised_exception") if isinstance(result.exception_info, dict) else False
    error = str(result.exception_info.get("exception_message")) if raised else None
    observed = details.get("observed_value")
    return Outcome(
        check=str((result.expectation_config.meta or {}).get("check", result.expectation_config.type)),
        success=bool(result.success),
        element_count=int(details.get("element_count") or 0),
        unexpected_count=int(details.get("unexpected_count") or 0),
        unexpected_percent=float(details.get("unexpected_percent") or 0.0),
        observed_value="" if observed is None else str(observed),
        unexpected_rows=tuple(details.get("unexpected_index_list") or ()),
        error=error,
    )


class WarmSuite:
    """A suite ready to validate DataFrames of one layout, BOOLEAN_ONLY: ~5x cheaper per DataFrame than validate().

    Same expectations, same metrics, same verdicts as validate() (tests/trader/quality compare the two): what is
    skipped per call is GX rebuilding the metric graph from the expectation configurations (pydantic round trips,
    about 80% of a validate() of 7 expectations on 300 rows). The execution engine does not cache metrics, so no
    value of one DataFrame can leak into the next. Not thread-safe on its own: validate() holds the module lock.
    """

    BATCH_ID = "warm"

    def __init__(self, expectation_suite: Any, parameters: Mapping[str, Any] | None = None) -> None:
        import copy

        gx()
        from great_expectations.execution_engine import PandasExecutionEngine
        from great_expectations.validator.metrics_calculator import MetricsCalculator

        self._runtime: dict[str, Any] = {"result_format": "BOOLEAN_ONLY"}
        self._engine = PandasExecutionEngine(caching=False)
        calculator = MetricsCalculator(execution_engine=self._engine, show_progress_bars=False)
        self._plans: list[tuple[str, Any, dict[str, Any], Any]] = []  # check, expectation, metric ids, format
        metrics: dict[Any, Any] = {}
        needs: dict[Any, set[Any]] = {}
        with _lock:
            for configuration in expectation_suite.expectation_configurations:
                evaluated = copy.deepcopy(configuration)
                evaluated.process_suite_parameters(
                    suite_parameters=dict(parameters or {}), interactive_evaluation=True, data_context=None
                )
                evaluated.kwargs["batch_id"] = self.BATCH_ID
                expectation = evaluated.to_domain_obj()
                dependencies = expectation.get_validation_dependencies(
                    execution_engine=self._engine, runtime_configuration=self._runtime
                )
                graph = calculator.build_metric_dependency_graph(
                    metric_configurations=dependencies.get_metric_configurations(),
                    runtime_configuration=self._runtime,
                )
                for edge in graph.edges:
                    metrics.setdefault(edge.left.id, edge.left)
                    needs.setdefault(edge.left.id, set())
                    if edge.right is not None:
                        metrics.setdefault(edge.right.id, edge.right)
                        needs.setdefault(edge.right.id, set())
                        needs[edge.left.id].add(edge.right.id)
                ids = {name: metric.id for name, metric in dependencies.metric_configurations.items()}
                check = str((evaluated.meta or {}).get("check", evaluated.type))
                self._plans.append((check, expectation, ids, dependencies.result_format))
        # The order GX's ValidationGraph.resolve() finds on every call: each level's dependencies are resolved.
        self._levels: list[list[Any]] = []
        done: set[Any] = set()
        while len(done) < len(metrics):
            level = [metrics[i] for i in metrics if i not in done and needs[i] <= done]
            if not level:
                raise RuntimeError(f"suite {expectation_suite.name}: its metric graph has a cycle")
            self._levels.append(level)
            done.update(metric.id for metric in level)

    def validate(self, frame: pd.DataFrame) -> list[Outcome]:
        """One Outcome per expectation, in suite order (success only: BOOLEAN_ONLY has no counts)."""
        with _lock:
            self._engine.load_batch_data(self.BATCH_ID, frame)
            resolved: dict[Any, Any] = {}
            for level in self._levels:
                resolved.update(
                    self._engine.resolve_metrics(
                        metrics_to_resolve=level, metrics=resolved, runtime_configuration=self._runtime
                    )
                )
            outcomes = []
            for check, expectation, ids, result_format in self._plans:
                result = expectation._validate(
                    metrics={name: resolved[metric_id] for name, metric_id in ids.items()},
                    runtime_configuration={"result_format": result_format},
                    execution_engine=self._engine,
                )
                success = result["success"] if isinstance(result, dict) else result.success
                outcomes.append(Outcome(check, bool(success), 0, 0, 0.0, "", ()))
            return outcomes


@dataclass(frozen=True)
class GateResult:
    """What a data gate decided for one cycle (or one reconciliation run)."""

    passed: bool
    failures: tuple[str, ...]  # one short line each: "BTC-USD: gap/out-of-order bars (step_seconds != 60) ..."
    checked_rows: int
    duration_ms: float
    outcomes: tuple[Outcome, ...] = ()  # every expectation's result, filled when the check ran with detail=True
    failed_checks: tuple[str, ...] = ()  # names of the expectations that failed ("freshness", "no_candles", ...)
    validated_rows: int = 0  # rows handed to Great Expectations this time (the bot's gate: only what is new)
