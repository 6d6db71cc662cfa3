"""perps-bot --account-snapshot, --preview-order [--order-id ID], --place-order, --apply-order-edit ORDER_ID:PREVIEW_ID.

Manual orders go through the one order path (trader/orders/path.py): the switches first (a refused order is never
previewed, sent or written), then the account's lease as "manual", refused in one line while a bot holds it.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from rich.table import Table

from deployments.cli.output import out, wide
from deployments.cli.variables import current_controls
from trader.domain import FuturesAccount, OrderPreview, OrderRequest, OrderType, Side, TimeInForce
from trader.errors import ConfigError, OrderRejected
from trader.ledger.lease import LeaseHeld
from trader.settings import Settings

if TYPE_CHECKING:
    from trader.brokers.base import Broker
    from trader.orders.path import OrderPath


def account_snapshot(settings: Settings) -> int:
    """Balances, key permissions and fee tier straight from the broker."""
    from trader.runtime import build_broker

    snap = build_broker(settings).account_snapshot()
    balances = Table(title="Balances")
    for column in ("currency", "available", "hold", "total"):
        balances.add_column(column, justify="right" if column != "currency" else "left")
    for b in snap.balances:
        balances.add_row(b.currency, str(b.available), str(b.hold), str(b.total))
    out.print(balances)
    p = snap.permissions
    out.print(
        f"permissions: can_view={p.can_view} can_trade={p.can_trade} can_transfer={p.can_transfer} "
        f"portfolio_type={p.portfolio_type}",
        soft_wrap=True,
    )
    if p.can_trade and p.can_transfer:
        out.print(
            "[bold red]WARNING: this trading key can also transfer funds; use a key without transfer[/]",
            soft_wrap=True,
        )
    f = snap.fee_tier
    out.print(f"fee tier: {f.tier} maker={f.maker_fee_rate} taker={f.taker_fee_rate}")
    for position in snap.positions:
        out.print(f"position: {position.symbol} {position.quantity} @ {position.average_entry_price}")
    if snap.futures is not None:
        _print_futures(snap.futures)
    return 0


def _require(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name.removeprefix("--").replace("-", "_")) is None:
            raise ConfigError(f"{name}: required for this command")


def _order_request(args: argparse.Namespace) -> OrderRequest:
    _require(args, "--order-symbol", "--order-side", "--order-quantity")
    expire_at = None
    if args.order_expire:
        try:
            expire_at = datetime.fromisoformat(args.order_expire.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"--order-expire: {args.order_expire!r} is not ISO-8601 (2026-11-22T00:00:00Z)") from None
        if expire_at.tzinfo is None:
            expire_at = expire_at.replace(tzinfo=UTC)
    return OrderRequest(
        symbol=args.order_symbol.upper(),
        side=Side(args.order_side),
        order_type=OrderType(args.order_type),
        quantity=args.order_quantity,
        client_order_id=args.order_client_id or f"cli-{uuid.uuid4().hex[:20]}",
        limit_price=args.order_price,
        stop_price=args.order_stop,
        time_in_force=TimeInForce(args.order_tif),
        expire_at=expire_at,
        reduce_only=args.order_reduce_only,
        leverage=args.order_leverage,
    )


def preview_order(settings: Settings, args: argparse.Namespace) -> int:
    """Preview an order (nothing sent), or an edit of a resting order; --place-order then places it."""
    from trader.runtime import build_broker

    if args.order_id:
        _require(args, "--order-quantity", "--order-price")
        broker = build_broker(settings)
        preview = broker.preview_edit(args.order_id, args.order_quantity, args.order_price)
        _print_preview(preview)
        out.print(f"apply with: perps-bot --apply-order-edit {args.order_id}:{preview.preview_id}")
        return 0
    from trader.orders.path import check_leverage_cap

    request = _order_request(args)
    check_leverage_cap(request, settings.risk_max_leverage)
    broker = build_broker(settings)
    broker.validate(request)  # bad input stops here: nothing previewed, sent or written
    position = Decimal(0)
    if args.place_order:  # then the controls: a refused order is never previewed, sent or written
        from trader.orders.path import check_controls

        controls = current_controls(settings)
        position = _position(broker, request.symbol) if controls.reduce_only and not controls.kill_switch else position
        check_controls(request, position, controls)
        position = _position(broker, request.symbol)
    preview = broker.preview_order(request)
    _print_preview(preview)
    if not args.place_order:
        return 0 if not preview.errors else 1
    if preview.errors:
        raise OrderRejected(f"not placed: {'; '.join(preview.errors)}")
    with _manual_order_path(settings, broker, "--place-order") as path:
        outcome = path.send(request, position=position)
    order = outcome.order
    if order is None:
        out.print(f"not placed: {outcome.status}: {outcome.reason} (client_order_id={request.client_order_id})")
        return 1
    out.print(f"placed: order_id={order.order_id} client_order_id={order.client_order_id} status={order.status}")
    return 0 if outcome.accepted else 1


def _position(broker: Broker, symbol: str) -> Decimal:
    """The broker's position in symbol (the truth the reduce-only check needs)."""
    return next((p.quantity for p in broker.positions() if p.symbol == symbol), Decimal(0))


@contextmanager
def _manual_order_path(settings: Settings, broker: Broker, command: str) -> Iterator[OrderPath]:
    """The one order path for manual tooling, under the account's lease: refused in one line while a bot holds
    it (the emergency commands are the operator's override), released when the command is done."""
    from trader.ledger import Ledger
    from trader.ledger.lease import Holder
    from trader.orders.path import OrderPath

    ledger = Ledger(settings.database_url, account=settings.account)
    try:
        try:
            lease = ledger.acquire_lease(settings.account, Holder.this_process("manual"), settings.lease_ttl_seconds)
        except LeaseHeld as held:
            hint = (
                f"{command} refused while a bot trades this account (nothing sent or written); stop the bot first, "
                "or use the emergency commands (kill-switch, reduce-only, cancel-all, flatten), which override it"
            )
            raise LeaseHeld(held.lease, hint) from None
        try:
            controls = current_controls(settings)
            yield OrderPath(
                broker,
                ledger,
                controls=lambda: controls,
                fence=lambda: lease.fence,
                max_leverage=settings.risk_max_leverage,
            )
        finally:
            ledger.release_lease(lease.fence, f"{command} done")
    finally:
        ledger.dispose()


def apply_order_edit(settings: Settings, spec: str) -> int:
    """Apply ORDER_ID:PREVIEW_ID from a previous edit preview."""
    from trader.runtime import build_broker

    order_id, sep, preview_id = spec.partition(":")
    if not sep or not order_id or not preview_id:
        raise ConfigError(f"--apply-order-edit: expected ORDER_ID:PREVIEW_ID (got {spec!r})")
    with _manual_order_path(settings, build_broker(settings), "--apply-order-edit") as path:
        order = path.edit(order_id, preview_id)
    out.print(
        f"edited: order_id={order.order_id} quantity={order.quantity} limit_price={order.limit_price} "
        f"status={order.status}"
    )
    return 0


def _print_preview(preview: OrderPreview) -> None:
    r = preview.request
    table = Table(title=f"Order preview {preview.preview_id}")
    table.add_column("field")
    table.add_column("value")
    rows = [
        ("symbol", r.symbol),
        ("side", r.side),
        ("type", r.order_type),
        ("quantity", r.quantity),
        ("limit price", r.limit_price),
        ("stop price", r.stop_price),
        ("time in force", r.time_in_force),
        ("reduce only", r.reduce_only),
        ("leverage", r.leverage),
        ("client order id", r.client_order_id),
        ("estimated price", preview.estimated_price),
        ("quote size", preview.quote_size),
        ("commission", preview.commission),
        ("errors", "; ".join(preview.errors) or "none"),
    ]
    for name, value in rows:
        if value is not None:
            table.add_row(name, str(value))
    out.print(table)


def _print_futures(futures: FuturesAccount) -> None:
    """The CFM futures account: margins, liquidation buffer, PnL, then each position."""
    out.print(
        f"futures: buying power {futures.buying_power} USD, balance {futures.total_usd_balance}, initial margin "
        f"{futures.initial_margin}, available margin {futures.available_margin}, liquidation buffer "
        f"{futures.liquidation_buffer_pct}% ({futures.liquidation_buffer_usd} USD over a threshold of "
        f"{futures.liquidation_threshold}), unrealized PnL {futures.unrealized_pnl}, daily realized PnL "
        f"{futures.daily_realized_pnl}",
        soft_wrap=True,
    )
    table = Table(title="Futures positions")
    for column in ("product", "side", "contracts", "entry", "current", "unrealized PnL", "daily realized"):
        table.add_column(column, justify="left" if column in ("product", "side") else "right")
    for p in futures.positions:
        table.add_row(
            p.symbol,
            p.side,
            str(p.contracts),
            str(p.average_entry_price),
            str(p.current_price),
            str(p.unrealized_pnl),
            str(p.daily_realized_pnl),
        )
    wide().print(table)
