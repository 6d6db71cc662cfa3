"""The COLD tier: named immutable objects in a local folder or on S3, and the local fallback used during an
S3 outage (objects written locally and queued, uploaded by `sync()` once S3 answers again).

Invariant: a reader sees a whole object or none of it, whether it was stored from bytes (`put`) or streamed from
a file in chunks (`put_file`: a temp file renamed into place, or an S3 multipart upload completed in one call).

An account's objects (checkpoint copies, state archives) live under `accounts/<account>/`: AccountObjectStore is
that account's view of the store, and sees, lists and deletes nothing outside it. Backups (the whole database,
every account) stay at the store's root.

Log phrases the runbook greps (logger `trader.state.cold`): "S3 outage detected", "local storage fallback",
"S3 recovery", "Synced N objects to S3".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol, overload

from trader.errors import ConfigError, TraderError
from trader.fsio import atomic_write, atomic_writer
from trader.settings import Settings
from trader.state.base import ObjectStore, TierUnavailable, account_state_dir

log = logging.getLogger(__name__)

FILE_MODE = 0o644  # objects readable as before (they were created under the usual umask)
_TMP_DIR = ".tmp"
QueueOp = Literal["put", "delete"]
CHUNK_SIZE = 8 * 2**20  # S3 multipart parts must be >= 5 MiB (except the last)
# on_progress(done, total): bytes moved so far and the file's size, called after each chunk.
TransferProgress = Callable[[int, int], None]


class ColdStorageError(TraderError):
    """The cold tier refused an operation for a reason retrying cannot fix (bad name, permission denied)."""


class ObjectNotFound(ColdStorageError):
    """No object with that name in the cold tier."""


def check_name(name: str) -> str:
    """Object names are relative slash-separated paths; no empty, hidden, '.' or '..' segments, no backslashes."""
    parts = name.split("/")
    if not name or "\\" in name or any(not part or part.startswith(".") for part in parts):
        raise ColdStorageError(
            f"object name {name!r} is invalid: use a relative path like checkpoints/ID.json.gz "
            "(no empty, hidden or '..' segments)"
        )
    return name


# --- files in chunks -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileDigest:
    """What a streamed read saw: the object's size and the sha256 of its bytes, hashed as they went past."""

    sha256: str
    size: int


class StreamingObjectStore(ObjectStore, Protocol):
    """A cold store that also moves whole files in chunks, for objects too big to hold in memory (backups).

    The folder and S3 stores are both; the S3 outage fallback is not (a backup that cannot reach S3 must fail)."""

    def put_file(
        self, name: str, path: Path, *, chunk_size: int = CHUNK_SIZE, on_progress: TransferProgress | None = None
    ) -> str:
        """Store the file at path under name, streamed in chunks; readers see all of it or nothing. Its URI."""
        ...

    def get_file(
        self, name: str, path: Path, *, chunk_size: int = CHUNK_SIZE, on_progress: TransferProgress | None = None
    ) -> FileDigest:
        """Stream the object into the file at path (created or truncated, written in place: a scratch copy)."""
        ...

    def digest(
        self, name: str, *, chunk_size: int = CHUNK_SIZE, on_progress: TransferProgress | None = None
    ) -> FileDigest:
        """sha256 and size of the object as stored, read back in chunks (not from any local copy)."""
        ...


def _file_chunks(handle: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    while data := handle.read(chunk_size):
        yield data


def _stream(
    chunks: Iterable[tuple[bytes, int]], on_progress: TransferProgress | None, sink: IO[bytes] | None = None
) -> FileDigest:
    """Hash (and write to sink) an object's (chunk, object size) pairs, reporting progress after each chunk."""
    digest, done = hashlib.sha256(), 0
    for data, size in chunks:
        digest.update(data)
        if sink is not None:
            sink.write(data)
        done += len(data)
        if on_progress is not None:
            on_progress(done, size)
    return FileDigest(digest.hexdigest(), done)


class _ChunkedReads:
    """get_file and digest for a store that reads its objects in chunks (`_chunks`): hashed as they stream."""

    def _chunks(self, name: str, chunk_size: int) -> Iterator[tuple[bytes, int]]:
        """The object's chunks, each with the object's size; a missing object raises ObjectNotFound right away."""
        raise NotImplementedError

    def get_file(
        self, name: str, path: Path, *, chunk_size: int = CHUNK_SIZE, on_progress: TransferProgress | None = None
    ) -> FileDigest:
        chunks = self._chunks(name, chunk_size)
        with open(path, "wb") as sink:
            return _stream(chunks, on_progress, sink)

    def digest(
        self, name: str, *, chunk_size: int = CHUNK_SIZE, on_progress: TransferProgress | None = None
    ) -> FileDigest:
        return _stream(self._chunks(name, chunk_size), on_progress)


class LocalFolderStore(_ChunkedReads):
    """Objects as files under root; writes are atomic (a temp file in root/.tmp, then os.replace)."""

    name = "local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*check_name(name).split("/"))

    def put(self, name: str, data: bytes) -> str:
        path = self._path(name)
        try:
            atomic_write(path, data, tmp_dir=self.root / _TMP_DIR, mode=FILE_MODE)
        except OSError as error:
            raise ColdStorageError(f"cannot write {name} under {self.root}: {error.strerror or error}") from error
        return path.resolve().as_uri()

    def put_file(
        self, name: str, path: Path, *, chunk_size: int = CHUNK_SIZE, on_progress: TransferProgress | None = None
    ) -> str:
        target = self._path(name)
        size = path.stat().st_size
        done = 0
        with open(path, "rb") as source:
            try:
                with atomic_writer(target, tmp_dir=self.root / _TMP_DIR, mode=FILE_MODE) as handle:
                    for data in _file_chunks(source, chunk_size):
                        handle.write(data)
                        done += len(data)
                        if on_progress is not None:
                            on_progress(done, size)
            except OSError as error:
                raise ColdStorageError(f"cannot write {name} under {self.root}: {error.strerror or error}") from error
        return target.resolve().as_uri()

    def _chunks(self, name: str, chunk_size: int) -> Iterator[tuple[bytes, int]]:
        path = self._path(name)
        if not path.is_file():
            raise ObjectNotFound(f"no object {name} in {self.root}")

        def read() -> Iterator[tuple[bytes, int]]:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                for data in _file_chunks(handle, chunk_size):
                    yield data, size

        return read()

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {name} in {self.root}") from None

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for path in self.root.rglob("*"):
            relative = path.relative_to(self.root).as_posix()
            if path.is_file() and not relative.startswith(f"{_TMP_DIR}/") and relative.startswith(prefix):
                names.append(relative)
        return sorted(names)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def ping(self) -> bool:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            return os.access(self.root, os.W_OK)
        except OSError:
            return False


# --- S3 ---------------------------------------------------------------------------------------------------------


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "S3 did not answer" (refused, reset, timed out), not "S3 said no"."""
    import aiohttp
    from botocore import exceptions as boto
    from fsspec.exceptions import FSTimeoutError

    return (
        boto.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError
        boto.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError
        aiohttp.ClientError,
        FSTimeoutError,
        TimeoutError,
        ConnectionError,
    )


def parse_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    if not url.startswith("s3://"):
        raise ConfigError(f"COLD_STORAGE_URL: expected s3://bucket/prefix (got {url!r})")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if len(bucket) < 3:
        raise ConfigError(f"COLD_STORAGE_URL: {url!r} has no valid bucket name")
    return bucket, prefix.strip("/")


class S3Store(_ChunkedReads):
    """Objects under s3://bucket/prefix through s3fs. Short timeouts and few retries, so an outage is reported
    (as TierUnavailable) within about a second instead of after minutes of botocore retries."""

    name = "s3"

    def __init__(
        self,
        url: str,
        endpoint_url: str | None = None,
        storage_options: dict[str, Any] | None = None,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        retries: int = 2,
    ) -> None:
        import s3fs

        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_s3_url(url)
        options: dict[str, Any] = {
            "skip_instance_cache": True,  # s3fs caches instances by arguments; each store owns its client
            "use_listings_cache": False,  # list() must see objects written by other processes
            "config_kwargs": {
                "connect_timeout": connect_timeout,
                "read_timeout": read_timeout,
                "retries": {"max_attempts": 1, "mode": "standard"},  # s3fs retries below; botocore's add minutes
            },
        }
        if endpoint_url:
            options["endpoint_url"] = endpoint_url
        options.update(storage_options or {})
        self.fs = s3fs.S3FileSystem(**options)
        # s3fs retries connection errors itself (5 times with backoff by default); a stale pooled connection
        # after a server restart needs one retry, a real outage should surface fast.
        self.fs.retries = max(1, retries)
        self._unavailable = _connection_errors()

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _path(self, name: str) -> str:
        return f"{self.bucket}/{self._key(name)}"

    @contextmanager
    def _errors(self, action: str, name: str) -> Iterator[None]:
        try:
            yield
        except ColdStorageError:
            raise
        except self._unavailable as error:
            raise TierUnavailable(f"S3 {action} {name} at {self.url}: {type(error).__name__}: {error}") from error
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {name} in {self.url}") from None
        except OSError as error:
            cause = error.__cause__
            status = getattr(cause, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if isinstance(status, int) and status >= 500:  # ServiceUnavailable, InternalError, SlowDown
                raise TierUnavailable(f"S3 {action} {name} at {self.url}: HTTP {status}: {error}") from error
            raise ColdStorageError(f"S3 {action} {name} at {self.url} refused: {error}") from error

    def put(self, name: str, data: bytes) -> str:
        path = self._path(name)
        with self._errors("put", name):
            self.fs.pipe_file(path, data)  # one PUT (or a completed multipart upload): atomic for readers
        return f"s3://{path}"

    def get(self, name: str) -> bytes:
        with self._errors("get", name):
            data = self.fs.cat_file(self._path(name))
        return bytes(data)

    def put_file(
        self, name: str, path: Path, *, chunk_size: int = CHUNK_SIZE, on_progress: TransferProgress | None = None
    ) -> str:
        """One PUT up to chunk_size, else a multipart upload of chunk_size parts (S3 wants >= 5 MiB but the last)."""
        key = self._key(name)
        size = path.stat().st_size
        call = self.fs.call_s3
        with self._errors("put", name):
            if size <= chunk_size:
                call("put_object", Bucket=self.bucket, Key=key, Body=path.read_bytes())
                if on_progress is not None:
                    on_progress(size, size)
                return f"s3://{self.bucket}/{key}"
            upload_id = call("create_multipart_upload", Bucket=self.bucket, Key=key)["UploadId"]
            try:
                parts: list[dict[str, Any]] = []
                done = 0
                with open(path, "rb") as source:
                    for data in _file_chunks(source, chunk_size):
                        number = len(parts) + 1
                        answer = call(
                            "upload_part", Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                        )
                        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                        done += len(data)
                        if on_progress is not None:
                            on_progress(done, size)
                # Completing is atomic: until now readers see the previous object (or none), never a partial one.
                call(
                    "complete_multipart_upload",
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except BaseException:
                with suppress(Exception):
                    call("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id)
                raise
        return f"s3://{self.bucket}/{key}"

    def _chunks(self, name: str, chunk_size: int) -> Iterator[tuple[bytes, int]]:
        # One ranged GET per chunk: a 10 GB dump never sits in memory.
        path = self._path(name)
        with self._errors("get", name):
            size = int(self.fs.info(path)["size"])

        def read() -> Iterator[tuple[bytes, int]]:
            offset = 0
            while offset < size:
                with self._errors("get", name):
                    data = bytes(self.fs.cat_file(path, start=offset, end=min(offset + chunk_size, size)))
                if not data:
                    break
                offset += len(data)
                yield data, size

        return read()

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        with self._errors("list", prefix or "/"):
            try:
                found = self.fs.find(root)
            except FileNotFoundError:
                return []
        names = [path.removeprefix(root).lstrip("/") for path in found]
        return sorted(name for name in names if name and name.startswith(prefix))

    def delete(self, name: str) -> None:
        with self._errors("delete", name), suppress(FileNotFoundError):
            self.fs.rm_file(self._path(name))

    def ping(self) -> bool:
        try:
            self.fs.call_s3("head_bucket", Bucket=self.bucket)
        except Exception:
            return False
        return True


# --- local fallback during an S3 outage ---------------------------------------------------------------------------


class FallbackObjectStore:
    """The primary store (S3) with a local folder behind it.

    When the primary raises TierUnavailable, writes go to `local_fallback_dir/objects` and are queued in
    `local_fallback_dir/queue.json` (kept on disk, so a restart does not lose the queue); reads of queued names
    come from the fallback. While degraded, later calls ask `primary.ping()` at most every `retry_interval`
    seconds and, when it answers, `sync()` uploads the queue in order. `on_availability(False/True)` is called on
    each transition (the caller keeps `system:s3_available` in state).
    """

    def __init__(
        self,
        primary: ObjectStore,
        local_fallback_dir: Path | str,
        on_availability: Callable[[bool], None] | None = None,
        *,
        retry_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.name = primary.name
        self.fallback_dir = Path(local_fallback_dir)
        self.local = LocalFolderStore(self.fallback_dir / "objects")
        self.on_availability = on_availability
        self.recovery_listeners: list[Callable[[str, float], None]] = []  # ("s3", seconds) after a sync recovers
        self.retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.RLock()
        self._queue_file = self.fallback_dir / "queue.json"
        self._queue: dict[str, QueueOp] = self._load_queue()
        self.available = not self._queue  # a queue left by an earlier process means S3 has not caught up
        self._last_attempt = float("-inf")
        self.synced_total = 0

    def on_recovery(self, listener: Callable[[str, float], None]) -> None:
        """Call `listener("s3", seconds)` each time a sync brings S3 back after an outage."""
        self.recovery_listeners.append(listener)

    # --- queue on disk

    def _load_queue(self) -> dict[str, QueueOp]:
        try:
            entries = json.loads(self._queue_file.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as error:
            raise ColdStorageError(f"fallback queue {self._queue_file} is unreadable: {error}") from error
        return {name: op for op, name in entries}

    def _save_queue(self) -> None:
        data = json.dumps([[op, name] for name, op in self._queue.items()]).encode()
        atomic_write(self._queue_file, data, tmp_dir=self.fallback_dir / _TMP_DIR, mode=FILE_MODE)

    def _enqueue(self, name: str, op: QueueOp) -> None:
        self._queue.pop(name, None)  # re-insert: the queue keeps the order of the latest operation per name
        self._queue[name] = op
        self._save_queue()

    @property
    def pending(self) -> list[str]:
        """Names waiting for S3 (puts and deletes), oldest first."""
        with self._lock:
            return list(self._queue)

    # --- transitions

    def _outage(self, error: TierUnavailable) -> None:
        self._last_attempt = self._clock()
        if not self.available:
            return
        self.available = False
        log.warning(
            "S3 outage detected (%s); using local storage fallback at %s until it recovers", error, self.fallback_dir
        )
        self._notify(False)

    def _notify(self, available: bool) -> None:
        if self.on_availability is None:
            return
        try:
            self.on_availability(available)
        except Exception:  # the flag is bookkeeping; never let it break a write
            log.exception("on_availability(%s) failed", available)

    def _maybe_sync(self) -> None:
        if self.available or self._clock() - self._last_attempt < self.retry_interval:
            return
        self._last_attempt = self._clock()
        if self.primary.ping():
            self.sync()

    def check(self) -> bool:
        """Try the recovery now if it is due (at most every retry_interval seconds); returns availability."""
        with self._lock:
            self._maybe_sync()
            return self.available

    def sync(self) -> int:
        """Upload the queued objects (and apply queued deletes) to the primary in order; returns how many were
        synced. Stops at the first TierUnavailable and keeps the rest queued."""
        with self._lock:
            self._last_attempt = self._clock()
            started = time.perf_counter()
            queued = list(self._queue.items())
            if queued:
                log.info("S3 answers again: uploading %d queued object(s) from the local fallback", len(queued))
            synced = 0
            for name, op in queued:
                try:
                    if op == "put":
                        self.primary.put(name, self.local.get(name))
                    else:
                        self.primary.delete(name)
                except TierUnavailable as error:
                    self._outage(error)
                    log.warning("S3 sync interrupted after %d of %d object(s): %s", synced, len(queued), error)
                    return synced
                except ObjectNotFound:
                    log.error("queued object %s is missing from the local storage fallback; dropped", name)
                del self._queue[name]
                self._save_queue()
                if op == "put":
                    self.local.delete(name)
                synced += 1
            self.synced_total += synced
            was_available, self.available = self.available, True
            if queued or not was_available:
                log.info("S3 recovery: Synced %d objects to S3 from the local storage fallback", synced)
            if not was_available:
                self._notify(True)
                for listener in self.recovery_listeners:
                    listener("s3", time.perf_counter() - started)
            return synced

    # --- ObjectStore

    def put(self, name: str, data: bytes) -> str:
        with self._lock:
            self._maybe_sync()
            if self.available:
                try:
                    return self.primary.put(name, data)
                except TierUnavailable as error:
                    self._outage(error)
            uri = self.local.put(name, data)
            self._enqueue(name, "put")
            return uri

    def get(self, name: str) -> bytes:
        with self._lock:
            self._maybe_sync()
            op = self._queue.get(name)
            if op == "put":
                return self.local.get(name)
            if op == "delete":
                raise ObjectNotFound(f"no object {name}: deleted during the S3 outage (delete queued)")
            try:
                return self.primary.get(name)
            except TierUnavailable as error:
                self._outage(error)
                raise

    def list(self, prefix: str = "") -> list[str]:
        with self._lock:
            self._maybe_sync()
            try:
                names = set(self.primary.list(prefix))
            except TierUnavailable as error:
                self._outage(error)
                raise
            for name, op in self._queue.items():
                if name.startswith(prefix):
                    (names.add if op == "put" else names.discard)(name)
            return sorted(names)

    def delete(self, name: str) -> None:
        with self._lock:
            self._maybe_sync()
            if self._queue.get(name) == "put":
                self.local.delete(name)
            if self.available:
                try:
                    self.primary.delete(name)
                    if name in self._queue:
                        del self._queue[name]
                        self._save_queue()
                    return
                except TierUnavailable as error:
                    self._outage(error)
            self._enqueue(name, "delete")

    def ping(self) -> bool:
        """True when objects can be stored now: on the primary, or in the local fallback."""
        return self.primary.ping() or self.local.ping()


# --- one account's view ------------------------------------------------------------------------------------------

ACCOUNTS_PREFIX = "accounts"


def account_prefix(account: str) -> str:
    """Where an account's objects live in the cold store: `accounts/<account>/`."""
    try:
        check_name(f"{ACCOUNTS_PREFIX}/{account}")
    except ColdStorageError:
        raise ColdStorageError(
            f"account {account!r} cannot name a cold-store folder (no '/', no leading '.')"
        ) from None
    return f"{ACCOUNTS_PREFIX}/{account}/"


class AccountObjectStore:
    """One account's view of a cold store: name N is stored as `accounts/<account>/N` in `store`; list() answers
    names without that prefix and only from under it."""

    def __init__(self, store: ObjectStore, account: str) -> None:
        self.store = store
        self.account = account
        self.prefix = account_prefix(account)
        self.name = store.name

    def stored_name(self, name: str) -> str:
        """The object's name in the underlying store (what a checkpoint row keeps as its cold_key)."""
        return self.prefix + check_name(name)

    def put(self, name: str, data: bytes) -> str:
        return self.store.put(self.stored_name(name), data)

    def get(self, name: str) -> bytes:
        return self.store.get(self.stored_name(name))

    def list(self, prefix: str = "") -> list[str]:
        return [name.removeprefix(self.prefix) for name in self.store.list(self.prefix + prefix)]

    def delete(self, name: str) -> None:
        self.store.delete(self.stored_name(name))

    def ping(self) -> bool:
        return self.store.ping()

    def on_recovery(self, listener: Callable[[str, float], None]) -> None:
        """As FallbackObjectStore.on_recovery when the underlying store has a local fallback; else nothing to do."""
        if isinstance(self.store, FallbackObjectStore):
            self.store.on_recovery(listener)


def account_store(store: ObjectStore, account: str) -> AccountObjectStore:
    """The account's view of store; a view already of this account is returned as it is, never nested."""
    if isinstance(store, AccountObjectStore):
        if store.account != account:
            raise ColdStorageError(
                f"cold store view of account {store.account!r} was handed to account {account!r}: pass the "
                "store itself (cold_store_from_settings), not another account's view"
            )
        return store
    return AccountObjectStore(store, account)


@overload
def cold_store_from_settings(
    settings: Settings, *, on_availability: Callable[[bool], None] | None = None, fallback: Literal[False]
) -> StreamingObjectStore: ...


@overload
def cold_store_from_settings(
    settings: Settings, *, on_availability: Callable[[bool], None] | None = None, fallback: bool = True
) -> ObjectStore: ...


def cold_store_from_settings(
    settings: Settings,
    *,
    on_availability: Callable[[bool], None] | None = None,
    fallback: bool = True,
) -> ObjectStore:
    """COLD_STORAGE_URL s3://bucket/prefix -> S3Store (endpoint from COLD_STORAGE_ENDPOINT_URL), wrapped in a
    FallbackObjectStore on <the account's state folder>/cold_fallback unless fallback=False; anything else is a
    local folder. The whole store: an account's objects go through account_store()."""
    url = settings.cold_storage_url
    if url.startswith("s3://"):
        s3 = S3Store(url, endpoint_url=settings.cold_storage_endpoint_url)
        if not fallback:
            return s3
        # Each account's own queue: bots of two accounts on one STATE_DIR never rewrite each other's queue file.
        return FallbackObjectStore(s3, account_state_dir(settings) / "cold_fallback", on_availability)
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(f"COLD_STORAGE_URL: expected a folder path or s3://bucket/prefix (got {url!r})")
    return LocalFolderStore(Path(url.removeprefix("file://")))
