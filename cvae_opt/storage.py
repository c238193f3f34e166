"""Study storage and artifact store: any SQLAlchemy URL (SQLite by default) or Optuna's gRPC storage
proxy (`grpc://host:port`), with crash-safe settings on: a worker killed mid-trial has its trial marked
FAIL after the heartbeat grace period and retried once with the same parameters.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from .errors import StorageError, UserError
from .files import file_in_the_way

DEFAULT_STORAGE = "sqlite:///storage/cvae_opt.db"
# the storage URL when --storage is not given: what `run` hands its worker processes (a URL in their
# command lines would show its password in `ps`), and what users set to keep it out of their own
STORAGE_ENV = "CVAE_OPT_STORAGE"
DEFAULT_ARTIFACTS = "storage/artifacts"
HEARTBEAT_SECONDS = 60
SCHEMA_RACE_RETRIES = 5
# what losing the race to create a new database's tables looks like (SQLite, PostgreSQL, MySQL)
SCHEMA_RACE_MESSAGES = ("already exists", "duplicate key", "UNIQUE constraint failed", "Duplicate entry")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs, summaries and study attributes."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        # unchanged when there is nothing to hide (rendering escapes sqlite:///:memory: as %3Amemory%3A)
        return url if parsed.password is None else parsed.render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def default_storage() -> str:
    """$CVAE_OPT_STORAGE when set, else sqlite:///storage/cvae_opt.db: every command's --storage default."""
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


STORAGE_HELP = f"SQLAlchemy URL or grpc://HOST:PORT (default: ${STORAGE_ENV} if set, else {DEFAULT_STORAGE})"
SQLITE_BUSY_SECONDS = 60  # how long an SQLite call waits for another process's lock before it fails
OPTUNA_TABLES = ("studies", "version_info")  # a database holding both is Optuna's (alembic_version comes later)


@dataclass
class SqliteTarget:
    """What an sqlite:// URL names: an in-memory database, or a file (its path as SQLite opens it)."""

    memory: bool
    path: Path | None
    read_only: bool  # mode=ro in a URI filename (sqlite:///file:x.db?mode=ro&uri=true)


def _parse(url: str):  # noqa: ANN202 (sqlalchemy.engine.URL)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError:
        raise UserError(
            f"malformed storage URL {mask_url(url)!r}: expected an SQLAlchemy URL such as "
            f"{DEFAULT_STORAGE} or postgresql://user:password@host/dbname"
        ) from None
    except ValueError:  # the one number in a URL: host:abc
        raise UserError(
            f"malformed storage URL {_masked_text(url)!r}: its port must be a number, as in "
            "postgresql://user:password@host:5432/dbname"
        ) from None


def _masked_text(url: str) -> str:
    """`url` without what may be a password (user:password@) when SQLAlchemy cannot parse it."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        user, _, host = rest.rpartition("@")
        return f"{scheme}://{user.split(':', 1)[0]}:***@{host}" if ":" in user else url
    return url


def sqlite_target(url: str) -> SqliteTarget | None:
    """The database an sqlite:// URL names; None for any other URL."""
    if url.startswith("grpc://"):
        return None
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    db = parsed.database or ""
    query = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in parsed.query.items()}
    if str(query.get("uri", "")).lower() in ("true", "1") and db.startswith("file:"):
        name = db[len("file:"):].split("?", 1)[0]
        mode = str(query.get("mode", ""))
        if name in ("", ":memory:") or mode == "memory":
            return SqliteTarget(True, None, False)
        return SqliteTarget(False, Path(name), mode == "ro")
    if db in ("", ":memory:"):
        return SqliteTarget(True, None, False)
    return SqliteTarget(False, Path(db), False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def describe_sqlite_error(where: str, message: str) -> str:
    """One line for an SQLite error a new connection would not fix: what it means and the fix."""
    low = message.lower()
    other = "or pass --storage sqlite:///other.db"
    if "readonly database" in low or "read-only" in low:
        return f"{where} is read-only: make it (and its folder) writable {other}"
    if "database is locked" in low or "database table is locked" in low:
        return (f"{where} is locked: another process held it for over {SQLITE_BUSY_SECONDS} s (a long transaction, a "
                f"backup, a network file system without locks?); retry once it is done {other}")
    if "database or disk is full" in low:
        return f"{where}: the disk is full; free some space {other} on another disk"
    if "disk i/o error" in low:
        return f"{where}: disk I/O error (a failing or removed disk, a network file system?); check the disk {other}"
    if "unable to open database file" in low:
        return (f"cannot open {where} (unable to open database file: a missing or unwritable folder?); check its "
                f"folder {other}")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return f"{where} is not an SQLite database or is damaged ({message}); pass --storage with a new file"
    if "no such table" in low:
        return (f"{where} lacks Optuna's tables ({message}): was it replaced or emptied while in use? pass --storage "
                "with a study database")
    return f"storage {where}: {message}"


def _driver_message(exc: BaseException) -> str:
    """The first line of the database driver's own words (Optuna and SQLAlchemy wrap them)."""
    from sqlalchemy import exc as sa

    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    return _first_line(getattr(cause, "orig", None) or cause) if isinstance(cause, sa.DBAPIError) else _first_line(exc)


def describe_storage_error(url: str, exc: BaseException) -> str:
    """One line for a database error that is not a lost connection, naming the storage and the fix."""
    message = _driver_message(exc)
    try:
        target = sqlite_target(url)
    except UserError:
        target = None
    if target is not None:
        return describe_sqlite_error("an in-memory SQLite database" if target.memory else str(target.path), message)
    low = message.lower()
    if "connection failed" in low or "connection to server" in low or "can't connect" in low:
        return f"cannot open storage {mask_url(url)}: {message}"  # refused for good: a wrong password, database, user
    if "read-only" in low or "readonly" in low or "read only" in low:
        return f"storage {mask_url(url)} is read-only ({message}): pass a writable database"
    if "permission denied" in low or "access denied" in low:
        return f"storage {mask_url(url)}: {message}; grant the user access to Optuna's tables, or pass another --storage"
    if ("does not exist" in low or "doesn't exist" in low) and ("relation" in low or "table" in low):
        return f"storage {mask_url(url)}: {message} (no study tables there? run a study first, or pass another --storage)"
    return f"storage {mask_url(url)}: {message}"


def _database_error(exc: BaseException) -> bool:
    """A driver's error (other than a constraint, which Optuna handles itself), possibly wrapped by Optuna."""
    from sqlalchemy import exc as sa

    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    return isinstance(cause, sa.DBAPIError) and not isinstance(cause, sa.IntegrityError)


def _sqlite_tables(path: Path) -> list[str]:
    """The tables of an existing SQLite file, read through a read-only connection (nothing written)."""
    from urllib.parse import quote

    con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=SQLITE_BUSY_SECONDS)
    try:
        return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    finally:
        con.close()


def _writable_folder(path: Path) -> Path | None:
    """The nearest existing folder of `path` if this process cannot write there, else None."""
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return None if os.access(folder, os.W_OK | os.X_OK) else folder


def check_storage(url: str, *, create: bool = True, jobs: int = 1, reach: bool = False) -> None:
    """Refuse, with one line and before anything is written anywhere, a storage that cannot work: a
    malformed URL, a missing driver, an in-memory database with several worker processes, an SQLite
    file that is read-only (for `create`), holds another application's tables, or is not a database,
    and, for read-only use (`create=False`), one that does not exist (nothing is created for it). With
    `reach`, a database server (or gRPC proxy) must answer now."""
    if url.startswith("grpc://"):
        parse_grpc_url(url)
        if reach:
            open_grpc_proxy(url).close()
        return
    target = sqlite_target(url)
    if target is None:
        _check_driver(url)
        if reach:
            _reach_server(url)
        return
    if target.memory:
        if jobs > 1:
            raise UserError(f"--storage {url}: an in-memory database lives in one process, and --jobs {jobs} starts "
                            "worker processes that cannot see it; pass a file (sqlite:///storage/NAME.db) or --jobs 1")
        return
    path = target.path
    folder = file_in_the_way(path)
    if folder is not None:
        raise UserError(f"--storage {url}: {folder} is a file, not a folder, so {path} cannot be made there; "
                        "pass sqlite:///storage/NAME.db")
    if path.is_dir():
        raise UserError(f"--storage {url}: {path} is a folder, not a database file; pass sqlite:///{path}/NAME.db")
    if not path.exists() or path.stat().st_size == 0:
        if not create:
            what = " (an empty file)" if path.exists() else ""
            raise UserError(f"no storage at {path}{what}: run a study first, or pass --storage with the URL it ran on")
        folder = _writable_folder(path)
        if folder is not None:
            raise UserError(f"cannot create {path}: its folder {folder} is read-only; make it writable or pass "
                            "--storage sqlite:///other.db")
        return
    try:
        tables = _sqlite_tables(path)
    except sqlite3.Error as exc:
        raise UserError(describe_sqlite_error(str(path), _first_line(exc))) from None
    from optuna.storages._rdb.models import BaseModel

    tables = [n for n in tables if not n.startswith("sqlite_")]  # SQLite's own (sqlite_sequence)
    ours = set(BaseModel.metadata.tables) | {"alembic_version"}
    others = [n for n in tables if n not in ours]
    # Optuna's: both marker tables (with anything else beside them), or only tables of Optuna's (a schema
    # another worker is creating right now: SQLite creates its tables one by one)
    if not tables:
        if not create:
            raise UserError(f"no storage at {path}: the file is an empty database; run a study first, or pass "
                            "--storage with the URL it ran on")
    elif others and not all(name in tables for name in OPTUNA_TABLES):
        shown = ", ".join(others[:6]) + (f" and {len(others) - 6} more" if len(others) > 6 else "")
        raise UserError(f"{path} holds the tables of another application ({shown}), not Optuna's; pass a new file, "
                        "e.g. --storage sqlite:///storage/cvae_opt.db")
    if create:
        if target.read_only:
            raise UserError(f"{path} is opened read-only (mode=ro in the URL): a study needs to write; drop mode=ro "
                            "or pass --storage sqlite:///other.db")
        if not os.access(path, os.R_OK | os.W_OK):
            raise UserError(f"{path} is read-only: make it writable or pass --storage sqlite:///other.db")
        folder = _writable_folder(path)
        if folder is not None:
            raise UserError(f"{path}: its folder {folder} is read-only (SQLite writes a journal beside the file); "
                            "make it writable or pass --storage sqlite:///other.db")


def _check_driver(url: str) -> None:
    import sqlalchemy

    try:
        sqlalchemy.create_engine(url).dispose()
    except ImportError:
        raise UserError(
            f"storage {mask_url(url)}: its database driver is not installed; "
            'pip install "psycopg[binary]" (postgresql://) or pymysql (mysql+pymysql://)'
        ) from None
    except Exception as exc:  # an unknown dialect, a bad argument in the URL
        raise UserError(f"malformed storage URL {mask_url(url)!r}: {_first_line(exc)}") from None


def _reach_server(url: str) -> None:
    """Connect once (nothing is created): an unreachable server or a refused login is one line now, not
    after the data of the first trial is drawn."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        for attempt in range(SCHEMA_RACE_RETRIES + 1):
            try:
                with engine.connect():
                    return
            except Exception as exc:
                if attempt < SCHEMA_RACE_RETRIES and _connection_lost(exc):
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise UserError(f"cannot open storage {mask_url(url)}: {_open_failure(exc)}") from None
    finally:
        engine.dispose()


def _open_failure(exc: BaseException) -> str:
    text = f"{exc} {exc.__cause__ or ''}"
    first = _first_line(exc)
    if "too many clients" in text or "Too many connections" in text:
        first += (" (each worker holds up to 2 connections, one for its heartbeat: raise the server's "
                  "max_connections, or serve the database through cvae-opt storage-proxy)")
    return first


def open_storage(url: str = DEFAULT_STORAGE, heartbeat: int = HEARTBEAT_SECONDS, *,
                 create: bool = True) -> optuna.storages.BaseStorage:
    """An RDB storage, or a client of the gRPC storage proxy (`grpc://host:port`), with heartbeats: a
    worker killed mid-trial has its trial marked FAIL after the grace period (3 heartbeats) and
    re-queued once with the same parameters, instead of staying RUNNING forever. `create=False` (the
    commands that only read) opens an existing study database and creates nothing: no folder, no file,
    no table. The checks of `check_storage` come first."""
    if url.startswith("grpc://"):
        return open_grpc_proxy(url, heartbeat)
    check_storage(url, create=create)
    target = sqlite_target(url)
    engine_kwargs: dict = {}
    beat: dict = {"heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat,
                  "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    if target is not None and target.memory:
        # one connection for every thread (SQLAlchemy's default gives each thread its own, empty, database);
        # no heartbeat: no other process can see the trials, and a crash takes the database with it
        from sqlalchemy.pool import StaticPool

        engine_kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        beat = {}
    elif target is not None:
        if create:
            target.path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
    else:  # a server: connections dropped by a restart are noticed and replaced when next checked out
        engine_kwargs = {"pool_pre_ping": True}
    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            # read-only use creates no table (an in-memory database has nothing to keep: it gets its tables)
            return ReconnectingRDBStorage(url, engine_kwargs=engine_kwargs,
                                          skip_table_creation=not create and not (target is not None and target.memory),
                                          **beat)
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
            if attempt < SCHEMA_RACE_RETRIES and (any(m in text for m in SCHEMA_RACE_MESSAGES) or _connection_lost(exc)):
                time.sleep(0.2 * (attempt + 1))
                continue
            if _database_error(exc) and not _connection_lost(exc):
                raise StorageError(describe_storage_error(url, exc)) from None
            raise UserError(f"cannot open storage {mask_url(url)}: {_open_failure(exc)}") from None
    raise AssertionError("unreachable")


RECONNECT_SECONDS = 60.0  # how long a call waits for a lost database connection to come back


# what a lost or refused connection says (PostgreSQL through psycopg, MySQL, and the network beneath):
# only these are retried; a read-only, locked or full database, a missing table, a refused statement
# would fail the same way on a new connection and are reported at once
CONNECTION_LOST_MESSAGES = (
    "server closed the connection", "terminating connection", "could not connect", "connection refused",
    "connection failed", "connection reset", "connection timed out", "timeout expired", "connection is closed",
    "connection already closed", "connection is lost", "connection was closed", "ssl connection has been closed",
    "could not receive data", "could not send data", "no connection to the server", "consuming input failed",
    "the database system is starting up", "the database system is shutting down",
    "the database system is in recovery mode", "lost connection", "server has gone away", "can't connect",
    "broken pipe", "network is unreachable", "no route to host", "connection to server",
)
# what a connection refused for good says (a wrong password, an unknown database or user): not retried
CONNECTION_REFUSED_FOR_GOOD = ("authentication failed", "no pg_hba.conf entry", "does not exist", "access denied",
                               "permission denied", "unknown database")
MYSQL_CONNECTION_CODES = {2002, 2003, 2006, 2013, 2055}  # can't connect, gone away, lost connection


def _connection_lost(exc: BaseException) -> bool:
    """A database error that a new connection may not have: the server restarted, cut the connection,
    failed over, or is briefly unreachable. Not a read-only or locked database, a full disk, a missing
    table, a constraint violation or a bad statement: those fail the same way again."""
    from sqlalchemy import exc as sa

    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    if isinstance(cause, sa.PendingRollbackError):  # a session spoiled by an earlier error: a new one is clean
        return True
    if not isinstance(cause, sa.DBAPIError):
        return False
    if cause.connection_invalidated:
        return True
    if not isinstance(cause, (sa.OperationalError, sa.InterfaceError)):
        return False
    orig = getattr(cause, "orig", None)
    code = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
    if code.startswith("08") or code in ("57P01", "57P02", "57P03"):  # connection exception, shutdown, starting up
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in MYSQL_CONNECTION_CODES:
        return True
    if isinstance(orig, sqlite3.Error):  # a file has no connection to lose
        return False
    text = str(orig if orig is not None else cause).lower()
    if any(m in text for m in CONNECTION_REFUSED_FOR_GOOD):
        return False
    return any(m in text for m in CONNECTION_LOST_MESSAGES)


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose calls survive a lost database connection: a call that fails because
    the connection went away (server restart, connection cut, failover) is run again on a fresh session,
    with backoff, for up to RECONNECT_SECONDS, instead of killing the worker (and, in the heartbeat
    thread, silently stopping the heartbeat so that a live trial is failed as stale). A state change
    that reached the database before the connection broke is recognised on the retry, not reported as
    an error. Any other database error (read-only, locked, full, a missing table) is a `StorageError` at
    once: one line naming the storage and the fix; other exceptions pass through."""

    def _retrying(self, call: Callable[[], object]) -> object:
        deadline = time.monotonic() + RECONNECT_SECONDS
        delay = 0.25
        while True:
            try:
                return call()
            except Exception as exc:
                if not _connection_lost(exc):
                    if _database_error(exc):  # read-only, locked, full, no such table...: one line, at once
                        raise StorageError(describe_storage_error(self.url, exc)) from None
                    raise
                if time.monotonic() + delay > deadline:
                    raise StorageError(f"storage {mask_url(self.url)}: the connection was lost and did not come back "
                                       f"within {RECONNECT_SECONDS:g} s ({_driver_message(exc)}); "
                                       "finished trials are safe: run the same command again once it is back") from None
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
        import grpc

        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:
            pass  # another worker already failed it as stale; the trial's own result decides the rest
        except grpc.RpcError as e:
            # a beat that could not be sent (the proxy restarting past the call's retries) is not the trial's
            # failure: Optuna's heartbeat thread would die with it and the trial beat no more, so say so and
            # beat again at the next interval (a trial is stale only after a grace of three missed beats)
            code = e.code() if hasattr(e, "code") else None
            optuna.logging.get_logger(__name__).warning(f"heartbeat of trial {trial_id} not recorded ({code}); the next beat retries")

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
