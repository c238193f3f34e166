"""The two tuned architectures, built from one config by one function.

- `cvae`: encoder q(z|x,y), decoder p(x|z,y); generation draws z from the latent's fixed prior.
- `cvae_re` (McAliley & Li 2021): recognition encoder q(z|x,y), prior network r(z|y), decoder p(x|z,y);
  the KL term is KL(q || r) and generation draws z ~ r(z|y).

Both share the same encoder and decoder code, so a study compares architectures, not implementations.
The bodies come from the problem's family (`families`: line pairs, fields), the latent's parameters,
ELBO terms and generation draws from the latent family (`latents`). The model owns its objective
(`CVAE.loss`) and holds no sampling policy (`posterior.Posterior` draws from it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .config import ModelConfig, TrainConfig
from .families import family_of
from .latents import LatentFamily, LossContext, latent_family, normal
from .layers import mlp
from .output_noise import SpikeGate, StructuredNoise

class PriorNet(nn.Module):
    """r(z | y) of the dual-encoder CVAE (and r(c | y), the component weights, for component latents); y
    divided by the family's y scale."""

    def __init__(self, cfg: ModelConfig, n_points: int, k: int, latent: LatentFamily, y_scale: float = 1.0):
        super().__init__()
        sizes = [n_points * k] + [cfg.prior_hidden] * max(cfg.prior_depth, 1)
        self.mlp = mlp(sizes, cfg.activation, cfg.batch_norm)
        self.head = latent.head(cfg.prior_hidden)
        self.y_scale = float(y_scale)

    def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.mlp(y.flatten(1) / self.y_scale))


class CVAE(nn.Module):
    """Either architecture: `prior` is None for `cvae` (the latent family's fixed prior: z ~ N(0, I),
    component weights uniform or learnt without y) and r(z|y) (and r(c|y)) for `cvae_re`. The model owns
    its objective (`loss`); drawing samples for users is `posterior.Posterior`'s."""

    def __init__(self, cfg: ModelConfig, problem: Any):
        super().__init__()
        self.cfg = cfg
        self.latent = latent_family(cfg)
        self.latent_net = self.latent.modules(cfg, problem)  # the family's own networks, if any
        self.n_points, self.k = problem.n_points, problem.k
        self.x_shape = tuple(problem.x_shape)
        family = family_of(problem)
        self.x_scale = family.x_scale(problem)
        self.x_var, self.y_var = self.x_scale**2, family.y_scale(problem) ** 2  # the loss's units
        encoder, decoder = family.bodies(problem)
        self.encoder = encoder(cfg, problem, self.latent) if self.latent.needs_encoder else None
        self.decoder = decoder(cfg, problem, self.latent)
        self.prior = PriorNet(cfg, problem.n_points, problem.k, self.latent, family.y_scale(problem)) if cfg.arch == "cvae_re" else None
        if self.prior is None and self.latent.components > 1 and cfg.component_prior == "learnt":
            self.component_logits = nn.Parameter(torch.zeros(self.latent.components))
        else:
            self.register_parameter("component_logits", None)
        # log sigma^2 of the reconstruction (decoder_scale: learnt)
        self.log_scale = nn.Parameter(torch.zeros(())) if cfg.decoder_scale == "learnt" else None
        # the decoder's full-covariance output noise, the running covariance of its residuals (structured)
        self.output_noise = StructuredNoise(math.prod(self.x_shape)) if cfg.decoder_scale == "structured" else None
        # the spike of a spike-and-slab output: P(x != 0) per value from (z, y) (spike: true)
        self.spike = (SpikeGate(self.latent.gaussian_dims, problem.n_points * problem.k, math.prod(self.x_shape), cfg.hidden,
                                cfg.decoder_depth, cfg.activation, family.y_scale(problem)) if cfg.spike else None)

    def prior_params(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generation path's latent parameters for each y: mu/logvar (Gaussian part) and logits
        (component weights before the softmax)."""
        if self.prior is not None:
            return self.prior(y)
        return self.latent.fixed_prior(y, self.component_logits)

    def component_weights(self, y: torch.Tensor) -> torch.Tensor:
        """r(c | y), (M, K): the posterior weight the model gives each hypothesis."""
        return torch.softmax(self.prior_params(y)["logits"], dim=-1)

    def reconstruction(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction term of each decoded model x_hat (..., *x_shape) against x (broadcast), per
        value of x in x-scale units, shape (...): `reconstruction_nll` of the mean squared error (with the
        structured noise, the squared error, and the noise's covariance steps toward the residuals; with the
        spike, over the values that are not 0 only, the spike's likelihood being the latent family's term)."""
        d = len(self.x_shape)
        err = x_hat - x
        if self.spike is not None:  # the slab: the decoder's value is x given x != 0
            err = err * (x != 0).to(err.dtype)
        if self.output_noise is not None and self.training and torch.is_grad_enabled():
            # structured: the noise is the running covariance of the residuals, a step toward this batch's
            self.output_noise.update(err.flatten(-d) / self.x_scale)
        return self.reconstruction_nll((err**2).flatten(-d).mean(-1) / self.x_var)

    def reconstruction_nll(self, mse: torch.Tensor) -> torch.Tensor:
        """The reconstruction term from a mean squared error: itself, or with a learnt noise scale the
        Gaussian negative log-likelihood 0.5 * (mse / sigma^2 + log sigma^2)."""
        if self.log_scale is None:
            return mse
        return 0.5 * (mse * torch.exp(-self.log_scale) + self.log_scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Recognition pass: the parameters of q (suffix _q) and r (suffix _p), and the decoded x (x_hat
        (B, *x_shape) for a Gaussian latent, every hypothesis x_all (B, K, *x_shape) for component latents,
        theta_all (B, K, D) for the `hypotheses` latent)."""
        q = self.encoder(x, y) if self.encoder is not None else {}
        return self.latent.recognise(self, x, y, q, self.prior_params(y), generator)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, problem: Any, tc: TrainConfig, beta: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training objective beta*KL + w_x*recon + w_y*physics of a batch, and its named parts.

        The physics term runs the forward problem on decoded x inside the graph and penalises the misfit to
        y, on reconstructions and on samples drawn through the generation path, so it trains the path users
        sample from (the latent family says how). `generator`: the run's own random generator."""
        ctx = LossContext(problem, tc, beta, generator, self.x_var, self.y_var, family_of(problem).has_forward(problem))
        out = self(x, y, generator)
        kl_opt, recon, physics, parts = self.latent.terms(self, out, x, y, ctx)
        if self.log_scale is not None:
            parts["decoder_sigma"] = torch.exp(0.5 * self.log_scale.detach())
        if self.output_noise is not None and not torch.is_grad_enabled() and "x_hat" in out:
            # validation: the noise's typical spread (x units) and its likelihood of the residuals (per value)
            parts["noise_sigma"] = self.output_noise.std().pow(2).mean().sqrt() * self.x_scale
            parts["noise_nll"] = self.output_noise.nll(((x - out["x_hat"]) / self.x_scale).flatten(1)).mean()
        total = beta * kl_opt + tc.w_x * recon
        if physics is not None:
            parts["physics"] = physics
            if tc.w_y > 0:
                total = total + tc.w_y * physics
        parts["loss"] = total
        return total, parts

    def draw(self, y: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples per y through the Gaussian generation path, differentiable: (M, n, *x_shape)."""
        p = self.prior_params(y)
        eps = normal((y.shape[0], n, self.latent.gaussian_dims), y, generator)
        return self.latent.decode(self, y, p, {"eps": eps})

    def decode(self, y: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """Samples (M, n, *x_shape) through the generation path for fixed draws (`LatentFamily.draws`), plus
        the structured output noise, part of every sample of such a model (`noise`, `StructuredNoise.draws`);
        the spike's gate draws (`spike`) are the latent family's to apply, as the gate reads its z."""
        x = self.latent.decode(self, y, self.prior_params(y), draws)
        if "noise" in draws and self.output_noise is not None:
            x = x + self.x_scale * self.output_noise.sample(draws["noise"]).view(x.shape)
        return x


def build_model(cfg: ModelConfig, problem: Any) -> CVAE:
    """The one place a config becomes a network: trials, retraining and loading a checkpoint all call it."""
    cfg.validate()
    family_of(problem).check_model(cfg, problem)
    return CVAE(cfg, problem)
