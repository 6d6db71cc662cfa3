"""The funding tracker: rates recorded once per funding time, the paper exchange's accruals and settlements recorded
once each, a live account's estimates from the CFM position; `perps-bot funding --days N`, the daily report's funding
section and the daily checklist's "funding schedule" item."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from tests.deployments.test_cli import perps_bot
from tests.trader.brokers.test_coinbase_broker import settings_for
from trader.brokers import futures as fx
from trader.brokers.coinbase import CoinbaseBroker
from trader.brokers.simulated import SimulatedExchange
from trader.checklists.daily import funding_schedule, overnight_pnl_and_positions
from trader.checklists.report import daily_report
from trader.domain import Candle, OrderRequest, OrderType, Side
from trader.funding import FundingTracker, funding_summary
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.settings import Settings, load_settings
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey

FUTURE = "BIP-20DEC30-CDE"


def open_long(exchange: SimulatedExchange, contracts: str = "5") -> None:
    exchange.place_order(
        OrderRequest(FUTURE, Side.BUY, OrderType.MARKET, Decimal(contracts), "open", leverage=Decimal(2))
    )


def test_rates_are_recorded_once_per_funding_time_and_every_payment_once(tmp_path: Path) -> None:
    state = tmp_path / "var/state"
    state.mkdir(parents=True)
    exchange = SimulatedExchange(ReplayMarketData(), state_path=state / "paper_exchange.json", derivatives=True)
    ledger = Ledger(f"sqlite:///{state / 'ledger.db'}")
    try:
        open_long(exchange)
        tracker = FundingTracker(ledger)
        start = exchange.now()
        for _ in range(13 * 60):  # 13 hours of one-minute bars: through 12:00 UTC, a settlement
            tracker.track(exchange, [exchange.fresh_product(FUTURE)], exchange.futures_account(), exchange.now())
            exchange.advance()
        tracker.track(exchange, [exchange.fresh_product(FUTURE)], exchange.futures_account(), exchange.now())

        rates = ledger.funding_rates_since(start - timedelta(days=1))
        expected_times = [fx.next_funding_time(start) + timedelta(hours=h) for h in range(14)]
        assert [r.funding_time for r in rates] == expected_times  # one row per funding time, in order
        payments = ledger.funding_payments_since(start - timedelta(days=1))
        reported = exchange.funding_payments()
        assert [(p.payment_id, p.amount, p.settled) for p in payments] == [
            (p.payment_id, p.amount, p.settled) for p in reported
        ]
        accruals = [p for p in payments if not p.settled]
        recorded_rate = {r.funding_time: r.rate for r in rates}
        # the rate a product shows during an hour is the one its funding instant charges
        assert [p.rate for p in accruals] == [recorded_rate[p.at] for p in accruals]
        settlement = next(p for p in payments if p.settled)
        assert settlement.at.hour == 12 and settlement.amount == sum(
            (p.amount for p in accruals if p.at <= settlement.at), Decimal(0)
        )
        for p in accruals:  # a premium (rate > 0): the long pays; a discount: it receives
            assert p.rate is not None and p.mark_price is not None
            assert p.amount == (-Decimal(5) * Decimal("0.01") * p.mark_price * p.rate).quantize(fx.MONEY_STEP)
        assert (
            tracker.track(exchange, [exchange.fresh_product(FUTURE)], exchange.futures_account(), exchange.now()) == 0
        )

        (fill,) = exchange.list_fills()  # the only fill: 5 contracts of 0.01 BTC
        ledger.record_fills([fill])
        overnight = overnight_pnl_and_positions(ledger, exchange, datetime.now(UTC))
        assert f"1 fills, notional {5 * Decimal('0.01') * fill.price:.2f}," in overnight.evidence

        net = sum((p.amount for p in accruals), Decimal(0))
        total = funding_summary(ledger, start - timedelta(days=1))[-1]
        assert total["symbol"] == "TOTAL" and Decimal(total["net"]) == net.quantize(Decimal("0.01"))

        day = settlement.at.date()
        report = daily_report(ledger, day, state / "heartbeat.json")
        assert [r["symbol"] for r in report.funding] == [FUTURE, "TOTAL"]
        assert "## Funding (futures)" in report.markdown("dev") and FUTURE in report.markdown("dev")
    finally:
        ledger.dispose()

    shown = perps_bot(tmp_path, "funding", "--days", "7", COINBASE_ENABLE_DERIVATIVES="1")
    assert shown.returncode == 0, shown.stderr
    assert FUTURE in shown.stdout and "settled" in shown.stdout and str(net.quantize(Decimal("0.01"))) in shown.stdout
    for bad in ("0", "-1", "nan"):
        refused = perps_bot(tmp_path, "funding", "--days", bad)
        assert refused.returncode == 2 and "--days" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1


def hourly(start: datetime, closes: list[str]) -> list[Candle]:
    return [
        Candle(start + timedelta(hours=i), Decimal(c), Decimal(c), Decimal(c), Decimal(c), Decimal(1))
        for i, c in enumerate(closes)
    ]


def test_the_daily_checklist_item_shows_the_schedule_and_warns_on_a_funding_spike(tmp_path: Path) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    settings = load_settings(state_dir=tmp_path, coinbase_enable_derivatives=True, trading_symbols=f"BTC-USD,{FUTURE}")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:

        def paper(premium: str) -> SimulatedExchange:
            spot = hourly(start, ["65000"] * 3)
            future = hourly(start, [str(Decimal(65000) * (1 + Decimal(premium)))] * 3)
            market = ReplayMarketData.from_candles({"BTC-USD": spot, FUTURE: future}, start=0)
            return SimulatedExchange(market, derivatives=True)

        calm = paper("0.0001")
        open_long(calm)
        result = funding_schedule(settings, calm, ledger, datetime.now(UTC))  # the flow's wall clock
        assert result.status == "pass", result
        # on the account's clock: the replay's 01:00, an hour before its next funding
        assert f"{FUTURE} (held): rate 0.00000417 next at 02:00 UTC (in 60 min)" in result.evidence

        spike = funding_schedule(settings, paper("0.05"), ledger, start)  # 5 % / 24 = 0.00208 an hour
        assert spike.status == "warn" and "above |0.001|" in spike.evidence

        off = funding_schedule(load_settings(state_dir=tmp_path), calm, ledger, start)
        assert off.status == "pass" and "derivatives off" in off.evidence
    finally:
        ledger.dispose()


def test_a_live_account_records_an_estimate_when_a_funding_time_passes(
    start_exchange: Callable[..., AdvancedTradeServer], cdp_key: CdpKey, tmp_path: Path
) -> None:
    server = start_exchange(derivatives=True)
    server.set_futures_cash("10000")
    server.set_futures_product(FUTURE, price="60000", funding_rate="0.0002")
    server.add_futures_position(FUTURE, "LONG", "4", "60000", "60000")
    broker = CoinbaseBroker.from_settings(settings_for(server, cdp_key, tmp_path, coinbase_enable_derivatives=True))
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        tracker = FundingTracker(ledger)
        first = broker.fresh_product(FUTURE)
        assert first.funding_time is not None and first.futures is not None
        assert tracker.track(broker, [first], broker.futures_account(), datetime.now(UTC)) == 0

        # the funding time passes: the exchange lists the next one
        server.set_futures_product(
            FUTURE, price="60000", funding_rate="0.0003", funding_time=first.funding_time + timedelta(hours=1)
        )
        second = broker.fresh_product(FUTURE)
        assert second.funding_time == first.funding_time + timedelta(hours=1)
        new = tracker.track(broker, [second], broker.futures_account(), first.funding_time + timedelta(minutes=1))

        assert new == 1
        (estimate,) = ledger.funding_payments_since(first.funding_time - timedelta(hours=1))
        # the rate recorded for the time that passed, on the position then: 4 contracts x 0.01 BTC x 60,000
        assert (estimate.payment_id, estimate.rate, estimate.amount) == (
            f"estimate-{FUTURE}-{first.funding_time:%Y%m%dT%H%M}",
            Decimal("0.0002"),
            Decimal("-0.48"),
        )
        rates = ledger.funding_rates_since(first.funding_time - timedelta(hours=1))
        assert [(r.funding_time, r.rate) for r in rates] == [
            (first.funding_time, Decimal("0.0002")),
            (second.funding_time, Decimal("0.0003")),
        ]
    finally:
        ledger.dispose()


def test_a_paper_bot_trades_the_future_with_leverage_and_records_its_funding(paper_settings: Settings) -> None:
    from trader.runtime import build_bot

    settings = paper_settings.model_copy(
        update={
            "coinbase_enable_derivatives": True,
            "trading_symbols": FUTURE,
            "futures_leverage": Decimal(2),
            "position_size_usd": Decimal(1300),
        }
    )
    exchange = SimulatedExchange(ReplayMarketData(), derivatives=True)
    ledger = Ledger(settings.database_url)
    try:
        bot = build_bot(settings, broker=exchange, ledger=ledger)
        bot.start()
        margins_checked = False
        for _ in range(150):  # two and a half hours of bars
            summary = bot.run(1, interval_seconds=0)  # (the session's totals so far)
            account = exchange.futures_account()
            if account.positions and not margins_checked:  # opened at FUTURES_LEVERAGE: half the notional
                (position,) = account.positions
                notional = position.contracts * Decimal("0.01") * position.current_price
                assert account.initial_margin == notional / 2
                margins_checked = True
        bot.stop()

        assert margins_checked and summary.orders > 0 and summary.fills == len(exchange.list_fills())
        buys = [o for o in ledger.list_orders() if o.side == "buy"]
        assert buys
        for buy in buys:  # whole contracts worth up to POSITION_SIZE_USD (1 or 2 at ~65,000 x 0.01)
            assert buy.quantity in (1, 2) and buy.average_fill_price is not None
            assert buy.quantity * Decimal("0.01") * buy.average_fill_price <= Decimal(1300) * Decimal("1.01")
        assert {s: p.quantity for s, p in ledger.positions().items() if p.quantity} == {
            p.symbol: p.quantity for p in exchange.positions()
        }
        since = exchange.now() - timedelta(days=1)
        assert len(ledger.funding_rates_since(since)) >= 2  # one a funding time the run went through
        recorded = [(p.payment_id, p.amount) for p in ledger.funding_payments_since(since)]
        assert recorded == [(p.payment_id, p.amount) for p in exchange.funding_payments()]
    finally:
        ledger.dispose()


def test_a_paper_bot_whose_future_crashes_through_its_buffer_is_liquidated_and_the_ledger_follows(
    paper_settings: Settings,
) -> None:
    from trader.runtime import build_bot

    start = datetime(2025, 1, 1, tzinfo=UTC)
    rising = [str(65000 + 10 * i) for i in range(8)]  # a golden cross: the 2/4 crossover buys one contract
    closes = ["65000"] * 6 + rising + ["58000", "58000"]  # then a crash in one bar, before any exit can go
    minute = timedelta(minutes=1)
    candles = {
        symbol: [
            Candle(start + minute * i, Decimal(c), Decimal(c), Decimal(c), Decimal(c), Decimal(1))
            for i, c in enumerate(closes)
        ]
        for symbol in ("BTC-USD", FUTURE)  # no premium: no funding in the way
    }
    exchange = SimulatedExchange(
        ReplayMarketData.from_candles(candles, start=5), balances={"USD": Decimal(100)}, derivatives=True
    )
    settings = paper_settings.model_copy(
        update={
            "coinbase_enable_derivatives": True,
            "trading_symbols": FUTURE,
            "futures_leverage": Decimal(10),
            "risk_max_leverage": Decimal(10),
            "position_size_usd": Decimal(1300),
        }
    )
    ledger = Ledger(settings.database_url)
    try:
        bot = build_bot(settings, broker=exchange, ledger=ledger)
        bot.start()
        bot.run(len(closes) - 6, interval_seconds=0)
        bot.stop()

        # bought 1 contract at ~65,045 on 100 USD; at 58,000 equity ~25.6 is below the 29 of maintenance margin
        opened, liquidated = ledger.list_fills()
        assert (opened.side, opened.quantity) == ("buy", 1)
        assert (liquidated.side, liquidated.quantity, liquidated.price) == ("sell", 1, Decimal(58000))
        assert liquidated.client_order_id == "liquidation-1" and liquidated.contract_size == Decimal("0.01")
        assert not any(p.quantity for p in ledger.positions().values()) and exchange.positions() == []
        order = ledger.get_order("liquidation-1")
        assert order is not None and order.status == "filled"  # the exchange's order, taken into the ledger
        loss = (Decimal(58000) - opened.price) * Decimal("0.01") - opened.fee - liquidated.fee
        assert ledger.realized_pnl(FUTURE) == loss
    finally:
        ledger.dispose()
