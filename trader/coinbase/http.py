"""Coinbase Advanced Trade over the official SDK: credentials, the RESTClient, retries and error mapping.

Every call has a timeout (COINBASE_TIMEOUT_SECONDS). Reads retry 429s after Retry-After and 5xx, timeouts,
dropped connections and malformed JSON with exponential backoff and full jitter, COINBASE_MAX_RETRIES times.
Writes are never retried here: `send` makes one attempt and reports whether the exchange may have acted
(`BrokerUnavailable`) so the adapter can look the order up before anything is sent again.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from trader.coinbase.ratelimit import RateLimiter, Scope, shared_limiter
from trader.errors import AuthenticationFailed, BrokerError, BrokerUnavailable, ConfigError
from trader.fsio import atomic_write
from trader.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_RETRY_AFTER_SECONDS = 60.0
MAX_HEADER_HOLD_SECONDS = 5.0  # x-ratelimit-reset: Coinbase's windows are a second long
PUBLIC_PATHS = ("/api/v3/brokerage/market/", "/api/v3/brokerage/time")  # Coinbase's public endpoints


@dataclass(frozen=True)
class Credentials:
    """A CDP API key: its name (organizations/…/apiKeys/…) and EC private key; repr never shows the key."""

    name: str
    private_key: SecretStr = field(repr=False)


KeySlot = Literal["primary", "backup"]
KEY_SLOTS: tuple[KeySlot, ...] = ("primary", "backup")
ACTIVE_KEY_FILE = "ACTIVE_KEY"  # in STATE_DIR: which key the account's bots use (perps-bot keys rotate)
# In STATE_DIR, mode 0600: the backup key perps-bot keys rotate read from the Prefect Secret blocks, there only while
# the account's bots use it. Beside ACTIVE_KEY so that every bot on this STATE_DIR can switch to it at its next cycle
# (their settings were read at start, and trader/ never asks Prefect: a bot must switch with the API down).
BACKUP_KEY_COPY = "backup_key.json"


def load_credentials(settings: Settings, slot: KeySlot = "primary") -> Credentials | None:
    """The key from COINBASE_KEY_FILE or COINBASE_API_KEY/COINBASE_API_SECRET (the COINBASE_BACKUP_* ones for the
    backup slot, else the copy of the Secret blocks' in STATE_DIR/backup_key.json), checked before any request."""
    prefix = "COINBASE_" if slot == "primary" else "COINBASE_BACKUP_"
    key_file = settings.coinbase_key_file if slot == "primary" else settings.coinbase_backup_key_file
    api_key = settings.coinbase_api_key if slot == "primary" else settings.coinbase_backup_api_key
    api_secret = settings.coinbase_api_secret if slot == "primary" else settings.coinbase_backup_api_secret
    if key_file is not None:
        return _key_file(Path(key_file), source=f"{prefix}KEY_FILE")
    if api_key and api_secret:
        return _checked(api_key.get_secret_value(), api_secret.get_secret_value(), source=f"{prefix}API_SECRET")
    copy = Path(settings.state_dir) / BACKUP_KEY_COPY
    if slot == "backup" and copy.exists():
        return _key_file(copy, source=f"STATE_DIR/{BACKUP_KEY_COPY}")
    return None


def backup_key_in_environment(settings: Settings) -> bool:
    """COINBASE_BACKUP_KEY_FILE or COINBASE_BACKUP_API_KEY/_SECRET is set: it wins over the Prefect Secret blocks."""
    return settings.coinbase_backup_key_file is not None or settings.coinbase_backup_api_key is not None


def credentials_from(name: str, secret: str, *, source: str) -> Credentials:
    """A key from its name and PEM secret (read elsewhere, e.g. from Secret blocks), checked; `source` names where
    it came from in the ConfigError (never the values)."""
    return _checked(name, secret, source=source)


def keep_backup_key_copy(settings: Settings, credentials: Credentials) -> Path:
    """STATE_DIR/backup_key.json (a CDP key file, mode 0600 from its first byte): the backup key for the bots."""
    path = Path(settings.state_dir) / BACKUP_KEY_COPY
    key_file = {"name": credentials.name, "privateKey": credentials.private_key.get_secret_value()}
    atomic_write(path, json.dumps(key_file), mode=0o600)
    return path


def drop_backup_key_copy(settings: Settings) -> bool:
    """Remove STATE_DIR/backup_key.json; whether there was one."""
    try:
        (Path(settings.state_dir) / BACKUP_KEY_COPY).unlink()
    except FileNotFoundError:
        return False
    return True


def active_key_slot(settings: Settings) -> KeySlot:
    """The key the account's bots use: STATE_DIR/ACTIVE_KEY (perps-bot keys rotate writes it), primary without."""
    try:
        text = (Path(settings.state_dir) / ACTIVE_KEY_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return "primary"
    return "backup" if text == "backup" else "primary"


def _key_file(path: Path, *, source: str) -> Credentials:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        name, secret = str(data["name"]), str(data["privateKey"])
    except FileNotFoundError:
        raise ConfigError(f"{source}: {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{source}: {path} is not a CDP key file (JSON with name and privateKey)") from None
    return _checked(name, secret, source=source)


def _checked(name: str, secret: str, *, source: str) -> Credentials:
    # Keys pasted into .env files often carry literal \n; the SDK unescapes the same way.
    pem = secret.replace("\\n", "\n").strip() + "\n"
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(
            f"{source}: not an EC P-256 private key in PEM; use the privateKey of a CDP key (ECDSA), "
            "BEGIN/END lines included"
        )
    if not name.strip():
        raise ConfigError(f"{source}: the key name is empty; use the CDP key's name (organizations/…/apiKeys/…)")
    return Credentials(name.strip(), SecretStr(pem))


def build_rest_client(settings: Settings, credentials: Credentials | None) -> Any:
    """The SDK's RESTClient on COINBASE_API_BASE, credentials passed explicitly (the SDK reads env only at import);
    every request waits on the shared rate limiter of its key (trader/coinbase/ratelimit.py)."""
    from coinbase.rest import RESTClient

    _quiet_sdk_logger()
    client = RESTClient(
        api_key=credentials.name if credentials else None,
        api_secret=credentials.private_key.get_secret_value() if credentials else None,
        base_url=settings.coinbase_api_base,
        timeout=settings.coinbase_timeout_seconds,  # type: ignore[arg-type]  # requests takes float seconds
    )
    ca_file: str | None = None
    if settings.coinbase_ca_file is not None:
        path = Path(settings.coinbase_ca_file)
        if not path.is_file():
            raise ConfigError(f"COINBASE_CA_FILE: {path} does not exist; give a PEM CA bundle or unset it")
        ca_file = str(path)
    limiter = shared_limiter(settings.rate_limit_max_rps, settings.redis_url, credentials.name if credentials else None)
    client.session = _Session(ca_file, limiter)
    return client


def request_scope(url: str) -> Scope:
    """Which of Coinbase's limits a request counts against: public market data and time per IP, the rest per user."""
    path = urlsplit(url).path
    return "public" if path.startswith(PUBLIC_PATHS) else "private"


class _Session(requests.Session):
    """The SDK's session: waits on the rate limiter before each request and takes the exchange's x-ratelimit-*
    headers and 429s into it after; with COINBASE_CA_FILE it verifies against that file even when
    REQUESTS_CA_BUNDLE is set (requests lets the environment beat session.verify). Proxies from the environment
    still apply."""

    def __init__(self, ca_file: str | None, limiter: RateLimiter) -> None:
        super().__init__()
        if ca_file is not None:
            self.verify = ca_file
        self.ca_file = ca_file
        self.limiter = limiter

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if self.ca_file is not None and kwargs.get("verify") is None:
            kwargs["verify"] = self.ca_file
        scope = request_scope(url)
        self.limiter.acquire(scope)
        response = super().request(method, url, *args, **kwargs)
        self.limiter.pause(scope, _held_for(response))
        return response


def _held_for(response: requests.Response) -> float:
    """Seconds the exchange asks every request of this scope to wait: a 429's Retry-After (1 s without one), or
    until x-ratelimit-reset when x-ratelimit-remaining is 0 (reset as epoch seconds or milliseconds, or as seconds
    from now; at most MAX_HEADER_HOLD_SECONDS)."""
    if response.status_code == 429:
        after = _retry_after(response)
        return 1.0 if after is None else after
    try:
        remaining = float(response.headers.get("x-ratelimit-remaining", "1"))
        reset = float(response.headers.get("x-ratelimit-reset", "0"))
    except ValueError:
        return 0.0
    if remaining > 0 or reset <= 0:
        return 0.0
    if reset > 1e11:  # epoch milliseconds
        reset /= 1000
    # Seconds from now, or an epoch time read against this machine's clock: a clock behind the exchange's would
    # turn every exhausted window into a long hold for all bots, so a header never holds longer than a few seconds.
    wait = reset - time.time() if reset > 1e9 else reset
    return min(wait, MAX_HEADER_HOLD_SECONDS)


def _quiet_sdk_logger() -> None:
    """The SDK logs every HTTP error to its own stderr handler; route it through ours instead."""
    sdk = logging.getLogger("coinbase.RESTClient")
    sdk.handlers.clear()
    sdk.setLevel(logging.CRITICAL)


class NotFound(BrokerError):
    """HTTP 404: the product or order does not exist; the adapter turns it into UnknownSymbol/OrderNotFound."""


def plain_json(value: Any) -> Any:
    """The SDK's typed responses (attribute bags) back to plain JSON values."""
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    if hasattr(value, "__dict__") and type(value).__module__.startswith("coinbase."):
        return {k: plain_json(v) for k, v in vars(value).items()}
    return value


# --- failures ----------------------------------------------------------------------------------------------------

Kind = Literal["rate_limited", "transient", "auth", "forbidden", "not_found", "rejected", "tls"]


@dataclass(frozen=True)
class Failure:
    """One failed call, classified: what the exchange said and whether it may have acted."""

    kind: Kind
    status: int | None
    error: str  # the exchange's error code (INSUFFICIENT_FUND, UNAUTHENTICATED, …) or the transport's
    message: str  # the exchange's message, one line
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in ("rate_limited", "transient")

    def describe(self) -> str:
        status = f"HTTP {self.status} " if self.status else ""
        return f"{status}{self.error}: {self.message}" if self.message else f"{status}{self.error}"


def classify(error: Exception) -> Failure | None:
    """A Failure for the errors the SDK and requests raise; None for anything else (a bug: let it raise)."""
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return _http_failure(error.response)
    if isinstance(error, requests.exceptions.SSLError):
        return Failure("tls", None, "TLS", _one_line(str(error), 160))
    if isinstance(error, requests.Timeout):
        return Failure("transient", None, "TIMEOUT", "no answer within the timeout")
    if isinstance(error, requests.ConnectionError):
        return Failure("transient", None, "CONNECTION", "connection failed or dropped")
    if isinstance(error, ValueError):  # requests' JSONDecodeError: a truncated or non-JSON body
        return Failure("transient", None, "MALFORMED_RESPONSE", "the answer was not valid JSON")
    return None


def _http_failure(response: requests.Response) -> Failure:
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("error") or body.get("error_response", {}).get("error") or response.reason or "")
        message = str(body.get("message") or body.get("error_details") or "")
    else:
        code, message = str(response.reason or ""), _one_line(response.text, 200)
    details = str(body.get("error_details") or "") if isinstance(body, dict) else ""
    if details and details not in message:
        message = f"{message} ({details})" if message else details
    message = _one_line(message, 300)
    if status == 429:
        return Failure("rate_limited", status, code or "RATE_LIMITED", message, _retry_after(response))
    if status >= 500:
        return Failure("transient", status, code or "SERVER_ERROR", message)
    if status == 401:
        return Failure("auth", status, code or "UNAUTHENTICATED", message)
    if status == 403:
        return Failure("forbidden", status, code or "PERMISSION_DENIED", message)
    if status == 404:
        return Failure("not_found", status, code or "NOT_FOUND", message)
    return Failure("rejected", status, code or "INVALID_ARGUMENT", message)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def raise_for(failure: Failure, what: str, host: str) -> NoReturn:
    """The project's exception for a failure that will not be retried (or ran out of retries)."""
    said = failure.describe()
    if failure.kind == "auth":
        raise AuthenticationFailed(
            f"Coinbase refused the API key for {what} ({said}); check COINBASE_API_KEY/COINBASE_API_SECRET or "
            "COINBASE_KEY_FILE, that the key is not expired or revoked, and the machine clock"
        )
    if failure.kind == "forbidden":
        raise AuthenticationFailed(
            f"Coinbase denied {what} ({said}); the key lacks the permission: create a key with view/trade scope"
        )
    if failure.kind == "tls":
        raise ConfigError(
            f"COINBASE_CA_FILE: TLS verification of {host} failed for {what}; give the server's CA bundle ({said})"
        )
    if failure.kind == "not_found":
        raise NotFound(f"Coinbase {what}: {said}")
    if failure.retryable:
        raise BrokerUnavailable(f"Coinbase {what} failed ({said}) at {host}")
    raise BrokerError(f"Coinbase {what} refused ({said})")


# --- calling -----------------------------------------------------------------------------------------------------


@dataclass
class CallPolicy:
    """Retries with exponential backoff and full jitter; Retry-After wins when the exchange sends one."""

    max_retries: int = 4
    base_delay: float = 0.25
    max_delay: float = 8.0
    host: str = "api.coinbase.com"
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random
    retries: int = 0  # counted for metrics and tests

    def delay(self, attempt: int, failure: Failure) -> float:
        if failure.retry_after is not None:
            return failure.retry_after
        return min(self.max_delay, self.base_delay * 2**attempt) * self.jitter()

    def read(self, what: str, call: Callable[[], T]) -> T:
        """A call that changes nothing: retried on rate limits and transient failures."""
        attempt = 0
        while True:
            result = _attempt(call)
            if not isinstance(result, Failure):
                return result
            if not result.retryable or attempt >= self.max_retries:
                raise_for(result, what, self.host)
            pause = self.delay(attempt, result)
            attempt += 1
            self.retries += 1
            log.warning(
                "coinbase %s: %s; retry %d/%d in %.2f s", what, result.describe(), attempt, self.max_retries, pause
            )
            self.sleep(pause)

    def send(self, what: str, call: Callable[[], T]) -> T | Failure:
        """One attempt at a call that may change state; a retryable failure is returned, not raised."""
        result = _attempt(call)
        if isinstance(result, Failure):
            if not result.retryable:
                raise_for(result, what, self.host)
            log.warning("coinbase %s: %s; the exchange may have acted", what, result.describe())
        return result


def _attempt(call: Callable[[], T]) -> T | Failure:
    """The call's result, or the classified Failure it raised (errors that are not the exchange's re-raise)."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - classified here; unknown errors re-raise
        failure = classify(error)
        if failure is None:
            raise
        return failure


def parse_server_time(data: Any) -> datetime:
    """Coinbase's clock from a GET /time answer (the SDK renames epochMillis to epoch_millis; iso is kept)."""
    plain = plain_json(data)
    millis = plain.get("epoch_millis") or plain.get("epochMillis")
    if millis is not None:
        return datetime.fromtimestamp(int(millis) / 1000, tz=UTC)
    return datetime.fromisoformat(str(plain["iso"]).replace("Z", "+00:00"))
