"""Storages that cannot work, and the run's resume rules (issue 27, items 4 and 5): only lost
connections are retried; a read-only, foreign, missing or in-memory storage is one `error:` line, exit 2,
before any data is drawn and with the storage byte-identical; read-only commands create nothing; a
resumed study keeps its search space; worker processes get the URL through the environment; a trial
stopped by Ctrl-C is re-queued once; --jobs is capped at the trials.

Refusals run in-process (`run_main`, as test_commands does); the worker and Ctrl-C checks are real
processes. Every study is one epoch on a few hundred pairs, in the test's own folder."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml

from cvae_opt.errors import StorageError, UserError
from cvae_opt.storage import STORAGE_ENV, _connection_lost, open_storage
from cvae_opt.workers import REQUEUED_FROM_ATTR, RunOptions, requeue_interrupted
from test_commands import call, write_study

S = optuna.trial.TrialState


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every command's relative paths (storage/, reports/) land in the test's folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    return tmp_path


def digest(path: Path) -> dict[str, str]:
    """Every file under `path` (or `path` itself) by its SHA-256."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def refused(capsys, module: str, *args) -> str:
    """The one `error:` line of a command that must exit 2 with no traceback."""
    capsys.readouterr()
    code = call(module, *args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (code, err)
    return lines[0]


def tiny(d: Path, name="tiny", **over) -> Path:
    return write_study(d / f"{name}.yaml", name=name, train_size=300, **over)


def run_tiny(d: Path, url: str, *extra) -> int:
    return call("run", "--study", tiny(d), "--trials", 1, "--storage", url, "--artifacts", d / "art", "--quiet", *extra)


# -- which errors are retried ---------------------------------------------------------------------
class FakeDriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate


def wrapped(orig: Exception, cls=sqlalchemy.exc.OperationalError, **kw) -> Exception:
    """A driver error as Optuna's RDB storage raises it: SQLAlchemy's wrapper in a StorageInternalError."""
    err = cls("SELECT 1", {}, orig, **kw)
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from err
    except optuna.exceptions.StorageInternalError as exc:
        return exc


@pytest.mark.parametrize("message", ["attempt to write a readonly database", "database is locked",
                                     "no such table: studies", "disk I/O error", "database or disk is full",
                                     "unable to open database file"])
def test_sqlite_errors_are_not_connection_losses(message):
    assert not _connection_lost(wrapped(sqlite3.OperationalError(message)))


@pytest.mark.parametrize("message,sqlstate,lost", [
    ("server closed the connection unexpectedly", None, True),
    ("terminating connection due to administrator command", "57P01", True),
    ("consuming input failed: server closed the connection unexpectedly", None, True),
    ('connection failed: connection to server at "db", port 5432 failed: Connection refused', None, True),
    ("(2013, 'Lost connection to MySQL server during query')", None, True),
    ("something odd", "08006", True),  # class 08: connection exception
    ('connection failed: FATAL:  password authentication failed for user "cvae"', None, False),
    ("permission denied for table studies", "42501", False),
    ("cannot execute UPDATE in a read-only transaction", "25006", False),
])
def test_only_lost_or_refused_connections_are_retried(message, sqlstate, lost):
    assert _connection_lost(wrapped(FakeDriverError(message, sqlstate))) is lost


def test_a_connection_the_pool_invalidated_is_retried():
    assert _connection_lost(sqlalchemy.exc.InterfaceError("x", {}, FakeDriverError("y"), connection_invalidated=True))


def test_a_connection_that_does_not_come_back_is_one_line(tmp_path, monkeypatch):
    import cvae_opt.storage as storage_module

    monkeypatch.setattr(storage_module, "RECONNECT_SECONDS", 0.5)
    storage = open_storage(f"sqlite:///{tmp_path}/c.db")

    def lost():
        raise wrapped(FakeDriverError("server closed the connection unexpectedly"))

    with pytest.raises(StorageError, match=r"the connection was lost and did not come back within 0.5 s \(server closed"):
        storage._retrying(lost)


def test_a_read_only_database_is_one_line_at_once(tmp_path):
    url = f"sqlite:///{tmp_path}/ro.db"
    optuna.create_study(study_name="s", storage=open_storage(url))
    ro = open_storage(f"sqlite:///file:{tmp_path}/ro.db?mode=ro&uri=true", create=False)
    study = optuna.load_study(study_name="s", storage=ro)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"ro\.db is read-only: make it .*--storage sqlite:///other\.db"):
        study.set_user_attr("x", 1)
    assert time.monotonic() - t0 < 5  # before: retried for 60 s as a lost connection, then a traceback


# -- refusals of `run` ----------------------------------------------------------------------------
def test_run_refuses_storages_that_cannot_work_before_drawing_data(tmp_path, capsys, monkeypatch):
    good = f"sqlite:///{tmp_path}/s.db"
    assert run_tiny(tmp_path, good) == 0
    data = tmp_path / "data"
    for f in data.glob("*.pt"):
        f.unlink()  # each refusal below must come before the data is drawn again

    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        con.execute("INSERT INTO customers (name) VALUES ('ada')")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 20)
    cases = [
        (foreign, [], "app.db holds the tables of another application (customers), not Optuna's; pass a new file"),
        (tmp_path / "junk.db", [], "junk.db is not an SQLite database"),
        (tmp_path / "s.db", ["--storage", f"sqlite:///file:{tmp_path}/s.db?mode=ro&uri=true"], "opened read-only (mode=ro"),
        (tmp_path / "s.db", ["--storage", "sqlite:///:memory:", "--jobs", 2, "--trials", 2],
         "an in-memory database lives in one process, and --jobs 2 starts worker processes"),
        (tmp_path / "s.db", ["--storage", "postgresql://u:secret@127.0.0.1:1/db"], "cannot open storage postgresql://u:***@"),
    ]
    for target, extra, expect in cases:
        before = digest(target)
        url = [] if extra else ["--storage", f"sqlite:///{target}"]
        line = refused(capsys, "run", "--study", tiny(tmp_path), "--trials", 1, "--artifacts", tmp_path / "art",
                       *url, *extra)
        assert expect in line and "secret" not in line, line
        assert digest(target) == before, expect
        assert not list(data.glob("*.pt")), f"data drawn before the storage was refused: {expect}"

    # a read-only file (not for root, whom permissions do not stop: the check is then what os.access says)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p).name != "s.db")
    line = refused(capsys, "run", "--study", tiny(tmp_path), "--trials", 1, "--storage", good)
    assert "s.db is read-only: make it writable or pass --storage sqlite:///other.db" in line


def test_read_only_commands_never_create_a_storage(tmp_path, capsys):
    line = refused(capsys, "export", "--study", "tiny", "--storage", f"sqlite:///{tmp_path}/no/where.db")
    assert "no storage at" in line and "where.db: run a study first" in line
    line = refused(capsys, "export", "--study", "tiny")  # the default storage/cvae_opt.db, in an empty folder
    assert "no storage at storage/cvae_opt.db" in line
    line = refused(capsys, "report", "--study", "tiny", "--storage", f"sqlite:///{tmp_path}/r.db")
    assert "no storage at" in line
    (tmp_path / "empty.db").touch()
    assert "empty.db (an empty file): run a study first" in refused(capsys, "export", "--study", "tiny", "--storage", f"sqlite:///{tmp_path}/empty.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]  # no folder, no database, no reports/
    assert (tmp_path / "empty.db").stat().st_size == 0
    with pytest.raises(UserError, match="no storage at"):
        import cvae_opt

        cvae_opt.load_study("tiny", storage=f"sqlite:///{tmp_path}/api.db")
    assert not (tmp_path / "api.db").exists()
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE invoices (id INTEGER)")
    before = digest(foreign)
    assert "another application (invoices)" in refused(capsys, "export", "--study", "x", "--storage", f"sqlite:///{foreign}")
    assert digest(foreign) == before


def test_a_resumed_study_keeps_its_search_space(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    f = tiny(tmp_path)
    assert run_tiny(tmp_path, url) == 0
    # comments, layout and number spelling are not a change
    text = f.read_text()
    f.write_text("# the same space, written otherwise\n" + text.replace("0.0001", "1.0e-4") + "\n\n")
    assert call("run", "--study", f, "--trials", 1, "--storage", url, "--artifacts", tmp_path / "art", "--quiet") == 0
    study = optuna.load_study(study_name="tiny", storage=url)
    assert len(study.trials) == 2 and study.user_attrs["study_files_before"] == [text]

    spec = yaml.safe_load(f.read_text())
    spec["search"]["lr"]["high"] = 0.05
    spec["search"]["hidden"] = {"type": "categorical", "choices": [16, 32]}
    spec["fixed"].pop("hidden")
    f.write_text(yaml.safe_dump(spec, sort_keys=False))
    before = digest(tmp_path / "s.db")
    line = refused(capsys, "run", "--study", f, "--trials", 1, "--storage", url, "--artifacts", tmp_path / "art")
    assert (f"study 'tiny' in {url} was created with another search space (lr changed, hidden added); pass "
            "--study-name NEW for a new study, or --allow-changed-space to add trials anyway") in line
    assert digest(tmp_path / "s.db") == before
    assert call("run", "--study", f, "--trials", 1, "--storage", url, "--artifacts", tmp_path / "art", "--quiet",
                "--allow-changed-space") == 0
    study = optuna.load_study(study_name="tiny", storage=url)
    assert len(study.trials) == 3 and "hidden" in study.trials[-1].params
    assert "hidden" in study.user_attrs["study_file"] and len(study.user_attrs["study_files_before"]) == 2


def test_an_in_memory_storage_runs_one_worker_and_says_nothing_is_kept(tmp_path, capsys):
    capsys.readouterr()
    assert call("run", "--study", tiny(tmp_path), "--trials", 1, "--storage", "sqlite:///:memory:",
                "--artifacts", tmp_path / "art") == 0
    out = capsys.readouterr()
    assert "keeps the study in this process only" in out.err and "Traceback" not in out.err + out.out
    assert "this run: 1 trials (1 complete" in out.out
    assert not (tmp_path / "storage").exists()
    import cvae_opt

    study = cvae_opt.run_study(tiny(tmp_path), 2, storage="sqlite:///:memory:", artifacts=str(tmp_path / "art"),
                               quiet=True, heartbeat=1)
    assert [t.state for t in study.trials] == [S.COMPLETE] * 2  # the API's study lives on in the notebook


# -- worker processes -----------------------------------------------------------------------------
def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_workers_get_the_storage_through_the_environment_and_jobs_are_capped(tmp_path):
    argv = RunOptions(study="x", storage="postgresql://u:pw@db/cvae", jobs=2).to_argv(storage=False)
    assert "--storage" not in argv and not any("pw" in a for a in argv) and "--jobs" in argv
    assert "--storage" in RunOptions(study="x", storage="postgresql://u:pw@db/cvae").to_argv()  # the recorded command

    url = f"sqlite:///{tmp_path}/s.db"
    proc = subprocess.Popen([sys.executable, "-m", "cvae_opt.run", "--study", str(tiny(tmp_path)), "--trials", "2",
                             "--jobs", "4", "--storage", url, "--artifacts", str(tmp_path / "art")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != STORAGE_ENV})
    seen: dict[int, tuple[list[str], dict[str, str]]] = {}
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not seen:
        for pid in children_of(proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            env = dict(e.decode(errors="replace").partition("=")[::2] for e in environ if b"=" in e)
            if b"cvae_opt.run" in cmdline:
                seen[pid] = ([a.decode(errors="replace") for a in cmdline], env)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert seen, "no worker process was seen"
    for cmdline, env in seen.values():
        assert url not in " ".join(cmdline) and "--storage" not in cmdline  # what `ps` shows every user
        assert "--worker-index" in cmdline and env.get(STORAGE_ENV) == url
    assert "note: --jobs 4 capped at 2 (the trials to add)" in err
    assert "2 worker(s)" in out and len(optuna.load_study(study_name="tiny", storage=url).trials) == 2


def test_the_storage_variable_stands_in_for_the_option(tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv(STORAGE_ENV, url)
    assert call("run", "--study", tiny(tmp_path), "--trials", 1, "--artifacts", tmp_path / "art", "--quiet") == 0
    assert (tmp_path / "env.db").is_file() and not (tmp_path / "storage").exists()
    capsys.readouterr()
    assert call("export", "--study", "tiny") == 0
    assert "# Trial 0 of study 'tiny'" in capsys.readouterr().out


# -- Ctrl-C ---------------------------------------------------------------------------------------
def running_trial(db: Path) -> int | None:
    """The number of a trial inside its training loop (an epoch reported), read without writing."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            row = con.execute("SELECT t.number FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                              "WHERE t.state = 'RUNNING' LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def test_a_trial_stopped_by_ctrl_c_is_requeued_once_with_its_parameters(tmp_path):
    f = tiny(tmp_path, epochs=300)  # long enough to be caught mid-way
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    cmd = [sys.executable, "-m", "cvae_opt.run", "--study", str(f), "--storage", url, "--artifacts", str(tmp_path / "a")]
    proc = subprocess.Popen([*cmd, "--trials", "3"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    number, deadline = None, time.time() + 180
    while number is None and proc.poll() is None and time.time() < deadline:
        number = running_trial(db)
        time.sleep(0.1)
    assert number is not None, "the run was never caught in the middle of a trial"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "a trial stopped mid-way is re-queued" in out
    stopped = optuna.load_study(study_name="tiny", storage=url).trials[number]
    assert stopped.state == S.FAIL and stopped.user_attrs["interrupted"] is True

    r = subprocess.run([*cmd, "--trials", "1", "--epochs", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"note: re-queued interrupted trial(s) {number} with their parameters" in r.stderr
    study = optuna.load_study(study_name="tiny", storage=url)
    new = study.trials[-1]
    assert new.state == S.COMPLETE and new.params == stopped.params and new.user_attrs[REQUEUED_FROM_ATTR] == number
    assert requeue_interrupted(study) == []  # once: the next run does not queue it again
    assert not study.get_trials(states=(S.WAITING, S.RUNNING))


def test_requeue_marks_each_interrupted_trial_once():
    study = optuna.create_study()
    for i in range(3):
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        if i != 1:
            t.set_user_attr("interrupted", True)
        study.tell(t, state=S.FAIL)
    assert requeue_interrupted(study) == [0, 2]
    assert requeue_interrupted(study) == []
    waiting = study.get_trials(states=(S.WAITING,))
    assert [json.dumps(t.user_attrs) for t in waiting] == ['{"requeued_from": 0}', '{"requeued_from": 2}']
    assert [t.system_attrs["fixed_params"] for t in waiting] == [study.trials[0].params, study.trials[2].params]
