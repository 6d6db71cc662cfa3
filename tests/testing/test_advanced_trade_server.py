"""The local Advanced Trade server, driven through the real coinbase-advanced-py RESTClient over HTTPS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from coinbase.rest import RESTClient

from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey, Fault, generate_cdp_key

ROOT = Path(__file__).resolve().parents[2]
KEY_NAME = "organizations/test-org/apiKeys/test-key"
ACCOUNTS = "/api/v3/brokerage/accounts"
ORDERS = "/api/v3/brokerage/orders"
START_USD = Decimal("100000")


@pytest.fixture(autouse=True)
def _trust_only_the_test_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override session.verify, and proxies must skip loopback."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def key() -> CdpKey:
    return generate_cdp_key(KEY_NAME)


@pytest.fixture
def server(tmp_path: Path, key: CdpKey) -> Iterator[AdvancedTradeServer]:
    balances = {"USD": START_USD, "BTC": Decimal(0), "ETH": Decimal(0), "USDC": Decimal(50), "SOL": Decimal(3)}
    with AdvancedTradeServer(
        key_name=key.name, public_key_pem=key.public_key_pem, cert_dir=tmp_path, balances=balances
    ) as running:
        yield running


def connect(server: AdvancedTradeServer, key: CdpKey, timeout: int = 5) -> RESTClient:
    client = RESTClient(api_key=key.name, api_secret=key.private_key_pem, base_url=server.base_url, timeout=timeout)
    client.session.verify = str(server.ca_file)
    return client


@pytest.fixture
def client(server: AdvancedTradeServer, key: CdpKey) -> RESTClient:
    return connect(server, key)


def http_error(call: Callable[[], object]) -> requests.Response:
    """The response of the HTTPError the SDK raises for `call()`."""
    with pytest.raises(requests.HTTPError) as caught:
        call()
    response = caught.value.response
    assert response is not None
    return response


def test_accounts_are_paginated_with_a_cursor(client: RESTClient, server: AdvancedTradeServer) -> None:
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = client.get_accounts(limit=2, cursor=cursor)
        pages.append([account.currency for account in page.accounts])
        assert page.size == len(page.accounts)
        if not page.has_next:
            assert page.cursor == ""
            break
        cursor = page.cursor

    assert [len(page) for page in pages] == [2, 2, 1]
    assert sorted(currency for page in pages for currency in page) == ["BTC", "ETH", "SOL", "USD", "USDC"]
    usd = next(account for account in client.get_accounts().accounts if account.currency == "USD")
    assert usd.available_balance == {"value": "100000", "currency": "USD"}
    assert usd.hold == {"value": "0", "currency": "USD"}
    assert [r.query.get("limit") for r in server.requests if r.path == ACCOUNTS][:3] == [["2"]] * 3


def test_a_token_signed_with_another_key_is_refused(server: AdvancedTradeServer, key: CdpKey) -> None:
    impostor = generate_cdp_key(key.name)
    client = RESTClient(api_key=key.name, api_secret=impostor.private_key_pem, base_url=server.base_url, timeout=5)
    client.session.verify = str(server.ca_file)

    response = http_error(client.get_accounts)

    assert response.status_code == 401
    assert response.json()["error"] == "UNAUTHENTICATED"
    anonymous = requests.get(f"https://{server.base_url}{ACCOUNTS}", verify=str(server.ca_file), timeout=5)
    assert anonymous.status_code == 401
    recorded = repr(server.requests)
    assert "Bearer" not in recorded and "PRIVATE KEY" not in recorded


def test_a_token_expired_on_the_server_clock_is_refused(client: RESTClient, server: AdvancedTradeServer) -> None:
    assert client.get_api_key_permissions().can_trade is True
    server.clock_offset_seconds = 600  # the SDK's tokens live 120 s

    response = http_error(client.get_accounts)

    assert response.status_code == 401
    assert "expired" in response.text
    server.clock_offset_seconds = 0
    assert client.get_accounts().accounts


def test_public_endpoints_answer_without_credentials(server: AdvancedTradeServer) -> None:
    public = RESTClient(api_key=None, api_secret=None, base_url=server.base_url, timeout=5)
    public.session.verify = str(server.ca_file)

    assert abs(int(public.get_unix_time().epoch_seconds) - time.time()) < 60
    assert {product.product_id for product in public.get_public_products().products} == {"BTC-USD", "ETH-USD"}
    btc = public.get_public_product("BTC-USD")
    assert (btc.base_increment, btc.quote_increment, btc.base_max_size, btc.status) == (
        "0.00000001",
        "0.01",
        "3400",
        "online",
    )
    assert http_error(lambda: public.get_public_product("DOGE-USD")).json()["error"] == "NOT_FOUND"

    now = int(time.time())
    candles = public.get_public_candles("BTC-USD", start=str(now - 3600), end=str(now), granularity="ONE_MINUTE")
    starts = [int(candle.start) for candle in candles.candles]
    assert len(starts) >= 60
    assert all(newer - older == 60 for newer, older in zip(starts, starts[1:], strict=False))  # newest first
    assert abs(starts[0] - now) <= 120  # the still-open bar is the current minute
    too_many = http_error(
        lambda: public.get_public_candles("BTC-USD", start=str(now - 400 * 60), end=str(now), granularity="ONE_MINUTE")
    )
    assert (too_many.status_code, too_many.json()["error"]) == (400, "INVALID_ARGUMENT")

    book = public.get_public_product_book("BTC-USD", limit=3).pricebook
    assert len(book.bids) == len(book.asks) == 3
    assert Decimal(book.bids[0]["price"]) < Decimal(book.asks[0]["price"])


def test_a_repeated_client_order_id_returns_the_original_order(client: RESTClient, server: AdvancedTradeServer) -> None:
    bid, _ = server.quote("BTC-USD")
    limit = bid - 1000  # rests well below the touch

    first = client.limit_order_gtc_buy(
        client_order_id="dup-1", product_id="BTC-USD", base_size="0.01", limit_price=str(limit)
    )
    again = client.limit_order_gtc_buy(
        client_order_id="dup-1", product_id="BTC-USD", base_size="0.01", limit_price=str(limit)
    )

    assert first.success and again.success
    assert again.response["order_id"] == first.response["order_id"]
    assert list(server.orders) == [first.response["order_id"]]
    available, hold = server.balance("USD")
    assert hold == Decimal("0.01") * limit * Decimal("1.006")  # size x limit plus the highest fee, held once
    assert available + hold == START_USD


def test_a_market_buy_takes_the_ask_and_moves_balances(client: RESTClient, server: AdvancedTradeServer) -> None:
    _, ask = server.quote("BTC-USD")

    created = client.market_order_buy(client_order_id="mkt-1", product_id="BTC-USD", base_size="0.01")

    order_id = created.response["order_id"]
    [fill] = client.get_fills(order_ids=[order_id]).fills
    value = Decimal("0.01") * ask
    fee = value * Decimal("0.006")
    assert (fill["liquidity_indicator"], fill["side"], fill["trade_type"]) == ("TAKER", "BUY", "FILL")
    assert (Decimal(fill["price"]), Decimal(fill["size"]), Decimal(fill["commission"])) == (ask, Decimal("0.01"), fee)
    assert server.balance("USD") == (START_USD - value - fee, 0)
    assert server.balance("BTC") == (Decimal("0.01"), 0)
    order = client.get_order(order_id).order
    assert (order.status, order.order_type, order.time_in_force) == ("FILLED", "MARKET", "IMMEDIATE_OR_CANCEL")
    assert (Decimal(order.filled_size), Decimal(order.total_fees)) == (Decimal("0.01"), fee)
    accounts = {account.currency: account for account in client.get_accounts().accounts}
    assert Decimal(accounts["BTC"].available_balance["value"]) == Decimal("0.01")

    too_big = client.market_order_buy(client_order_id="mkt-2", product_id="BTC-USD", base_size="100")
    assert too_big.success is False
    assert too_big.response["error"] == "INSUFFICIENT_FUND"
    assert too_big.response["preview_failure_reason"] == "PREVIEW_INSUFFICIENT_FUND"
    assert len(server.orders) == 1


def test_batch_cancel_refuses_more_than_100_ids_and_cancels_nothing(
    client: RESTClient, server: AdvancedTradeServer
) -> None:
    bid, _ = server.quote("BTC-USD")
    ids = [
        client.limit_order_gtc_buy(
            client_order_id=f"rest-{n}", product_id="BTC-USD", base_size="0.001", limit_price=str(bid - 500)
        ).response["order_id"]
        for n in range(2)
    ]

    refused = http_error(lambda: client.cancel_orders(order_ids=ids + [f"missing-{n}" for n in range(99)]))

    assert (refused.status_code, refused.json()["error"]) == (400, "INVALID_ARGUMENT")
    assert [server.orders[order_id].status for order_id in ids] == ["OPEN", "OPEN"]
    assert server.balance("USD")[1] > 0
    results = client.cancel_orders(order_ids=[*ids, "missing"]).results
    assert [(r.order_id, r.success, r.failure_reason) for r in results] == [
        (ids[0], True, "UNKNOWN_CANCEL_FAILURE_REASON"),
        (ids[1], True, "UNKNOWN_CANCEL_FAILURE_REASON"),
        ("missing", False, "UNKNOWN_CANCEL_ORDER"),
    ]
    assert server.balance("USD") == (START_USD, 0)
    assert [server.orders[order_id].status for order_id in ids] == ["CANCELLED", "CANCELLED"]


def test_each_fault_is_served_then_normal_service_resumes(server: AdvancedTradeServer, key: CdpKey) -> None:
    client = connect(server, key, timeout=10)

    server.inject(Fault(kind="429", method="GET", path=ACCOUNTS, times=2, retry_after=0.2))
    for _ in range(2):
        limited = http_error(client.get_accounts)
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "0.2")
        assert limited.json()["error"] == "RATE_LIMIT_EXCEEDED"
    assert client.get_accounts().accounts

    for kind in ("500", "503"):
        server.inject(Fault(kind=kind, path=ACCOUNTS))
        assert http_error(client.get_accounts).status_code == int(kind)
        assert client.get_accounts().accounts

    server.inject(Fault(kind="malformed", path=ACCOUNTS))
    with pytest.raises(requests.exceptions.JSONDecodeError):
        client.get_accounts()
    assert client.get_accounts().accounts

    server.inject(Fault(kind="error", path=ACCOUNTS, status=418, body={"error": "TEAPOT", "message": "short, stout"}))
    assert http_error(client.get_accounts).json() == {"error": "TEAPOT", "message": "short, stout"}
    assert client.get_accounts().accounts

    # The order is created, then the answer hangs past the client's time-out: the client never learns the order id.
    hasty = connect(server, key, timeout=2)
    hasty.get_unix_time()  # open the connection first, so the time-out below can only be the read
    server.inject(Fault(kind="timeout", method="POST", path=ORDERS, delay=60, process=True))
    with pytest.raises(requests.exceptions.Timeout):
        hasty.market_order_buy(client_order_id="lost-ack", product_id="BTC-USD", quote_size="100")
    [order] = server.orders.values()
    assert (order.client_order_id, order.status) == ("lost-ack", "FILLED")
    retry = client.market_order_buy(client_order_id="lost-ack", product_id="BTC-USD", quote_size="100")
    assert retry.response["order_id"] == order.order_id
    assert len(server.orders) == 1 and len(server.fills) == 1

    served = [r.fault for r in server.requests if r.fault is not None]
    assert served == ["429", "429", "500", "503", "malformed", "error", "timeout"]
    started = time.monotonic()
    server.stop()  # the hung handler must not hold the stop up
    assert time.monotonic() - started < 30


def test_fill_pages_hold_every_fill_once_newest_first(client: RESTClient, server: AdvancedTradeServer) -> None:
    for n in range(7):
        client.market_order_buy(client_order_id=f"buy-{n}", product_id="ETH-USD", quote_size="20")
    expected = [fill.trade_id for fill in reversed(server.fills)]

    page = client.get_fills(product_ids=["ETH-USD"], limit=3)
    pages = [page.fills]
    client.market_order_buy(client_order_id="late", product_id="ETH-USD", quote_size="20")  # arrives mid-walk
    while page.cursor:
        page = client.get_fills(product_ids=["ETH-USD"], limit=3, cursor=page.cursor)
        pages.append(page.fills)

    assert [len(fills) for fills in pages] == [3, 3, 1]
    assert [fill["trade_id"] for fills in pages for fill in fills] == expected
    assert len(client.get_fills(limit=100).fills) == 8


def test_resting_orders_fill_as_maker_and_stops_trigger_on_price_moves(
    client: RESTClient, server: AdvancedTradeServer
) -> None:
    bid, _ = server.quote("BTC-USD")
    limit = bid - 100
    order_id = client.limit_order_gtc_buy(
        client_order_id="maker", product_id="BTC-USD", base_size="0.02", limit_price=str(limit)
    ).response["order_id"]
    server.fill_order(order_id, size="0.005")
    assert client.edit_order(order_id, size="0.01", price=str(limit)).success
    order = client.get_order(order_id).order
    assert (order.status, order.filled_size, order.edit_history[-1]["size"]) == ("OPEN", "0.005", "0.01")

    server.set_price("BTC-USD", limit - 10, limit - 5)  # the market trades down through the resting bid

    order = client.get_order(order_id).order
    assert (order.status, order.filled_size) == ("FILLED", "0.01")
    fills = client.get_fills(order_ids=[order_id]).fills
    assert {(fill["liquidity_indicator"], Decimal(fill["price"])) for fill in fills} == {("MAKER", limit)}
    assert server.balance("USD")[1] == 0 and server.balance("BTC") == (Decimal("0.01"), 0)

    bid, _ = server.quote("BTC-USD")
    post_only = client.limit_order_gtc_sell(
        client_order_id="po", product_id="BTC-USD", base_size="0.005", limit_price=str(bid), post_only=True
    )
    assert (post_only.success, post_only.response["error"]) == (False, "INVALID_LIMIT_PRICE_POST_ONLY")

    stop_id = client.stop_limit_order_gtc_sell(
        client_order_id="stop",
        product_id="BTC-USD",
        base_size="0.01",
        limit_price=str(bid - 200),
        stop_price=str(bid - 100),
        stop_direction="STOP_DIRECTION_STOP_DOWN",
    ).response["order_id"]
    assert server.orders[stop_id].trigger_status == "STOP_PENDING"
    server.set_price("BTC-USD", bid - 150, bid - 140)
    stopped = server.orders[stop_id]
    assert (stopped.status, stopped.trigger_status) == ("FILLED", "STOP_TRIGGERED")
    assert (server.fills[-1].liquidity_indicator, server.fills[-1].price) == ("TAKER", bid - 150)


def test_the_command_line_server_writes_server_json_and_stops_on_sigterm(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "trader.testing.advanced_trade", "--state-dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    info_path = tmp_path / "server.json"
    try:
        deadline = time.monotonic() + 120
        while not info_path.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "server.json never appeared"
            time.sleep(0.05)
        info = json.loads(info_path.read_text())
        assert (tmp_path / "cdp_key.json").stat().st_mode & 0o777 == 0o600
        client = RESTClient(
            api_key=None, api_secret=None, key_file=info["key_file"], base_url=info["base_url"], timeout=10
        )
        client.session.verify = info["ca_file"]

        assert abs(int(client.get_unix_time().epoch_seconds) - time.time()) < 60
        assert {"USD", "BTC", "ETH"} <= {account.currency for account in client.get_accounts().accounts}

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not info_path.exists()
