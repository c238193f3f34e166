"""The Optuna objective: a trial's config (`studies.suggest_config`) trained and reported.

The objective trains the config through `train.Training` (the same code `retrain` runs) in its own
visible loop: it reports the study metric every epoch and prunes there (as Optuna's `pytorch_simple.py`), stores the metric components and the resolved config as user
attributes, and uploads a checkpoint and a samples plot to the artifact store.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import upload_artifact

from .checkpoints import save_checkpoint
from .config import Config
from .data import Pairs, load_data
from .errors import NonFiniteLoss, StorageError, UserError
from .epoch_metrics import check_refined_metrics
from .families import family_of
from .figures import samples_figure, save_figure
from .problems import Problem, resolve_problem
from .studies import PLOT_BEST_DEFAULT, StudySpec, check_shapes, suggest_config
from .train import Training, budget_step, epochs_within, seconds_per_epoch
from .trials import beats, keep_best_checkpoints, ranked, record

WORKER = f"{socket.gethostname()}:{os.getpid()}"
# set on a trial stopped by Ctrl-C or SIGTERM while it ran (while it is still RUNNING: a finished trial takes
# no attributes): the next run of the study re-queues it once with its parameters
INTERRUPTED_ATTR = "interrupted"


class ArtifactError(RuntimeError):
    """Writing a trial's checkpoint or plot failed (full disk, permissions): the trial fails, the study goes on."""


def check_objective_metrics(spec: StudySpec, problem: Problem) -> None:
    """Refuse an objective metric the problem cannot compute (a gravity study on valid_fraction, a line
    study on mean_error): every trial would report NaN, be pruned at the first rung or end in a KeyError."""
    allowed = family_of(problem).metrics(problem)
    for m in spec.metrics:
        if m not in allowed:
            raise UserError(
                f"{spec.path}: objective metric {m!r} is not computed for problem {problem.name!r}; "
                f"use one of {', '.join(allowed)}"
            )


@dataclass
class Overrides:
    """Command-line budget overrides, applied on top of every suggested config."""

    epochs: int | None = None
    train_size: int | None = None
    device: str | None = None
    seed: int | None = None

    def apply(self, cfg: Config) -> Config:
        if self.epochs is not None:
            cfg.train.epochs = self.epochs
        if self.train_size is not None:
            if cfg.data.simulations:
                raise UserError(f"--train-size {self.train_size}: this study's data is a fixed budget of "
                                f"{cfg.data.simulations} simulations (data.simulations); change it in the study file")
            cfg.data.train_size = self.train_size
        if self.device is not None:
            cfg.train.device = self.device
        if self.seed is not None:
            cfg.train.seed = self.seed
            cfg.data.seed = self.seed
        return cfg


class Objective:
    def __init__(
        self,
        spec: StudySpec,
        overrides: Overrides | None = None,
        artifacts: optuna.artifacts.FileSystemArtifactStore | None = None,
    ):
        self.spec = spec
        self.overrides = overrides or Overrides()
        self.artifacts = artifacts
        self.checkpoints = bool(spec.artifacts.get("checkpoints", True))
        self.plots = spec.artifacts.get("plots", "best")
        self.keep_best = spec.artifacts.get("keep_best")
        self.plot_best = self.keep_best or PLOT_BEST_DEFAULT
        self._data: dict[tuple, tuple[Pairs, Pairs]] = {}
        problem = resolve_problem(spec.problem)
        check_objective_metrics(spec, problem)
        family = family_of(problem)
        check_shapes(spec, lambda model, where: family.check_model(model, problem, where),
                     lambda train, where: family.check_train(train, problem, where))
        # load (or draw) the data now: a bad data file is refused before the storage is touched
        base = self.overrides.apply(spec.base_config())
        check_refined_metrics(base.train, problem)
        self.data_for(base)

    def data_for(self, cfg: Config) -> tuple[Pairs, Pairs]:
        """Data loaded once per process and data config, not once per trial."""
        key = tuple(sorted(cfg.to_dict()["data"].items()))
        if key not in self._data:
            self._data[key] = load_data(cfg.data, resolve_problem(cfg.data.problem))
        return self._data[key]

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        try:
            return self._run(trial)
        except StorageError:
            raise  # the storage refuses writes: recording the reason would fail the same way
        except (NonFiniteLoss, UserError, ArtifactError) as exc:
            # Optuna records no reason for a failed trial: keep it where the dashboard and report show it
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C or SIGTERM); re-queued when the study runs again")
            raise

    def _run(self, trial: optuna.Trial) -> float | list[float]:
        cfg = self.overrides.apply(suggest_config(trial, self.spec))
        seconds = self.spec.seconds if self.overrides.epochs is None else None  # --epochs N: N for every trial
        if seconds is not None:
            # a seconds budget: this config's epochs are what it trains in that time here, fixed before it
            # starts (so its export retrains exactly this run), and its values go on the seconds axis
            per_epoch = seconds_per_epoch(cfg, self.data_for(cfg))
            cfg.train.epochs = epochs_within(seconds, per_epoch, cfg.train.epochs)
            trial.set_user_attr("seconds_per_epoch", per_epoch)
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("worker", WORKER)
        metrics = self.spec.metrics
        key = metrics[0]
        if key.startswith("refined_"):
            key = f"{key}_estimate"  # refined_* exist after the last epoch; before it, the cheap estimate if asked for
        needs_val_loss = any(m.startswith("val_") for m in metrics)  # else only after the last epoch
        run = Training(cfg, data=self.data_for(cfg), val_loss_every_epoch=needs_val_loss)
        trial.set_user_attr("precision", run.precision)  # what `precision: auto` resolved to on this machine
        last_step = 0
        for m in run.epochs():
            epoch = int(m["epoch"])
            if self.spec.multi_objective or key not in m:  # Optuna cannot prune multi-objective trials
                continue
            step = epoch if seconds is None else budget_step(epoch, cfg.train.epochs, seconds)
            if step <= last_step:
                continue  # more epochs than seconds: one value per second of the axis
            last_step = step
            trial.report(m[key], step)
            # after the last epoch there is nothing left to save: a pruner's rung there would only throw a
            # finished trial's result away (successive halving's first rung is epoch 1)
            if epoch < cfg.train.epochs and trial.should_prune():
                record(trial, m)
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with {key} = {m[key]:.4g}")
        result = run.result()
        record(trial, result.last)
        trial.set_user_attr("train_seconds", result.seconds)
        trial.set_user_attr("train_loop_seconds", sum(h["epoch_seconds"] for h in result.history))
        trial.set_user_attr("eval_seconds", sum(h.get("eval_seconds", 0.0) for h in result.history))
        values = [float(result.last[m]) for m in metrics]
        if self.artifacts is not None:
            self.upload(trial, cfg, result, values)
        return values if self.spec.multi_objective else values[0]

    def upload(self, trial: optuna.Trial, cfg: Config, result: Any, values: list[float]) -> None:
        try:
            self._upload(trial, cfg, result, values)
        except OSError as exc:  # a full disk fails this trial, never the study or earlier checkpoints
            raise ArtifactError(f"writing the artifacts of trial {trial.number} failed: {exc}") from exc

    def _upload(self, trial: optuna.Trial, cfg: Config, result: Any, values: list[float]) -> None:
        with tempfile.TemporaryDirectory(prefix="cvae-opt-") as tmp:
            if self.checkpoints and self._in_top_k(trial, values, self.keep_best):
                f = save_checkpoint(Path(tmp) / f"trial-{trial.number}-checkpoint.pt", result.model, cfg, result.last)
                aid = upload_artifact(
                    artifact_store=self.artifacts, file_path=str(f), study_or_trial=trial,
                    mimetype="application/octet-stream",
                )
                trial.set_user_attr("checkpoint_artifact", aid)
            if self.plots == "all" or (self.plots == "best" and self._in_top_k(trial, values, self.plot_best)):
                val = self.data_for(cfg)[1]
                fig = samples_figure(
                    result.model, result.problem, val.y[:3].cpu(), n_samples=20, seed=cfg.train.seed, truth=val.x[:3].cpu(),
                    title=f"trial {trial.number}: " + ", ".join(f"{m} {v:.4g}" for m, v in zip(self.spec.metrics, values)),
                )
                f = save_figure(fig, Path(tmp) / f"trial-{trial.number}-samples.png")
                aid = upload_artifact(artifact_store=self.artifacts, file_path=str(f), study_or_trial=trial, mimetype="image/png")
                trial.set_user_attr("samples_artifact", aid)
        if self.checkpoints and self.keep_best and not self.spec.multi_objective:
            keep_best_checkpoints(trial.study, self.artifacts, self.keep_best)

    def _in_top_k(self, trial: optuna.Trial, values: list[float], k: int | None) -> bool:
        """Whether the finishing trial ranks among the best k complete trials (always, without a k or
        with several objectives)."""
        if not k or self.spec.multi_objective:
            return True
        best = ranked(trial.study)
        return len(best) < k or beats(trial.study, values[0], best[k - 1].value)
