"""A local HTTP server that speaks enough of the Slack Web API and incoming webhooks for the real slack-sdk.

    with SlackRecorder(token="xoxb-test") as slack:
        client = WebClient(token="xoxb-test", base_url=slack.base_url)
        client.chat_postMessage(channel="#ops", text="hello")
        assert slack.posts()[0].body["text"] == "hello"

It answers `POST /api/chat.postMessage`, `/api/chat.update`, `/api/auth.test` (bearer token checked like Slack:
HTTP 200 with `{"ok": false, "error": "invalid_auth"}`), and `POST {webhook_path}` (the webhook URL is the secret:
any other path is a 404 `no_service`). Every request is recorded with its JSON (or form) body; the Authorization
header is checked, never kept. Faults: `fail_next(429, retry_after=1)`, `fail_next(500)`, and `go_down()` /
`come_back()` (stop and restart listening on the same port).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

JsonObject = dict[str, Any]
API_METHODS = ("chat.postMessage", "chat.update", "auth.test")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the recorder received: which endpoint, its parsed body, whether the token matched, the answer."""

    endpoint: str  # an API method name, or "webhook"
    body: JsonObject
    authorized: bool
    status: int


@dataclass(frozen=True)
class _Fault:
    status: int
    retry_after: int | None


class SlackRecorder:
    """Slack on 127.0.0.1 (a free port); `base_url` for WebClient, `webhook_url` for WebhookClient."""

    def __init__(
        self,
        *,
        token: str = "xoxb-recorder-token",
        channel_id: str = "C0RECORDER",
        webhook_path: str = "/services/T0RECORDER/B0RECORDER/recorder-webhook-secret",
        port: int = 0,
    ) -> None:
        self.token = token
        self.channel_id = channel_id
        self.webhook_path = webhook_path
        self.port = port
        self._lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._faults: deque[_Fault] = deque()
        self._messages: dict[str, JsonObject] = {}  # ts -> message
        self._next_ts = 1_700_000_000_000100
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> SlackRecorder:
        """Listen (on the same port as before after go_down) and serve in a daemon thread."""
        recorder = self

        class Handler(_Handler):
            owner = recorder

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="slack-recorder", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; connections are refused until start()."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    go_down = stop

    def come_back(self) -> None:
        """Listen again on the same port after go_down()."""
        self.start()

    def __enter__(self) -> SlackRecorder:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.webhook_path}"

    # --- faults and assertions -------------------------------------------------------------------------------------

    def fail_next(self, status: int, *, retry_after: int | None = None, times: int = 1) -> None:
        """Answer the next `times` requests with this HTTP status (429 carries Retry-After)."""
        with self._lock:
            self._faults.extend(_Fault(status, retry_after) for _ in range(times))

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def calls(self, endpoint: str) -> list[RecordedRequest]:
        """Requests to one endpoint that were answered 200, oldest first."""
        return [r for r in self.requests if r.endpoint == endpoint and r.status == 200]

    def posts(self) -> list[RecordedRequest]:
        """Successful chat.postMessage calls with a valid token."""
        return [r for r in self.calls("chat.postMessage") if r.authorized]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    # --- the API ---------------------------------------------------------------------------------------------------

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _new_ts(self) -> str:
        with self._lock:
            self._next_ts += 100
            value = str(self._next_ts)
        return f"{value[:10]}.{value[10:]}"

    def answer(self, method: str, body: JsonObject) -> JsonObject:
        """Slack's JSON answer to an authorized API call."""
        with self._lock:
            return self._answer(method, body)

    def _answer(self, method: str, body: JsonObject) -> JsonObject:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://recorder.slack.com/",
                "team": "recorder",
                "user": "gpt-trader",
                "team_id": "T0RECORDER",
                "user_id": "U0RECORDER",
                "bot_id": "B0RECORDER",
            }
        if not body.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not (body.get("text") or body.get("blocks")):
            return {"ok": False, "error": "no_text"}
        if method == "chat.postMessage":
            thread_ts = body.get("thread_ts")
            if thread_ts and thread_ts not in self._messages:
                return {"ok": False, "error": "thread_not_found"}
            ts = self._new_ts()
            message = {"type": "message", "text": body.get("text", ""), "ts": ts, "bot_id": "B0RECORDER"}
            if thread_ts:
                message["thread_ts"] = thread_ts
            self._messages[ts] = message
            return {"ok": True, "channel": self.channel_id, "ts": ts, "message": message}
        ts = str(body.get("ts", ""))
        if ts not in self._messages:
            return {"ok": False, "error": "message_not_found"}
        self._messages[ts]["text"] = body.get("text", "")
        return {"ok": True, "channel": self.channel_id, "ts": ts, "text": body.get("text", "")}


class _Handler(BaseHTTPRequestHandler):
    owner: SlackRecorder
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # the default writes every request to stderr
        pass

    def do_POST(self) -> None:
        recorder = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = _parse_body(raw, self.headers.get("Content-Type", ""))
        path = self.path.split("?", 1)[0]
        if path == recorder.webhook_path:
            endpoint = "webhook"
            authorized = True
        elif path.startswith("/api/") and path.removeprefix("/api/") in API_METHODS:
            endpoint = path.removeprefix("/api/")
            authorized = self.headers.get("Authorization", "") == f"Bearer {recorder.token}"
        else:
            recorder._record(RecordedRequest(path if path.startswith("/api/") else "unknown", body, False, 404))
            self._send(404, b"no_service", "text/plain")
            return
        fault = recorder._take_fault()
        if fault is not None:
            recorder._record(RecordedRequest(endpoint, body, authorized, fault.status))
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            error = {"ok": False, "error": "ratelimited" if fault.status == 429 else "internal_error"}
            self._send(fault.status, json.dumps(error).encode(), "application/json", headers)
            return
        if endpoint == "webhook":
            # Slack takes a webhook message with text, blocks or attachments (Alertmanager sends attachments only).
            valid = bool(body.get("text") or body.get("blocks") or body.get("attachments"))
            recorder._record(RecordedRequest(endpoint, body, authorized, 200 if valid else 400))
            self._send(200, b"ok", "text/plain") if valid else self._send(400, b"invalid_payload", "text/plain")
            return
        recorder._record(RecordedRequest(endpoint, body, authorized, 200))
        answer = recorder.answer(endpoint, body) if authorized else {"ok": False, "error": "invalid_auth"}
        self._send(200, json.dumps(answer).encode(), "application/json; charset=utf-8")

    def _send(self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


def _parse_body(raw: bytes, content_type: str) -> JsonObject:
    """JSON bodies as they are; form bodies (the SDK's default) with JSON-looking fields decoded."""
    if not raw:
        return {}
    text = raw.decode("utf-8", errors="replace")
    if "json" in content_type:
        try:
            value = json.loads(text)
        except ValueError:
            return {"_raw": text}
        return value if isinstance(value, dict) else {"_raw": value}
    fields: JsonObject = {}
    for key, values in parse_qs(text, keep_blank_values=True).items():
        value = values[-1]
        if value[:1] in "[{":
            try:
                fields[key] = json.loads(value)
                continue
            except ValueError:
                pass
        fields[key] = value
    return fields
