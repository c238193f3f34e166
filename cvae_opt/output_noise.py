"""The decoder's own output distribution for field problems (`decoder_scale: structured`).

A decoder mean alone is one model per z: the samples' spread is then all the latent's, and a latent of a
few dozen dimensions cannot carry a posterior over hundreds of cells (issue 26: the tuned gravity model
was too narrow in the data-informed directions, chi-squared 0.72 against the posterior's 0.97). Here
p(x | z, y) = N(x; decoder(z, y), W W^T + diag(d^2)), with W (D x rank) and d (D) learnt and shared by all
y, in units of the prior's scale (`x_scale`). For a linear forward problem with a Gaussian prior the
exact posterior is of this form (its covariance does not depend on y), so the decoder mean learns the
posterior mean and the noise its covariance in low rank plus diagonal; on other priors the latent keeps
what is not Gaussian. Training uses the exact negative log-likelihood (torch's
`LowRankMultivariateNormal`, Woodbury identity: O(D rank^2) a row), averaged per value like the other
reconstruction terms, so beta = 1 / D makes the loss a true ELBO. Every generated sample is the decoder
mean plus a draw of the noise (still one decoder pass).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import LowRankMultivariateNormal

LOG_DIAG_MIN, LOG_DIAG_MAX = -9.0, 2.0  # log of the diagonal's standard deviation, in x-scale units


class StructuredNoise(nn.Module):
    """N(0, W W^T + diag(d^2)) over the D values of x (in x-scale units); d starts at 1 (the prior's
    scale) and W small and random (W = 0 is a stationary point of the likelihood: its gradient in W is
    proportional to W), so training starts from a broad, nearly independent noise and learns its structure."""

    def __init__(self, dims: int, rank: int):
        super().__init__()
        self.dims, self.rank = int(dims), int(rank)
        self.factor = nn.Parameter(0.1 * torch.randn(self.dims, self.rank) / self.rank**0.5)
        self.log_diag = nn.Parameter(torch.zeros(self.dims))

    def diag_std(self) -> torch.Tensor:
        return torch.exp(self.log_diag.clamp(LOG_DIAG_MIN, LOG_DIAG_MAX))

    def covariance(self) -> torch.Tensor:
        """W W^T + diag(d^2), (D, D): the declared noise covariance (for checks and reports)."""
        return self.factor @ self.factor.T + torch.diag(self.diag_std() ** 2)

    def nll(self, residual: torch.Tensor) -> torch.Tensor:
        """-log N(residual; 0, W W^T + diag(d^2)) / D per row: residual (..., D) in x-scale units -> (...)."""
        dist = LowRankMultivariateNormal(torch.zeros_like(self.log_diag), self.factor, self.diag_std() ** 2,
                                         validate_args=False)
        return -dist.log_prob(residual) / self.dims

    def draws(self, m: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """Standard-normal numbers for n noise draws per y, (M, n, rank + D), on the CPU from `generator`."""
        return torch.randn(m, n, self.rank + self.dims, generator=generator)

    def sample(self, eps: torch.Tensor) -> torch.Tensor:
        """Noise (..., D) from standard-normal eps (..., rank + D): W eps_rank + d * eps_D."""
        eps = eps.to(self.factor)
        return eps[..., : self.rank] @ self.factor.T + self.diag_std() * eps[..., self.rank :]

    def extra_repr(self) -> str:
        return f"dims={self.dims}, rank={self.rank}"
