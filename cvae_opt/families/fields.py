"""The field family: a model of any shape (a 1D profile, a 2D grid of cells: `problems.FieldProblem`)
with a prior it draws from, a declared Gaussian noise on y, units, and optionally its exact posterior.

Networks: `FieldEncoder` / `FieldDecoder`, whose body is strided convolutions (2D for grids, 1D for
profiles) or an MLP (`body`), optionally with a linear path from (z, y) to x (`skip`). They work in the
problem's units: x divided by its prior scale, y by its noise. Metrics: `field_metrics` (chi2 per datum,
calibration, scores; against the exact posterior where known). No refinement.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from ..latents import LatentFamily
from ..layers import ACTIVATIONS, mlp, with_every_component
from . import LOSS_METRICS, ProblemFamily, family_of, register

FIELD_METRICS = ("score", "misfit_rmse", "diversity", "chi2_median", "chi2_le2", "coverage_50", "coverage_90",
                 "sbc_ks", "energy_score", "crps", "dss")
POSTERIOR_METRICS = ("mean_error", "std_ratio_p10", "std_ratio_p90", "coverage_50_constrained", "coverage_90_constrained")


def _spatial(shape: tuple[int, ...]) -> int:
    """Spatial dimensions a field's convolutions run over: 2 for a grid (nz, nx), 1 for a profile (n,)."""
    return 2 if len(shape) == 2 else 1


class FieldEncoder(nn.Module):
    """q(z | x, y) for a field problem: x (B, *x_shape) through stride-2 convolutions (each halves every
    side; `channels`, `kernels`) or flattened (`body: mlp`), then with y through `decoder_depth` layers."""

    def __init__(self, cfg: ModelConfig, problem: Any, latent: LatentFamily):
        super().__init__()
        self.shape = tuple(problem.x_shape)
        fam = family_of(problem)
        self.x_scale, self.y_scale = fam.x_scale(problem), fam.y_scale(problem)
        self.conv = cfg.body == "conv" and len(self.shape) in (1, 2)
        if self.conv:
            d = _spatial(self.shape)
            Conv, Norm = (nn.Conv2d, nn.BatchNorm2d) if d == 2 else (nn.Conv1d, nn.BatchNorm1d)
            layers: list[nn.Module] = []
            c_in = 1
            for c, ks in zip(cfg.channels, cfg.kernels):
                layers.append(Conv(c_in, c, ks, stride=2, padding=(ks - 1) // 2))
                if cfg.batch_norm:
                    layers.append(Norm(c))
                layers.append(ACTIVATIONS[cfg.activation]())
                c_in = c
            self.body = nn.Sequential(*layers)
            with torch.no_grad():
                feat = self.body(torch.zeros(1, 1, *self.shape)).numel()
        else:
            self.body = nn.Flatten(1)
            feat = math.prod(self.shape)
        sizes = [feat + problem.n_points * problem.k] + [cfg.hidden] * max(1, cfg.decoder_depth)
        self.mlp = mlp(sizes, cfg.activation, cfg.batch_norm)
        self.head = latent.head(cfg.hidden)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x / self.x_scale
        h = self.body(x.unsqueeze(1) if self.conv else x).flatten(1)
        return self.head(self.mlp(torch.cat([h, y.flatten(1) / self.y_scale], dim=1)))


class FieldDecoder(nn.Module):
    """p(x | z, c, y) for a field problem: (z, y, one-hot c) through `decoder_depth` layers, then either a
    linear layer to every cell (`body: mlp`) or a coarse map upsampled by 2 per layer through
    convolutions (`body: conv`, channels reversed, one output channel), cropped to the model's shape;
    with `skip`, plus a linear map of the input. Output in the problem's units."""

    def __init__(self, cfg: ModelConfig, problem: Any, latent: LatentFamily):
        super().__init__()
        self.shape = tuple(problem.x_shape)
        fam = family_of(problem)
        self.x_scale, self.y_scale = fam.x_scale(problem), fam.y_scale(problem)
        self.z_dim = latent.gaussian_dims
        self.n_comp = latent.components
        self.one_hot = self.n_comp > 1
        c_in = self.z_dim + problem.n_points * problem.k + (self.n_comp if self.one_hot else 0)
        self.trunk = mlp([c_in] + [cfg.hidden] * max(1, cfg.decoder_depth), cfg.activation, cfg.batch_norm)
        size = math.prod(self.shape)
        self.conv = cfg.body == "conv" and len(self.shape) in (1, 2)
        if self.conv:
            d = _spatial(self.shape)
            n_up = len(cfg.channels)
            self.coarse = tuple(math.ceil(s / 2**n_up) for s in self.shape)
            self.c_last = cfg.channels[-1]
            self.expand = nn.Sequential(nn.Linear(cfg.hidden, self.c_last * math.prod(self.coarse)), ACTIVATIONS[cfg.activation]())
            Conv = nn.Conv2d if d == 2 else nn.Conv1d
            layers: list[nn.Module] = []
            chans = list(reversed(cfg.channels[:-1])) + [cfg.channels[0]]
            c = self.c_last
            for c_out, ks in zip(chans, reversed(cfg.kernels)):
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), Conv(c, c_out, ks, padding="same"),
                           ACTIVATIONS[cfg.activation]()]
                c = c_out
            layers.append(Conv(c, 1, 1))
            self.up = nn.Sequential(*layers)
        else:
            self.out = nn.Linear(cfg.hidden, size)
        self.skip = nn.Linear(c_in, size) if cfg.skip else None

    def forward(self, z: torch.Tensor | None, y: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, *x_shape) for rows (z, y) and components c (B,), or, with components and c None, all K
        hypotheses (B, K, *x_shape)."""
        b = y.shape[0]
        yy = y.flatten(1) / self.y_scale
        inp = yy if z is None or self.z_dim == 0 else torch.cat([z, yy], dim=1)
        if self.one_hot:
            if c is None:
                return self._emit(with_every_component(inp, self.n_comp)).view(b, self.n_comp, *self.shape)
            inp = torch.cat([inp, torch.nn.functional.one_hot(c, self.n_comp).to(inp.dtype)], dim=1)
        return self._emit(inp)

    def _emit(self, inp: torch.Tensor) -> torch.Tensor:
        h = self.trunk(inp)
        if self.conv:
            g = self.up(self.expand(h).view(-1, self.c_last, *self.coarse))
            x = g[(slice(None), 0) + tuple(slice(0, s) for s in self.shape)].flatten(1)
        else:
            x = self.out(h)
        if self.skip is not None:
            x = x + self.skip(inp)
        return (x * self.x_scale).view(-1, *self.shape)


class FieldFamily(ProblemFamily):
    name = "fields"

    def bodies(self, problem: Any) -> tuple[type[nn.Module], type[nn.Module]]:
        return FieldEncoder, FieldDecoder

    def check_model(self, cfg: ModelConfig, problem: Any, where: str = "model") -> None:
        grid = tuple(problem.x_shape)
        if cfg.body == "conv" and min(grid) < 2 ** len(cfg.channels):
            raise UserError(f"{where}.channels {cfg.channels}: {len(cfg.channels)} stride-2 convolutions "
                            f"need every side of the model ({' x '.join(map(str, grid))}) to be at least "
                            f"{2 ** len(cfg.channels)} cells; use fewer layers or body: mlp")

    def probe(self, spec: str, problem: Any) -> None:
        from ..problems import check_field_problem

        check_field_problem(spec, problem)

    def metrics(self, problem: Any) -> tuple[str, ...]:
        own = FIELD_METRICS + (POSTERIOR_METRICS if getattr(problem, "posterior", None) is not None else ())
        return own + LOSS_METRICS

    def evaluate(self, problem, samples, y, truth=None, solutions=None, weights=None):
        from ..field_metrics import evaluate_field_samples

        return evaluate_field_samples(problem, samples, y, truth)

    def figure(self, problem, y, samples, truth, title):
        from ..figures import field_figure

        return field_figure(problem, y, samples, truth, title)


FIELDS = register(FieldFamily())
