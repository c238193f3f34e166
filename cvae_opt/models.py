"""The two tuned architectures, built from one config by one function.

- `cvae`: encoder q(z|x,y) (x and y as input channels), decoder p(x|z,y); generation draws z ~ N(0, I).
- `cvae_re` (McAliley & Li 2021): recognition encoder q(z|x,y), prior network r(z|y), decoder p(x|z,y);
  the KL term is KL(q || r) and generation draws z ~ r(z|y).

Both share the same encoder and decoder code, so a study compares architectures, not implementations.
Decoder heads: `signal` emits all n_points x 2 values through transposed convolutions (as in the
notebooks); `line` emits the four end points through a map that keeps lines straight, inside the prior
box and correctly sloped by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UserError
from .problems import Problem, ends_from_unit, line_points

ARCHS = ("cvae", "cvae_re")
HEADS = ("signal", "line")
ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0


@dataclass
class ModelConfig:
    arch: str = "cvae_re"
    latent: int = 16
    channels: list[int] = field(default_factory=lambda: [32, 64])  # one entry per conv layer
    kernels: list[int] = field(default_factory=lambda: [16, 8])
    hidden: int = 256  # encoder and decoder MLP width
    prior_hidden: int = 128  # prior network width (cvae_re)
    prior_depth: int = 2
    activation: str = "relu"
    batch_norm: bool = False
    head: str = "line"

    def validate(self, n_points: int = 50) -> None:
        if self.arch not in ARCHS:
            raise UserError(f"model.arch: unknown architecture {self.arch!r}; use one of {list(ARCHS)}")
        if self.head not in HEADS:
            raise UserError(f"model.head: unknown decoder head {self.head!r}; use one of {list(HEADS)}")
        if self.activation not in ACTIVATIONS:
            raise UserError(f"model.activation: unknown {self.activation!r}; use one of {sorted(ACTIVATIONS)}")
        if len(self.channels) != len(self.kernels) or not self.channels:
            raise UserError(
                f"model.channels {self.channels} and model.kernels {self.kernels} must be non-empty and of one length"
            )
        if min(self.channels) < 1 or min(self.kernels) < 1 or self.latent < 1 or self.hidden < 1:
            raise UserError("model: latent, hidden, channels and kernels must be positive")
        if conv_length(n_points, self.kernels) < 1:
            raise UserError(
                f"model.kernels {self.kernels} shrink {n_points} points to {conv_length(n_points, self.kernels)}; "
                f"their sizes minus one must add up to less than {n_points}"
            )


def conv_length(n_points: int, kernels: list[int]) -> int:
    """Sequence length after unpadded convolutions."""
    return n_points - sum(k - 1 for k in kernels)


def _mlp(sizes: list[int], act: str, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers.append(nn.Linear(a, b))
        if batch_norm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Mean and log-variance of a diagonal Gaussian; log-variance softly bounded so exp() stays finite."""

    def __init__(self, width: int, latent: int):
        super().__init__()
        self.mu = nn.Linear(width, latent)
        self.logvar = nn.Linear(width, latent)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lv = self.logvar(h)
        lv = LOGVAR_MIN + (LOGVAR_MAX - LOGVAR_MIN) * torch.sigmoid(lv / 4.0 + 0.4)
        return self.mu(h), lv


class Encoder(nn.Module):
    """q(z | x, y): x and y stacked as channels of a 1-D sequence of n_points, unpadded convolutions,
    then the flattened features and y itself through an MLP."""

    def __init__(self, cfg: ModelConfig, n_points: int, k: int):
        super().__init__()
        convs: list[nn.Module] = []
        c_in = 2 + k
        for c, ks in zip(cfg.channels, cfg.kernels):
            convs.append(nn.Conv1d(c_in, c, ks))
            if cfg.batch_norm:
                convs.append(nn.BatchNorm1d(c))
            convs.append(ACTIVATIONS[cfg.activation]())
            c_in = c
        self.convs = nn.Sequential(*convs)
        feat = c_in * conv_length(n_points, cfg.kernels)
        self.mlp = _mlp([feat + n_points * k, cfg.hidden], cfg.activation, cfg.batch_norm)
        self.head = GaussianHead(cfg.hidden, cfg.latent)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.convs(torch.cat([x, y], dim=-1).transpose(1, 2)).flatten(1)
        return self.head(self.mlp(torch.cat([h, y.flatten(1)], dim=1)))


class PriorNet(nn.Module):
    """r(z | y) of the dual-encoder CVAE."""

    def __init__(self, cfg: ModelConfig, n_points: int, k: int):
        super().__init__()
        sizes = [n_points * k] + [cfg.prior_hidden] * max(cfg.prior_depth, 1)
        self.mlp = _mlp(sizes, cfg.activation, cfg.batch_norm)
        self.head = GaussianHead(cfg.prior_hidden, cfg.latent)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.mlp(y.flatten(1)))


class Decoder(nn.Module):
    """p(x | z, y) with a `signal` or a `line` head."""

    def __init__(self, cfg: ModelConfig, problem: Problem):
        super().__init__()
        n, k = problem.n_points, problem.k
        self.head_kind = cfg.head
        self.n_points, self.box, self.slopes = n, problem.box, problem.slopes
        self.trunk = _mlp([cfg.latent + n * k, cfg.hidden], cfg.activation, cfg.batch_norm)
        if cfg.head == "line":
            self.out = nn.Sequential(
                *_mlp([cfg.hidden, cfg.hidden], cfg.activation, cfg.batch_norm), nn.Linear(cfg.hidden, 4)
            )
        else:
            self.length = conv_length(n, cfg.kernels)
            self.c_last = cfg.channels[-1]
            self.expand = _mlp([cfg.hidden, self.c_last * self.length], cfg.activation, False)
            layers: list[nn.Module] = []
            chans = list(reversed(cfg.channels[:-1])) + [2]
            c_in = self.c_last
            for i, (c, ks) in enumerate(zip(chans, reversed(cfg.kernels))):
                layers.append(nn.ConvTranspose1d(c_in, c, ks))
                if i < len(chans) - 1:
                    if cfg.batch_norm:
                        layers.append(nn.BatchNorm1d(c))
                    layers.append(ACTIVATIONS[cfg.activation]())
                c_in = c
            self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.trunk(torch.cat([z, y.flatten(1)], dim=1))
        if self.head_kind == "line":
            return line_points(self.ends(h), self.n_points)
        h = self.expand(h).view(-1, self.c_last, self.length)
        return self.deconvs(h).transpose(1, 2)

    def ends(self, h: torch.Tensor) -> torch.Tensor:
        return ends_from_unit(torch.sigmoid(self.out(h)), self.box, self.slopes)


class CVAE(nn.Module):
    """Either architecture: `prior` is None for `cvae` (z ~ N(0, I)) and r(z|y) for `cvae_re`."""

    def __init__(self, cfg: ModelConfig, problem: Problem):
        super().__init__()
        self.cfg = cfg
        self.n_points, self.k = problem.n_points, problem.k
        self.encoder = Encoder(cfg, problem.n_points, problem.k)
        self.prior = PriorNet(cfg, problem.n_points, problem.k) if cfg.arch == "cvae_re" else None
        self.decoder = Decoder(cfg, problem)

    def prior_params(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prior is None:
            zeros = y.new_zeros(y.shape[0], self.cfg.latent)
            return zeros, zeros
        return self.prior(y)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        mu_q, lv_q = self.encoder(x, y)
        mu_p, lv_p = self.prior_params(y)
        z = mu_q + torch.randn_like(mu_q) * torch.exp(0.5 * lv_q)
        return {"x_hat": self.decoder(z, y), "mu_q": mu_q, "logvar_q": lv_q, "mu_p": mu_p, "logvar_p": lv_p}

    def draw(self, y: torch.Tensor, n: int = 1, eps: torch.Tensor | None = None) -> torch.Tensor:
        """n samples per y through the generation path, differentiable: (M, n, n_points, 2).
        `eps` (M, n, latent) fixes the standard-normal draws."""
        mu_p, lv_p = self.prior_params(y)
        m = y.shape[0]
        if eps is None:
            eps = torch.randn(m, n, self.cfg.latent, device=y.device, dtype=y.dtype)
        z = mu_p.unsqueeze(1) + eps.to(y) * torch.exp(0.5 * lv_p).unsqueeze(1)
        y_rep = y.unsqueeze(1).expand(m, n, *y.shape[1:]).reshape(m * n, *y.shape[1:])
        return self.decoder(z.reshape(m * n, -1), y_rep).view(m, n, self.n_points, 2)

    @torch.no_grad()
    def generate(
        self, y: torch.Tensor, n: int, batch: int = 8192, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """n samples for each of M given y, (M, n, n_points, 2), in batches of about `batch` samples.
        With a (CPU) generator the result does not depend on the batch size or the device."""
        was_training = self.training
        self.eval()
        try:
            y = y.to(next(self.parameters()).device, torch.float32)
            eps = torch.randn(y.shape[0], n, self.cfg.latent, generator=generator) if generator is not None else None
            per = max(1, batch // max(n, 1))
            return torch.cat([
                self.draw(y[i : i + per], n, None if eps is None else eps[i : i + per])
                for i in range(0, y.shape[0], per)
            ])
        finally:
            self.train(was_training)


def build_model(cfg: ModelConfig, problem: Problem) -> CVAE:
    """The one place a config becomes a network: trials, retraining and loading a checkpoint all call it."""
    cfg.validate(problem.n_points)
    return CVAE(cfg, problem)


def kl_gaussians(mu_q: torch.Tensor, lv_q: torch.Tensor, mu_p: torch.Tensor, lv_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, e^lv_q) || N(mu_p, e^lv_p)) of diagonal Gaussians, per latent dimension (sum(-1) gives
    the total; free bits needs the dimensions apart).

    0.5 * ( lv_p - lv_q + (e^lv_q + (mu_q - mu_p)^2) / e^lv_p - 1 ). With mu_p = lv_p = 0 it is the
    usual KL to N(0, I).
    """
    return 0.5 * (lv_p - lv_q + (torch.exp(lv_q) + (mu_q - mu_p) ** 2) * torch.exp(-lv_p) - 1.0)
