"""The state tiers' failover drills (runbook "Automated Recovery Handlers" 1, 3 and 4): redis-outage,
postgres-outage and s3-outage.

Each drill builds its own tiers in its namespace (trader.drills.namespace), seeds them from the live profile's
latest checkpoint, runs a bot-like workload (10 writes and 50 reads every 50 ms) while it cuts the tier's endpoint
for real (the fault proxy resets every connection and refuses new ones; `fault="stop"` stops the drill's own
redis-server instead; `fault="blackhole"` leaves connections unanswered so clients time out), holds the outage for
`outage_seconds`, restores it, and lets the StateManager's automatic recovery bring the tier back. It measures:

* detection: from the cut to the manager (or the cold store) marking the tier down, the workload touching the
  tier right after the cut (s3-outage writes a checkpoint on the first tick after it);
* recovery: the manager's own figure ("Recovered N keys to Redis in X ms", "PostgreSQL recovery completed ... in
  X ms") or the S3 sync of the queued objects ("Synced N objects to S3");
* total downtime: from the cut to the tier reported up again (includes the outage the drill holds);
* keys recovered against the keys expected, writes lost, and coherence: `verify_coherence()` (cache against
  storage, byte for byte) plus the scenario's own checks; "Match: True" only when all hold.

Expectations (misses open an incident):

| scenario        | detection  | recovery                      | downtime                                   |
|-----------------|------------|-------------------------------|--------------------------------------------|
| redis-outage    | <= 2000 ms | <= 20 ms (runbook 8-20 ms)    | <= outage + 2000 ms (runbook 1-2 s)        |
| postgres-outage | <= 2000 ms | <= 50 ms (runbook ~50 ms)     | <= outage + 2000 ms                        |
| s3-outage       | <= 2000 ms | <= 2000 ms (no runbook figure) | <= outage + S3 retry interval + 2000 ms   |

The 2000 ms after the outage is the runbook's "Total downtime: 1-2 seconds": the manager probes a down tier once
a second, the cold store every retry interval (5 s, as the live profile's).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from trader.drills.base import EXPECTED_DETECTION_MS, EXPECTED_REDIS_RECOVERY_MS, DrillContext, DrillResult, scenario
from trader.drills.namespace import DrillError, DrillNamespace, DrillUnavailable, redis_identity
from trader.drills.proxy import CutMode, FaultProxy
from trader.drills.seed import DEFAULT_KEYS, Seed, seed_for_drill
from trader.drills.services import PrivateRedis, TimedFallbackStore
from trader.settings import Settings
from trader.state.base import StateRecord, StorageTier, TierUnavailable
from trader.state.cold import S3Store
from trader.state.hot import MemoryCache, RedisCache
from trader.state.journal import WriteJournal
from trader.state.manager import StateManager
from trader.state.warm import SqlWarmStore

log = logging.getLogger(__name__)

EXPECTED_PG_RECOVERY_MS = 50.0  # runbook: "PostgreSQL Outage ~50ms"
EXPECTED_S3_RECOVERY_MS = 2000.0  # no runbook figure: the queue of a short outage uploaded within 2 s
DOWNTIME_ALLOWANCE_MS = 2000.0  # runbook: "Total downtime: 1-2 seconds" once the service is back
DEFAULT_OUTAGE_SECONDS = 1.0
TICK_SECONDS = 0.05
DETECTION_TIMEOUT_SECONDS = 10.0
RECOVERY_TIMEOUT_SECONDS = 20.0
CHECKPOINT_INTERVAL_SECONDS = 0.5  # s3-outage: a checkpoint (2 cold objects) every 0.5 s of the workload
S3_RETRY_INTERVAL_SECONDS = 5.0  # FallbackObjectStore's default, which the live profile uses

Fault = Literal["proxy", "blackhole", "stop"]
Tier = Literal["redis", "postgres", "s3"]


@dataclass
class StateDrillResult(DrillResult):
    """DrillResult plus the counts a state drill can check exactly: keys expected back and writes lost."""

    keys_expected: int | None = None
    writes_lost: int = 0

    def misses(self) -> list[str]:
        out = super().misses()
        if self.keys_expected is not None and self.keys_recovered != self.keys_expected:
            out.append(f"keys recovered: {self.keys_recovered} of {self.keys_expected}")
        if self.writes_lost:
            out.append(f"data loss: {self.writes_lost} acknowledged writes missing after recovery")
        left = self.details.get("left_behind") or []
        if left:
            out.append("left behind in the drill namespace: " + "; ".join(left))
        return out

    def rows(self) -> list[dict[str, str]]:
        rows = super().rows()
        for row in rows:
            if row["metric"] == "keys recovered" and self.keys_expected is not None:
                row["expected"] = str(self.keys_expected)
        return rows


# --- the drill's own tiers ----------------------------------------------------------------------------------------


class DrillTiers:
    """The drill's StateManager on its own Redis keys, scratch database and cold prefix, with a fault proxy in front
    of the tier being drilled. Everything is removed on exit, even when the drill failed; `left_behind` lists what
    could not be (empty when the namespace is clean)."""

    def __init__(
        self,
        namespace: DrillNamespace,
        settings: Settings,
        *,
        drilled: Tier,
        fault: Fault = "proxy",
        redis_required: bool = False,
        cold: bool = False,
        probe_interval: float = 1.0,
        s3_retry_interval: float = S3_RETRY_INTERVAL_SECONDS,
    ) -> None:
        if fault == "stop" and drilled != "redis":
            raise DrillError(f"fault=stop stops the drill's own redis-server; {drilled} is cut through the proxy")
        self.ns = namespace
        self.settings = settings
        self.drilled = drilled
        self.fault = fault
        self.redis_required = redis_required
        self.with_cold = cold
        self.probe_interval = probe_interval
        self.s3_retry_interval = s3_retry_interval
        self.proxy: FaultProxy | None = None
        self.private_redis: PrivateRedis | None = None
        self.redis_admin: RedisCache | None = None  # the drill's keys without the proxy: cleanup and test hooks
        self.s3_direct: S3Store | None = None
        self.cold: TimedFallbackStore | None = None
        self.left_behind: list[str] = []
        self._stack = ExitStack()
        self._manager: StateManager | None = None

    @property
    def manager(self) -> StateManager:
        assert self._manager is not None, "DrillTiers is not open"
        return self._manager

    def __enter__(self) -> DrillTiers:
        try:
            self._open()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self._stack.close()
        finally:
            self.left_behind = self._leftovers()

    def _proxied(self, host: str, port: int, name: str) -> FaultProxy:
        proxy = FaultProxy(host, port, name=name).start()
        self._stack.callback(proxy.close)
        self.proxy = proxy
        return proxy

    def _open(self) -> None:
        hot = self._open_hot()
        warm = self._open_warm()
        cold = self._open_cold() if self.with_cold else None
        journal = WriteJournal(self.ns.workdir / "warm-journal.jsonl")
        manager = StateManager(
            hot,
            warm,
            journal=journal,
            batch_size=self.settings.state_batch_size,
            probe_interval=self.probe_interval,
            cold=cold,
        )
        self._stack.callback(manager.close)
        self._manager = manager

    def _open_hot(self) -> StorageTier:
        url = self.ns.redis_url
        if url is None or self.fault == "stop":
            if url is None and not self.redis_required:
                return MemoryCache()  # the live profile runs without Redis: so does its drill
            private = PrivateRedis()
            private.start()
            self._stack.callback(private.stop)
            self.private_redis = private
            url = private.url
        admin = RedisCache(url, prefix=self.ns.redis_prefix)
        self._stack.callback(admin.close)
        self._stack.callback(self._clear_redis, admin)
        self.redis_admin = admin
        if not admin.ping():
            host, port, db = redis_identity(url)
            raise DrillError(f"the drill's Redis at {host}:{port}/{db} does not answer")
        if self.drilled == "redis" and self.fault != "stop":
            host, port, db = redis_identity(url)
            proxy = self._proxied(host, port, "redis")
            url = f"redis://{proxy.host}:{proxy.port}/{db}"
        hot = RedisCache(url, prefix=self.ns.redis_prefix)
        self._stack.callback(hot.close)
        return hot

    def _clear_redis(self, admin: RedisCache) -> None:
        if self.private_redis is None or self.private_redis.running:
            with contextlib.suppress(TierUnavailable):
                admin.clear()

    def _open_warm(self) -> SqlWarmStore:
        if self.drilled == "postgres" and not self.ns.is_postgresql:
            raise DrillUnavailable(
                "postgres-outage needs DATABASE_URL (or DRILL_DATABASE_URL) on PostgreSQL: SQLite has no server to cut"
            )
        self.ns.create_database()
        self._stack.callback(self.ns.drop_database)
        url = self.ns.database_url
        if self.drilled == "postgres":
            parsed = make_url(url)
            proxy = self._proxied(parsed.host or "127.0.0.1", parsed.port or 5432, "postgresql")
            url = parsed.set(host=proxy.host, port=proxy.port).render_as_string(hide_password=False)
        warm = SqlWarmStore(url, self.settings.state_batch_size, account=self.settings.account)
        self._stack.callback(warm.dispose)
        warm.ensure_schema()
        return warm

    def _open_cold(self) -> TimedFallbackStore:
        if not self.ns.cold_url.startswith("s3://"):
            raise DrillUnavailable(
                "s3-outage needs an S3 cold tier: COLD_STORAGE_URL=s3://bucket/prefix (it is a local folder)"
            )
        endpoint = self.ns.cold_endpoint_url
        parts = urlsplit(endpoint or "")
        if not endpoint or parts.scheme != "http" or not parts.hostname:
            raise DrillUnavailable(
                "s3-outage cuts S3 through a local proxy and needs an http COLD_STORAGE_ENDPOINT_URL (MinIO, moto); "
                f"got {endpoint or 'none (AWS)'}"
            )
        direct = S3Store(self.ns.cold_url, endpoint_url=endpoint)
        self.s3_direct = direct
        self._stack.callback(self._clear_cold, direct)
        if self.drilled == "s3":
            proxy = self._proxied(parts.hostname, parts.port or 80, "s3")
            endpoint = f"http://{proxy.host}:{proxy.port}"
        store = TimedFallbackStore(
            S3Store(self.ns.cold_url, endpoint_url=endpoint),
            self.ns.workdir / "cold_fallback",
            self._s3_availability,
            retry_interval=self.s3_retry_interval,
        )
        self.cold = store
        return store

    def _s3_availability(self, up: bool) -> None:
        """What build_state does for the live profile: system:s3_available in state."""
        if self._manager is not None:
            self._manager.set("system:s3_available", up)

    @staticmethod
    def _clear_cold(direct: S3Store) -> None:
        for name in direct.list():
            direct.delete(name)

    # --- faults

    def cut(self, mode: CutMode = "refuse") -> None:
        """Cut the drilled tier for the drill's clients: stop the private redis-server, or cut the proxy."""
        if self.fault == "stop":
            assert self.private_redis is not None
            self.private_redis.stop()
            return
        assert self.proxy is not None
        self.proxy.cut(mode)

    def restore(self) -> None:
        if self.fault == "stop":
            assert self.private_redis is not None
            self.private_redis.start()
            return
        assert self.proxy is not None
        self.proxy.restore()

    def corrupt_one_cached_value(self, key: str) -> None:
        """Test hook: change one cached record's value behind the manager's back (storage keeps the real one)."""
        record = self.manager.hot.get_many([key]).get(key)
        if record is None:
            raise DrillError(f"cannot corrupt {key}: it is not cached")
        broken = StateRecord(key, record.value + b" ", record.checksum, record.version, record.updated_at)
        self.manager.hot.put_many([broken])

    # --- what is left

    def _leftovers(self) -> list[str]:
        found: list[str] = []
        try:
            if self.ns.database_exists():
                found.append(f"database {self.ns.database_name}")
        except Exception as error:
            found.append(f"database {self.ns.database_name}: not checked ({error})")
        if self.redis_admin is not None and (self.private_redis is None or self.private_redis.running):
            probe = RedisCache(self.redis_admin.url, prefix=self.ns.redis_prefix)
            try:
                keys = probe.keys("*")
                if keys:
                    found.append(f"{len(keys)} Redis keys under {self.ns.redis_prefix}")
            except TierUnavailable as error:
                found.append(f"Redis keys under {self.ns.redis_prefix}: not checked ({error})")
            finally:
                probe.close()
        if self.s3_direct is not None:
            try:
                names = self.s3_direct.list()
                if names:
                    found.append(f"{len(names)} objects under {self.ns.cold_url}")
            except Exception as error:
                found.append(f"objects under {self.ns.cold_url}: not checked ({error})")
        return found


# --- the workload -------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    """What the bot does to its state every cycle, compressed: 10 writes and 50 reads per tick."""

    manager: StateManager
    keys: list[str]
    writes_per_tick: int = 10
    reads_per_tick: int = 50
    expected: dict[str, Any] = field(default_factory=dict)  # the last value each key was acknowledged with
    writes: int = 0
    refused_reads: int = 0
    ticks: int = 0
    extra: Callable[[], None] | None = None
    _cursor: int = 0

    def tick(self) -> None:
        n = len(self.keys)
        chunk = [self.keys[(self._cursor + i) % n] for i in range(min(self.writes_per_tick, n))]
        self._cursor += len(chunk)
        values = {key: {"drill_write": self.writes + i, "key": key} for i, key in enumerate(chunk)}
        stored = self.manager.batch_set(values)
        for key in stored.stored:
            self.expected[key] = values[key]
        self.writes += len(stored.stored)
        start = (self._cursor * 7) % n
        wanted = [self.keys[(start + i) % n] for i in range(min(self.reads_per_tick, n))]
        try:
            self.manager.batch_get(wanted)
        except TierUnavailable:
            self.refused_reads += 1
        if self.extra is not None:
            self.extra()
        self.ticks += 1

    def until(self, done: Callable[[], bool], timeout: float) -> float | None:
        """Tick every TICK_SECONDS until done() holds (returns perf_counter() then) or timeout (None)."""
        deadline = time.perf_counter() + timeout
        while True:
            started = time.perf_counter()
            self.tick()
            if done():
                return time.perf_counter()
            if time.perf_counter() >= deadline:
                return None
            time.sleep(max(0.0, TICK_SECONDS - (time.perf_counter() - started)))


# --- shared steps -------------------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    settings: Settings
    namespace: DrillNamespace
    keys: int
    outage_seconds: float
    fault: Fault
    options: dict[str, Any]


def _inputs(ctx: DrillContext) -> _Inputs:
    options = ctx.options
    settings = options.get("settings")
    namespace = options.get("drill_namespace")
    if not isinstance(settings, Settings) or not isinstance(namespace, DrillNamespace):
        raise DrillError("state drills run through trader.drills.runner.run_drill (settings and namespace missing)")
    fault = options.get("fault", "proxy")
    if fault not in ("proxy", "blackhole", "stop"):
        raise DrillError(f"fault: expected proxy, blackhole or stop (got {fault!r})")
    return _Inputs(
        settings=settings,
        namespace=namespace,
        keys=int(options.get("keys", DEFAULT_KEYS)),
        outage_seconds=float(options.get("outage_seconds", DEFAULT_OUTAGE_SECONDS)),
        fault=fault,
        options=options,
    )


def _result(name: str, inputs: _Inputs, expected: dict[str, float]) -> StateDrillResult:
    return StateDrillResult(
        scenario=name, namespace=inputs.namespace.id, started_at=datetime.now(UTC), expected=expected
    )


def _seed(manager: StateManager, inputs: _Inputs, result: StateDrillResult) -> Seed:
    seed = seed_for_drill(inputs.settings, inputs.keys)
    result.notes.extend(seed.notes)
    result.details["seeded_keys"] = len(seed.entries)
    result.details["seed_checkpoint"] = seed.checkpoint_id
    stored = manager.batch_set(seed.entries)
    if stored.failed:
        raise DrillError(f"seeding the drill's tiers failed for {len(stored.failed)} keys: {stored.failed}")
    baseline = manager.verify_coherence()
    if not baseline.match:
        raise DrillError(f"the drill's tiers are not coherent before the fault ({len(baseline.mismatched)} mismatched)")
    return seed


def _detect(workload: Workload, down: Callable[[], bool], cut_at: float, result: StateDrillResult, what: str) -> None:
    detected_at = workload.until(down, DETECTION_TIMEOUT_SECONDS)
    if detected_at is None:
        result.notes.append(f"{what} outage not detected within {DETECTION_TIMEOUT_SECONDS:g} s")
        return
    result.detection_ms = (detected_at - cut_at) * 1000


def _hold(workload: Workload, cut_at: float, seconds: float) -> None:
    workload.until(lambda: time.perf_counter() - cut_at >= seconds, seconds + 1)


def _verify(tiers: DrillTiers, workload: Workload, inputs: _Inputs, result: StateDrillResult) -> None:
    """Coherence (cache against storage, byte for byte) and data loss (every acknowledged write in storage)."""
    manager = tiers.manager
    if inputs.options.get("corrupt_before_verify"):
        victim = workload.keys[0]
        tiers.corrupt_one_cached_value(victim)
        result.notes.append(f"test hook: the cached value of {victim} was corrupted before verification")
    try:
        report = manager.verify_coherence()
    except TierUnavailable as error:
        result.coherence_match = False
        result.notes.append(f"coherence not verifiable: {error}")
        return
    result.coherence_match = report.match
    result.details["coherence"] = {
        "compared": report.compared,
        "mismatched": report.mismatched[:10],
        "missing_from_hot": report.missing_from_hot[:10],
        "extra_in_hot": report.extra_in_hot[:10],
        "duration_ms": round(report.duration_ms, 1),
    }
    stored = manager.warm.get_many(list(workload.expected))
    lost = [key for key, value in workload.expected.items() if key not in stored or stored[key].decoded() != value]
    result.writes_lost = len(lost)
    result.data_loss_estimate = "none" if not lost else f"{len(lost)} writes lost"
    if lost:
        result.details["lost_keys"] = lost[:10]
    result.details["workload"] = {
        "ticks": workload.ticks,
        "writes": workload.writes,
        "reads_refused": workload.refused_reads,
    }


def _finish(tiers: DrillTiers, result: StateDrillResult) -> StateDrillResult:
    result.details["left_behind"] = tiers.left_behind  # a miss (see StateDrillResult.misses)
    return result


def _cut_mode(fault: Fault) -> CutMode:
    return "blackhole" if fault == "blackhole" else "refuse"


# --- the scenarios ------------------------------------------------------------------------------------------------


@scenario("redis-outage")
def redis_outage(ctx: DrillContext) -> DrillResult:
    """Cut the drill's Redis; writes go on through PostgreSQL; restore; the manager batch-restores every key."""
    inputs = _inputs(ctx)
    outage_ms = inputs.outage_seconds * 1000
    result = _result(
        "redis-outage",
        inputs,
        {
            "detection_ms": EXPECTED_DETECTION_MS,
            "recovery_ms": EXPECTED_REDIS_RECOVERY_MS,
            "downtime_ms": outage_ms + DOWNTIME_ALLOWANCE_MS,
        },
    )
    tiers = DrillTiers(inputs.namespace, inputs.settings, drilled="redis", fault=inputs.fault, redis_required=True)
    with tiers:
        manager = tiers.manager
        ctx.progress(0.05, "redis-outage: seeding the drill namespace")
        seed = _seed(manager, inputs, result)
        workload = Workload(manager, sorted(seed.entries))
        ctx.progress(0.2, f"redis-outage: cutting Redis ({inputs.fault})")
        cut_at = time.perf_counter()
        tiers.cut(_cut_mode(inputs.fault))
        _detect(workload, lambda: not manager.status().hot_up, cut_at, result, "Redis")
        ctx.progress(0.4, "redis-outage: Redis down, writing through PostgreSQL")
        _hold(workload, cut_at, inputs.outage_seconds)
        tiers.restore()
        ctx.progress(0.6, "redis-outage: Redis back, waiting for the automatic recovery")
        up_at = workload.until(lambda: manager.status().hot_up, RECOVERY_TIMEOUT_SECONDS)
        status = manager.status()
        if up_at is None:
            result.notes.append(f"Redis not recovered within {RECOVERY_TIMEOUT_SECONDS:g} s of its return")
        else:
            result.downtime_ms = (up_at - cut_at) * 1000
            result.recovery_ms = status.last_hot_recovery_ms
            result.keys_recovered = status.last_hot_recovered_keys or 0
        result.keys_expected = len(seed.entries)
        result.orders_recovered = seed.orders if result.keys_recovered == len(seed.entries) else 0
        ctx.progress(0.8, "redis-outage: verifying cache coherence")
        _verify(tiers, workload, inputs, result)
        ctx.progress(0.9, "redis-outage: removing the drill namespace")
    return _finish(tiers, result)


@scenario("postgres-outage")
def postgres_outage(ctx: DrillContext) -> DrillResult:
    """Cut the drill's PostgreSQL; writes are journaled and cached; restore; the journal is replayed exactly once."""
    inputs = _inputs(ctx)
    outage_ms = inputs.outage_seconds * 1000
    result = _result(
        "postgres-outage",
        inputs,
        {
            "detection_ms": EXPECTED_DETECTION_MS,
            "recovery_ms": EXPECTED_PG_RECOVERY_MS,
            "downtime_ms": outage_ms + DOWNTIME_ALLOWANCE_MS,
        },
    )
    tiers = DrillTiers(inputs.namespace, inputs.settings, drilled="postgres", fault=inputs.fault)
    with tiers:
        manager = tiers.manager
        ctx.progress(0.05, "postgres-outage: seeding the drill namespace")
        seed = _seed(manager, inputs, result)
        seeded_at = datetime.now(UTC)
        manager.note_checkpoint(seeded_at)  # the seed is the drill's checkpoint: data loss is measured from it
        workload = Workload(manager, sorted(seed.entries))
        ctx.progress(0.2, f"postgres-outage: cutting PostgreSQL ({inputs.fault})")
        cut_at = time.perf_counter()
        tiers.cut(_cut_mode(inputs.fault))
        _detect(workload, lambda: not manager.status().warm_up, cut_at, result, "PostgreSQL")
        if result.detection_ms is not None:
            estimate = manager.data_loss_estimate(seeded_at)
            result.details["manager_data_loss_estimate_s"] = round(estimate, 3)
            result.notes.append(f"manager's data_loss_estimate at detection: {estimate:.1f} s of writes at risk")
        ctx.progress(0.4, "postgres-outage: PostgreSQL down, journaling writes")
        _hold(workload, cut_at, inputs.outage_seconds)
        journaled = manager.journal.depth()
        result.details["journaled_entries"] = journaled
        tiers.restore()
        ctx.progress(0.6, "postgres-outage: PostgreSQL back, waiting for the journal replay")
        up_at = workload.until(lambda: manager.status().warm_up, RECOVERY_TIMEOUT_SECONDS)
        status = manager.status()
        if up_at is None:
            result.notes.append(f"PostgreSQL not recovered within {RECOVERY_TIMEOUT_SECONDS:g} s of its return")
        else:
            result.downtime_ms = (up_at - cut_at) * 1000
            result.recovery_ms = status.last_warm_recovery_ms
            result.keys_recovered = status.last_warm_replayed_entries or 0
        # Entries written between the restore and the replay are journaled too: the replay must apply them all.
        result.keys_expected = journaled if up_at is None else max(journaled, result.keys_recovered)
        pending_after = manager.journal.depth()
        result.details["journal_pending_after_replay"] = pending_after
        if pending_after:
            result.notes.append(f"{pending_after} journal entries still pending after the replay")
            result.keys_expected = result.keys_recovered + pending_after
        result.orders_recovered = 0
        ctx.progress(0.8, "postgres-outage: verifying cache coherence")
        _verify(tiers, workload, inputs, result)
        ctx.progress(0.9, "postgres-outage: removing the drill namespace")
    return _finish(tiers, result)


@scenario("s3-outage")
def s3_outage(ctx: DrillContext) -> DrillResult:
    """Cut the drill's S3; checkpoints go to the local fallback queue; restore; the queue syncs to S3."""
    from trader.state.checkpoints import CheckpointStore

    inputs = _inputs(ctx)
    retry = float(inputs.options.get("s3_retry_interval", S3_RETRY_INTERVAL_SECONDS))
    result = _result(
        "s3-outage",
        inputs,
        {
            "detection_ms": EXPECTED_DETECTION_MS,
            "recovery_ms": EXPECTED_S3_RECOVERY_MS,
            "downtime_ms": inputs.outage_seconds * 1000 + retry * 1000 + DOWNTIME_ALLOWANCE_MS,
        },
    )
    tiers = DrillTiers(
        inputs.namespace, inputs.settings, drilled="s3", fault=inputs.fault, cold=True, s3_retry_interval=retry
    )
    with tiers:
        manager, cold = tiers.manager, tiers.cold
        assert cold is not None
        ctx.progress(0.05, "s3-outage: seeding the drill namespace")
        manager.set("system:s3_available", True)
        seed = _seed(manager, inputs, result)
        checkpoints = CheckpointStore(
            inputs.namespace.database_url,
            cold,
            account=inputs.settings.account,
            retention=inputs.settings.checkpoint_retention_count,
            compress=inputs.settings.checkpoint_enable_compression,
        )
        try:
            keys = sorted(seed.entries)
            sample = keys[:100]

            due = {"at": 0.0}

            def checkpoint() -> None:
                now = time.perf_counter()
                if now >= due["at"]:
                    checkpoints.create({"state": manager.batch_get(sample)}, reason="failover-drill")
                    due["at"] = now + CHECKPOINT_INTERVAL_SECONDS

            checkpoint()  # one checkpoint in S3 before the fault
            workload = Workload(manager, keys, extra=checkpoint)
            ctx.progress(0.2, f"s3-outage: cutting S3 ({inputs.fault})")
            due["at"] = 0.0  # the first tick after the cut writes a checkpoint: detection is how fast a write fails
            cut_at = time.perf_counter()
            tiers.cut(_cut_mode(inputs.fault))
            _detect(workload, lambda: not cold.available, cut_at, result, "S3")
            result.details["s3_available_flag_during_outage"] = manager.get("system:s3_available")
            ctx.progress(0.4, "s3-outage: S3 down, checkpoints queued in the local fallback")
            _hold(workload, cut_at, inputs.outage_seconds)
            result.details["queued_at_restore"] = len(cold.pending)
            tiers.restore()
            ctx.progress(0.6, "s3-outage: S3 back, waiting for the queued objects to sync")
            up_at = workload.until(lambda: cold.available, retry + RECOVERY_TIMEOUT_SECONDS)
            if up_at is None:
                result.notes.append(f"S3 not recovered within {retry + RECOVERY_TIMEOUT_SECONDS:g} s of its return")
            else:
                result.downtime_ms = (up_at - cut_at) * 1000
                result.recovery_ms = cold.last_sync_ms
                result.keys_recovered = cold.last_synced or 0
                result.keys_expected = cold.last_sync_queued
                result.notes.append(f"Synced {cold.last_synced} objects to S3 in {cold.last_sync_ms:.1f} ms")
            ctx.progress(0.8, "s3-outage: verifying cache coherence and the objects in S3")
            _verify(tiers, workload, inputs, result)
            _verify_cold(tiers, checkpoints, result)
        finally:
            checkpoints.dispose()
        ctx.progress(0.9, "s3-outage: removing the drill namespace")
    return _finish(tiers, result)


def _verify_cold(tiers: DrillTiers, checkpoints: Any, result: StateDrillResult) -> None:
    """Every kept checkpoint's cold copy in S3 (read without the proxy) has the warm copy's sha256 and size; no
    object is still queued; system:s3_available is true again."""
    import hashlib

    assert tiers.s3_direct is not None and tiers.cold is not None
    problems: list[str] = []
    kept = checkpoints.list()
    missing = 0
    for info in kept:
        try:
            data = tiers.s3_direct.get(info.cold_key) if info.cold_key else None
        except Exception as error:
            data, reason = None, str(error)
        else:
            reason = "no cold copy"
        if data is None:
            problems.append(f"{info.id}: {reason}")
            missing += 1
        elif len(data) != info.size_bytes or hashlib.sha256(data).hexdigest() != info.sha256:
            problems.append(f"{info.id}: the S3 copy differs from the warm copy")
            missing += 1
    if tiers.cold.pending:
        problems.append(f"{len(tiers.cold.pending)} objects still queued in the local fallback")
    flag = tiers.manager.get("system:s3_available")
    result.details["s3_available_flag_after"] = flag
    if flag is not True:
        problems.append(f"system:s3_available is {flag!r} after recovery")
    result.details["checkpoints_verified_in_s3"] = len(kept)
    if problems:
        result.coherence_match = False
        result.details["cold_problems"] = problems[:10]
        result.notes.append("S3 check: " + "; ".join(problems[:3]))
        result.writes_lost += missing
        result.data_loss_estimate = "none" if not result.writes_lost else f"{result.writes_lost} writes lost"
