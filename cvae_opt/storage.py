"""Study storage and artifact store: any SQLAlchemy URL (SQLite by default), crash-safe settings on."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore

from .errors import UserError

DEFAULT_STORAGE = "sqlite:///storage/cvae_opt.db"
DEFAULT_ARTIFACTS = "storage/artifacts"
HEARTBEAT_SECONDS = 60


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs, summaries and study attributes."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str = DEFAULT_STORAGE, heartbeat: int = HEARTBEAT_SECONDS) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats: a worker killed mid-trial has its trial marked FAIL after the
    grace period and re-queued once with the same parameters, instead of staying RUNNING forever."""
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
    try:
        return optuna.storages.RDBStorage(
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open storage {mask_url(url)}: {first[:300]}") from None


def artifact_store(base: str | Path = DEFAULT_ARTIFACTS) -> FileSystemArtifactStore:
    Path(base).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(base))


def load_existing_study(storage: optuna.storages.BaseStorage, name: str, url: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(f"no study named {name!r} in {mask_url(url)}; studies there: {names or 'none'}") from None
