"""A study budget in seconds (`budget: {seconds: S}`): each trial trains the epochs its own config fits in S
seconds on this machine, fixed before it starts, and reports on the seconds axis, so pruners and the final
ranking compare configs at equal training time, not at equal epochs (a config twice as costly per epoch
gets half the epochs). Real studies in a subprocess, real SQLite files."""

from __future__ import annotations

import math

import optuna
import pytest

from cvae_opt.config import Config
from cvae_opt.errors import UserError
from cvae_opt.studies import load_study_file
from cvae_opt.train import budget_step, epochs_within

from test_study_pipeline import cli, study_of
from test_study_pipeline import write_study as write_tiny_study


def write_study(path, **overrides):
    """test_study_pipeline's tiny study with a 6-second budget and one cheap and one far costlier config."""
    spec = {
        "name": "timed", "budget": {"seconds": 6, "epochs": 400}, "pruner": None,
        "sampler": {"name": "GridSampler", "args": {"search_space": {"hidden": [16, 1024]}, "seed": 0}},
        "fixed": {"latent": 4, "channels": [8], "kernels": [5], "eval_conditions": 5, "eval_samples": 3,
                  "batch_size": 100},
        "search": {"hidden": {"type": "categorical", "choices": [16, 1024]}},
    }
    spec.update(overrides)
    return write_tiny_study(path, **spec)


def test_the_axis_and_the_epochs_of_a_seconds_budget():
    assert epochs_within(60, 2.5, 1000) == 24 and epochs_within(60, 100.0, 1000) == 1
    assert epochs_within(60, 0.01, 1000) == 1000  # the study's epoch cap
    steps = [budget_step(e, 24, 60) for e in range(1, 25)]
    assert steps[0] == 3 and steps[-1] == 60 and steps == sorted(steps)
    # more epochs than seconds: several epochs share a second, the last lands on the budget
    steps = [budget_step(e, 500, 60) for e in range(1, 501)]
    assert steps[0] == 1 and steps[-1] == 60 and len(set(steps)) == 60


def test_a_seconds_budget_is_read_and_bad_ones_are_one_error_line(tmp_path):
    spec = load_study_file(write_study(tmp_path / "ok.yaml"))
    assert spec.seconds == 6.0 and spec.epochs == 400 and spec.base_config().train.epochs == 400
    uncapped = load_study_file(write_study(tmp_path / "u.yaml", budget={"seconds": 30}))
    assert uncapped.seconds == 30.0 and uncapped.epochs >= 10_000
    assert load_study_file(write_study(tmp_path / "e.yaml", budget={"epochs": 7})).seconds is None
    for budget, says in (({"seconds": 0}, "budget.seconds: 0 is not a positive number of seconds"),
                         ({"seconds": "ten"}, "budget.seconds: 'ten' is not a positive number of seconds"),
                         ({"seconds": True}, "budget.seconds"),
                         ({"second": 5}, "expected a mapping with 'epochs' and/or 'seconds'")):
        with pytest.raises(UserError, match=says):
            load_study_file(write_study(tmp_path / "bad.yaml", budget=budget))


def test_each_trial_trains_the_epochs_its_config_fits_in_the_budget(tmp_path):
    f = write_study(tmp_path / "timed.yaml")
    # one cheap config (16 wide) and one far costlier per epoch (1,024 wide)
    r = cli("run", "--study", f, "--trials", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    trials = study_of(tmp_path, "timed").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        per_epoch = t.user_attrs["seconds_per_epoch"]
        epochs = t.user_attrs["config"]["train"]["epochs"]
        assert per_epoch > 0 and epochs == epochs_within(6.0, per_epoch, 400)
        assert len(t.intermediate_values) == min(epochs, 6)  # one value per second of the axis at most
        assert max(t.intermediate_values) == 6 and min(t.intermediate_values) >= 1
    by_width = {t.params["hidden"]: t for t in trials}
    cheap, costly = by_width[16], by_width[1024]
    assert costly.user_attrs["seconds_per_epoch"] > cheap.user_attrs["seconds_per_epoch"]
    assert costly.user_attrs["config"]["train"]["epochs"] <= cheap.user_attrs["config"]["train"]["epochs"]
    # the export carries the trial's own epochs, so retraining repeats that run
    out = tmp_path / "best.yaml"
    r = cli("export", "--study", "timed", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    best = max(trials, key=lambda t: t.value)
    assert Config.from_yaml_file(out).train.epochs == best.user_attrs["config"]["train"]["epochs"]


def test_a_trial_validating_seldom_reports_then_and_trains_its_whole_budget(tmp_path):
    """`eval_overhead`: validation every few epochs instead of every epoch; the trial reports its value only
    where it validated (its first and last epoch here), still on the seconds axis, and completes."""
    f = write_study(tmp_path / "timed.yaml", name="seldom", sampler={"name": "random", "args": {"seed": 0}},
                    search={"lr": {"type": "float", "low": 1e-3, "high": 2e-3}},
                    fixed={"latent": 4, "channels": [8], "kernels": [5], "eval_conditions": 5, "eval_samples": 3,
                           "batch_size": 100, "hidden": 16, "eval_overhead": 1e-6})
    r = cli("run", "--study", f, "--trials", 1, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    t = study_of(tmp_path, "seldom").trials[0]
    epochs = t.user_attrs["config"]["train"]["epochs"]
    assert t.state == optuna.trial.TrialState.COMPLETE and epochs >= 3
    assert sorted(t.intermediate_values) == [budget_step(1, epochs, 6.0), 6]
    assert t.value == t.intermediate_values[6]


def test_an_epochs_override_turns_the_timing_off(tmp_path):
    f = write_study(tmp_path / "timed.yaml", name="fixed")
    r = cli("run", "--study", f, "--trials", 1, "--epochs", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    t = study_of(tmp_path, "fixed").trials[0]
    assert "seconds_per_epoch" not in t.user_attrs and t.user_attrs["config"]["train"]["epochs"] == 2
    assert sorted(t.intermediate_values) == [1, 2]  # the epoch axis, as without a seconds budget
    assert math.isfinite(t.value)


def test_a_pruned_trials_progress_line_says_where_on_the_seconds_axis(tmp_path):
    from cvae_opt.workers import Progress

    spec = load_study_file(write_study(tmp_path / "ok.yaml"))
    progress = Progress(spec, total=2, start_finished=0, quiet=True)
    timed = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={}, distributions={}, intermediate_values={1: 0.1, 2: 0.2},
        user_attrs={"pruned_at_epoch": 30, "seconds_per_epoch": 0.07, "config": {"train": {"epochs": 85}}})
    assert progress.result(timed) == "pruned at epoch 30 of 85 (2 s of training)"
    plain = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={},
                                      intermediate_values={3: 0.1}, user_attrs={"pruned_at_epoch": 3})
    assert progress.result(plain) == "pruned at epoch 3"
