"""A real S3 for the cold tier: moto's S3 server on a free loopback port, stoppable mid-test for a real outage."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto.moto_server import threaded_moto_server as tms
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _QuickStopMotoServer(ThreadedMotoServer):
    """moto's threaded server, polling for shutdown every 50 ms instead of 500 (stop() is called a lot here)."""

    def _server_entry(self) -> None:
        app = tms.DomainDispatcherApplication(tms.create_backend_app)
        self._server = tms.make_server(self._ip_address, self._port, app, True, request_handler=tms.MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever(poll_interval=0.05)  # werkzeug closes the socket when it returns


class MotoServer:
    """moto's S3 server on a free loopback port; stop() is a real outage (connection refused), start() brings it
    back on the same port. moto keeps buckets in process-wide memory, so a server restarted in this process still
    has them (a restarted standalone moto would not): tests assert on what a sync uploads, not on what survived."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        assert self._server is None, "already running"
        server = _QuickStopMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


class MotoS3:
    """A bucket of its own on a moto server, with boto3 helpers to look at what really landed in S3."""

    def __init__(self, server: MotoServer) -> None:
        self.server = server
        self.endpoint = server.endpoint
        self.bucket = f"cold-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()
        self.client().create_bucket(Bucket=self.bucket)  # idempotent in us-east-1

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def url(self, prefix: str = "gpt-trader/cold") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for moto; no profile, CA bundle or real endpoint from the machine leaks in."""
    for name in ("AWS_PROFILE", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto S3 server shared by the tests that never stop it (starting one costs about a second)."""
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def moto_s3(aws_env: None, moto_server: MotoServer) -> MotoS3:
    """A fresh bucket on the shared moto server; never stop this one (use s3_outage)."""
    return MotoS3(moto_server)


@pytest.fixture
def s3_outage(aws_env: None) -> Iterator[MotoS3]:
    """A fresh bucket on a moto server of this test's own, which the test may stop (outage) and start again."""
    server = MotoServer()
    server.start()
    try:
        yield MotoS3(server)
    finally:
        server.stop()
