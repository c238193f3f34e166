"""Crash safety with real processes on real SQLite files: killed workers, concurrency, Ctrl-C, NaN
losses, full disks, and bad input that must leave stored trials and artifacts untouched."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import torch
import yaml
from torch.utils.data import TensorDataset

from cvae_opt.storage import open_storage

S = optuna.trial.TrialState


def tiny_study(path: Path, epochs=3, train_size=1000, **over) -> Path:
    spec = {
        "name": "tiny", "problem": "two_birds", "data": {"train_size": train_size, "val_size": 100},
        "budget": {"epochs": epochs}, "objective": {"metric": "score", "direction": "maximize"},
        "sampler": {"name": "random", "args": {"seed": 1}}, "pruner": None,
        "fixed": {"latent": 4, "hidden": 32, "channels": [8], "kernels": [5], "eval_conditions": 10, "eval_samples": 3},
        "artifacts": {"plots": False},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }
    spec.update(over)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(cwd, *args, **kw):
    return subprocess.run([sys.executable, "-m", "cvae_opt.run", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=kw.get("timeout", 600))


def load(cwd, name="tiny"):
    return optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{cwd}/storage/cvae_opt.db"))


def integrity(cwd):
    with sqlite3.connect(cwd / "storage" / "cvae_opt.db") as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def test_four_workers_share_one_sqlite_file(tmp_path):
    f = tiny_study(tmp_path / "tiny.yaml", epochs=1, train_size=500)
    r = run(tmp_path, "--study", f, "--trials", 40, "--jobs", 4)
    assert r.returncode == 0, r.stderr
    assert "database is locked" not in r.stderr
    trials = load(tmp_path).trials
    assert len(trials) == 40 and all(t.state == S.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 4
    assert integrity(tmp_path) == "ok"


def test_keep_best_with_two_workers_leaves_exactly_the_best_checkpoints(tmp_path):
    """Two workers finish trials concurrently and each removes what fell out of the best K: at the end
    the checkpoint files on disk are exactly those of the best K complete trials, and they load."""
    f = tiny_study(tmp_path / "tiny.yaml", epochs=1, train_size=500, artifacts={"plots": False, "keep_best": 2})
    r = run(tmp_path, "--study", f, "--trials", 10, "--jobs", 2)
    assert r.returncode == 0, r.stderr
    study = load(tmp_path)
    done = sorted((t for t in study.trials if t.state == S.COMPLETE), key=lambda t: -t.value)
    assert len(done) == 10 and len({t.user_attrs["worker"] for t in done}) == 2
    store = tmp_path / "storage" / "artifacts"
    on_disk = {t.number for t in done if (store / t.user_attrs.get("checkpoint_artifact", "-")).is_file()}
    assert on_disk == {done[0].number, done[1].number}, (on_disk, [(t.number, t.value) for t in done])
    from cvae_opt.checkpoints import load_checkpoint

    _, cfg, payload = load_checkpoint(store / done[0].user_attrs["checkpoint_artifact"])
    assert payload["metrics"]["score"] == done[0].value and cfg.to_dict() == done[0].user_attrs["config"]


def test_a_killed_worker_loses_nothing_and_its_trial_is_retried(tmp_path):
    # trials long enough (300 tiny epochs) that the poll below, which competes with 4 writing workers for
    # the SQLite file, catches one mid-way; at 100 epochs it missed them in about one run of five
    f = tiny_study(tmp_path / "tiny.yaml", epochs=300, train_size=500)
    proc = subprocess.Popen([sys.executable, "-m", "cvae_opt.run", "--study", str(f), "--trials", "8", "--jobs", "4",
                             "--heartbeat", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.time() + 300
    db = tmp_path / "storage" / "cvae_opt.db"
    while victim is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if not db.exists():
            continue
        try:  # a plain read-only query: the lightest reader beside 4 writing workers
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
                running = con.execute(
                    "SELECT t.number, a.value_json FROM trials t "
                    "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'worker' "
                    "JOIN trial_intermediate_values v ON v.trial_id = t.trial_id AND v.step = 2 "
                    "WHERE t.state = 'RUNNING'"
                ).fetchall()
        except sqlite3.Error:
            continue
        for number, worker in running:
            pid = int(json.loads(worker).rsplit(":", 1)[1])
            if pid != proc.pid:  # a child worker, in the middle of a trial
                victim = (number, pid)
                os.kill(pid, signal.SIGKILL)
                break
    assert victim, "no worker was caught in the middle of a trial"
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1 and "was killed by signal 9" in err
    time.sleep(4)  # past the grace period (3 x heartbeat)
    r = run(tmp_path, "--study", f, "--trials", 1, "--heartbeat", "1")  # resume
    assert r.returncode == 0, r.stderr
    trials = load(tmp_path).trials
    killed = trials[victim[0]]
    assert killed.state == S.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim[0]]
    assert len(retries) == 1 and retries[0].state == S.COMPLETE and retries[0].params == killed.params
    assert not [t for t in trials if t.state in (S.RUNNING, S.WAITING)]
    assert [t.number for t in trials if t.state != S.COMPLETE] == [victim[0]]  # every other trial finished
    assert integrity(tmp_path) == "ok"


def caught_mid_trial(proc: subprocess.Popen, tmp_path, running_ok, seconds: float = 180) -> bool:
    """Whether the run `proc` was seen, within `seconds`, with running trials that `running_ok` accepts;
    waits on the process between looks at the study (False at once if the run ended first)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            proc.wait(timeout=0.2)  # returns at once if the run ended early: then there is nothing to catch
            return False
        except subprocess.TimeoutExpired:
            pass
        try:
            running = load(tmp_path).get_trials(states=(S.RUNNING,))
        except Exception:  # the file is being created
            continue
        if running_ok(running):
            return True
    return False


def test_ctrl_c_fails_the_running_trial_cleanly_and_the_study_resumes(tmp_path):
    f = tiny_study(tmp_path / "tiny.yaml", epochs=400, train_size=500)  # trials long enough to be caught
    proc = subprocess.Popen([sys.executable, "-m", "cvae_opt.run", "--study", str(f), "--trials", "3"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    caught = caught_mid_trial(proc, tmp_path, lambda running: any(2 in t.intermediate_values for t in running))
    assert caught, "the run was never caught in the middle of a trial"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: study 'tiny'" in out and "resume: run the same command again" in out
    trials = load(tmp_path).trials
    assert trials and not [t for t in trials if t.state == S.RUNNING]
    r = run(tmp_path, "--study", f, "--trials", 1, "--epochs", 1)
    assert r.returncode == 0, r.stderr
    assert len(load(tmp_path).trials) == len(trials) + 1
    assert integrity(tmp_path) == "ok"


def test_a_run_takes_one_interrupt_and_ignores_the_next():
    """The first SIGINT or SIGTERM raises KeyboardInterrupt; the ones after it (the lead's forwarded SIGINT, a
    second Ctrl-C) are ignored while the first one's trial bookkeeping runs, instead of breaking into it."""
    code = textwrap.dedent("""
        import os, signal
        from cvae_opt.interrupts import install_interrupt_handler
        install_interrupt_handler()
        try:
            os.kill(os.getpid(), signal.SIGINT)  # a signal to itself is handled before the next line runs
            raise SystemExit("the first interrupt was not raised")
        except KeyboardInterrupt:
            print("stopped once", flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        print("bookkeeping done", flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["stopped", "once", "bookkeeping", "done"]


def test_an_interrupt_landing_in_a_storage_call_is_raised_after_it(tmp_path):
    """Ctrl-C that arrives while the main thread is inside an SQLite write waits for the write to finish
    (about half of this loop's time is spent in storage code, so most rounds land inside one):
    the KeyboardInterrupt is raised outside Optuna's and SQLAlchemy's code, and the storage takes the
    trial's bookkeeping at once (raised inside a commit, it left the write lock held and the run hung)."""
    code = textwrap.dedent(f"""
        import os, signal, threading, traceback, optuna
        from cvae_opt.interrupts import STORAGE_MODULES, install_interrupt_handler
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = "sqlite:///{tmp_path / 's.db'}"
        study = optuna.create_study(storage=url, study_name="s")
        trial = study.ask()
        for round in range(5):
            install_interrupt_handler()
            busy = threading.Event()
            threading.Thread(target=lambda: (busy.wait(), os.kill(os.getpid(), signal.SIGINT))).start()
            try:
                for i in range(100000):  # a training loop: an epoch's work, then a storage write
                    sum(j * j for j in range(2000))
                    trial.set_user_attr("i", i)
                    if i == 20:
                        busy.set()
                raise SystemExit("the interrupt was never raised")
            except KeyboardInterrupt as exc:
                # raised as the storage call returned (by the trace that deferred it), never inside it
                frames = traceback.extract_tb(exc.__traceback__)
                inside = [f for f in frames if any(f"{{os.sep}}{{m.replace('.', os.sep)}}" in f.filename
                                                   for m in STORAGE_MODULES)]
                if inside:
                    raise SystemExit(f"raised inside a storage call: {{inside[-1]}}")
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        print("raised outside storage", flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["raised", "outside", "storage"]
    t = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}").trials[0]
    assert t.state == S.FAIL and t.user_attrs["interrupted"] is True


def test_ctrl_c_in_a_terminal_stops_every_worker_once_without_a_traceback(tmp_path):
    """A terminal's Ctrl-C goes to every process of the foreground group: both workers of --jobs 2 get it,
    and the lead forwards one more to its worker. Each stops its trial once, cleanly, and the study resumes."""
    f = tiny_study(tmp_path / "tiny.yaml", epochs=400, train_size=500)
    proc = subprocess.Popen([sys.executable, "-m", "cvae_opt.run", "--study", str(f), "--trials", "4", "--jobs", "2"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    caught = caught_mid_trial(proc, tmp_path,
                              lambda running: len(running) == 2 and all(2 in t.intermediate_values for t in running))
    assert caught, "the two workers were never caught in the middle of their trials"
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    trials = load(tmp_path).trials
    stopped = [t for t in trials if t.user_attrs.get("interrupted")]
    assert len(stopped) == 2 and all(t.state == S.FAIL for t in stopped), [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state == S.RUNNING]
    r = run(tmp_path, "--study", f, "--trials", 2, "--epochs", 1)  # resume: the two stopped trials run again
    assert r.returncode == 0, r.stderr
    again = load(tmp_path).trials
    assert sorted(t.params["lr"] for t in again[len(trials):]) == sorted(t.params["lr"] for t in stopped)
    assert integrity(tmp_path) == "ok"


def test_nan_loss_fails_the_trial_with_the_reason_and_the_study_goes_on(tmp_path):
    (tmp_path / "nanprob.py").write_text(textwrap.dedent("""
        import torch
        def forward(x):  # fine inside the prior box, NaN outside it (where an untrained signal head lands)
            return torch.sqrt(x[..., :1] - 0.1) + torch.sqrt(x[..., 1:] - 0.1)
    """))
    f = tiny_study(tmp_path / "tiny.yaml", epochs=1, problem="nanprob:forward",
                   fixed={"head": "signal", "latent": 4, "hidden": 32, "channels": [8], "kernels": [5],
                          "eval_conditions": 10, "eval_samples": 3})
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "cvae_opt.run", "--study", str(f), "--trials", "2"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [S.FAIL, S.FAIL]
    assert "loss became nan at epoch 1, step 1" in trials[0].user_attrs["fail_reason"]
    assert "2 failed" in r.stdout and "failed: NonFiniteLoss: loss became nan" in r.stdout


def test_a_full_disk_fails_that_trial_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tiny_study(tmp_path / "tiny.yaml", epochs=1, train_size=500)
    from cvae_opt import checkpoints
    from cvae_opt.commands import run as run_mod

    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, fh, *a, **k):
        if isinstance(obj, dict) and "format" in obj:  # checkpoints only
            calls["n"] += 1
        if calls["n"] == 2 and isinstance(obj, dict) and "format" in obj:  # the second checkpoint: the disk is full half-way through
            fh.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, fh, *a, **k)

    monkeypatch.setattr(checkpoints.torch, "save", flaky_save)
    assert run_mod.main(["--study", str(f), "--trials", "3", "--quiet"]) == 0
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [S.COMPLETE, S.FAIL, S.COMPLETE]
    assert "No space left on device" in trials[1].user_attrs["fail_reason"]
    for t in (trials[0], trials[2]):
        ck = tmp_path / "storage" / "artifacts" / t.user_attrs["checkpoint_artifact"]
        assert torch.load(ck, weights_only=True)["format"] == "cvae-opt-checkpoint/1"
    leftovers = [p for p in (tmp_path / "storage").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_bad_input_is_one_line_exit_2_and_touches_nothing(tmp_path):
    good = tiny_study(tmp_path / "good.yaml", epochs=1, train_size=300)
    assert run(tmp_path, "--study", good, "--trials", 1).returncode == 0
    before = tree_digest(tmp_path / "storage")
    assert any(k.startswith("artifacts/") for k in before) and "cvae_opt.db" in before

    x = torch.rand(20, 1, 50, 2) * 0.9 + 0.1
    torch.save(TensorDataset(x, torch.rand(20, 1, 49, 2)), tmp_path / "shape.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 definitely not a zip")
    ynan = torch.cos(x)
    ynan[3, 0, 7, 0] = float("nan")
    torch.save(TensorDataset(x, ynan), tmp_path / "nan.pt")
    (tmp_path / "wrongshape.py").write_text("def forward(x):\n    return x[..., 0]\n")

    def study(name, **over):
        return tiny_study(tmp_path / f"{name}.yaml", epochs=1, train_size=300, **over)

    cases = [
        (["--study", "no_such_study"], "unknown study 'no_such_study'"),
        (["--study", tmp_path / "missing.yaml"], "no such study file"),
        (["--study", study("yamlerr")], None),  # replaced below by broken YAML
        (["--study", study("type", search={"lr": {"type": "real", "low": 0.1, "high": 1}})], "search.lr.type: unknown parameter type"),
        (["--study", study("range", search={"lr": {"type": "float", "low": 1, "high": 0.1}})], "search.lr: low 1 > high 0.1"),
        (["--study", study("cond", search={"lr": {"type": "float", "low": 0.1, "high": 1, "condition": {"head": "line"}}})], "search.lr.condition.head"),
        (["--study", good, "--storage", "sqlite:/nonsense::"], "storage"),
        (["--study", good, "--storage", "notaurl"], "malformed storage URL"),
        (["--study", good, "--storage", "postgresql://user:secret@127.0.0.1:1/db"], "cannot open storage"),
        (["--study", good, "--sampler", "annealing"], "unknown sampler 'annealing'"),
        (["--study", good, "--pruner", "guillotine"], "unknown pruner 'guillotine'"),
        (["--study", study("corrupt", data={"train_file": str(tmp_path / "corrupt.pt"), "val_size": 100})], "not a readable torch file"),
        (["--study", study("shape", data={"train_file": str(tmp_path / "shape.pt"), "val_size": 100})], "has shape (20, 1, 49, 2)"),
        (["--study", study("nan", data={"val_file": str(tmp_path / "nan.pt"), "train_size": 300})], "holds NaN"),
        (["--study", good, "--trials", 0], "--trials must be a positive integer"),
        (["--study", good, "--trials", -1], "--trials must be a positive integer"),
        (["--study", study("noimport", problem="no_such_pkg.mod:forward")], "cannot import module 'no_such_pkg.mod'"),
        (["--study", study("wrongk", problem="wrongshape:forward")], "expected (2, 3, 50, k)"),
    ]
    (tmp_path / "yamlerr.yaml").write_text("name: x\nsearch:\n  lr: {type: float, low: [1\n")
    cases[2] = (cases[2][0], "malformed YAML")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def refused(args):
        return subprocess.run([sys.executable, "-m", "cvae_opt.run", *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, env=env, timeout=120)

    # two at a time (each is mostly its interpreter's start-up); none may write, so the order does not matter
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(refused, [args for args, _ in cases]))
    for (args, expect), r in zip(cases, results):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (args, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], (args, r.stderr)
        assert "secret" not in r.stderr + r.stdout
    assert tree_digest(tmp_path / "storage") == before
