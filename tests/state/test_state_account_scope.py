"""Two accounts on one Redis, one PostgreSQL database and one S3 bucket: each account's state keys, checkpoints and
cold objects are its own (issue 14 point 2)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.state.cold.conftest import MotoS3, aws_env, moto_s3, moto_server  # noqa: F401  (fixtures used here)
from trader.ledger import Checkpoint, Ledger
from trader.runtime import build_state
from trader.settings import Settings, load_settings
from trader.state.base import StateRecord, account_state_dir, checksum, encode_value
from trader.state.checkpoints import CheckpointNotFound, CheckpointStore, encode_snapshot
from trader.state.cold import AccountObjectStore, ColdStorageError, LocalFolderStore, S3Store, account_store
from trader.state.hot import RedisCache, state_prefix
from trader.state.manager import StateManager
from trader.state.warm import SqlWarmStore

# Redis database 9: no other test uses it (0, 12, 13 and 14 are taken), so flushing it disturbs nobody.
REDIS_URL = "redis://127.0.0.1:6379/9"
KEYS = {"position:BTC-USD": {"quantity": "0.5"}, "guard:daily_loss": 3, "strategy:ema": [1, 2, 3]}


@pytest.fixture
def redis_db() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def settings_of(
    fresh_pg_url: str,
    moto_s3: MotoS3,  # noqa: F811
    redis_db: str,
    tmp_path: Path,
) -> Callable[..., Settings]:
    """Settings of an account: the same PostgreSQL database, Redis database, S3 bucket and STATE_DIR for all."""

    def make(account: str, **overrides: Any) -> Settings:
        return load_settings(
            account=account,
            database_url=fresh_pg_url,
            redis_url=redis_db,
            cold_storage_url=moto_s3.url(),
            cold_storage_endpoint_url=moto_s3.endpoint,
            state_dir=tmp_path / "state",
            **overrides,
        )

    return make


@pytest.fixture
def bots(settings_of: Callable[..., Settings]) -> Iterator[dict[str, tuple[StateManager, CheckpointStore]]]:
    """alpha's and beta's StateManager and CheckpointStore, wired as the runtime wires a bot."""
    built = {name: build_state(settings_of(name, checkpoint_retention_count=2)) for name in ("alpha", "beta")}
    yield built
    for state, checkpoints in built.values():
        checkpoints.dispose()
        state.close()


def test_the_same_keys_in_two_accounts_stay_independent(bots: dict[str, tuple[StateManager, CheckpointStore]]) -> None:
    alpha, beta = bots["alpha"][0], bots["beta"][0]
    alpha.batch_set({key: {"of": "alpha", "value": value} for key, value in KEYS.items()} | {"only:alpha": 1})
    beta.batch_set({key: {"of": "beta", "value": value} for key, value in KEYS.items()})

    alpha.delete("guard:daily_loss")

    assert alpha.batch_get(KEYS) == {k: {"of": "alpha", "value": v} for k, v in KEYS.items() if k != "guard:daily_loss"}
    assert beta.batch_get(KEYS) == {k: {"of": "beta", "value": v} for k, v in KEYS.items()}
    assert alpha.get_keys_by_pattern("*") == ["only:alpha", "position:BTC-USD", "strategy:ema"]
    assert beta.get_keys_by_pattern("*") == sorted(KEYS)
    assert beta.get("only:alpha") is None
    assert alpha.get_record("position:BTC-USD").version == 1  # type: ignore[union-attr]  # beta's write is not alpha's


def test_each_account_keeps_its_keys_under_its_own_redis_prefix(
    bots: dict[str, tuple[StateManager, CheckpointStore]],
) -> None:
    alpha, beta = bots["alpha"][0], bots["beta"][0]
    alpha.batch_set(KEYS)
    beta.batch_set(KEYS)

    raw = sorted(key.decode() for key in redis.Redis.from_url(REDIS_URL).keys("*"))

    assert raw == sorted(f"state:{account}:{key}" for account in ("alpha", "beta") for key in KEYS)
    assert alpha.hot.keys("*") == sorted(KEYS) and beta.hot.keys("*") == sorted(KEYS)


def test_restoring_one_accounts_cache_exports_only_its_rows_and_leaves_the_other_cache_alone(
    bots: dict[str, tuple[StateManager, CheckpointStore]],
) -> None:
    alpha, beta = bots["alpha"][0], bots["beta"][0]
    alpha.batch_set({f"a:{i}": i for i in range(300)})
    beta.batch_set({f"b:{i}": i for i in range(200)})
    assert isinstance(alpha.hot, RedisCache)
    alpha.hot.clear()  # alpha's Redis keys lost

    restored = alpha.recover_hot()

    assert restored == 300
    assert alpha.hot.keys("*") == sorted(f"a:{i}" for i in range(300))
    assert beta.hot.keys("*") == sorted(f"b:{i}" for i in range(200))
    assert alpha.verify_coherence().match and beta.verify_coherence().match


def test_clearing_one_accounts_cache_keeps_the_default_accounts_look_alike_keys(redis_db: str) -> None:
    default = RedisCache(redis_db, prefix=state_prefix("default"))
    foo = RedisCache(redis_db, prefix=state_prefix("foo"))
    record = StateRecord("x", b"1", checksum(b"1"), 1, _now())
    default.put_many([StateRecord("foo:x", b"2", checksum(b"2"), 1, _now())])
    foo.put_many([record])

    foo.clear()

    assert default.keys("*") == ["foo:x"] and foo.keys("*") == []
    default.close()
    foo.close()


def test_an_alpha_checkpoint_is_invisible_to_beta(bots: dict[str, tuple[StateManager, CheckpointStore]]) -> None:
    alpha, beta = bots["alpha"][1], bots["beta"][1]
    mine = alpha.create({"positions": {"BTC-USD": {"quantity": "0.5"}}}, reason="scheduled")

    assert beta.list() == []
    with pytest.raises(CheckpointNotFound):
        beta.get(mine.id)
    with pytest.raises(CheckpointNotFound):
        beta.restore(mine.id)
    assert beta.latest_good() is None
    for n in range(3):  # beta keeps 2: its retention prunes its own, never alpha's
        beta.create({"n": n}, reason="scheduled")
    assert [info.id for info in alpha.list()] == [mine.id]
    assert alpha.restore(mine.id) == {"positions": {"BTC-USD": {"quantity": "0.5"}}}
    assert len(beta.list()) == 2


def test_cold_objects_sit_under_accounts_name(
    bots: dict[str, tuple[StateManager, CheckpointStore]],
    moto_s3: MotoS3,  # noqa: F811
) -> None:
    for name, (state, checkpoints) in bots.items():
        state.batch_set({f"fills:2026-10:{i}": {"of": name} for i in range(5)})
        assert state.archive("fills:2026-10:*") is not None
        checkpoints.create({"of": name}, reason="scheduled")

    stored = moto_s3.keys("gpt-trader/cold/")

    for name, (state, checkpoints) in bots.items():
        mine = [key for key in stored if key.startswith(f"gpt-trader/cold/accounts/{name}/")]
        assert len(mine) == 4  # archive + its manifest, checkpoint + its manifest
        assert checkpoints.list()[0].cold_key in [key.removeprefix("gpt-trader/cold/") for key in mine]
        assert state.cold is not None and len(state.cold.list()) == 1
    assert len(stored) == 8


def test_an_archive_of_one_account_cannot_be_restored_by_another(
    bots: dict[str, tuple[StateManager, CheckpointStore]],
) -> None:
    alpha, beta = bots["alpha"][0], bots["beta"][0]
    alpha.batch_set({"old:1": 1})
    info = alpha.archive("old:*")
    assert info is not None

    with pytest.raises(ColdStorageError):
        beta.restore_archive(info.name)
    assert beta.get_keys_by_pattern("*") == []


def test_each_account_journals_in_its_own_folder(settings_of: Callable[..., Settings], tmp_path: Path) -> None:
    paths = {name: account_state_dir(settings_of(name)) for name in ("default", "alpha", "beta")}

    assert paths["default"] == tmp_path / "state"  # where the journal was before accounts: a pending one replays
    assert paths["alpha"] == tmp_path / "state" / "accounts" / "alpha"
    assert len(set(paths.values())) == 3
    declared = settings_of("alpha").model_copy(update={"state_dir": tmp_path / "state" / "accounts" / "alpha"})
    assert account_state_dir(declared) == declared.state_dir  # settings_for's own folder is not nested again


def test_a_checkpoint_copied_before_accounts_still_restores_from_its_root_level_cold_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cold = LocalFolderStore(tmp_path / "cold")
    payload = encode_snapshot({"positions": {}}, compress=True)
    cold.put("checkpoints/cp-old.json.gz", payload)  # the layout before accounts
    ledger = Ledger(url)
    ledger.add_checkpoint(_checkpoint_row("cp-old", payload, corrupt_warm=True, cold_key="checkpoints/cp-old.json.gz"))
    ledger.dispose()
    store = CheckpointStore(url, cold, account="default", retention=1)

    restored = store.restore_checkpoint("cp-old")
    store.create({"positions": {}}, reason="scheduled")  # retention 1 prunes cp-old and its root-level copy

    assert restored.source == "cold" and restored.snapshot == {"positions": {}}
    assert cold.list("checkpoints/") == []
    store.dispose()


def test_an_account_view_refuses_another_accounts_view(tmp_path: Path) -> None:
    alpha = account_store(LocalFolderStore(tmp_path), "alpha")

    assert account_store(alpha, "alpha") is alpha
    with pytest.raises(ColdStorageError, match="account 'alpha'"):
        account_store(alpha, "beta")
    with pytest.raises(ColdStorageError):
        AccountObjectStore(alpha.store, "..")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_warm_tiers_statements_each_keep_to_their_account(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "fresh_pg_url")
    alpha, beta = (SqlWarmStore(url, 2, account=name) for name in ("alpha", "beta"))
    alpha.ensure_schema()
    keys = ["fill:1", "fill:2", "fill:[x]", "pos_BTC", "pos%ETH"]
    assert alpha.put_many([_record(key, "alpha") for key in keys]).ok
    assert beta.put_many([_record(key, "beta") for key in keys[:3]]).ok

    assert alpha.put_many([_record("fill:1", "alpha again", version=2)]).ok  # conflict on (account, key)
    assert {k: r.decoded() for k, r in beta.get_many(keys).items()} == {k: "beta" for k in keys[:3]}
    assert alpha.get_many(["fill:1"])["fill:1"].decoded() == "alpha again"
    assert beta.versions(keys) == dict.fromkeys(keys[:3], 1)
    assert beta.keys("fill:*") == ["fill:1", "fill:2", "fill:[x]"] and beta.keys("pos*") == []
    assert alpha.keys("pos[_%]*") == ["pos%ETH", "pos_BTC"] and beta.keys("fill:\\[*") == ["fill:[x]"]
    assert sorted(row[0] for page in beta.iter_rows(2) for row in page) == sorted(keys[:3])
    assert sorted(row[0] for page in alpha.iter_rows(2) for row in page) == sorted(keys)
    assert beta.delete_many(keys).ok and beta.keys() == []
    assert alpha.keys() == sorted(keys)
    alpha.clear()
    assert alpha.keys() == []
    alpha.dispose()
    beta.dispose()


def test_a_cold_view_lists_only_its_own_names(moto_s3: MotoS3) -> None:  # noqa: F811
    root = S3Store(moto_s3.url(), endpoint_url=moto_s3.endpoint)
    alpha, beta = account_store(root, "alpha"), account_store(root, "beta")
    alpha.put("checkpoints/a.json", b"a")
    beta.put("checkpoints/b.json", b"b")
    root.put("backups/daily/x.dump", b"x")

    assert alpha.list() == ["checkpoints/a.json"] and beta.list("checkpoints/") == ["checkpoints/b.json"]
    assert root.list() == [
        "accounts/alpha/checkpoints/a.json",
        "accounts/beta/checkpoints/b.json",
        "backups/daily/x.dump",
    ]
    with pytest.raises(ColdStorageError):
        beta.get("checkpoints/a.json")


def _now() -> datetime:
    return datetime.now(UTC)


def _record(key: str, value: Any, version: int = 1) -> StateRecord:
    data = encode_value(value)
    return StateRecord(key, data, checksum(data), version, _now())


def _checkpoint_row(checkpoint_id: str, payload: bytes, *, corrupt_warm: bool, cold_key: str) -> Checkpoint:
    return Checkpoint(
        id=checkpoint_id,
        created_at=_now(),
        reason="before accounts",
        compressed=True,
        size_bytes=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        payload=payload[:-4] if corrupt_warm else payload,
        cold_key=cold_key,
    )
