"""Reading a study's trials: the ranking of complete trials, the best one, and a trial's config as the
YAML that `retrain` takes. The run, report, export and the objective's keep-best rule all rank here."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
import yaml
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from .config import Config
from .errors import UserError
from .storage import mask_url
from .studies import METRICS

COMPLETE = optuna.trial.TrialState.COMPLETE
RECORDED = (*METRICS, "train_loss", "epoch", "epoch_seconds")  # the metrics a trial keeps as user attributes


def ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete trials, best first (single-objective studies)."""
    done = study.get_trials(deepcopy=False, states=(COMPLETE,))
    return sorted(done, key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)


def beats(study: optuna.Study, value: float, other: float) -> bool:
    """Whether `value` is strictly better than `other` in the study's (single) direction."""
    return value > other if study.direction == optuna.study.StudyDirection.MAXIMIZE else value < other


def best_trial_or_none(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial; for a multi-objective study, the Pareto-front trial best on the first
    metric; None before any trial completes."""
    if len(study.directions) == 1:
        best = ranked(study)
        return best[0] if best else None
    front = study.best_trials
    if not front:
        return None
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1
    return min(front, key=lambda t: sign * t.values[0])


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """`best_trial_or_none`, for commands that need one: none yet is one error line."""
    trial = best_trial_or_none(study)
    if trial is None:
        raise UserError(f"study {study.study_name!r} has no complete trial yet; run more trials first")
    return trial


def find_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise UserError(f"study {study.study_name!r} has no trial {number}")


def trial_config(trial: optuna.trial.FrozenTrial) -> Config:
    if "config" not in trial.user_attrs:
        raise UserError(f"trial {trial.number} has no stored config (was it run by cvae_opt.run?)")
    return Config.from_dict(trial.user_attrs["config"], where=f"trial {trial.number} config")


def config_yaml(study: optuna.Study, trial: optuna.trial.FrozenTrial, storage_url: str) -> str:
    """The trial's complete config with its provenance as comments: what `export` writes."""
    cfg = trial_config(trial)
    metrics = study.user_attrs.get("metrics", ["value"])
    values = ", ".join(f"{m} = {v:.6g}" for m, v in zip(metrics, trial.values or []))
    head = [
        f"# Trial {trial.number} of study {study.study_name!r} in {mask_url(storage_url)}: {values or trial.state.name.lower()}.",
        f"# Study launched with: {study.user_attrs.get('launch_command', '?')}",
        "# Retrain from scratch with: python -m cvae_opt.retrain --config THIS_FILE",
    ]
    params = yaml.safe_dump({"searched_params": trial.params}, sort_keys=False).splitlines()
    return "\n".join(head + ["# " + line for line in params]) + "\n" + cfg.to_yaml()


def keep_best_checkpoints(study: optuna.Study, store: FileSystemArtifactStore, keep: int) -> int:
    """Remove the stored checkpoints of complete trials outside the best `keep`, and of failed trials;
    returns how many files went. Safe with many workers: it reads the trials and removes files, with no
    shared record to update (a file another worker removed first is skipped), and a complete trial that
    leaves the best `keep` never re-enters them, so nothing it removes is needed later. Running trials
    are never touched."""
    doomed = ranked(study)[keep:] + study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    removed = 0
    for t in doomed:
        aid = t.user_attrs.get("checkpoint_artifact")
        if not aid:
            continue
        try:
            store.remove(aid)
            removed += 1
        except (FileNotFoundError, ArtifactNotFound):
            pass  # removed earlier, by this worker or another
    return removed


def record(trial: optuna.Trial, metrics: dict[str, float]) -> None:
    """Keep a trial's metrics as user attributes (the dashboard, report and trials.csv show them)."""
    for k in RECORDED:
        if k in metrics and isinstance(metrics[k], (int, float)):
            trial.set_user_attr(k, float(metrics[k]))


STALE_TELL = "Cannot tell a FAIL trial"  # Optuna's words when a worker finishes a trial failed as stale


def optimize(study: optuna.Study, objective: Callable[[optuna.Trial], Any], n_trials: int,
             timeout: float | None = None, **kwargs: Any) -> int:
    """`study.optimize` for a worker among many: when this worker's running trial was failed as stale by
    another worker (its heartbeat stalled for longer than the grace period: an overloaded storage, a long
    network outage), Optuna refuses to record its result and stops the loop. The result is dropped (the
    retry created for the stale trial runs the same parameters again) and the worker goes on with the
    trials it has left instead of dying. Returns how many trials had their result dropped so."""
    asked = 0
    dropped = 0
    deadline = None if timeout is None else time.monotonic() + timeout

    def counted(trial: optuna.Trial) -> Any:
        nonlocal asked
        asked += 1
        return objective(trial)

    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if asked >= n_trials or (left is not None and left <= 0):
            return dropped
        try:
            study.optimize(counted, n_trials=n_trials - asked, timeout=left, **kwargs)
            return dropped
        except ValueError as exc:
            if STALE_TELL not in str(exc):
                raise
            dropped += 1
