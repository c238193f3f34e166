"""The generation metrics a training run reports after each epoch, on fixed validation conditions.

Raw samples every epoch; with `eval_refine`, the refined pipeline's metrics (refined_*) after the last
epoch and, with `eval_refine_estimate`, a cheap estimate of them before it (refined_*_estimate), so a
study on a refined metric can be pruned.
"""

from __future__ import annotations

import hashlib

import torch

from .config import TrainConfig
from .data import Pairs
from .families import family_of
from .metrics import mode_weights
from .models import CVAE
from .posterior import Posterior, SamplingOptions
from .errors import UserError
from .problems import Problem, supports_forward_mode

_SOLUTIONS: dict[tuple[str, bytes], list] = {}


def _solutions(problem: Problem, y: torch.Tensor) -> list:
    """Exact solutions of the validation conditions, enumerated once per process, not once per trial."""
    key = (problem.name, hashlib.sha1(y.detach().cpu().numpy().tobytes()).digest())
    if key not in _SOLUTIONS:
        if len(_SOLUTIONS) > 8:
            _SOLUTIONS.clear()
        _SOLUTIONS[key] = family_of(problem).solutions(problem, y)
    return _SOLUTIONS[key]


class Evaluator:
    """Generation metrics on a fixed set of validation conditions, with the same latent draws every
    epoch so the curve reflects the model, not the noise. Exact solutions are enumerated once."""

    def __init__(
        self, problem: Problem, val: Pairs, n_conditions: int, n_samples: int, seed: int,
        draw: str = "posterior", temperature: float = 1.0, within: str = "mean",
    ):
        n = min(n_conditions, len(val))
        self.draw, self.temperature, self.within = draw, temperature, within
        self.problem = problem
        self.y = val.y[:n]
        self.truth = val.x[:n]
        self.n_samples = n_samples
        self.seed = seed
        self.family = family_of(problem)
        self.solutions = _solutions(problem, self.y) if n else None
        self.weights = mode_weights(problem, self.solutions) if self.solutions is not None else None

    @classmethod
    def for_config(cls, tc: TrainConfig, problem: Problem, val: Pairs) -> "Evaluator":
        check_refined_metrics(tc, problem)
        return cls(problem, val, tc.eval_conditions, tc.eval_samples, tc.seed + 7, tc.eval_draw, tc.eval_temperature,
                   tc.eval_within)

    def epoch(self, model: CVAE, tc: TrainConfig, last: bool) -> dict[str, float]:
        """Everything a training run reports after an epoch besides its losses."""
        out = self(model)
        if tc.eval_refine > 0 and last:
            out.update(self.refined(model, tc.eval_refine, tc.eval_oversample))
        elif tc.eval_refine > 0 and tc.eval_refine_estimate > 0:
            estimate = self.refined(model, tc.eval_refine, 2, conditions=tc.eval_refine_estimate)
            out.update({f"{k}_estimate": v for k, v in estimate.items()})
        return out

    def __call__(self, model: CVAE) -> dict[str, float]:
        if len(self.y) == 0 or self.n_samples < 1:
            return {}
        samples = Posterior(model, self.problem).sample(self.y, self.n_samples, self._options(model), seed=self.seed,
                                                        to_cpu=False, checked=True)
        return self.family.evaluate(self.problem, samples, self.y, self.truth, self.solutions, self.weights)

    def refined(self, model: CVAE, steps: int, oversample: int, conditions: int | None = None) -> dict[str, float]:
        """The same metrics for the refined pipeline (`generate --refine steps --oversample K`), prefixed
        refined_: what a study needs when the model is meant as a source of starting points. With
        `conditions`, on the first that many only (a cheap estimate)."""
        if len(self.y) == 0 or self.n_samples < 1 or steps < 1:
            return {}
        n = len(self.y) if conditions is None else max(1, min(conditions, len(self.y)))
        options = self._options(model, refine_steps=steps, oversample=oversample)
        x = Posterior(model, self.problem).sample(self.y[:n], self.n_samples, options, seed=self.seed, checked=True)
        m = self.family.evaluate(
            self.problem, x, self.y[:n], self.truth[:n], None if self.solutions is None else self.solutions[:n],
            None if self.weights is None else self.weights[:n],
        )
        return {f"refined_{k}": v for k, v in m.items() if k not in ("n_conditions", "samples_per_condition")}

    def _options(self, model: CVAE, **refined: int) -> SamplingOptions:
        """The study's draw and temperature apply to component latents; others have only their posterior."""
        if not model.latent.has_components:
            return SamplingOptions(**refined)
        within = self.within if model.latent.has_spread else "mean"
        return SamplingOptions(draw=self.draw, temperature=self.temperature, within=within, **refined)


def check_refined_metrics(tc: TrainConfig, problem: Problem) -> None:
    """The refined metrics run LM refinement, which needs forward-mode differentiation through the
    problem: refuse a config that asks for them on a problem without it, before any training. Refinement
    fits line end points: a field problem has none to fit."""
    if tc.eval_refine > 0 and not family_of(problem).refinable(problem):
        raise UserError(
            f"train.eval_refine: problem {problem.name!r} ({family_of(problem).name}) has no refinement, so no "
            "refined_* metrics; set eval_refine: 0"
        )
    if tc.eval_refine > 0 and not supports_forward_mode(problem):
        raise UserError(
            f"train.eval_refine: problem {problem.name!r} does not support forward-mode differentiation, which "
            "the refined metrics' LM refinement needs; set eval_refine: 0"
        )
