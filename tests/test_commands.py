"""Command paths beside the main pipeline: plot, the cvae-opt console script, export of one trial and of a
multi-objective study, retrain overrides, seeds, --timeout, sampler overrides, refused studies, SIGTERM,
checkpoint retention, the built-in `both` study and evaluate's input checks.

Most commands run in-process (`run_main(module.main, argv)`, what `python -m cvae_opt.X` runs), on tiny
budgets; the console script, SIGTERM and the default output folder of retrain run as real processes."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from cvae_opt.checkpoints import load_checkpoint
from cvae_opt.commands.common import run_main
from cvae_opt.config import Config
from cvae_opt.data import Pairs, make_pairs, save_pairs
from cvae_opt.problems import TWO_BIRDS

S = optuna.trial.TrialState
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LR = {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}
CONSOLE = Path(sys.executable).parent / "cvae-opt"


# -- helpers ---------------------------------------------------------------------------------------


def call(module: str, *args) -> int:
    """`python -m cvae_opt.<module> ARGS`, in this process (no interpreter and torch start-up)."""
    mod = importlib.import_module(f"cvae_opt.{module}")
    return run_main(mod.main, [str(a) for a in args])


def proc(*argv, cwd, timeout=300, **kw):
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def write_study(path: Path, name="tiny", epochs=1, train_size=500, **over) -> Path:
    spec = {
        "name": name, "problem": "two_birds",
        "data": {"train_size": train_size, "val_size": 100, "cache_dir": str(path.parent / "data")},
        "budget": {"epochs": epochs}, "objective": {"metric": "score", "direction": "maximize"},
        "sampler": {"name": "random", "args": {"seed": 1}}, "pruner": None,
        "fixed": {"latent": 4, "hidden": 32, "channels": [8], "kernels": [5], "eval_conditions": 10, "eval_samples": 3},
        "artifacts": {"plots": "none"},
        "search": {"lr": LR},
    }
    spec.update(over)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def names_trial(header: str, number: int) -> bool:
    """Whether an exported file's first (comment) line names trial `number`."""
    return header.startswith("#") and re.search(rf"\btrial {number}\b", header, re.IGNORECASE) is not None


def db(d: Path, name="s.db") -> str:
    return f"sqlite:///{d}/{name}"


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def random_lrs(seed: int, n: int) -> list[float]:
    """The first n values of `lr` that RandomSampler(seed) suggests on the study files' distribution."""
    s = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [s.ask().suggest_float("lr", LR["low"], LR["high"], log=True) for _ in range(n)]


def tiny_config(d: Path, **train) -> Path:
    t = {"epochs": 2, "batch_size": 100, "eval_conditions": 5, "eval_samples": 3, "seed": 0, "device": "auto"}
    t.update(train)
    cfg = Config.from_dict({
        "data": {"train_size": 300, "val_size": 50, "cache_dir": str(d / "data")},
        "model": {"arch": "cvae_re", "latent": 4, "hidden": 32, "channels": [8], "kernels": [5]},
        "train": t,
    })
    f = d / "tiny.yaml"
    f.write_text(cfg.to_yaml())
    return f


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Nothing a command writes by default (storage/, reports/) lands in the repository; and the torch
    threads an in-process `run` sets (cores / jobs) are given back."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """4 random-sampler trials of a tiny study, every trial with its checkpoint."""
    d = tmp_path_factory.mktemp("tiny")
    f = write_study(d / "tiny.yaml", artifacts={"plots": "none", "checkpoints": True})
    url = db(d)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        threads = torch.get_num_threads()
        assert call("run", "--study", f, "--trials", 4, "--storage", url, "--artifacts", d / "art", "--quiet") == 0
        torch.set_num_threads(threads)
    return d, url, load(url, "tiny")


# -- 1. plot ---------------------------------------------------------------------------------------


def test_plot_writes_a_png_with_one_row_per_condition(tiny, tmp_path, capsys):
    import matplotlib.image

    d, _, study = tiny
    ckpt = d / "art" / study.best_trial.user_attrs["checkpoint_artifact"]
    heights = {}
    for n in (1, 3):
        out = tmp_path / f"n{n}.png"
        assert call("plot", "--checkpoint", ckpt, "--conditions", "two_birds:scoring", "--out", out,
                    "--n", n, "--samples", 5) == 0
        assert out.read_bytes()[:8] == PNG_MAGIC
        img = matplotlib.image.imread(out)
        assert img.ndim == 3 and float(img[..., :3].std()) > 0.01  # lines drawn, not a blank canvas
        heights[n] = img.shape[:2]
    assert f"wrote {tmp_path / 'n3.png'}" in capsys.readouterr().out
    (h1, w1), (h3, w3) = heights[1], heights[3]
    assert w1 == w3 and h3 == 3 * h1  # a row of panels per given y, the same width

    capsys.readouterr()
    bad = tmp_path / "bad.png"
    assert call("plot", "--checkpoint", ckpt, "--conditions", "two_birds:scoring", "--out", bad, "--n", 0) == 2
    assert "--n" in error_line(capsys.readouterr().err)
    assert not bad.exists()


# -- 2. the console script -------------------------------------------------------------------------


def test_console_script_lists_and_dispatches_commands(tmp_path):
    assert CONSOLE.is_file(), f"{CONSOLE} is not installed (pip install -e .)"
    commands = ["run", "report", "export", "retrain", "generate", "evaluate", "plot", "dashboard"]
    r = proc(CONSOLE, "--help", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    listed = [line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")]
    assert set(commands) <= set(listed), r.stdout

    r = proc(CONSOLE, "bogus", "--trials", "3", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    line = error_line(r.stderr)
    assert "'bogus'" in line and all(c in line for c in commands)

    r = proc(CONSOLE, "export", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "best trial's complete config" in r.stdout and "--trial" in r.stdout and "--out" in r.stdout
    assert "COMMAND" not in r.stdout  # the subcommand's own help, not the command list
    # and the module form of the same dispatcher
    r = proc(sys.executable, "-m", "cvae_opt", "bogus", cwd=tmp_path)
    assert r.returncode == 2 and "unknown command 'bogus'" in error_line(r.stderr)


# -- 3. export -------------------------------------------------------------------------------------


def test_export_a_given_trial_and_to_stdout(tiny, tmp_path, capsys):
    d, url, study = tiny
    best = study.best_trial.number
    other = next(t for t in study.trials if t.number != best)
    out = tmp_path / "t.yaml"
    assert call("export", "--study", "tiny", "--storage", url, "--trial", other.number, "--out", out) == 0
    text = out.read_text()
    first = text.splitlines()[0]
    assert names_trial(first, other.number) and not names_trial(first, best), first
    assert yaml.safe_load(text) == other.user_attrs["config"]
    assert Config.from_yaml_file(out).to_dict() == other.user_attrs["config"]
    assert yaml.safe_load(text) != study.best_trial.user_attrs["config"]  # the lr differs between trials

    capsys.readouterr()
    assert call("export", "--study", "tiny", "--storage", url) == 0  # no --out: YAML on stdout
    printed = capsys.readouterr().out
    (tmp_path / "stdout.yaml").write_text(printed)
    assert Config.from_yaml_file(tmp_path / "stdout.yaml").to_dict() == study.best_trial.user_attrs["config"]
    assert names_trial(printed.splitlines()[0], best)

    assert call("export", "--study", "tiny", "--storage", url, "--trial", 999, "--out", tmp_path / "x.yaml") == 2
    assert "no trial 999" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "x.yaml").exists()


def test_export_of_a_multi_objective_study_takes_the_front_trial_best_on_the_first_metric(tmp_path):
    f = write_study(tmp_path / "mo.yaml", name="mo",
                    objective={"metrics": ["misfit_rmse", "diversity"], "directions": ["minimize", "maximize"]},
                    search={"lr": LR, "beta": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}})
    url = db(tmp_path)
    assert call("run", "--study", f, "--trials", 5, "--storage", url, "--quiet") == 0
    trials = [t for t in load(url, "mo").trials if t.state == S.COMPLETE]
    assert len(trials) == 5

    def dominates(a, b):  # minimise misfit, maximise diversity
        return (a.values[0] <= b.values[0] and a.values[1] >= b.values[1]) and a.values != b.values

    front = [t for t in trials if not any(dominates(o, t) for o in trials)]
    expected = min(front, key=lambda t: t.values[0])
    assert call("export", "--study", "mo", "--storage", url, "--out", tmp_path / "mo-best.yaml") == 0
    text = (tmp_path / "mo-best.yaml").read_text()
    assert names_trial(text.splitlines()[0], expected.number), text.splitlines()[0]
    assert yaml.safe_load(text) == expected.user_attrs["config"]


# -- 4. retrain ------------------------------------------------------------------------------------


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoint.pt", weights_only=True)["state_dict"]


def test_retrain_overrides_default_folder_and_seeds(tmp_path):
    cfg_file = tiny_config(tmp_path, epochs=2, seed=0, device="auto")
    source = Config.from_yaml_file(cfg_file).to_dict()
    # the default output folder, from a real process started in tmp_path
    r = proc(sys.executable, "-m", "cvae_opt.retrain", "--config", cfg_file.name, "--epochs", 1, "--seed", 3,
             "--device", "cpu", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "storage" / "retrain" / "tiny"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.json"]
    written = Config.from_yaml_file(out / "config.yaml").to_dict()
    assert (written["train"]["epochs"], written["train"]["seed"], written["train"]["device"]) == (1, 3, "cpu")
    for section in ("data", "model"):
        assert written[section] == source[section]
    assert {k: v for k, v in written["train"].items() if k not in ("epochs", "seed", "device")} == \
        {k: v for k, v in source["train"].items() if k not in ("epochs", "seed", "device")}
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1] and metrics["final"] == metrics["history"][-1]
    _, ck_cfg, _ = load_checkpoint(out / "checkpoint.pt")
    assert ck_cfg.train.seed == 3 and ck_cfg.train.epochs == 1

    # the same seed twice gives the same weights, another seed others
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert call("retrain", "--config", cfg_file, "--epochs", 1, "--seed", seed, "--device", "cpu",
                    "--out", tmp_path / name, "--quiet") == 0
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["final"]["val_loss"] == \
        json.loads((tmp_path / "b" / "metrics.json").read_text())["final"]["val_loss"]


# -- 5. run --seed ---------------------------------------------------------------------------------


def test_run_seed_fixes_params_and_training_seeds(tmp_path):
    f = write_study(tmp_path / "tiny.yaml", train_size=300)

    def lrs(name, seed):
        url = db(tmp_path, f"{name}.db")
        assert call("run", "--study", f, "--trials", 3, "--sampler", "random", "--seed", seed,
                    "--storage", url, "--quiet") == 0
        trials = load(url, "tiny").trials
        for t in trials:
            cfg = t.user_attrs["config"]
            assert cfg["train"]["seed"] == seed and cfg["data"]["seed"] == seed
        return [t.params["lr"] for t in trials]

    first, again, other = lrs("a", 11), lrs("b", 11), lrs("c", 12)
    assert first == again
    assert first == random_lrs(11, 3)  # the seed reaches the sampler (not the study file's seed 1)
    assert other == random_lrs(12, 3) and other != first


def test_run_jobs_gives_worker_i_the_seed_plus_i(tmp_path):
    f = write_study(tmp_path / "tiny.yaml", train_size=300)
    url = db(tmp_path)
    assert call("run", "--study", f, "--trials", 4, "--jobs", 2, "--sampler", "random", "--seed", 21,
                "--storage", url, "--quiet") == 0
    trials = load(url, "tiny").trials
    assert len(trials) == 4 and all(t.state == S.COMPLETE for t in trials)
    by_worker: dict[str, list[float]] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t.params["lr"])
    assert len(by_worker) == 2
    here = [w for w in by_worker if w.endswith(f":{os.getpid()}")]  # worker 0 is this process
    assert len(here) == 1
    main_lrs = by_worker.pop(here[0])
    (child_lrs,) = by_worker.values()
    assert main_lrs == random_lrs(21, 2)
    assert child_lrs == random_lrs(22, 2)


# -- 6. --timeout ----------------------------------------------------------------------------------


def test_run_timeout_stops_starting_trials(tmp_path, capsys):
    f = write_study(tmp_path / "tiny.yaml")
    url = db(tmp_path)
    t0 = time.perf_counter()
    assert call("run", "--study", f, "--trials", 50, "--timeout", 1, "--storage", url, "--quiet") == 0
    elapsed = time.perf_counter() - t0
    n = len(load(url, "tiny").trials)
    assert 1 <= n <= 15 and elapsed < 20, (n, elapsed)
    out = capsys.readouterr().out
    assert out.startswith("done: study 'tiny'") and f"this run: {n} trials ({n} complete" in out


# -- 7. sampler overrides --------------------------------------------------------------------------


def _replay_tpe(trials, **args) -> list[float]:
    """The lr TPESampler(**args) suggests at each trial, told the stored results of the trials before."""
    s = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(**args))
    out = []
    for t in trials:
        trial = s.ask()
        out.append(trial.suggest_float("lr", LR["low"], LR["high"], log=True))
        s.tell(trial, t.value)
    return out


def test_n_startup_trials_keeps_the_study_files_sampler_args(tmp_path, capsys):
    file_args = {"seed": 5, "n_startup_trials": 10, "n_ei_candidates": 3}
    f = write_study(tmp_path / "tiny.yaml", train_size=300, sampler={"name": "tpe", "args": file_args})
    url = db(tmp_path)
    assert call("run", "--study", f, "--trials", 3, "--sampler", "tpe", "--n-startup-trials", 0,
                "--storage", url) == 0
    assert "adding 3 with TPESampler" in capsys.readouterr().out
    trials = load(url, "tiny").trials
    stored = [t.params["lr"] for t in trials]
    assert stored == _replay_tpe(trials, **{**file_args, "n_startup_trials": 0})
    # what the run would have drawn had --n-startup-trials been ignored: the sampler's random start-up
    assert stored != _replay_tpe(trials, **file_args)

    assert call("run", "--study", f, "--trials", 1, "--sampler", "random", "--n-startup-trials", 1,
                "--storage", url) == 2
    assert "sampler RandomSampler has no startup trials" in error_line(capsys.readouterr().err)
    assert len(load(url, "tiny").trials) == 3


# -- 8. a study name reused with other directions ----------------------------------------------------


def test_a_study_name_reused_with_other_directions_is_refused(tmp_path, capsys):
    url = db(tmp_path)
    a = write_study(tmp_path / "a.yaml", name="a", train_size=300)
    assert call("run", "--study", a, "--trials", 1, "--study-name", "X", "--storage", url, "--quiet") == 0
    b = write_study(tmp_path / "b.yaml", name="b", train_size=300,
                    objective={"metric": "score", "direction": "minimize"})
    capsys.readouterr()
    assert call("run", "--study", b, "--trials", 2, "--study-name", "X", "--storage", url) == 2
    line = error_line(capsys.readouterr().err)
    assert "'X'" in line and "maximize" in line and "minimize" in line
    study = load(url, "X")
    assert len(study.trials) == 1 and study.direction == optuna.study.StudyDirection.MAXIMIZE


# -- 9. SIGTERM ------------------------------------------------------------------------------------


def test_sigterm_fails_the_running_trial_and_the_study_resumes(tmp_path):
    f = write_study(tmp_path / "tiny.yaml", epochs=12, train_size=300)  # trials of about a second
    url = db(tmp_path)
    cmd = [sys.executable, "-m", "cvae_opt.run", "--study", str(f), "--trials", "3", "--storage", url,
           "--artifacts", str(tmp_path / "art")]
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    timer = threading.Timer(240, p.kill)
    timer.start()
    try:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("[1/"):
                deadline = time.time() + 60  # into the second trial: it is running and has reported an epoch
                while time.time() < deadline and not any(
                        t.number == 1 and t.state == S.RUNNING and t.intermediate_values for t in load(url, "tiny").trials):
                    time.sleep(0.05)
                p.send_signal(signal.SIGTERM)
                break
        rest, err = p.communicate(timeout=120)
    finally:
        timer.cancel()
    out = "".join(lines) + rest
    assert any(line.startswith("[1/3] trial 0 complete") for line in lines), out + err
    assert p.returncode == 130, (out, err)
    assert "interrupted: study 'tiny'" in out and "resume: run the same command again" in out
    states = [t.state for t in load(url, "tiny").trials]
    assert S.RUNNING not in states and S.WAITING not in states
    # the trial that was running (the second, unless the machine is far faster than this one) failed
    n = len(states)
    assert n in (2, 3) and states == [S.COMPLETE] * (n - 1) + [S.FAIL], states

    r = proc(*cmd, cwd=tmp_path)  # the same command again
    assert r.returncode == 0, r.stderr
    assert f"{n} trials so far" in r.stdout
    assert f"whole study: {n + 3} trials ({n + 2} complete, 0 pruned, 1 failed)" in r.stdout
    assert [t.state for t in load(url, "tiny").trials] == states + [S.COMPLETE] * 3


# -- 10. artifacts ---------------------------------------------------------------------------------


def test_keep_best_leaves_only_the_best_checkpoints_on_disk(tmp_path):
    # sampler seed 2 draws an order in which an early best-2 trial (trial 1) falls out later
    f = write_study(tmp_path / "tiny.yaml", train_size=300, artifacts={"keep_best": 2, "plots": "none"},
                    sampler={"name": "random", "args": {"seed": 2}})
    url, art = db(tmp_path), tmp_path / "art"
    assert call("run", "--study", f, "--trials", 6, "--storage", url, "--artifacts", art, "--quiet") == 0
    study = load(url, "tiny")
    done = sorted((t for t in study.trials if t.state == S.COMPLETE), key=lambda t: t.value, reverse=True)
    assert len(done) == 6 and done[1].value > done[2].value
    top = {t.number for t in done[:2]}
    files = {p.name for p in art.rglob("*") if p.is_file()}
    assert len(files) == 2
    for t in done:
        aid = t.user_attrs.get("checkpoint_artifact")
        assert (aid in files) == (t.number in top), (t.number, aid)
    # trials that were among the best 2 when they finished and fell out later: their files were removed
    assert [t for t in done[2:] if "checkpoint_artifact" in t.user_attrs]
    model, cfg, payload = load_checkpoint(art / done[0].user_attrs["checkpoint_artifact"])
    assert cfg.to_dict() == done[0].user_attrs["config"]
    assert payload["metrics"]["score"] == pytest.approx(done[0].value)


def test_checkpoints_off_uploads_no_checkpoint(tmp_path):
    f = write_study(tmp_path / "tiny.yaml", train_size=300, artifacts={"checkpoints": False, "plots": "all"})
    url, art = db(tmp_path), tmp_path / "art"
    assert call("run", "--study", f, "--trials", 2, "--storage", url, "--artifacts", art, "--quiet") == 0
    trials = load(url, "tiny").trials
    assert [t.state for t in trials] == [S.COMPLETE, S.COMPLETE]
    assert not [t for t in trials if "checkpoint_artifact" in t.user_attrs]
    files = [p for p in art.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted(t.user_attrs["samples_artifact"] for t in trials)
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in files)  # plots only


# -- 11. the built-in `both` study -------------------------------------------------------------------


def test_both_study_conditional_params_and_per_architecture_report(tmp_path):
    url = db(tmp_path)
    only = {"cvae_re": {"prior_hidden", "prior_depth"}, "cvae": {"component_prior"}}
    # seed 0 of the random sampler draws 3 trials of each architecture in 6 (checked below)
    assert call("run", "--study", "both", "--trials", 6, "--epochs", 1, "--train-size", 300, "--sampler", "random",
                "--seed", 0, "--storage", url, "--artifacts", tmp_path / "art", "--quiet") == 0
    trials = load(url, "both").trials
    assert all(t.state == S.COMPLETE for t in trials)
    archs = [t.params["arch"] for t in trials]
    assert archs.count("cvae") >= 3 and archs.count("cvae_re") >= 3, archs
    for t in trials:
        arch, other = t.params["arch"], "cvae" if t.params["arch"] == "cvae_re" else "cvae_re"
        assert only[arch] & set(t.params) == only[arch], (t.number, t.params)
        assert not only[other] & set(t.params), (t.number, t.params)
        assert t.user_attrs["config"]["model"]["arch"] == arch
        assert ("components" in t.params) == (t.params["latent_type"] in ("categorical", "mixed"))
        assert ("latent" in t.params) == (t.params["latent_type"] in ("gaussian", "mixed"))
    assert call("report", "--study", "both", "--storage", url, "--out", tmp_path / "rep") == 0
    index = (tmp_path / "rep" / "index.html").read_text()
    for arch in ("cvae", "cvae_re"):
        assert f"arch = {arch} ({archs.count(arch)} complete trials)" in index
        assert f"importance for score (arch = {arch})" in index  # an importance plot per architecture
    assert "computed per architecture" in index
    rep = tmp_path / "rep"
    assert list(rep.glob("importance_*_fanova.png")) and list(rep.glob("importance_*_pedanova.png"))
    assert (rep / "contour.html").is_file() and (rep / "contour.png").stat().st_size > 0


# -- 12. evaluate's input checks ---------------------------------------------------------------------


def test_evaluate_refuses_uneven_groups_and_truth_without_a_y(tmp_path, capsys):
    p = make_pairs(TWO_BIRDS, 3, seed=4, cache_dir=None)
    idx = torch.tensor([0, 0, 0, 1, 1, 2, 2])  # y0 three times, y1 and y2 twice
    save_pairs(tmp_path / "uneven.pt", Pairs(p.x[idx], p.y[idx]))
    assert call("evaluate", "--submission", tmp_path / "uneven.pt") == 2
    line = error_line(capsys.readouterr().err)
    assert "different numbers of samples (2 to 3)" in line

    even = torch.tensor([0, 0, 1, 1, 2, 2])
    save_pairs(tmp_path / "even.pt", Pairs(p.x[even], p.y[even]))
    save_pairs(tmp_path / "truth.pt", Pairs(p.x[[0, 2]], p.y[[0, 2]]))  # lacks y1
    capsys.readouterr()
    assert call("evaluate", "--submission", tmp_path / "even.pt", "--truth", tmp_path / "truth.pt") == 2
    cap = capsys.readouterr()
    assert "has no x for given y number 2 of the submission" in error_line(cap.err) and cap.out == ""
    # the complete truth file is accepted, and the true x are recalled
    save_pairs(tmp_path / "truth-all.pt", p)
    assert call("evaluate", "--submission", tmp_path / "even.pt", "--truth", tmp_path / "truth-all.pt") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_conditions"] == 3 and out["samples_per_condition"] == 2 and out["truth_recall"] == 1.0


def test_run_jobs_prints_every_workers_trials_once(tmp_path):
    """The other workers print nothing; the lead prints their trials beside its own, each once, and the
    last ones after the workers stop, so a study run with --jobs shows all its trials."""
    f = write_study(tmp_path / "tiny.yaml", train_size=300)
    r = subprocess.run([sys.executable, "-m", "cvae_opt.run", "--study", str(f), "--trials", "4", "--jobs", "2",
                        "--sampler", "random", "--storage", db(tmp_path)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    printed = re.findall(r"^\[\s*\d+/4\] trial (\d+) complete", r.stdout, flags=re.M)
    assert sorted(map(int, printed)) == [0, 1, 2, 3], r.stdout
