"""Risk guards: kill switch, reduce-only, max position, daily loss."""

from trader.risk.guards import RiskControls, RiskDecision, RiskManager

__all__ = ["RiskControls", "RiskDecision", "RiskManager"]
