"""The Ledger's funding rows: each future's rate for its next funding time, and the funding paid or received
(hourly accruals and their settlements), both idempotent: a rate row per (symbol, funding time), a payment per id."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from sqlmodel import col, select

from trader.domain import FundingPayment
from trader.ledger.base import LedgerBase
from trader.ledger.models import FundingPaymentRecord, FundingRateRecord


class FundingMixin(LedgerBase):
    def record_funding_rate(self, symbol: str, rate: Decimal, funding_time: datetime, at: datetime) -> bool:
        """Record the rate read for `funding_time`; False (nothing written) when that time is already recorded."""
        with self._transaction() as session:
            query = select(FundingRateRecord.id).where(
                FundingRateRecord.account == self.account,
                FundingRateRecord.symbol == symbol,
                FundingRateRecord.funding_time == funding_time,
            )
            if session.exec(query).first() is not None:
                return False
            session.add(
                FundingRateRecord(
                    account=self.account, symbol=symbol, rate=rate, funding_time=funding_time, recorded_at=at
                )
            )
            return True

    def record_funding_payments(self, payments: Iterable[FundingPayment]) -> int:
        """Insert the payments with new ids; returns how many were new."""
        wanted = {p.payment_id: p for p in payments}
        if not wanted:
            return 0
        with self._transaction() as session:
            query = select(FundingPaymentRecord.payment_id).where(
                FundingPaymentRecord.account == self.account, col(FundingPaymentRecord.payment_id).in_(list(wanted))
            )
            known = set(session.exec(query).all())
            new = [p for payment_id, p in wanted.items() if payment_id not in known]
            session.add_all(
                FundingPaymentRecord(
                    account=self.account,
                    payment_id=p.payment_id,
                    symbol=p.symbol,
                    at=p.at,
                    rate=p.rate,
                    contracts=p.contracts,
                    mark_price=p.mark_price,
                    amount=p.amount,
                    settled=p.settled,
                )
                for p in new
            )
            return len(new)

    def funding_rates_since(self, since: datetime) -> list[FundingRateRecord]:
        query = select(FundingRateRecord).where(
            FundingRateRecord.account == self.account, col(FundingRateRecord.funding_time) > since
        )
        with self._transaction() as session:
            return list(session.exec(query.order_by(col(FundingRateRecord.funding_time))).all())

    def funding_payments_since(self, since: datetime) -> list[FundingPaymentRecord]:
        query = select(FundingPaymentRecord).where(
            FundingPaymentRecord.account == self.account, col(FundingPaymentRecord.at) > since
        )
        with self._transaction() as session:
            return list(session.exec(query.order_by(col(FundingPaymentRecord.at), col(FundingPaymentRecord.id))).all())

    def last_funding_payment_at(self) -> datetime | None:
        query = select(FundingPaymentRecord.at).where(FundingPaymentRecord.account == self.account)
        with self._transaction() as session:
            return session.exec(query.order_by(col(FundingPaymentRecord.at).desc())).first()
