"""A toy problem family, written as a user would, outside the package: x is a pair of numbers (a, b), y is
the product a * b measured at 8 times t_j as y_j = a * b * t_j with Gaussian noise 0.05, so every y is
explained by a curve of (a, b): non-unique, like the suite's real problems. The family says everything
the suite asks of a kind of problem (bodies, scales, probe, metrics, figure). Named in a study as
`problem: toy_problem:PRODUCT`; tests/test_plugins.py runs it through the commands."""

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from cvae_opt.errors import UserError
from cvae_opt.families import LOSS_METRICS, ProblemFamily
from cvae_opt.layers import mlp, with_every_component

T = torch.linspace(0.1, 1.0, 8, dtype=torch.float64)


class ToyEncoder(nn.Module):
    def __init__(self, cfg, problem, latent):
        super().__init__()
        self.net = mlp([2 + problem.n_points, cfg.hidden, cfg.hidden], cfg.activation, False)
        self.head = latent.head(cfg.hidden)

    def forward(self, x, y):
        return self.head(self.net(torch.cat([x, y.flatten(1)], dim=1)))


class ToyDecoder(nn.Module):
    def __init__(self, cfg, problem, latent):
        super().__init__()
        self.z_dim, self.n_comp = latent.gaussian_dims, latent.components
        width = self.z_dim + problem.n_points + (self.n_comp if self.n_comp > 1 else 0)
        self.net = nn.Sequential(mlp([width, cfg.hidden, cfg.hidden], cfg.activation, False), nn.Linear(cfg.hidden, 2))

    def forward(self, z, y, c=None):
        inp = y.flatten(1) if z is None or self.z_dim == 0 else torch.cat([z, y.flatten(1)], dim=1)
        if self.n_comp > 1:
            if c is None:
                return self.net(with_every_component(inp, self.n_comp)).view(y.shape[0], self.n_comp, 2)
            inp = torch.cat([inp, torch.nn.functional.one_hot(c, self.n_comp).to(inp.dtype)], dim=1)
        return self.net(inp)


class ToyFamily(ProblemFamily):
    name = "toy_products"

    def bodies(self, problem):
        return ToyEncoder, ToyDecoder

    def probe(self, spec, problem):
        x = problem.draw_prior(3, torch.Generator().manual_seed(0), torch.float32)
        if tuple(problem(x).shape) != (3, problem.n_points, 1):
            raise UserError(f"problem {spec!r}: y must be (N, {problem.n_points}, 1)")

    def metrics(self, problem):
        return ("score", "misfit_rmse", "chi2_median", "diversity") + LOSS_METRICS

    def evaluate(self, problem, samples, y, truth=None, solutions=None, weights=None):
        samples, y = torch.as_tensor(samples).double().cpu(), torch.as_tensor(y).double().cpu()
        chi2 = (((problem(samples) - y.unsqueeze(1)) / problem.noise) ** 2).mean(dim=(-1, -2))
        return {"score": -float((chi2 - 1).abs().mean()), "chi2_median": float(chi2.median()),
                "misfit_rmse": float((chi2 * problem.noise**2).mean().sqrt()),
                "diversity": float(samples.std(dim=1).mean()) if samples.shape[1] > 1 else 0.0,
                "n_conditions": int(y.shape[0]), "samples_per_condition": int(samples.shape[1])}

    def figure(self, problem, y, samples, truth, title):
        fig, axes = plt.subplots(1, len(y), figsize=(3 * len(y), 3), squeeze=False)
        a = np.linspace(0.2, 2.0, 50)
        for i, ax in enumerate(axes[0]):
            ax.scatter(samples[i, :, 0].numpy(), samples[i, :, 1].numpy(), s=6)
            ab = float((y[i, :, 0].double() / T).mean())
            ax.plot(a, ab / a, "k--", lw=0.8)  # the curve a * b = const that explains this y
            ax.set_xlim(0, 2.2)
            ax.set_ylim(0, 2.2)
        fig.suptitle(title, fontsize=8)
        return fig


TOY = ToyFamily()


@dataclass(frozen=True, eq=False)
class ProductProblem:
    name: str = "toy_product"
    n_points: int = 8
    k: int = 1
    noise: float = 0.05
    x_scale: float = 1.0
    family = TOY
    posterior = None

    @property
    def x_shape(self):
        return (2,)

    def __call__(self, x):
        """x (..., 2) -> y (..., 8, 1): a * b * t_j."""
        return (x[..., 0] * x[..., 1])[..., None, None] * T.to(x)[:, None]

    def draw_prior(self, n, generator, dtype=torch.float64):
        return 0.2 + 1.8 * torch.rand(n, 2, generator=generator, dtype=dtype, device=generator.device)


PRODUCT = ProductProblem()
