"""A real study end to end, as a user runs it: processes, a SQLite file, artifacts, report, export,
retrain, generate, evaluate."""

import json
import re
import subprocess
import sys

import optuna
import pytest
import torch
import yaml

from cvae_opt.checkpoints import load_checkpoint
from cvae_opt.config import Config
from cvae_opt.data import load_pairs
from cvae_opt.metrics import enumerate_solutions, evaluate_samples
from cvae_opt.problems import TWO_BIRDS
from cvae_opt.storage import open_storage

SMOKE = ["--epochs", "1", "--train-size", "2000"]


def cli(module, *args, cwd, timeout=600):
    r = subprocess.run([sys.executable, "-m", f"cvae_opt.{module}", *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)
    return r


def study_of(tmp_path, name):
    return optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{tmp_path}/storage/cvae_opt.db"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """3 trials of the shipped cvae_re study, 1 epoch on 2,000 pairs, in a fresh folder."""
    d = tmp_path_factory.mktemp("study")
    r = cli("run", "--study", "cvae_re", "--trials", 3, *SMOKE, cwd=d)
    assert r.returncode == 0, r.stderr
    return d, r


def test_trials_are_recorded_with_attrs_and_artifacts(smoke):
    d, r = smoke
    assert (d / "storage" / "cvae_opt.db").is_file()
    study = study_of(d, "cvae_re")
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        for key in ("config", "score", "misfit_rmse", "r2", "mode_precision", "mode_recall", "val_loss"):
            assert key in t.user_attrs, key
        cfg = t.user_attrs["config"]
        assert cfg["model"]["arch"] == "cvae_re" and cfg["train"]["epochs"] == 1 and cfg["data"]["train_size"] == 2000
        assert cfg["train"]["lr"] == t.params["lr"] and cfg["train"]["grad_clip"] == 20.0  # fixed by the study
        assert cfg["model"]["latent_type"] == "hypotheses" and "latent_type" not in t.params
        assert cfg["model"]["components"] == t.params["components"] and "latent" not in t.params
        # fixed by the study: exact recognition (no encoder shape to search) and no physics term
        assert cfg["model"]["recognition"] == "exact" and cfg["train"]["w_y"] == 0.0
        assert not {"recognition", "w_y", "conv_depth", "conv_channels", "kernel_size"} & set(t.params)
        assert t.intermediate_values and 1 in t.intermediate_values
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        kinds = sorted(m.mimetype for m in metas)
        assert kinds == ["application/octet-stream", "image/png"]
        for m in metas:
            f = d / "storage" / "artifacts" / m.artifact_id
            assert f.is_file() and f.stat().st_size > 1000
    assert "study_file" in study.user_attrs and "search:" in study.user_attrs["study_file"]
    assert study.metric_names == ["mode_pr"]  # what the dashboard and the optuna CLI label the values with
    assert "--trials 3" in study.user_attrs["launch_command"]
    # progress and summary
    out = r.stdout
    assert "[1/3] trial 0" in out and "[3/3]" in out and "best" in out and "elapsed" in out
    assert "this run: 3 trials (3 complete, 0 pruned, 0 failed)" in out and "best trial" in out


def test_running_again_resumes_the_study(smoke):
    d, _ = smoke
    r = cli("run", "--study", "cvae_re", "--trials", 1, *SMOKE, "--quiet", cwd=d)
    assert r.returncode == 0, r.stderr
    assert "3 trials so far" not in r.stdout  # --quiet prints only the summary
    assert "whole study: 4 trials" in r.stdout
    study = study_of(d, "cvae_re")
    assert len(study.trials) == 4
    assert len(study.user_attrs["launch_commands"]) == 2


def test_report_writes_every_file_and_opens_offline(smoke):
    d, _ = smoke
    for f in (d / "storage" / "data").glob("*.pt"):
        f.unlink()  # the report rebuilds only what it draws from: the validation pairs, not the training set
    r = cli("report", "--study", "cvae_re", cwd=d)
    assert r.returncode == 0, r.stderr
    val_size = study_of(d, "cvae_re").best_trial.user_attrs["config"]["data"]["val_size"]
    assert [f.name.split("-")[2] for f in (d / "storage" / "data").glob("*.pt")] == [f"n{val_size}"]
    out = d / "reports" / "cvae_re"
    for name in ("index.html", "trials.csv", "best_model.pt", "best_config.yaml", "samples.png", "plotly.min.js",
                 "history.html", "history.png", "intermediate.html", "intermediate.png", "parallel.html",
                 "parallel.png", "slice.html", "slice.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # one epoch of 2,000 pairs puts no sample on a solution: every trial's mode_pr is 0, which no parameter
    # explains (importances and their contour are drawn from a study whose values differ: test_commands.py)
    assert {t.value for t in study_of(d, "cvae_re").trials} == {0.0}
    assert "nothing for importance to explain yet" in (out / "index.html").read_text()
    assert not list(out.glob("importance_*")) and not (out / "contour.html").exists()
    for page in out.glob("*.html"):
        text = page.read_text()
        refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', text)
        external = [u for u in refs if re.match(r"(?:[a-z]+:)?//", u)]
        assert not external, (page.name, external)
        for u in refs:
            assert (out / u.split("#")[0]).exists(), (page.name, u)
    import pandas as pd

    df = pd.read_csv(out / "trials.csv")
    assert len(df) >= 3 and "params_lr" in df.columns and "user_attrs_misfit_rmse" in df.columns
    # the best-model files are the best trial's: its config, its checkpoint (metrics and weights), its number
    best = study_of(d, "cvae_re").best_trial
    assert Config.from_yaml_file(out / "best_config.yaml").to_dict() == best.user_attrs["config"]
    _, _, payload = load_checkpoint(out / "best_model.pt")
    assert payload["metrics"]["mode_pr"] == pytest.approx(best.value)
    assert f"Best trial {best.number}: mode_pr = {best.value:.5g}" in (out / "index.html").read_text()
    assert f"# Trial {best.number} of study 'cvae_re'" in (out / "best_config.yaml").read_text()


def test_export_retrain_generate_evaluate(smoke):
    d, _ = smoke
    r = cli("export", "--study", "cvae_re", "--out", "best.yaml", cwd=d)
    assert r.returncode == 0, r.stderr
    exported = yaml.safe_load((d / "best.yaml").read_text())
    assert set(exported) == {"data", "model", "train"} and exported["model"]["arch"] == "cvae_re"
    best = study_of(d, "cvae_re").best_trial
    assert exported == best.user_attrs["config"]
    r = cli("retrain", "--config", "best.yaml", "--out", "retrained", cwd=d)
    assert r.returncode == 0, r.stderr
    for f in ("checkpoint.pt", "config.yaml", "metrics.json"):
        assert (d / "retrained" / f).is_file()
    metrics = json.loads((d / "retrained" / "metrics.json").read_text())
    assert len(metrics["history"]) == 1 and "score" in metrics["final"]
    # a retrain runs the same code as the trial: same config and seed give the same final metrics
    assert metrics["final"]["val_loss"] == pytest.approx(best.user_attrs["val_loss"], rel=1e-4)
    # the challenge's conditions by their built-in name, from a folder that holds nothing else
    r = cli("generate", "--checkpoint", "retrained/checkpoint.pt", "--conditions", "two_birds:scoring", "--samples", 30,
            "--out", "sub.pt", cwd=d)
    assert r.returncode == 0, r.stderr
    sub = torch.load(d / "sub.pt", weights_only=False)
    assert sub.tensors[0].shape == (1500, 1, 50, 2) and sub.tensors[1].shape == (1500, 1, 50, 2)
    r = cli("evaluate", "--submission", "sub.pt", "--truth", "two_birds:scoring", cwd=d)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_conditions"] == 50 and out["samples_per_condition"] == 30
    # the numbers are those of the generated samples, grouped by their given y, against the scoring truth
    truth = load_pairs("two_birds:scoring", TWO_BIRDS)
    x = sub.tensors[0][:, 0].view(50, 30, 50, 2)
    assert torch.equal(sub.tensors[1][::30, 0], truth.y)
    direct = evaluate_samples(TWO_BIRDS, x, truth.y, enumerate_solutions(TWO_BIRDS, truth.y), truth.x)
    for key in ("mode_recall", "mode_precision", "truth_recall", "score", "misfit_rmse"):
        assert out[key] == pytest.approx(direct[key]), key


def write_study(path, **overrides):
    spec = {
        "name": "tiny", "problem": "two_birds", "data": {"train_size": 1000, "val_size": 200},
        "budget": {"epochs": 3}, "objective": {"metric": "score", "direction": "maximize"},
        "sampler": {"name": "random", "args": {"seed": 1}},
        "pruner": {"name": "threshold", "args": {"lower": 0.9, "n_warmup_steps": 0}},
        "fixed": {"latent": 4, "hidden": 32, "channels": [8], "kernels": [5], "eval_conditions": 10, "eval_samples": 3},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }
    spec.update(overrides)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_pruner_that_prunes_does_prune(tmp_path):
    f = write_study(tmp_path / "tiny.yaml")
    r = cli("run", "--study", f, "--trials", 3, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    trials = study_of(tmp_path, "tiny").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 3
    assert all(t.user_attrs["pruned_at_epoch"] == 1 and list(t.intermediate_values) == [1] for t in trials)
    assert "3 pruned" in r.stdout
    # the last epoch is never pruned: there is nothing left to save, and the finished trial keeps its result
    one = write_study(tmp_path / "one.yaml", name="one", budget={"epochs": 1})
    r = cli("run", "--study", one, "--trials", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [t.state for t in study_of(tmp_path, "one").trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # the same study without a pruner trains every epoch
    r = cli("run", "--study", f, "--trials", 1, "--pruner", "none", "--study-name", "tiny-nop", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    t = study_of(tmp_path, "tiny-nop").trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3]


def test_multi_objective_study_says_it_does_not_prune(tmp_path):
    f = write_study(tmp_path / "mo.yaml", name="mo", sampler={"name": "nsgaii", "args": {"seed": 0}},
                    objective={"metrics": ["misfit_rmse", "diversity"], "directions": ["minimize", "maximize"]})
    r = cli("run", "--study", f, "--trials", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "does not prune multi-objective" in r.stdout and "Pareto front" in r.stdout
    assert study_of(tmp_path, "mo").metric_names == ["misfit_rmse", "diversity"]
    trials = study_of(tmp_path, "mo").trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 2 for t in trials)
    r = cli("report", "--study", "mo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "reports" / "mo" / "pareto_front.png").is_file()


def test_refined_objective_is_measured_after_the_last_epoch_and_not_pruned(tmp_path):
    """A study tuned for the refined pipeline: the trial's value is the recall of exact solutions after
    LM refinement of oversampled draws, measured once, after the last epoch."""
    fixed = {"latent": 4, "hidden": 32, "channels": [8], "kernels": [5], "eval_conditions": 10, "eval_samples": 3,
             "eval_refine": 20, "eval_oversample": 4, "head": "line", "w_y": 0.0}
    f = write_study(tmp_path / "ref.yaml", name="ref", fixed=fixed,
                    objective={"metric": "refined_mode_recall", "direction": "maximize"})
    r = cli("run", "--study", f, "--trials", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "refined_mode_recall exists after the last epoch only, so pruner" in r.stdout
    trials = study_of(tmp_path, "ref").trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE and not t.intermediate_values for t in trials)
    for t in trials:
        assert t.value == t.user_attrs["refined_mode_recall"]
        # refinement lands samples on exact solutions that the 1-epoch raw model misses
        assert t.user_attrs["refined_mode_precision"] > t.user_attrs["mode_precision"]
        assert t.user_attrs["refined_misfit_rmse"] < 0.5 * t.user_attrs["misfit_rmse"]
    r = cli("report", "--study", "ref", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    index = (tmp_path / "reports" / "ref" / "index.html").read_text()
    assert "measured once per trial" in index and not (tmp_path / "reports" / "ref" / "intermediate.html").exists()
    fixed.pop("eval_refine")
    f = write_study(tmp_path / "ref2.yaml", name="ref2", fixed=fixed,
                    objective={"metric": "refined_mode_recall", "direction": "maximize"})
    r = cli("run", "--study", f, "--trials", 1, cwd=tmp_path)
    assert r.returncode == 2 and "add 'eval_refine: 40'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


BAD_STUDIES = {
    "unknown type": ({"search": {"lr": {"type": "double", "low": 0.1, "high": 1}}}, "search.lr.type: unknown parameter type 'double'"),
    "low > high": ({"search": {"lr": {"type": "float", "low": 1.0, "high": 0.1}}}, "search.lr: low 1.0 > high 0.1"),
    "bad condition": ({"search": {"lr": {"type": "float", "low": 0.1, "high": 1, "condition": {"arch": "cvae"}}}},
                      "search.lr.condition.arch: names no parameter defined above it"),
    "unknown param": ({"search": {"learning_rate": {"type": "float", "low": 0.1, "high": 1}}}, "search.learning_rate: not a config key"),
    "unknown sampler": ({"sampler": {"name": "annealing"}}, "unknown sampler 'annealing'"),
    "unknown pruner": ({"pruner": {"name": "guillotine"}}, "unknown pruner 'guillotine'"),
    "bad plots": ({"artifacts": {"plots": "some"}}, "artifacts.plots: 'some' is not one of best, all, none"),
    "bad keep_best": ({"artifacts": {"keep_best": 0}}, "artifacts.keep_best: 0 is not a positive integer"),
    "unknown metric": ({"objective": {"metric": "accuracy", "direction": "maximize"}}, "objective.metric: unknown metric 'accuracy'"),
}


@pytest.mark.parametrize("case", sorted(BAD_STUDIES))
def test_malformed_study_files_fail_with_the_key_path(tmp_path, case):
    overrides, expect = BAD_STUDIES[case]
    f = write_study(tmp_path / "bad.yaml", **overrides)
    r = cli("run", "--study", f, "--trials", 1, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
    assert not (tmp_path / "storage" / "cvae_opt.db").exists()


def test_other_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: x\nsearch: {lr: {type: float, low: 1\n")
    cases = [
        (["--study", "nonexistent"], "unknown study 'nonexistent'"),
        (["--study", tmp_path / "broken.yaml"], "malformed YAML"),
        (["--study", "cvae", "--trials", 0], "--trials must be a positive integer"),
        (["--study", "cvae", "--trials", -3], "--trials must be a positive integer"),
        (["--study", "cvae", "--storage", "notaurl"], "malformed storage URL"),
        (["--study", "cvae", "--device", "cuda:7"], "device 'cuda:7' asked for"),  # no GPU, or fewer than 8
        (["--study", "cvae", "--device", "gpu"], "unknown device 'gpu'"),
    ]
    for args, expect in cases:
        r = cli("run", *args, cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and expect in lines[0], (args, r.stderr)


def test_a_study_resumed_with_another_metric_is_refused(tmp_path):
    f = write_study(tmp_path / "tiny.yaml", budget={"epochs": 1}, pruner=None)
    assert cli("run", "--study", f, "--trials", 1, cwd=tmp_path).returncode == 0
    g = write_study(tmp_path / "other.yaml", budget={"epochs": 1}, pruner=None,
                    objective={"metric": "mode_recall", "direction": "maximize"})
    r = cli("run", "--study", g, "--trials", 1, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "created for metrics ['score']" in lines[0], r.stderr
    assert len(study_of(tmp_path, "tiny").trials) == 1


def test_samples_plots_only_for_trials_that_enter_the_best_k(tmp_path):
    """The plot is the largest fixed bookkeeping cost of a trial: by default it is drawn only for a trial
    that ranks in the best K when it finishes (here K = keep_best = 1: a new best)."""
    f = write_study(tmp_path / "tiny.yaml", budget={"epochs": 1}, pruner=None, artifacts={"keep_best": 1})
    r = cli("run", "--study", f, "--trials", 5, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    trials = study_of(tmp_path, "tiny").trials
    best_so_far, expected = -float("inf"), []
    for t in trials:
        expected.append(t.value > best_so_far)
        best_so_far = max(best_so_far, t.value)
    assert [("samples_artifact" in t.user_attrs) for t in trials] == expected
    assert expected.count(False) >= 1  # the seeded draw has at least one trial that is not a new best
    plots = list((tmp_path / "storage" / "artifacts").rglob("*"))
    assert sum(1 for p in plots if p.is_file()) == expected.count(True) + 1  # the plots and the best's checkpoint


def test_a_refined_objective_is_pruned_on_its_cheap_estimate(tmp_path):
    """With eval_refine_estimate, every epoch before the last reports a refined estimate on a few
    conditions, and the pruner acts on it."""
    fixed = {"latent": 4, "hidden": 32, "channels": [8], "kernels": [5], "eval_conditions": 10, "eval_samples": 3,
             "eval_refine": 10, "eval_oversample": 2, "eval_refine_estimate": 4, "head": "line", "w_y": 0.0}
    f = write_study(tmp_path / "est.yaml", name="est", fixed=fixed,
                    objective={"metric": "refined_mode_recall", "direction": "maximize"},
                    pruner={"name": "threshold", "args": {"lower": 1.1, "n_warmup_steps": 0}})  # prunes any value
    r = cli("run", "--study", f, "--trials", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pruning on refined_mode_recall_estimate" in r.stdout
    trials = study_of(tmp_path, "est").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [1] and 0 <= t.intermediate_values[1] <= 1 for t in trials)


def test_full_budget_rungs_prune_and_the_study_resumes(tmp_path):
    """Successive halving with its top rung at the full budget (rungs 1, 3, 9 of 9 epochs, as the shipped
    cvae_re study's 3, 9, 27, 81, 243): trials stop at a rung below the budget, the promoted ones train
    every epoch to the end, and a second run adds trials to the same study, competing with the recorded
    rung values and leaving the earlier trials as they were."""
    f = write_study(tmp_path / "sha.yaml", name="sha", budget={"epochs": 9},
                    pruner={"name": "successive_halving", "args": {"min_resource": 1, "reduction_factor": 3}})
    r = cli("run", "--study", f, "--trials", 6, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = study_of(tmp_path, "sha").trials
    states = [t.state for t in first]
    complete = [t for t in first if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in first if t.state == optuna.trial.TrialState.PRUNED]
    assert states[0] == optuna.trial.TrialState.COMPLETE  # the first trial at every rung is the best so far
    assert pruned and all(t.user_attrs["pruned_at_epoch"] in (1, 3) for t in pruned)
    assert all(sorted(t.intermediate_values) == list(range(1, 10)) for t in complete)
    assert all(max(t.intermediate_values) == t.user_attrs["pruned_at_epoch"] for t in pruned)
    r = cli("run", "--study", f, "--trials", 3, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "6 trials so far" in r.stdout
    again = study_of(tmp_path, "sha").trials
    assert len(again) == 9
    assert [(t.state, t.params, t.intermediate_values) for t in again[:6]] == [
        (t.state, t.params, t.intermediate_values) for t in first]
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in again[6:])


def test_the_shipped_cvae_re_study_prunes_up_to_its_full_budget():
    """The default study's successive-halving rungs (min_resource x reduction_factor^k) end exactly at its
    budget, in seconds of training, so its best trials train as long as the best models need (issue 25)
    and configs are compared at equal training time."""
    from cvae_opt.studies import load_study_file

    spec = load_study_file("cvae_re")
    args, budget = spec.pruner["args"], spec.seconds
    rungs = [args["min_resource"] * args["reduction_factor"] ** k for k in range(10)]
    assert spec.pruner["name"] == "successive_halving" and budget in rungs and budget >= 900
    assert spec.fixed["latent_type"] == "hypotheses" and "latent_type" not in {p.name for p in spec.search}
    assert spec.fixed["grad_clip"] > 0


def test_progress_eta_says_when_the_timeout_ends_the_study_first():
    from cvae_opt.studies import load_study_file
    from cvae_opt.workers import Progress

    spec = load_study_file("cvae_re")
    assert Progress(spec, 1000, 0, quiet=True).eta(600.0, 10) == ", ETA 16:30:00"  # 990 trials at 60 s
    assert Progress(spec, 1000, 0, quiet=True, timeout=5400).eta(600.0, 10) == ", timeout in 1:20:00"
    assert Progress(spec, 20, 0, quiet=True, timeout=5400).eta(600.0, 10) == ", ETA 0:10:00"  # trials end first
    assert Progress(spec, 20, 0, quiet=True, timeout=5400).eta(600.0, 20) == ""


def test_the_lead_prints_other_workers_trials_while_its_own_trial_runs(tmp_path, capsys):
    """With --jobs > 1 the lead prints every worker's trials; a watcher thread prints the others' between the
    lead's own (whose 243-epoch trials take minutes), each once."""
    import threading
    import time

    from cvae_opt.studies import load_study_file
    from cvae_opt.workers import Progress, watch

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    progress = Progress(load_study_file("cvae_re"), 10, 0, quiet=False)
    stop = threading.Event()
    thread = watch(progress, study, stop, every=0.02)
    study.add_trial(optuna.trial.create_trial(value=0.25, params={}, distributions={}))  # another worker's
    out, deadline = "", time.monotonic() + 60
    while "trial 0 complete: mode_pr 0.25" not in out and time.monotonic() < deadline:
        stop.wait(0.02)
        out += capsys.readouterr().out
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert "[ 1/10] trial 0 complete: mode_pr 0.25 | best 0.25 (trial 0)" in out, out
    progress(study)  # what the lead prints when the others stop: nothing twice
    assert (out + capsys.readouterr().out).count("trial 0 complete") == 1
