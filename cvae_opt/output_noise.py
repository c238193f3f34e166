"""The decoder's own output distribution for field problems: `decoder_scale: structured` (a full-covariance
Gaussian noise, `StructuredNoise`) and `spike` (values that are exactly 0 with a predicted probability,
`SpikeGate`).

A decoder mean alone is one model per z: the samples' spread is then all the latent's, and a latent of a
few dozen dimensions cannot carry a posterior over hundreds of cells (issue 26: the tuned gravity model
was too narrow in the data-informed directions, chi-squared 0.72 against the posterior's 0.97). Here
every generated sample is the decoder mean plus a draw of N(0, S + f^2 I), S one full covariance for all
y and f a small fixed floor, in units of the prior's scale (`x_scale`), still one decoder pass. For a
linear forward problem with a Gaussian prior the exact posterior is of this form (its covariance does
not depend on y): the decoder learns the posterior mean and S its covariance; on other priors the latent
keeps what is not Gaussian.

S is not a gradient parameter but the running covariance of the training residuals x - decoder(z, y)
(momentum 0.99 a step): for a Gaussian decoder whose covariance does not depend on y, that is the
maximum-likelihood covariance given the networks (EM's M-step). The networks train on the squared
error, as with the fixed scale. Both alternatives measured worse on gravity2d (docs/findings.md section
N): a covariance learnt by gradient stalled (low rank plus diagonal: twice the posterior's spread; full
precision: 0.7-0.86 of it) or diverged (full covariance), and training the mean on the likelihood under
S weights the nearly degenerate directions thousands of times more than those that matter (mean 0.18
posterior standard deviations off, against 0.06 with the squared error). Costs a D x D buffer, O(D^2) a
training row and one Cholesky factorisation per value of S: 0.26 M numbers for 16 x 32 cells, 4.2 M
for 32 x 64.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .layers import mlp

FLOOR = 0.02  # a white-noise floor on the noise's standard deviation, in x-scale units
MOMENTUM = 0.99  # of the running residual covariance, per training step (about 100 steps' residuals)


class StructuredNoise(nn.Module):
    """N(0, S + FLOOR^2 I) over the D values of x (in x-scale units), S the running covariance of the
    training residuals x - decoder(z, y) (z from the recognition pass), `update`d by the model each
    training step; S starts at the identity (independent noise of the prior's scale). The floor keeps
    the noise's likelihood bounded where the posterior is nearly degenerate (a smooth prior leaves many
    directions with almost no variance); at 2% of the prior's scale it adds 0.04% of the prior's
    variance to each value."""

    def __init__(self, dims: int):
        super().__init__()
        self.dims = int(dims)
        self.register_buffer("running_cov", torch.eye(self.dims))
        self._chol: torch.Tensor | None = None  # the factor of the current covariance, until S changes

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003
        self._chol = None
        super()._load_from_state_dict(*args, **kwargs)

    def covariance(self) -> torch.Tensor:
        """S + FLOOR^2 I, (D, D): the declared noise covariance."""
        return self.running_cov + FLOOR**2 * torch.eye(self.dims, dtype=self.running_cov.dtype, device=self.running_cov.device)

    def std(self) -> torch.Tensor:
        """The noise's standard deviation per value (D,), in x-scale units."""
        return self.covariance().diagonal().clamp_min(0).sqrt()

    def _cholesky(self) -> torch.Tensor:
        """chol(S + FLOOR^2 I), factorised once per value of S (generation calls reuse it)."""
        if self._chol is not None and self._chol.device == self.running_cov.device:
            return self._chol
        cov = self.covariance().double()
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info):  # not positive definite to double precision: symmetrise and lift by the floor again
            chol = torch.linalg.cholesky(0.5 * (cov + cov.T) + FLOOR**2 * torch.eye(self.dims, dtype=cov.dtype, device=cov.device))
        self._chol = chol.to(self.running_cov.dtype)
        return self._chol

    def update(self, residual: torch.Tensor) -> None:
        """One step of the running covariance toward a batch's residuals (..., D), in x-scale units."""
        r = residual.detach().reshape(-1, self.dims).to(self.running_cov.dtype)
        if r.shape[0] and torch.isfinite(r).all():
            self.running_cov.mul_(MOMENTUM).add_((r.T @ r) / r.shape[0], alpha=1.0 - MOMENTUM)
            self._chol = None

    def nll(self, residual: torch.Tensor) -> torch.Tensor:
        """-log N(residual; 0, S + FLOOR^2 I) / D per row: residual (..., D) in x-scale units -> (...)."""
        chol = self._cholesky()
        flat = residual.reshape(-1, self.dims)
        white = torch.linalg.solve_triangular(chol, flat.T, upper=False).T
        log_det = torch.log(chol.diagonal()).sum()
        nll = (0.5 * (white**2).sum(-1) + log_det) / self.dims + 0.5 * math.log(2 * math.pi)
        return nll.reshape(residual.shape[:-1])

    def draws(self, m: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """Standard-normal numbers for n noise draws per y, (M, n, D), on the CPU from `generator`."""
        return torch.randn(m, n, self.dims, generator=generator)

    def sample(self, eps: torch.Tensor) -> torch.Tensor:
        """Noise (..., D) from standard-normal eps (..., D): chol(S + FLOOR^2 I) eps."""
        chol = self._cholesky()
        return eps.to(chol) @ chol.T

    def extra_repr(self) -> str:
        return f"dims={self.dims}, floor={FLOOR}, momentum={MOMENTUM}"


class SpikeGate(nn.Module):
    """The spike of a spike-and-slab output (`model.spike: true`): for each value of x, the probability
    that it is not exactly 0, predicted from the decoder's input (z, y). A prior whose models are mostly
    exact zeros (the blocks prior: one to three bodies in a background of contrast 0, 89% of cells 0)
    has a posterior with an atom at 0 in every cell no body may reach; a decoder mean is continuous, so
    its samples smear that atom around 0 and cannot be calibrated there (SBC ranks the truth 0 in the
    middle of them, docs/findings.md section Z). With the gate, a sample is the decoder's value where a
    uniform draw falls below the predicted probability and exactly 0 elsewhere, still one pass.

    Training: the gate's logits by the Bernoulli likelihood of (x != 0), per value in nats, added to the
    reconstruction term; the decoder's value by the squared error on the values that are not 0 only (it is
    the slab: x given that x is not 0). With a physics term (w_y > 0) its misfit is that of the gated
    samples on average over the gate's draws (`expected_misfit`), not the slab's, which no sample is.
    Gaussian latent only (the gate reads the same z as the decoder)."""

    def __init__(self, z_dims: int, y_dims: int, x_dims: int, hidden: int, depth: int, activation: str,
                 y_scale: float = 1.0):
        super().__init__()
        self.x_dims = int(x_dims)
        self.y_scale = float(y_scale)
        self.body = mlp([z_dims + y_dims] + [hidden] * max(1, depth), activation, False)
        self.out = nn.Linear(hidden, self.x_dims)
        self._columns: tuple | None = None  # (device, dtype), ||G_i||^2 per value: `column_energy`

    def forward(self, z: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        """Logits of P(x != 0) (B, D) for rows z (B, Z) (None: no Gaussian part) and y (B, P, k)."""
        yy = y.flatten(1) / self.y_scale
        inp = yy if z is None or z.shape[-1] == 0 else torch.cat([z, yy], dim=1)
        return self.out(self.body(inp))

    @staticmethod
    def nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log P(x == 0 or not) per value, averaged over x's values: logits (B, D), x (B, *x_shape) -> (B,)."""
        target = (x.reshape(x.shape[0], -1) != 0).to(logits.dtype)
        return nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)

    def expected_misfit(self, problem: Any, slab: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                        y_var: float) -> torch.Tensor:
        """The data misfit the gated samples have on average over the gate's draws, per row, in the units of
        `latents.misfit` (mean squared error over y's values / y_var): slab (B, *x_shape), logits (B, D), y
        (B, P, k) -> (B,). A sample is m * slab with m_i ~ Bernoulli(p_i) independent, so for a linear
        forward map G, E ||G (m * slab) - y||^2 = ||G (p * slab) - y||^2 + sum_i p_i (1 - p_i) slab_i^2
        ||G_i||^2 exactly (G_i: column i): the first part fits y on average, the second is the spread the
        gate's own uncertainty puts into the data, which pushes it to decide where a value matters to y.
        Differentiable in the slab and the gate, unlike the hard draws. For a forward map that is not
        linear the columns are its Jacobian's at x = 0, an approximation."""
        p = torch.sigmoid(logits)
        flat = slab.reshape(slab.shape[0], -1)
        mean = problem((p * flat).view_as(slab))
        n_y = mean[0].numel()
        spread = (p * (1 - p) * flat**2 * self.column_energy(problem, slab)).sum(-1)
        return (((mean - y) ** 2).flatten(1).sum(-1) + spread) / (n_y * y_var)

    def column_energy(self, problem: Any, like: torch.Tensor) -> torch.Tensor:
        """||G_i||^2 for every value i of x (D,): the forward map of each unit model less that of 0, computed
        once per device and dtype (a batch of D forward passes) and kept."""
        key = (like.device, like.dtype)
        if self._columns is None or self._columns[0] != key:
            with torch.no_grad():
                shape = like.shape[1:]
                eye = torch.eye(self.x_dims, device=like.device, dtype=like.dtype).view(self.x_dims, *shape)
                g = problem(eye) - problem(torch.zeros((1, *shape), device=like.device, dtype=like.dtype))
                self._columns = (key, g.flatten(1).pow(2).sum(-1))
        return self._columns[1]

    def draws(self, m: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform numbers for n gate draws per y, (M, n, D), on the CPU from `generator`."""
        return torch.rand(m, n, self.x_dims, generator=generator)

    @staticmethod
    def keep(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Which values a sample keeps (1) or sets to exactly 0: u < sigmoid(logits), as x's dtype."""
        return (u.to(logits) < torch.sigmoid(logits)).to(logits.dtype)

    def extra_repr(self) -> str:
        return f"x_dims={self.x_dims}"
