"""The Python API: what a notebook needs, thin over the library modules (the commands call the same
functions). Every call raises `UserError`, with the commands' one-line messages, for input a user can
fix.

    import cvae_opt
    study = cvae_opt.run_study("cvae_re", trials=20, storage="sqlite:///storage/cvae_opt.db")
    gen = cvae_opt.train_config(cvae_opt.best_config(study))
    samples = gen.sample("two_birds:scoring", n=30)
    cvae_opt.score_samples(samples, truth="two_birds:scoring")
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import torch

from .checkpoints import load_checkpoint, save_checkpoint
from .config import MIN_WEIGHT, Config
from .data import Pairs, load_pairs, save_pairs
from .errors import UserError
from .files import atomic_write_text
from .models import CVAE
from .families import family_of
from .problems import Problem, gravity2d, resolve_problem  # noqa: F401 (gravity2d: API)
from .surveys import read_survey, write_survey  # noqa: F401 (write_survey: API)
from .posterior import MAX_OUTPUT_BYTES, Posterior, SamplingOptions, check_output_size
from .workers import RunOptions
from .workers import run_study as _run_study
from .storage import DEFAULT_ARTIFACTS, DEFAULT_STORAGE, HEARTBEAT_SECONDS, load_existing_study, open_storage
from .train import TrainResult, train
from .trials import best_trial, find_trial, trial_config

Conditions = torch.Tensor | np.ndarray | str | Path


# -- studies ----------------------------------------------------------------------------------------
def run_study(
    study: str, trials: int = 200, *, storage: str = DEFAULT_STORAGE, study_name: str | None = None, jobs: int = 1,
    seed: int | None = None, device: str | None = None, sampler: str | None = None, pruner: str | None = None,
    n_startup_trials: int | None = None, epochs: int | None = None, train_size: int | None = None,
    timeout: float | None = None, artifacts: str = DEFAULT_ARTIFACTS, heartbeat: int = HEARTBEAT_SECONDS,
    quiet: bool = False, allow_changed_space: bool = False,
) -> optuna.Study:
    """Run (or resume) a study, exactly as `cvae-opt run` does with the same options: `study` is a built-in
    study name (cvae_re, cvae, both...) or a study file; the trials are stored in `storage`. Progress lines
    are printed unless `quiet`. Interrupting (the notebook's stop button) fails the running trial and
    re-raises KeyboardInterrupt; running it again resumes (and re-queues that trial). Resuming with a study
    file that searches another space is refused unless `allow_changed_space`. Returns the study (see
    `optuna.Study`)."""
    options = RunOptions(study=str(study), trials=trials, storage=storage, study_name=study_name, timeout=timeout,
                         jobs=jobs, seed=seed, device=device, sampler=sampler, pruner=pruner,
                         n_startup_trials=n_startup_trials, epochs=epochs, train_size=train_size,
                         artifacts=str(artifacts), heartbeat=heartbeat, quiet=quiet,
                         allow_changed_space=allow_changed_space)
    result = _run_study(options)
    if result.interrupted:
        raise KeyboardInterrupt(f"study {result.study.study_name!r} interrupted; run it again to resume")
    if result.failed_workers:
        warnings.warn(f"{result.failed_workers} worker process(es) died; their trials are retried when the study "
                      "runs again", RuntimeWarning, stacklevel=2)
    return result.study


def load_study(study_name: str, storage: str = DEFAULT_STORAGE) -> optuna.Study:
    """An existing study (for plots, the best trial, `optuna.visualization`); a storage that does not exist
    is refused, never created."""
    return load_existing_study(open_storage(storage, create=False), study_name, storage)


def _as_study(study: optuna.Study | str, storage: str) -> optuna.Study:
    return study if isinstance(study, optuna.Study) else load_study(study, storage)


def best_config(study: optuna.Study | str, storage: str = DEFAULT_STORAGE, trial: int | None = None) -> Config:
    """The complete config of the study's best trial (for several objectives, the Pareto-front trial best
    on the first metric), or of trial number `trial`: what `cvae-opt export` writes."""
    s = _as_study(study, storage)
    return trial_config(find_trial(s, trial) if trial is not None else best_trial(s))


# -- models -----------------------------------------------------------------------------------------
@dataclass
class Samples:
    """Generated models for given measurements: x (M, n, *x_shape) ((M, n, 50, 2) for two birds, (M, n, 16,
    32) for gravity2d) for y (M, n_points, k), and how they were drawn (`metadata`: mode raw or refined, draw, temperature, refinement, oversampling, seed)."""

    x: torch.Tensor
    y: torch.Tensor
    problem: Problem
    metadata: dict[str, Any] = field(default_factory=dict)

    def pairs(self) -> Pairs:
        """The challenge's submission layout: rows (generated x, its given y), y by y."""
        return Pairs.from_samples(self.x, self.y)

    def save(self, path: str | Path) -> Path:
        """Write a submission (TensorDataset of (x, given y): the challenge layout (N, 1, P, 2) for line
        problems, (N, *x_shape) and (N, P, k) for field problems) and its metadata beside it (PATH.json, with
        the problem's name, which `evaluate` reads), as `cvae-opt generate` does."""
        path = save_pairs(path, self.pairs(), challenge_layout=family_of(self.problem).challenge_layout)
        atomic_write_text(Path(str(path) + ".json"), json.dumps(self.metadata, indent=2) + "\n")
        return path


@dataclass
class Generator:
    """A trained model and what it was trained for: draws models x for measurements y."""

    model: CVAE
    config: Config
    problem: Problem
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    source: str = ""

    def sample(
        self, y: Conditions, n: int = 30, *, seed: int = 0, draw: str = "posterior", temperature: float = 1.0,
        within: str = "mean", min_weight: float = MIN_WEIGHT, max_spread: float | None = None,
        refine: int = 0, refine_method: str = "lm", refine_lr: float = 0.2, oversample: int = 1, batch: int = 8192,
        max_output_bytes: float | None = MAX_OUTPUT_BYTES,
    ) -> Samples:
        """n models per measurement y, as `cvae-opt generate` draws them. Raw (the default): one decoder pass
        each. `draw`: posterior (by the model's weights, for uncertainty) or coverage (every distinct
        hypothesis first: 'show me every model that fits'; component latents); `within`: a drawn hypothesis'
        mean or (spread) a draw within its learnt spread (hypotheses latent); `min_weight`: the lightest hypothesis
        coverage and tempered draws may pick (0.01; lower it to start refinement from light hypotheses too);
        `max_spread` (hypotheses latent, x units): hypotheses whose learnt spread is broader are not drawn, the
        hedges of a model that has not placed them on a solution (None: every hypothesis).
        `refine` > 0: that many
        iterations fitting each sample to its y; `oversample` K: draw K times as many and keep the n that
        fit, farthest apart. y: see `conditions`. Samples past `max_output_bytes` (M x n x the model's size
        x 4 bytes, times `oversample`; default 2 GB, None: no limit; `--max-output-gb`) are refused before
        anything is drawn; memory while drawing stays a small multiple of that (`Posterior.sample`)."""
        if n < 1:
            raise UserError(f"n (--samples) must be a positive integer, got {n}")
        options = SamplingOptions(draw=draw, temperature=temperature, within=within, min_weight=min_weight,
                                  max_spread=max_spread, refine_steps=refine, refine_method=refine_method,
                                  refine_lr=refine_lr, oversample=oversample)
        posterior = Posterior(self.model, self.problem)
        posterior.check(options)
        yy = conditions(y, self.problem)
        check_output_size(self.model.x_shape, len(yy), n, oversample, max_output_bytes)
        t0 = time.perf_counter()
        x = posterior.sample(yy, n, options, seed=seed, batch=batch, checked=True)
        meta = {"checkpoint": self.source, "conditions": str(y) if isinstance(y, (str, Path)) else "array",
                "samples_per_condition": n, "n_conditions": len(yy), "seed": seed,
                "seconds": time.perf_counter() - t0, **options.to_dict(), "mode": options.mode,
                "latent_type": self.config.model.latent_type, "problem": self.config.data.problem}
        return Samples(x, yy.cpu(), self.problem, meta)

    def save(self, path: str | Path) -> Path:
        """A checkpoint that `load_generator` and every command read."""
        return save_checkpoint(path, self.model, self.config, self.metrics)


def load_generator(checkpoint: str | Path, device: str = "cpu", *, problem: str | None = None,
                   latent_type: str | None = None) -> Generator:
    """A checkpoint written by a trial, `report` (best_model.pt), `retrain` or `Generator.save`. A checkpoint
    whose config names its problem or latent type by import path (`package.module:attr`) loads only when
    `problem=` / `latent_type=` give the same spec: a file never picks the code that runs."""
    from .devices import resolve_device

    model, cfg, payload = load_checkpoint(checkpoint, resolve_device(device), problem=problem, latent_type=latent_type)
    # the problem load_checkpoint checked (and built the model for)
    return Generator(model, cfg, resolve_problem(cfg.data.problem), payload.get("metrics", {}), source=str(checkpoint))


def train_config(
    config: Config | str | Path, *, epochs: int | None = None, seed: int | None = None, device: str | None = None,
    out: str | Path | None = None, log: Callable[[str], None] | None = None,
) -> Generator:
    """Train from scratch with a config (a `Config`, or a YAML file such as `cvae-opt export` writes), as
    `cvae-opt retrain` does; with `out`, also write checkpoint.pt, config.yaml and metrics.json there.
    `log` gets one line per epoch (e.g. `print`)."""
    cfg = config if isinstance(config, Config) else Config.from_yaml_file(config)
    cfg = Config.from_dict(cfg.to_dict())  # a copy: the caller's config is not changed
    if epochs is not None:
        cfg.train.epochs = epochs
    if seed is not None:
        cfg.train.seed = seed
    if device is not None:
        cfg.train.device = device
    cfg.validate()
    result = train(cfg, log=log)
    gen = Generator(result.model, cfg, result.problem, _numbers(result.last), result.history)
    if out is not None:
        write_training(Path(out), result, cfg)
        gen.source = str(Path(out) / "checkpoint.pt")
    return gen


def write_training(out: Path, result: TrainResult, cfg: Config) -> None:
    """checkpoint.pt, config.yaml and metrics.json of a training run."""
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "checkpoint.pt", result.model, cfg, result.last)
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    atomic_write_text(out / "metrics.json", json.dumps(
        {"final": result.last, "history": result.history, "seconds": result.seconds}, indent=2) + "\n")


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float))}


# -- data, scores, figures --------------------------------------------------------------------------
def conditions(y: Conditions, problem: Problem | str = "two_birds") -> torch.Tensor:
    """Measurements as the models take them, (M, n_points, k) float32: a torch tensor or NumPy array of
    shape (n_points, k) (one measurement) or (M, n_points, k) ((n_points,) and (M, n_points) when k = 1),
    a file of pairs (its y) by path or built-in name (`two_birds:scoring`, `gravity2d:test`), or, for a
    problem with station positions (gravity2d), a survey CSV (`surveys.read_survey`)."""
    problem = resolve_problem(problem)
    if isinstance(y, (str, Path)):
        if str(y).lower().endswith(".csv"):
            return read_survey(y, problem)
        return load_pairs(y, problem).y
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).detach()
    if problem.k == 1 and t.dim() >= 1 and t.shape[-1] == problem.n_points:
        t = t.unsqueeze(-1)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or tuple(t.shape[1:]) != (problem.n_points, problem.k):
        raise UserError(f"measurements of shape {tuple(t.shape)}: expected ({problem.n_points}, {problem.k}) or "
                        f"(M, {problem.n_points}, {problem.k}) for problem {problem.name!r}")
    if not t.is_floating_point() or not torch.isfinite(t).all():
        raise UserError("measurements must be finite floating-point numbers")
    return t.float().cpu().contiguous()


def score_samples(samples: Samples, truth: Conditions | Pairs | None = None) -> dict[str, float]:
    """The metrics of `cvae-opt evaluate` for samples of given measurements (see `cvae_opt.metrics`):
    score, misfit_rmse, valid_fraction, diversity, and, where the exact solutions can be enumerated,
    mode_precision, mode_recall; with the true models (`truth`: a challenge file or Pairs whose y are
    the samples' y, in order), truth_recall."""
    from .submissions import score

    return score(samples.problem, samples.x, samples.y, truth)


def plot_samples(samples: Samples, n: int = 4, title: str = "", truth: Conditions | Pairs | None = None) -> Any:
    """The samples figure (matplotlib) for the first n measurements: for line problems the models with the
    exact solutions dashed (where they can be enumerated), for grids the models, their mean and standard
    deviation maps (beside the exact posterior's, where known) and the true models (`truth`: a file of
    pairs or Pairs whose y are the samples' y); and each measurement against what the models predict."""
    from .figures import samples_figure

    k = max(1, min(n, len(samples.y)))
    true_x = None
    if truth is not None:
        from .submissions import truth_models

        true_x = truth_models(samples.y[:k], truth, samples.problem)
    return samples_figure(None, samples.problem, samples.y[:k], samples=samples.x[:k], title=title, truth=true_x)
