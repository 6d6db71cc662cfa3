"""Coinbase's request limits on the test server: private endpoints per API key, public ones per client IP.

Each caller may send at most `per_second` requests in any one-second window (a sliding window, as strict as a
server can count); one more is answered 429 RATE_LIMIT_EXCEEDED with Retry-After (seconds until the window frees
a slot). Every answer under a limit carries x-ratelimit-limit, x-ratelimit-remaining and x-ratelimit-reset (epoch
seconds at which the oldest request in the window leaves it), as the SDK's rate_limit_headers reads them.
"""

from __future__ import annotations

import math
import threading
from collections import deque

from trader.testing.advanced_trade.wire import _Answer, _seconds

WINDOW_SECONDS = 1.0


class RequestLimit:
    """At most `per_second` requests per caller in any one-second window; see the module docstring."""

    def __init__(self, per_second: float) -> None:
        if per_second <= 0:
            raise ValueError(f"a request limit is above 0 per second, got {per_second}")
        self.per_second = per_second
        self.refused = 0  # requests answered 429 so far
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, caller: str, now: float) -> tuple[bool, dict[str, str]]:
        """Whether this request may be served, and the x-ratelimit-* (and Retry-After) headers of its answer."""
        limit = math.floor(self.per_second)
        with self._lock:
            seen = self._seen.setdefault(caller, deque())
            while seen and seen[0] <= now - WINDOW_SECONDS:
                seen.popleft()
            admitted = len(seen) < limit
            if admitted:
                seen.append(now)
            else:
                self.refused += 1
            reset = (seen[0] if seen else now) + WINDOW_SECONDS
            headers = {
                "x-ratelimit-limit": str(limit),
                "x-ratelimit-remaining": str(max(limit - len(seen), 0)),
                "x-ratelimit-reset": f"{math.ceil(reset * 1000) / 1000:.3f}",  # rounded up: never early
            }
        if not admitted:
            headers["Retry-After"] = _seconds(max(reset - now, 0.001))
        return admitted, headers


def rate_limited(headers: dict[str, str]) -> _Answer:
    """Coinbase's 429 answer, with these headers (Retry-After, x-ratelimit-*)."""
    body = {"error": "RATE_LIMIT_EXCEEDED", "error_details": "", "message": "Too many requests"}
    return _Answer(429, body, headers=headers)
