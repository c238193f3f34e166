"""Study storage and artifact store: any SQLAlchemy URL (SQLite by default) or Optuna's gRPC storage
proxy (`grpc://host:port`), with crash-safe settings on: a worker killed mid-trial has its trial marked
FAIL after the heartbeat grace period and retried once with the same parameters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from .errors import UserError

DEFAULT_STORAGE = "sqlite:///storage/cvae_opt.db"
DEFAULT_ARTIFACTS = "storage/artifacts"
HEARTBEAT_SECONDS = 60
SCHEMA_RACE_RETRIES = 5
# what losing the race to create a new database's tables looks like (SQLite, PostgreSQL, MySQL)
SCHEMA_RACE_MESSAGES = ("already exists", "duplicate key", "UNIQUE constraint failed", "Duplicate entry")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs, summaries and study attributes."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str = DEFAULT_STORAGE, heartbeat: int = HEARTBEAT_SECONDS) -> optuna.storages.BaseStorage:
    """An RDB storage, or a client of the gRPC storage proxy (`grpc://host:port`), with heartbeats: a
    worker killed mid-trial has its trial marked FAIL after the grace period (3 heartbeats) and
    re-queued once with the same parameters, instead of staying RUNNING forever."""
    if url.startswith("grpc://"):
        return open_grpc_proxy(url, heartbeat)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(
            f"malformed storage URL {mask_url(url)!r}: expected an SQLAlchemy URL such as "
            f"{DEFAULT_STORAGE} or postgresql://user:password@host/dbname"
        ) from None
    engine_kwargs = {}
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:  # a server: connections dropped by a restart are noticed and replaced when next checked out
        engine_kwargs = {"pool_pre_ping": True}
    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            return ReconnectingRDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except ImportError:
            raise UserError(
                f"storage {mask_url(url)}: its database driver is not installed; "
                'pip install "psycopg[binary]" (postgresql://) or pymysql (mysql+pymysql://)'
            ) from None
        except Exception as exc:
            # workers started at once on a new database race to create its tables: the losers see
            # "already exists" / a duplicate key, and the schema is there when they look again
            text = f"{exc} {exc.__cause__ or ''}"  # Optuna wraps the driver's error; its words are in the cause
            # a connection lost while the storage opens (a server restart, a cut) is worth another try too
            if attempt < SCHEMA_RACE_RETRIES and (any(m in text for m in SCHEMA_RACE_MESSAGES) or _connection_lost(exc)
                                                  or "terminating connection" in text):
                time.sleep(0.2 * (attempt + 1))
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "too many clients" in text or "Too many connections" in text:
                first += (" (each worker holds up to 2 connections, one for its heartbeat: raise the server's "
                          "max_connections, or serve the database through cvae-opt storage-proxy)")
            raise UserError(f"cannot open storage {mask_url(url)}: {first[:500]}") from None
    raise AssertionError("unreachable")


RECONNECT_SECONDS = 60.0  # how long a call waits for a lost database connection to come back


def _connection_lost(exc: BaseException) -> bool:
    """A database error that a new connection may not have: the server restarted, cut the connection,
    failed over, or is briefly unreachable (not a constraint violation or a bad statement)."""
    from sqlalchemy import exc as sa

    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    return isinstance(cause, (sa.OperationalError, sa.InterfaceError, sa.PendingRollbackError)) or (
        isinstance(cause, sa.DBAPIError) and cause.connection_invalidated)


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose calls survive a lost database connection: a call that fails because
    the connection went away (server restart, connection cut, failover) is run again on a fresh session,
    with backoff, for up to RECONNECT_SECONDS, instead of killing the worker (and, in the heartbeat
    thread, silently stopping the heartbeat so that a live trial is failed as stale). A state change
    that reached the database before the connection broke is recognised on the retry, not reported as
    an error. Other errors pass through at once."""

    def _retrying(self, call: Callable[[], object]) -> object:
        deadline = time.monotonic() + RECONNECT_SECONDS
        delay = 0.25
        while True:
            try:
                return call()
            except Exception as exc:
                if not _connection_lost(exc) or time.monotonic() + delay > deadline:
                    raise
                self.scoped_session.remove()  # drop the broken session; the pool pre-pings the next one
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:  # noqa: ANN001
        first = [True]

        def call() -> bool:
            try:
                return optuna.storages.RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if not first[0] and self.get_trial(trial_id).state == state:
                    return True  # the first attempt's commit reached the database before the connection broke
                raise
            finally:
                first[0] = False

        return self._retrying(call)


def _wrap_retrying(name: str) -> None:
    base = getattr(optuna.storages.RDBStorage, name)

    def method(self: ReconnectingRDBStorage, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return self._retrying(lambda: base(self, *args, **kwargs))

    method.__name__ = name
    method.__doc__ = base.__doc__
    setattr(ReconnectingRDBStorage, name, method)


_NOT_RETRIED = {"set_trial_state_values", "remove_session", "get_heartbeat_interval",
                "get_heartbeat_stale_trial_callback", "get_failed_trial_callback"}
for _name in sorted(({n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_")}
                     # and what Optuna's in-process cache (_CachedStorage, which studies wrap it in) calls
                     | {"record_heartbeat", "_get_stale_trial_ids", "_create_new_trial", "_get_best_trial_id",
                        "_get_trials", "_set_trial_param"}) - _NOT_RETRIED):
    if callable(getattr(optuna.storages.RDBStorage, _name, None)):
        _wrap_retrying(_name)


def artifact_store(base: str | Path = DEFAULT_ARTIFACTS) -> FileSystemArtifactStore:
    Path(base).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(base))


def load_existing_study(storage: optuna.storages.BaseStorage, name: str, url: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(f"no study named {name!r} in {mask_url(url)}; studies there: {names or 'none'}") from None


# gRPC storage proxy -------------------------------------------------------------------------------
GRPC_EXTRA = 'pip install "cvae-opt[grpc]" (grpcio and protobuf)'
HEARTBEAT_ATTR = "cvae_opt:heartbeat"  # seconds since the epoch, on the worker's clock
# RPCs wait while the proxy is unreachable (a restart) and are retried when the connection drops mid-call
_GRPC_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{}], "waitForReady": True, "timeout": "120s",
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.5s", "maxBackoff": "8s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


def parse_grpc_url(url: str) -> tuple[str, int]:
    """grpc://host:port -> (host, port); anything else is one error line."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "grpc" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise UserError(f"malformed storage proxy URL {url!r}: expected grpc://HOST:PORT, e.g. grpc://127.0.0.1:13000")
    return parts.hostname, port


class HeartbeatGrpcProxy(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC proxy client with Optuna's heartbeat protocol, which the proxy's RPCs lack: each
    worker records its running trial's heartbeat as a trial system attribute, and Optuna's own
    `fail_stale_trials` (run before every trial) fails trials silent for longer than the grace period and
    hands them to the retry callback, as with an RDB storage. Heartbeats use the workers' clocks, so
    the machines' clocks must agree to well within the grace period (NTP). The channel waits for a
    restarting proxy instead of failing, and retries calls the connection dropped."""

    def __init__(self, *, host: str, port: int, heartbeat: int,
                 stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
        self._heartbeat = heartbeat
        self._grace = 3 * heartbeat
        self._stale_callback = stale_callback
        super().__init__(host=host, port=port)

    def _setup(self) -> None:
        import grpc
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        self._channel = grpc.insecure_channel(f"{self._host}:{self._port}", options=[
            ("grpc.max_receive_message_length", -1), ("grpc.enable_retries", 1),
            ("grpc.service_config", _GRPC_SERVICE_CONFIG),
            # reconnect within 2 s of a restarted proxy (gRPC's default backoff grows to 2 minutes, longer
            # than the heartbeat grace: live trials would be failed as stale)
            ("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000)])
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:
            pass  # another worker already failed it as stale; the trial's own result decides the rest

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # a retry inherits its stale original's attributes, heartbeat included: count no beat from
            # before this trial started (and a trial not yet beaten from its start)
            start = t.datetime_start.timestamp() if t.datetime_start else now
            beat = max(float(t.system_attrs.get(HEARTBEAT_ATTR, start)), start)
            if now - beat > self._grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_callback


def _require_grpc(who: str) -> None:
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError:
        raise UserError(f"{who} needs grpcio and protobuf; {GRPC_EXTRA}") from None


def open_grpc_proxy(url: str, heartbeat: int = HEARTBEAT_SECONDS, timeout: float = 10.0) -> HeartbeatGrpcProxy:
    """A client of `cvae-opt storage-proxy` at grpc://host:port, checked to answer within `timeout`."""
    host, port = parse_grpc_url(url)
    _require_grpc(f"storage {url}: the gRPC proxy client")
    proxy = HeartbeatGrpcProxy(host=host, port=port, heartbeat=heartbeat,
                               stale_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    try:
        proxy.wait_server_ready(timeout=timeout)
    except Exception:
        proxy.close()
        raise UserError(f"no storage proxy answers at {url} within {timeout:g}s: start one with "
                        f"cvae-opt storage-proxy --storage URL --host {host} --port {port}") from None
    return proxy


def serve_grpc_proxy(storage_url: str, host: str, port: int, threads: int) -> None:
    """Serve an RDB storage to many workers through one set of database connections (blocks)."""
    from concurrent.futures import ThreadPoolExecutor

    if storage_url.startswith("grpc://"):
        raise UserError("--storage: the proxy serves a database (an SQLAlchemy URL), not another proxy")
    _require_grpc("the storage proxy")
    # get_storage adds Optuna's in-process cache in front of the RDB storage, as its docs ask for a proxy.
    # The cache only knows trials it created or has read: a restarted proxy would answer "not found" to a
    # worker still running a trial it began through the old one, so every study's trials are read first.
    cached = optuna.storages.get_storage(open_storage(storage_url))
    for study in cached.get_all_studies():
        cached.get_all_trials(study._study_id, deepcopy=False)
    optuna.storages.run_grpc_proxy_server(cached, host=host, port=port,
                                          thread_pool=ThreadPoolExecutor(max_workers=threads))
