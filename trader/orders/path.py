"""The one order path: every order anything in this project sends goes through OrderPath.send.

The bot's cycle, the exposure guard's sell-down, flatten's exits, the emergency flows and the CLI's --place-order
and --apply-order-edit all call it; nothing else calls Broker.place_order or Broker.apply_edit. In order it
1. checks the operator's controls: with the kill switch on nothing is sent, except an emergency flatten's
   reduce-only exits; with reduce-only on only orders that shrink a position are sent,
2. validates the request against the profile's leverage cap (RISK_MAX_LEVERAGE) and the product's rules,
3. records the order as pending_submit, in a transaction that also checks the account lease's fencing token
   (a process that lost its lease is refused here, before anything reaches the exchange),
4. sends it; an unreachable exchange is never answered with a blind resend: the order is looked up by
   client_order_id first, and left pending for reconciliation when it cannot be found,
5. applies the broker's answer and records that order's fills.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from trader.brokers.base import Broker
from trader.domain import Fill, Order, OrderRequest, OrderStatus, shrinks_position
from trader.errors import BrokerUnavailable, OrderRejected
from trader.ledger import Ledger
from trader.ledger.lease import Fence, LeaseLost
from trader.risk.guards import RiskControls

log = logging.getLogger(__name__)
events = logging.getLogger(f"{__name__}.events")  # ORDER_EVENTS_LOGGER: its lines go to orders.log only

Control = Literal["kill_switch", "reduce_only"]
CLEAR: dict[Control, str] = {
    "kill_switch": "clear it with `perps-bot kill-switch off` (and unset RISK_KILL_SWITCH_ENABLED where it is set)",
    "reduce_only": "clear it with `perps-bot reduce-only off` (and unset RISK_REDUCE_ONLY_MODE where it is set)",
}


class ControlRefused(OrderRejected):
    """The kill switch or reduce-only refused the order before anything was sent or written."""

    def __init__(self, control: Control, message: str) -> None:
        self.control = control
        super().__init__(f"{message}; {CLEAR[control]}")


@dataclass(frozen=True)
class OrderOutcome:
    """What became of one request: sent (with the broker's order), refused, failed, pending, or a dry run."""

    request: OrderRequest
    status: str  # an OrderStatus value, "refused" or "dry_run"
    reason: str
    order: Order | None = None
    fills_recorded: int = 0
    fills: tuple[Fill, ...] = ()  # the order's fills read with its answer (fills_recorded of them were new)
    positions: Mapping[str, Decimal] = field(default_factory=dict)  # quantity of each position those fills moved

    @property
    def accepted(self) -> bool:
        return self.order is not None and self.order.status not in (OrderStatus.REJECTED, OrderStatus.FAILED)


def check_controls(
    request: OrderRequest, position: Decimal, controls: RiskControls, *, emergency_exit: bool = False
) -> None:
    """ControlRefused unless the switches allow this order; an emergency exit must be reduce-only and shrink."""
    shrinks = shrinks_position(request.side, request.quantity, position)
    what = f"{request.side} {request.quantity} {request.symbol}"
    if emergency_exit and not (request.reduce_only and shrinks):
        raise ControlRefused(
            "kill_switch", f"emergency exit {what} refused: it must be reduce-only and shrink the position {position}"
        )
    if controls.kill_switch and not emergency_exit:
        raise ControlRefused("kill_switch", f"kill switch is on: no new orders ({what} refused, nothing sent)")
    if controls.reduce_only and not shrinks:
        raise ControlRefused(
            "reduce_only",
            f"reduce-only is on: {what} would not shrink the position {position} (refused, nothing sent)",
        )


def check_leverage_cap(request: OrderRequest, cap: Decimal | None) -> None:
    """OrderRejected when a futures order's leverage is above the profile's cap; nothing is sent or written."""
    if cap is not None and request.leverage is not None and request.leverage > cap:
        raise OrderRejected(
            f"leverage {request.leverage} on {request.symbol} is above the profile's cap RISK_MAX_LEVERAGE={cap}: "
            "lower the leverage, or raise RISK_MAX_LEVERAGE (nothing sent)"
        )


def order_event(event: str, at: datetime, **fields: Any) -> None:
    """One JSON line in orders.log (trader/logs.py): the event, when, and its fields (order_sent, order_rejected
    with its reason, order_filled)."""
    record = {"event": event, "at": at.isoformat(), **{k: str(v) for k, v in fields.items()}}
    events.info(json.dumps(record, sort_keys=True))


def _terms(request: OrderRequest) -> dict[str, Any]:
    return {
        "client_order_id": request.client_order_id,
        "symbol": request.symbol,
        "side": request.side,
        "type": request.order_type,
        "quantity": request.quantity,
    }


class OrderPath:
    """Sends orders for one account: controls, product rules, fenced pending record, send, answer, fills."""

    def __init__(
        self,
        broker: Broker,
        ledger: Ledger,
        *,
        controls: Callable[[], RiskControls],
        fence: Callable[[], Fence | None],
        session_id: Callable[[], str | None] = lambda: None,
        on_answer: Callable[[bool], None] | None = None,
        max_leverage: Decimal | None = None,
    ) -> None:
        self.broker = broker
        self.max_leverage = max_leverage  # the profile's RISK_MAX_LEVERAGE
        self.ledger = ledger
        self.controls = controls
        self.fence = fence
        self.session_id = session_id
        self.on_answer = on_answer  # told True/False for every answered order (the order-success guard)

    def send(
        self,
        request: OrderRequest,
        *,
        position: Decimal,
        controls: RiskControls | None = None,
        emergency_exit: bool = False,
        dry_run: bool = False,
        resume_pending: bool = False,
    ) -> OrderOutcome:
        """Send one order through every check; ControlRefused/OrderRejected before anything is written, LeaseLost
        when the fence refuses the pending record (nothing sent). resume_pending: a pending_submit row with this
        client_order_id (recorded by an attempt that died before sending, and not on the broker) is sent as is."""
        check_controls(request, position, controls or self.controls(), emergency_exit=emergency_exit)
        check_leverage_cap(request, self.max_leverage)
        self.broker.validate(request)
        if dry_run:
            return OrderOutcome(request, "dry_run", "dry run: nothing sent")
        session_id = self.session_id()
        fence = self.fence()
        if fence is None:  # only a dry run may go without the account's lease
            raise LeaseLost("no lease of the account is held: nothing is sent without one (take it first)")
        recorded = self.ledger.get_order(request.client_order_id) if resume_pending else None
        if recorded is not None and recorded.status == OrderStatus.PENDING_SUBMIT:
            self.ledger.check_lease(fence)
        else:
            # Record first, then send: a crash in between leaves a pending_submit row that startup
            # reconciliation resolves by client_order_id, so no order is ever sent twice or lost.
            self.ledger.record_pending(request, session_id, self.broker.now(), fence=fence)
        try:
            order = self._place(request)
        except OrderRejected as error:
            self.ledger.mark_failed(request.client_order_id, str(error), self.broker.now())
            log.error(
                "order_rejected client_order_id=%s symbol=%s side=%s reason=%s",
                request.client_order_id,
                request.symbol,
                request.side,
                error,
            )
            order_event("order_rejected", self.broker.now(), **_terms(request), reason=error)
            self._answered(False)
            return OrderOutcome(request, OrderStatus.FAILED, str(error))
        if order is None:
            self._answered(False)
            return OrderOutcome(request, OrderStatus.PENDING_SUBMIT, "broker unreachable; left for reconciliation")
        if order.status in (OrderStatus.REJECTED, OrderStatus.FAILED):
            self.ledger.apply_order(order)
            self._answered(False)
            return OrderOutcome(request, order.status, order.reject_reason or "rejected", order)
        self._answered(True)
        order_event("order_sent", self.broker.now(), **_terms(request), order_id=order.order_id, status=order.status)
        try:
            fills = self._fills_of(order)
            # The answer and its fills in one transaction: one commit per order instead of two.
            applied = self.ledger.apply_order_with_fills(order, fills, session_id)
        except BaseException:  # reading or writing the fills failed: the answer is kept, the fill sync follows
            self.ledger.apply_order(order)
            raise
        return OrderOutcome(request, order.status, "", order, applied.new, tuple(fills), applied.positions)

    def edit(self, order_id: str, preview_id: str) -> Order:
        """Apply a previewed edit of a resting order under the same controls and fence; the ledger takes the answer."""
        controls = self.controls()
        if controls.kill_switch:
            raise ControlRefused("kill_switch", f"kill switch is on: edit of order {order_id} refused, nothing sent")
        if controls.reduce_only:
            raise ControlRefused(
                "reduce_only", f"reduce-only is on: edit of order {order_id} refused (cancel it instead), nothing sent"
            )
        fence = self.fence()
        if fence is None:
            raise LeaseLost(f"no lease of the account is held: edit of order {order_id} not sent (take it first)")
        self.ledger.check_lease(fence)
        order = self.broker.apply_edit(order_id, preview_id)
        self.ledger.apply_order(order)
        return order

    def _answered(self, accepted: bool) -> None:
        if self.on_answer is not None:
            self.on_answer(accepted)

    def _place(self, request: OrderRequest) -> Order | None:
        try:
            return self.broker.place_order(request)
        except BrokerUnavailable as error:
            # Never retry a create blindly: look the order up by client_order_id first.
            log.error("order %s: broker unavailable (%s); looking it up", request.client_order_id, error)
            try:
                return self.broker.find_order(request.client_order_id)
            except BrokerUnavailable:
                return None

    def _fills_of(self, order: Order) -> list[Fill]:
        """This order's fills so far (a market order usually fills at once); later ones arrive by fill sync."""
        if not order.filled_quantity:
            return []
        try:
            fills = self.broker.list_fills(since=order.created_at - timedelta(seconds=1))
        except BrokerUnavailable as error:
            log.warning("fills of order %s not read now (%s): the next fill sync records them", order.order_id, error)
            return []
        return [f for f in fills if f.order_id == order.order_id]
