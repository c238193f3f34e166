"""Optuna's gRPC storage proxy as a supported storage: `cvae-opt storage-proxy` in front of a database,
and `--storage grpc://HOST:PORT` for run, export, report and dashboard; a worker killed behind the proxy
has its trial failed and retried (the heartbeat works through it), and a proxy restart mid-study loses
nothing. Real processes, a real SQLite file behind a real proxy."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
import yaml

from cvae_opt.storage import open_storage

pytest.importorskip("grpc", reason="the grpc extra (grpcio, protobuf) is part of the dev install CI runs")

S = optuna.trial.TrialState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(db, port, cwd):
    p = subprocess.Popen([sys.executable, "-m", "cvae_opt", "storage-proxy", "--storage", f"sqlite:///{db}",
                          "--port", str(port)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith(f"storage proxy for sqlite:///{db} on grpc://127.0.0.1:{port}"), line + p.stderr.read()
    return p


@pytest.fixture
def proxy(tmp_path):
    port = free_port()
    p = start_proxy(tmp_path / "s.db", port, tmp_path)
    yield f"grpc://127.0.0.1:{port}", tmp_path / "s.db", p
    p.terminate()
    p.wait(timeout=30)


def tiny(path, epochs=1, **over):
    spec = {
        "name": "tiny", "problem": "two_birds", "data": {"train_size": 500, "val_size": 100},
        "budget": {"epochs": epochs}, "objective": {"metric": "score", "direction": "maximize"},
        "sampler": {"name": "random", "args": {"seed": 1}}, "pruner": None,
        "fixed": {"latent": 4, "hidden": 32, "channels": [8], "kernels": [5], "eval_conditions": 5, "eval_samples": 2},
        "artifacts": {"plots": "none"},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }
    spec.update(over)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(cwd, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cvae_opt", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def in_db(db, name="tiny"):
    """The study read straight from the database file behind the proxy."""
    return optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{db}"))


def test_a_study_through_the_proxy_with_every_command(proxy, tmp_path):
    url, db, _ = proxy
    f = tiny(tmp_path / "tiny.yaml")
    r = cli(tmp_path, "run", "--study", f, "--trials", 4, "--jobs", 2, "--storage", url)
    assert r.returncode == 0, r.stderr
    assert f"in {url}: 0 trials so far" in r.stdout and "whole study: 4 trials (4 complete" in r.stdout
    assert f"browse: cvae-opt dashboard --storage {url}" in r.stdout  # optuna-dashboard's own CLI takes no grpc URL
    trials = in_db(db).trials  # they are in the database behind the proxy
    assert [t.state for t in trials] == [S.COMPLETE] * 4 and len({t.user_attrs["worker"] for t in trials}) == 2
    best = max(trials, key=lambda t: t.value)

    r = cli(tmp_path, "export", "--study", "tiny", "--storage", url)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout) == best.user_attrs["config"]
    r = cli(tmp_path, "report", "--study", "tiny", "--storage", url)
    assert r.returncode == 0, r.stderr
    assert f"Best trial {best.number}" in (tmp_path / "reports" / "tiny" / "index.html").read_text()

    port = free_port()
    dash = subprocess.Popen([sys.executable, "-m", "cvae_opt", "dashboard", "--storage", url, "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        body = None
        for _ in range(100):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5).read()
                break
            except OSError:
                time.sleep(0.3)
        assert body is not None, dash.stderr.read() if dash.poll() is not None else "dashboard did not answer"
        (summary,) = json.loads(body)["study_summaries"]
        assert summary["study_name"] == "tiny"
        detail = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}",
                                                   timeout=10).read())
        assert sorted(t["number"] for t in detail["trials"]) == [0, 1, 2, 3]  # read through the proxy
    finally:
        dash.terminate()
        dash.wait(timeout=30)


def test_bad_proxy_urls_are_one_line(tmp_path):
    closed = free_port()
    for url, expect in ((f"grpc://127.0.0.1:{closed}", f"no storage proxy answers at grpc://127.0.0.1:{closed}"),
                        ("grpc://nohost", "malformed storage proxy URL 'grpc://nohost'")):
        for cmd in (["run", "--study", "cvae", "--trials", 1], ["export", "--study", "x"]):
            r = cli(tmp_path, *cmd, "--storage", url, timeout=120)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and expect in lines[0], r.stderr
    r = cli(tmp_path, "storage-proxy", "--storage", "grpc://127.0.0.1:1")
    assert r.returncode == 2 and "serves a database" in r.stderr
    assert not list(tmp_path.rglob("*.db"))  # no database was made in its place


def test_a_worker_killed_behind_the_proxy_is_failed_and_retried_once(proxy, tmp_path):
    url, db, _ = proxy
    f = tiny(tmp_path / "slow.yaml", epochs=40, data={"train_size": 4000, "val_size": 100})
    p = subprocess.Popen([sys.executable, "-m", "cvae_opt", "run", "--study", str(f), "--trials", "1", "--storage", url,
                          "--heartbeat", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    trials = []
    while time.time() < deadline:  # mid-trial: it has reported an epoch
        try:
            trials = in_db(db).trials
        except KeyError:  # the study is not created yet
            trials = []
        if trials and trials[0].intermediate_values:
            break
        time.sleep(0.2)
    assert trials and trials[0].state == S.RUNNING
    beats = trials[0].system_attrs.get("cvae_opt:heartbeat")
    assert beats is not None and abs(beats - time.time()) < 10  # the heartbeat travels through the proxy
    p.send_signal(signal.SIGKILL)
    p.wait()
    time.sleep(4)  # past the grace period (3 heartbeats)
    g = tiny(tmp_path / "slow.yaml", epochs=1, data={"train_size": 500, "val_size": 100})
    r = cli(tmp_path, "run", "--study", g, "--trials", 1, "--storage", url, "--heartbeat", "1")
    assert r.returncode == 0, r.stderr
    trials = in_db(db).trials
    assert [t.state for t in trials] == [S.FAIL, S.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == trials[0].number
    assert trials[1].params == trials[0].params  # the same configuration, run again


def test_a_proxy_restart_mid_trial_loses_nothing(proxy, tmp_path):
    """The proxy is killed while a trial runs (it has reported an epoch) and restarted on its port two
    seconds later: the worker waits, its calls go on through the new proxy (which must know the trial the
    old one created), and the study ends with every trial complete and every report kept."""
    url, db, first = proxy
    port = int(url.rsplit(":", 1)[1])
    f = tiny(tmp_path / "tiny.yaml", epochs=3, data={"train_size": 2000, "val_size": 100})
    p = subprocess.Popen([sys.executable, "-m", "cvae_opt", "run", "--study", str(f), "--trials", "4", "--storage", url],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    running = None
    while time.time() < deadline and running is None:  # the second trial, mid-way
        try:
            running = next((t for t in in_db(db).trials if t.number == 1 and t.state == S.RUNNING
                            and t.intermediate_values), None)
        except KeyError:
            pass
        time.sleep(0.1)
    assert running is not None, p.stderr.read() if p.poll() is not None else "no trial reached epoch 1"
    first.kill()
    first.wait()
    time.sleep(2)
    second = start_proxy(db, port, tmp_path)
    try:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        trials = in_db(db).trials
        assert [t.state for t in trials] == [S.COMPLETE] * 4 and sorted(t.number for t in trials) == list(range(4))
        assert all(t.user_attrs["config"] and sorted(t.intermediate_values) == [1, 2, 3] for t in trials)
    finally:
        second.terminate()
        second.wait(timeout=30)
