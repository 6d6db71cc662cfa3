"""A local HTTPS server that speaks the Coinbase Advanced Trade v3 REST API, for tests that drive the real SDK.

`AdvancedTradeServer` answers `/api/v3/brokerage/...` with Coinbase's documented request and response JSON over TLS
on loopback, so an unmodified `coinbase.rest.RESTClient` talks to it:

    key = generate_cdp_key("organizations/test/apiKeys/local")
    with AdvancedTradeServer(key_name=key.name, public_key_pem=key.public_key_pem, cert_dir=tmp_path) as server:
        client = RESTClient(api_key=key.name, api_secret=key.private_key_pem, base_url=server.base_url, timeout=5)
        client.session.verify = str(server.ca_file)
        client.market_order_buy(client_order_id="c-1", product_id="BTC-USD", quote_size="100")

What it models:

* Auth like Coinbase: every private request carries an ES256 JWT (kid == sub == key name, iss "cdp", nbf/exp, and
  uri "METHOD host:port/path"); anything else is a 401 UNAUTHENTICATED. `/time` and `/market/...` are public.
* A spot exchange with BTC-USD and ETH-USD priced from the bundled replay candles (the last 1000 one-minute bars,
  re-timed on every request so the last closed bar ended at the start of the current minute; the still-open bar is
  included, as Coinbase does). Balances, holds, maker/taker fees (charged in the quote currency), resting limit
  orders, stop-limit triggers (on the mid price), GTD expiry (checked lazily on every request), edits and cancels.
  Every execution fills completely at one price: market and crossing limit orders at the touch as taker (buys at
  the ask, sells at the bid); resting limit orders at their own limit price as maker, when `set_price` moves the
  touch through them or a test calls `fill_order`.
* Per-request fault injection (`Fault`): 429 with Retry-After, 500, 503, a hang (optionally after the request took
  effect, so a client time-out hides a created order), a truncated JSON body, or any canned error.
* Optional INTX perpetuals read endpoints (`derivatives=True`) fed by `add_perp_position`.
* US futures (CFM, `derivatives=True`): the balance summary and positions (`set_futures_cash`,
  `add_futures_position`), and the perpetual-style futures listed with `set_futures_product`, whose market IOC and
  limit IOC orders fill at once at the product's price, move the CFM position and pay the fee from the futures cash
  (`cfm`).

Operators and subprocess tests run it standalone: `python -m trader.testing.advanced_trade --state-dir DIR
[--port N]` writes DIR/cdp_key.json and DIR/cert.pem, then DIR/server.json {"base_url", "ca_file", "key_file"} once
listening, and serves until SIGTERM or SIGINT. The Authorization header and key material are never logged or kept.

Modules: `keys` (CDP keys, the TLS certificate, JWT checks), `faults` (fault injection, recorded requests), `wire`
(request and record models, Coinbase's JSON shapes), `exchange` (the in-memory exchange: quotes, balances,
matching), `cfm` (US futures order entry and positions), `http` (the endpoints and the route table), `server`
(`AdvancedTradeServer`: lifecycle, TLS, test controls, request pipeline), `__main__` (the command line).
"""

from trader.testing.advanced_trade.faults import Fault, FaultKind, RecordedRequest
from trader.testing.advanced_trade.keys import CdpKey, generate_cdp_key, make_self_signed_cert
from trader.testing.advanced_trade.server import AdvancedTradeServer
from trader.testing.advanced_trade.wire import Fill, Order, PerpPosition, ProductSpec

__all__ = [
    "AdvancedTradeServer",
    "CdpKey",
    "Fault",
    "FaultKind",
    "Fill",
    "Order",
    "PerpPosition",
    "ProductSpec",
    "RecordedRequest",
    "generate_cdp_key",
    "make_self_signed_cert",
]
