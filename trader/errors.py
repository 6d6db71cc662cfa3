"""The project's exception hierarchy; every message is one line an operator can act on."""

from __future__ import annotations


class TraderError(Exception):
    """Base of every error the trader raises on purpose."""


class ConfigError(TraderError):
    """A setting is missing or invalid; the message names the variable and what is allowed."""


class OrderRejected(TraderError):
    """An order was refused before or by the broker; nothing is recorded as sent."""


class UnknownSymbol(OrderRejected):
    """The product does not exist on this broker."""


class InsufficientFunds(OrderRejected):
    """Not enough available balance for the order."""


class OrderNotFound(TraderError):
    """No order with that id on the broker."""


class BrokerUnavailable(TraderError):
    """The broker could not be reached; the call may be retried after looking the order up."""


class BrokerError(TraderError):
    """The broker refused a request for a reason retrying cannot fix; the message carries the exchange's words."""


class AuthenticationFailed(BrokerError):
    """The broker refused the API key (401/403): wrong or expired key, missing permission, or clock skew."""
