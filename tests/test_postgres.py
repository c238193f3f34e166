"""Several workers on a real PostgreSQL server. `.ci/run` starts one on 127.0.0.1 and sets
CVAE_OPT_TEST_POSTGRES_URL; in CI a missing server fails the run instead of skipping it."""

import os
import subprocess
import sys
import uuid

import optuna
import pytest

from test_reliability import tiny_study

URL = os.environ.get("CVAE_OPT_TEST_POSTGRES_URL")


@pytest.fixture
def pg_url():
    if not URL:
        if os.environ.get("CI"):
            pytest.fail("CI must provide a PostgreSQL server: CVAE_OPT_TEST_POSTGRES_URL is not set (see .ci/run)")
        pytest.skip("no PostgreSQL server: set CVAE_OPT_TEST_POSTGRES_URL=postgresql://user@127.0.0.1:PORT/db")
    return URL


def with_password(url: str) -> str:
    """The CI server trusts local connections, so a password in the URL is accepted and ignored:
    enough to check it is masked everywhere."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(password="s3cret-pw").render_as_string(hide_password=False)


def test_two_workers_on_postgresql(tmp_path, pg_url):
    f = tiny_study(tmp_path / "tiny.yaml", epochs=1, train_size=300)
    name = f"pg-{uuid.uuid4().hex[:8]}"
    pg_url = with_password(pg_url)
    r = subprocess.run([sys.executable, "-m", "cvae_opt.run", "--study", str(f), "--study-name", name, "--storage", pg_url,
                        "--trials", "20", "--jobs", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "s3cret-pw" not in r.stdout + r.stderr and ":***@" in r.stdout
    study = optuna.load_study(study_name=name, storage=pg_url)
    trials = study.trials
    assert len(trials) == 20 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    attrs = repr(study.user_attrs)
    assert "s3cret-pw" not in attrs and ":***@" in study.user_attrs["launch_command"]
    assert "this run: 20 trials (20 complete" in r.stdout
    # a report straight from the server
    r = subprocess.run([sys.executable, "-m", "cvae_opt.report", "--study", name, "--storage", pg_url], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "reports" / name / "index.html").is_file()
    assert "s3cret-pw" not in r.stdout + r.stderr
    for page in (tmp_path / "reports" / name).glob("*"):
        if page.suffix in (".html", ".yaml", ".csv"):
            assert "s3cret-pw" not in page.read_text(), page.name


def test_workers_survive_their_database_connections_being_cut(tmp_path, pg_url):
    """Every connection to the database is terminated by the server twice while two workers run: their
    calls reconnect, the heartbeat goes on, and the study ends with every trial complete."""
    import sqlalchemy

    f = tiny_study(tmp_path / "tiny.yaml", epochs=3, train_size=500)
    name = f"pg-cut-{uuid.uuid4().hex[:8]}"
    p = subprocess.Popen([sys.executable, "-m", "cvae_opt.run", "--study", str(f), "--study-name", name, "--storage",
                          pg_url, "--trials", "8", "--jobs", "2", "--heartbeat", "1"], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool)
    cut = 0
    for line in p.stdout:  # after the first and the third finished trial
        if line.startswith(("[1/8]", "[3/8]")):
            with engine.connect() as c:
                cut += len(c.execute(sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()")).fetchall())
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert cut >= 4  # both workers held connections (main and heartbeat threads) when they were cut
    trials = optuna.load_study(study_name=name, storage=pg_url).trials
    assert len(trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), \
        [t.state for t in trials]
