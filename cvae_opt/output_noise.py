"""The decoder's own output distribution for field problems (`decoder_scale: structured`).

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

import torch
from torch import nn

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
