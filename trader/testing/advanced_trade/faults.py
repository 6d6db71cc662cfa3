"""Fault injection for the Advanced Trade test server, and the record it keeps of every request.

A `Fault` is served to the next `times` matching requests instead of (or, with `process=True`, after) the real
answer; `RecordedRequest` is what `server.requests` returns (method, path, query, body; never headers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from trader.testing.advanced_trade.limits import rate_limited
from trader.testing.advanced_trade.wire import JsonObject, _Answer, _compact_json, _seconds

FaultKind = Literal["429", "500", "503", "timeout", "malformed", "error"]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))


@dataclass
class Fault:
    """A misbehaviour served to the next `times` requests whose method matches and whose path starts with `path`.

    Kinds: "429" (RATE_LIMIT_EXCEEDED with a Retry-After header of `retry_after` seconds), "500" and "503" (JSON
    error bodies), "timeout" (hang `delay` seconds, then answer normally), "malformed" (HTTP 200 with a truncated
    JSON body), "error" (`status` with `body`). With `process=True` the request takes effect first (an order is
    created, a cancel happens): a timeout then hangs before the real answer, the other kinds replace it.
    """

    kind: FaultKind
    method: str | None = None  # None matches every method
    path: str = "/"  # a prefix of the request path, e.g. "/api/v3/brokerage/orders"
    times: int = 1
    retry_after: float = 1.0
    delay: float = 5.0
    process: bool = False
    status: int = 400
    body: JsonObject | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(sorted(FAULT_KINDS))}")

    def matches(self, method: str, path: str) -> bool:
        method_ok = self.method is None or self.method.upper() == method
        return self.times > 0 and method_ok and path.startswith(self.path)

    def answer(self, processed: _Answer | None, path: str) -> _Answer:
        """The answer this fault gives instead of `processed` (the real answer when the request was processed)."""
        if self.kind == "429":
            return rate_limited({"Retry-After": _seconds(self.retry_after)})
        if self.kind == "500":
            return _Answer(500, {"error": "INTERNAL", "error_details": "", "message": "Internal server error"})
        if self.kind == "503":
            return _Answer(503, {"error": "UNAVAILABLE", "error_details": "", "message": "Service unavailable"})
        if self.kind == "malformed":
            if processed is not None:
                text = _compact_json(processed.payload)
                return _Answer(200, raw=text[: max(1, len(text) // 2)].encode("utf-8"))
            resource = path.rstrip("/").rsplit("/", 1)[-1] or "data"
            return _Answer(200, raw=f'{{"{resource}": ['.encode())
        body = self.body if self.body is not None else {"error": "INVALID_ARGUMENT", "message": "injected error"}
        return _Answer(self.status, body)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (headers are never kept); `fault` is the kind served instead, if any."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: JsonObject | None
    fault: str | None
    at: float = 0.0  # when the server received it (epoch seconds)
