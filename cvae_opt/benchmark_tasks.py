"""The simulation-based-inference benchmark's tasks (sbibm; Lueckmann et al., AISTATS 2021) as problems.

Each task has parameters theta (a flat vector, the model x of this suite) under a uniform prior box and a
stochastic simulator y ~ p(y | theta) (a flat vector of measurements); none is differentiable in the
sense the physics term needs, and there are no exact solutions to refine towards. The priors and
simulators are written here from the benchmark's definitions (sbibm 1.1, `sbibm/tasks/*/task.py`); in
float32 with a generator seeded as the benchmark seeded torch they draw their random numbers in its order,
so the observations of two_moons, gaussian_linear_uniform and slcp are regenerated from their stored seeds
(tests/test_benchmark_tasks.py; gaussian_mixture's were drawn another way and are checked by moments).
Training pairs are drawn through `data` (theta in float64 from the prior, y in float32). Its ten observations per task, their
true parameters and 10,000 reference posterior samples each are carried as data, unchanged, under
`cvae_opt/benchmark_data/sbibm` (MIT licence, `LICENSE` there; source commit in `SOURCE`).

- `two_moons`: theta in [-1, 1]^2; a ~ U(-pi/2, pi/2), r ~ N(0.1, 0.01^2),
  y = (r cos a + 0.25, r sin a) + (-|theta0 + theta1| / sqrt 2, (-theta0 + theta1) / sqrt 2). A bimodal,
  crescent-shaped posterior.
- `gaussian_mixture`: theta in [-10, 10]^2; y ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I).
- `gaussian_linear_uniform`: theta in [-1, 1]^10; y ~ N(theta, 0.1 I) (sbibm's `simulator_scale` 0.1
  enters as the covariance, as its code has it).
- `slcp`: theta in [-3, 3]^5; four draws of a 2D Gaussian with mean (theta0, theta1), standard deviations
  theta2^2 and theta3^2 and correlation tanh(theta4) (plus 1e-6 on the variances), y the 8 values
  (draw 1 x, draw 1 y, draw 2 x, ...). Four symmetric posterior modes (the signs of theta2, theta3).

Simulation budgets are the benchmark's 10^3, 10^4 and 10^5 (data config `simulations`, validation
included); fresh pairs every epoch are refused for these problems.
"""

from __future__ import annotations

import bz2
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import UserError

DATA_DIR = Path(__file__).resolve().parent / "benchmark_data" / "sbibm"
N_OBSERVATIONS = 10
BUDGETS = (1_000, 10_000, 100_000)

Simulator = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _normal(mean: torch.Tensor, std: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """torch.distributions.Normal(mean, std).sample() with a generator (the same draws)."""
    return torch.normal(mean, std, generator=gen)


def two_moons(theta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = theta.shape[0]
    a = -math.pi / 2 + torch.rand(n, 1, generator=gen, dtype=theta.dtype) * math.pi
    r = _normal(torch.full((n, 1), 0.1, dtype=theta.dtype), torch.full((n, 1), 0.01, dtype=theta.dtype), gen)
    p = torch.cat((torch.cos(a) * r + 0.25, torch.sin(a) * r), dim=1)
    ang = torch.tensor([-math.pi / 4.0], dtype=theta.dtype)
    c, s = torch.cos(ang), torch.sin(ang)
    z0 = (c * theta[:, 0] - s * theta[:, 1]).reshape(-1, 1)
    z1 = (s * theta[:, 0] + c * theta[:, 1]).reshape(-1, 1)
    return p + torch.cat((-torch.abs(z0), z1), dim=1)


def gaussian_mixture(theta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = theta.shape[0]
    weights = torch.tensor([0.5, 0.5]).expand(n, 2)
    idx = torch.multinomial(weights, 1, True, generator=gen)  # (n, 1), as Categorical.sample
    scale = torch.tensor([1.0, 0.1], dtype=theta.dtype)[idx]
    return _normal(theta, scale.expand_as(theta), gen)


def gaussian_linear_uniform(theta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # MultivariateNormal(theta, precision 10 I): loc + scale_tril @ eps, eps standard normal
    eps = _normal(torch.zeros_like(theta), torch.ones_like(theta), gen)
    return theta + math.sqrt(0.1) * eps


def slcp(theta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = theta.shape[0]
    m = theta[:, :2]
    s1, s2 = theta[:, 2] ** 2, theta[:, 3] ** 2
    rho = torch.tanh(theta[:, 4])
    S = torch.empty((n, 2, 2), dtype=theta.dtype)
    S[:, 0, 0] = s1**2 + 1e-6
    S[:, 0, 1] = S[:, 1, 0] = rho * s1 * s2
    S[:, 1, 1] = s2**2 + 1e-6
    L = torch.linalg.cholesky(S)  # (n, 2, 2)
    eps = _normal(torch.zeros(n, 4, 2, dtype=theta.dtype), torch.ones(n, 4, 2, dtype=theta.dtype), gen)
    return (m.unsqueeze(1) + (L.unsqueeze(1) @ eps.unsqueeze(-1)).squeeze(-1)).reshape(n, 8)


@dataclass(frozen=True)
class Task:
    """One benchmark task: its prior box, simulator and the benchmark's published budgets."""

    name: str
    display: str
    dim_theta: int
    dim_y: int
    bound: float  # the prior is uniform on [-bound, bound]^dim_theta
    simulate: Simulator

    def draw_prior(self, n: int, gen: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """n parameter vectors (n, dim_theta) from the uniform prior (as torch's Uniform draws them)."""
        u = torch.rand(n, self.dim_theta, generator=gen, dtype=dtype, device=gen.device)
        return -self.bound + u * (2 * self.bound)

    def in_prior(self, theta: torch.Tensor) -> torch.Tensor:
        """(N,) bool: theta inside the prior's box (where the prior density is not zero)."""
        return (theta.abs() <= self.bound).all(dim=-1)


TASKS: dict[str, Task] = {
    t.name: t for t in (
        Task("two_moons", "Two Moons", 2, 2, 1.0, two_moons),
        Task("gaussian_mixture", "Gaussian Mixture", 2, 2, 10.0, gaussian_mixture),
        Task("gaussian_linear_uniform", "Gaussian Linear Uniform", 10, 10, 1.0, gaussian_linear_uniform),
        Task("slcp", "SLCP", 5, 8, 3.0, slcp),
    )
}


def task_named(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown benchmark task {name!r}; use one of {', '.join(TASKS)}")
    return TASKS[name]


def _csv(path: Path) -> np.ndarray:
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rt") as fh:
            return np.loadtxt(fh, delimiter=",", skiprows=1, ndmin=2)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the benchmark's data ({type(exc).__name__}: {exc}); reinstall cvae-opt") from None


def _observation_dir(task: Task, i: int) -> Path:
    if not 1 <= i <= N_OBSERVATIONS:
        raise UserError(f"{task.name}: observation {i} does not exist; the benchmark has 1 to {N_OBSERVATIONS}")
    return DATA_DIR / task.name / f"num_observation_{i}"


@lru_cache(maxsize=8)
def observations(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark's 10 observations of a task and their true parameters: (10, dim_theta), (10, dim_y),
    float32 as stored."""
    task = task_named(name)
    theta = np.concatenate([_csv(_observation_dir(task, i) / "true_parameters.csv") for i in range(1, N_OBSERVATIONS + 1)])
    y = np.concatenate([_csv(_observation_dir(task, i) / "observation.csv") for i in range(1, N_OBSERVATIONS + 1)])
    return torch.from_numpy(theta).float(), torch.from_numpy(y).float()


OBSERVATION_TOL = 1e-5  # a given y within this of a benchmark observation (max abs) is that observation


def match_observations(name: str, y: torch.Tensor) -> list[int | None]:
    """For each given y (M, ...), the number (1-10) of the benchmark observation it is (every value within
    `OBSERVATION_TOL`), or None: which y the reference posterior samples can score."""
    _, obs = observations(name)
    yy = torch.as_tensor(y).detach().cpu().double().reshape(len(y), -1)
    best, which = torch.cdist(yy, obs.double(), p=float("inf")).min(dim=1)
    return [int(j) + 1 if float(b) <= OBSERVATION_TOL else None for b, j in zip(best, which)]


def observation_seed(name: str, i: int) -> int | None:
    """The seed the benchmark drew observation i with (None where it did not store one)."""
    path = _observation_dir(task_named(name), i) / "observation_seed.csv"
    return int(_csv(path)[0, 0]) if path.is_file() else None


@lru_cache(maxsize=4)
def reference_samples(name: str, i: int) -> torch.Tensor:
    """The benchmark's 10,000 reference posterior samples for observation i (1-10): (10000, dim_theta)."""
    task = task_named(name)
    return torch.from_numpy(_csv(_observation_dir(task, i) / "reference_posterior_samples.csv.bz2")).float()


# -- the tasks as problems of this suite ------------------------------------------------------------------
@dataclass
class TaskProblem:
    """A benchmark task as a problem (`families.tasks`): x is theta (dim_theta,), y the simulator's output
    as (dim_y, 1). There is no forward map to call: y comes from `simulate`, with its own randomness."""

    task: Task
    name: str
    x_shape: tuple[int, ...]
    n_points: int
    x_scale: float  # the prior's standard deviation per parameter: networks see theta / x_scale
    y_scale: float  # the standard deviation of y over prior simulations: networks see y / y_scale
    description: str = ""
    k: int = 1
    noise: float = 0.0  # no declared noise on y: the simulator's own randomness is the likelihood
    x_units: str = ""
    y_units: str = ""
    posterior = None

    family = "tasks"

    def draw_prior(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return self.task.draw_prior(n, generator, dtype)

    def simulate(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """y (N, dim_y, 1) for theta (N, dim_theta), drawn in float32 on the CPU from `generator`."""
        out = self.task.simulate(theta.detach().float().cpu(), generator)
        return out.reshape(theta.shape[0], self.n_points, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise UserError(f"problem {self.name!r} is a benchmark task: its simulator is stochastic and has no forward map "
                        "to differentiate (no physics term, no refinement, no data misfit)")


Y_SCALE_DRAWS = 10_000


def task_problem(name: str) -> TaskProblem:
    """The benchmark task `name` as a problem; y's scale from 10,000 prior simulations (seed 0)."""
    task = task_named(name)
    gen = torch.Generator().manual_seed(0)
    y = task.simulate(task.draw_prior(Y_SCALE_DRAWS, gen), gen)
    return TaskProblem(
        task=task, name=name, x_shape=(task.dim_theta,), n_points=task.dim_y,
        x_scale=2 * task.bound / math.sqrt(12), y_scale=float(y.std()),
        description=f"sbibm task {task.display}: {task.dim_theta} parameters in [-{task.bound:g}, {task.bound:g}], "
                    f"{task.dim_y} simulated values",
    )
