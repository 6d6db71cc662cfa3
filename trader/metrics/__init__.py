"""Prometheus metrics and the /health endpoint of the bot, and the standalone --metrics-file exporter."""

from trader.metrics.exporter import (
    DEFAULT_STALE_AFTER_SECONDS,
    BotMetrics,
    HealthStatus,
    MetricsFileSource,
    MetricsServer,
    MetricsSource,
    health_file_for,
    serve_metrics_file,
)
from trader.metrics.telemetry import CycleTelemetry, GuardLevel, TradingState

__all__ = [
    "DEFAULT_STALE_AFTER_SECONDS",
    "BotMetrics",
    "CycleTelemetry",
    "GuardLevel",
    "HealthStatus",
    "MetricsFileSource",
    "MetricsServer",
    "MetricsSource",
    "TradingState",
    "health_file_for",
    "serve_metrics_file",
]
