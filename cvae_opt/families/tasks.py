"""The benchmark-task family: the simulation-based-inference benchmark's tasks (`benchmark_tasks`), where
x is a flat parameter vector theta and y the output of a stochastic simulator.

What differs from the other kinds: y comes from the task's simulator, not a forward map plus Gaussian
noise (`simulate`); there is nothing to differentiate, so the physics term (`train.w_y`) and refinement
are refused at load; the simulation budget is fixed (`data.simulations`), so fresh pairs every epoch are
refused too. Networks: the field family's MLP bodies (no convolutions over a parameter vector). Metrics:
calibration against held-out true parameters (`field_metrics.calibration_metrics`; `score` is minus the
energy score, a proper score of the joint posterior that needs no reference samples, so studies can
choose on held-out simulations), and, for the benchmark's own observations, C2ST against its reference
posterior samples (`c2st`): the final figures only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import DataConfig, ModelConfig, TrainConfig
from ..errors import UserError
from . import LOSS_METRICS, ProblemFamily, register
from .fields import FieldDecoder, FieldEncoder

TASK_METRICS = ("score", "energy_score", "sbc_ks", "coverage_50", "coverage_90", "dss", "diversity", "outside_prior")


class TaskFamily(ProblemFamily):
    name = "tasks"

    def bodies(self, problem: Any) -> tuple[type[nn.Module], type[nn.Module]]:
        return FieldEncoder, FieldDecoder

    def check_model(self, cfg: ModelConfig, problem: Any, where: str = "model") -> None:
        if cfg.body != "mlp":
            raise UserError(f"{where}.body {cfg.body!r}: the parameters of {problem.name!r} are a flat vector of "
                            f"{problem.x_shape[0]}, with nothing to convolve over; use body: mlp")

    def check_train(self, tc: TrainConfig, problem: Any, where: str = "train") -> None:
        if tc.w_y > 0:
            raise UserError(f"{where}.w_y {tc.w_y:g}: {problem.name!r} has a stochastic simulator and no forward map, "
                            "so there is no physics term; set w_y: 0")
        if tc.eval_refine > 0:
            raise UserError(f"{where}.eval_refine {tc.eval_refine}: refinement needs a forward map, which "
                            f"{problem.name!r} does not have; set eval_refine: 0")

    def check_data(self, d: DataConfig, problem: Any, where: str = "data") -> None:
        if d.fresh:
            raise UserError(f"{where}.fresh: {problem.name!r} is a benchmark task with a fixed simulation budget; "
                            "set fresh: false and the budget as data.simulations (1000, 10000, 100000)")
        if d.noise > 0:
            raise UserError(f"{where}.noise {d.noise:g}: {problem.name!r}'s simulator has its own noise; set noise: 0")

    def x_scale(self, problem: Any) -> float:
        return float(problem.x_scale)

    def y_scale(self, problem: Any) -> float:
        return float(problem.y_scale)

    def simulate(self, problem: Any, x: torch.Tensor, generator: torch.Generator, noise: float = 0.0) -> torch.Tensor:
        return problem.simulate(x, generator)

    def has_forward(self, problem: Any) -> bool:
        return False

    def in_support(self, problem: Any, x: torch.Tensor) -> torch.Tensor | None:
        return problem.task.in_prior(x.flatten(-len(problem.x_shape)))

    def metrics(self, problem: Any) -> tuple[str, ...]:
        return TASK_METRICS + tuple(m for m in LOSS_METRICS if m != "val_physics")  # no forward map, no physics

    def evaluate(self, problem, samples, y, truth=None, solutions=None, weights=None):  # noqa: ANN001
        from ..field_metrics import calibration_metrics

        xs = torch.as_tensor(samples).detach().double().cpu()
        m, s = xs.shape[:2]
        flat = xs.reshape(m, s, -1)
        var = flat.var(dim=1) if s > 1 else torch.zeros(m, flat.shape[-1], dtype=flat.dtype)
        out: dict[str, float] = {
            "diversity": float(torch.sqrt(2 * var.mean())),
            "outside_prior": float((~problem.task.in_prior(flat)).double().mean()),
            "n_conditions": int(m),
            "samples_per_condition": int(s),
        }
        if truth is not None:
            tr = torch.as_tensor(truth).detach().double().cpu().reshape(m, -1).numpy()
            out.update(calibration_metrics(flat.numpy(), tr, float(problem.x_scale)))
            out["score"] = -out["energy_score"]
        out.update(self.c2st_of_observations(problem, flat, y))
        return out

    def c2st_of_observations(self, problem: Any, samples: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """C2ST per benchmark observation for the given y that are the benchmark's observations (by value),
        against its 10,000 reference samples (the first S when S < 10,000 samples were given); empty when
        none of the y is one of them (a study's validation conditions)."""
        from ..benchmark_tasks import match_observations, reference_samples
        from ..c2st import FOLDS, c2st

        which = match_observations(problem.name, y)
        out: dict[str, float] = {}
        scores = []
        matched = [i for i, j in enumerate(which) if j is not None]
        if matched and samples.shape[1] < FOLDS:
            raise UserError(f"C2ST against the benchmark's reference samples needs at least {FOLDS} samples per "
                            f"observation (its {FOLDS}-fold cross-validation), got {samples.shape[1]}; "
                            "draw more (generate --samples 10000, the benchmark's)")
        if matched and not torch.isfinite(samples[matched]).all():
            raise UserError("the samples for the benchmark's observations hold NaN or inf: C2ST cannot score them")
        for i in matched:
            j = which[i]
            ref = reference_samples(problem.name, j)
            n = min(len(ref), samples.shape[1])
            out[f"c2st_observation_{j}"] = c2st(samples[i, :n], ref[:n])
            scores.append(out[f"c2st_observation_{j}"])
        if scores:
            out["c2st"] = float(np.mean(scores))
            out["c2st_std"] = float(np.std(scores))
            out["c2st_observations"] = len(scores)
            out["c2st_samples"] = int(min(samples.shape[1], 10_000))
        return out

    def figure(self, problem, y, samples, truth, title):  # noqa: ANN001
        from ..figures import task_figure

        return task_figure(problem, y, samples, truth, title)

    def declared(self, problem: Any) -> tuple:
        return ("task", problem.name, tuple(problem.x_shape), problem.n_points, problem.task.bound)


TASKS = register(TaskFamily())
