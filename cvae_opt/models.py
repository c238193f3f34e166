"""The two tuned architectures, built from one config by one function.

- `cvae`: encoder q(z|x,y) (x and y as input channels), decoder p(x|z,y); generation draws z ~ N(0, I).
- `cvae_re` (McAliley & Li 2021): recognition encoder q(z|x,y), prior network r(z|y), decoder p(x|z,y);
  the KL term is KL(q || r) and generation draws z ~ r(z|y).

Both share the same encoder and decoder code, so a study compares architectures, not implementations.

The latent (`latent_type`: gaussian, categorical, mixed, or a registered family) is a
`latents.LatentFamily`: it gives the encoder's and prior network's heads, the recognition pass, the
loss terms and the generation draws; the model owns its objective (`CVAE.loss`) and holds no sampling
policy (`posterior.Posterior` draws from it).

Decoder heads (line problems): `signal` emits all n_points x 2 values through transposed convolutions
(as in the notebooks); `line` emits the four end points through a map that keeps lines straight, inside
the prior box and correctly sloped by construction.

Field problems (a grid of cells, a profile: `problems.FieldProblem`) get `FieldEncoder` and
`FieldDecoder`, whose body is strided convolutions (2D for grids, 1D for profiles) or an MLP
(`body`), optionally with a linear path from (z, y) to x (`skip`). They work in the problem's units:
x divided by its prior scale, y by its noise, so one search space serves any units.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ACTIVATIONS as ACTIVATION_NAMES
from .config import ModelConfig, TrainConfig, conv_length
from .latents import LatentFamily, LossContext, latent_family, normal
from .problems import AnyProblem, Problem, ends_from_unit, line_points

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES, "config.ACTIVATIONS names what models.ACTIVATIONS builds"


def _mlp(sizes: list[int], act: str, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers.append(nn.Linear(a, b))
        if batch_norm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """q(z | x, y): x and y stacked as channels of a 1-D sequence of n_points, unpadded convolutions,
    then the flattened features and y itself through an MLP."""

    def __init__(self, cfg: ModelConfig, problem: Problem, latent: LatentFamily):
        super().__init__()
        n_points, k = problem.n_points, problem.k
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
        self.head = latent.head(cfg.hidden)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.convs(torch.cat([x, y], dim=-1).transpose(1, 2)).flatten(1)
        return self.head(self.mlp(torch.cat([h, y.flatten(1)], dim=1)))


class PriorNet(nn.Module):
    """r(z | y) of the dual-encoder CVAE (and r(c | y), the component weights, for component latents)."""

    def __init__(self, cfg: ModelConfig, n_points: int, k: int, latent: LatentFamily, y_scale: float = 1.0):
        super().__init__()
        sizes = [n_points * k] + [cfg.prior_hidden] * max(cfg.prior_depth, 1)
        self.mlp = _mlp(sizes, cfg.activation, cfg.batch_norm)
        self.head = latent.head(cfg.prior_hidden)
        self.y_scale = float(y_scale)

    def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.mlp(y.flatten(1) / self.y_scale))


def with_every_component(inp: torch.Tensor, k: int) -> torch.Tensor:
    """Each input row once per component, the component's one-hot appended: (B, F) -> (B * K, F + K), row-major
    by input row. Decoders that take the component as an input decode all K hypotheses in one batch."""
    b = inp.shape[0]
    eye = torch.eye(k, dtype=inp.dtype, device=inp.device)
    return torch.cat([inp.unsqueeze(1).expand(b, k, inp.shape[1]), eye.unsqueeze(0).expand(b, -1, -1)], dim=2).reshape(b * k, -1)


class Decoder(nn.Module):
    """p(x | z, c, y) with a `signal` or a `line` head. With components, the line head emits the end
    points of all K hypotheses from one trunk pass (a K x 4 output layer); the signal head takes the
    component as a one-hot input, so all K are decoded as K rows of one batch."""

    def __init__(self, cfg: ModelConfig, problem: Problem, latent: LatentFamily):
        super().__init__()
        n, k = problem.n_points, problem.k
        self.head_kind = cfg.head
        self.n_points, self.box, self.slopes = n, problem.box, problem.slopes
        self.z_dim = latent.gaussian_dims
        self.n_comp = latent.components
        self.one_hot = self.n_comp > 1 and cfg.head == "signal"
        c_in = self.z_dim + n * k + (self.n_comp if self.one_hot else 0)
        self.trunk = _mlp([c_in, cfg.hidden], cfg.activation, cfg.batch_norm)
        if cfg.head == "line":
            outs = 4 * self.n_comp
            self.out = nn.Sequential(
                *_mlp([cfg.hidden] * cfg.decoder_depth, cfg.activation, cfg.batch_norm), nn.Linear(cfg.hidden, outs)
            )
        else:
            self.length = conv_length(n, cfg.kernels)
            self.c_last = cfg.channels[-1]
            self.expand = _mlp([cfg.hidden] * (cfg.decoder_depth - 1) + [self.c_last * self.length], cfg.activation, False)
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

    def forward(self, z: torch.Tensor | None, y: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """x for rows (z, y): (B, P, 2) for component c (B,) or without components, else all K
        hypotheses (B, K, P, 2)."""
        b = y.shape[0]
        inp = y.flatten(1) if z is None or self.z_dim == 0 else torch.cat([z, y.flatten(1)], dim=1)
        if self.one_hot:
            if c is None:  # all K: K rows per input row
                return self._emit(self.trunk(with_every_component(inp, self.n_comp))).view(b, self.n_comp, self.n_points, 2)
            onehot = torch.nn.functional.one_hot(c, self.n_comp).to(inp.dtype)
            return self._emit(self.trunk(torch.cat([inp, onehot], dim=1)))
        h = self.trunk(inp)
        if self.head_kind == "signal":  # no components
            return self._emit(h)
        ends = self.ends(h).view(b, self.n_comp, 4)
        if self.n_comp == 1:
            return line_points(ends[:, 0], self.n_points)
        if c is not None:
            ends = ends.gather(1, c.view(b, 1, 1).expand(b, 1, 4)).squeeze(1)
        return line_points(ends, self.n_points)

    def _emit(self, h: torch.Tensor) -> torch.Tensor:
        """The signal head: trunk features to (B, P, 2) through transposed convolutions."""
        h = self.expand(h).view(-1, self.c_last, self.length)
        return self.deconvs(h).transpose(1, 2)

    def ends(self, h: torch.Tensor) -> torch.Tensor:
        u = torch.sigmoid(self.out(h))
        return ends_from_unit(u.view(*u.shape[:-1], -1, 4), self.box, self.slopes).flatten(-2)


def _spatial(shape: tuple[int, ...]) -> int:
    """Spatial dimensions a field's convolutions run over: 2 for a grid (nz, nx), 1 for a profile (n,)."""
    return 2 if len(shape) == 2 else 1


class FieldEncoder(nn.Module):
    """q(z | x, y) for a field problem: x (B, *x_shape) through stride-2 convolutions (each halves every
    side; `channels`, `kernels`) or flattened (`body: mlp`), then with y through `decoder_depth` layers."""

    def __init__(self, cfg: ModelConfig, problem: AnyProblem, latent: LatentFamily):
        super().__init__()
        self.shape = tuple(problem.x_shape)
        self.x_scale, self.y_scale = float(problem.x_scale), float(problem.y_scale)
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
        self.mlp = _mlp(sizes, cfg.activation, cfg.batch_norm)
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

    def __init__(self, cfg: ModelConfig, problem: AnyProblem, latent: LatentFamily):
        super().__init__()
        self.shape = tuple(problem.x_shape)
        self.x_scale, self.y_scale = float(problem.x_scale), float(problem.y_scale)
        self.z_dim = latent.gaussian_dims
        self.n_comp = latent.components
        self.one_hot = self.n_comp > 1
        c_in = self.z_dim + problem.n_points * problem.k + (self.n_comp if self.one_hot else 0)
        self.trunk = _mlp([c_in] + [cfg.hidden] * max(1, cfg.decoder_depth), cfg.activation, cfg.batch_norm)
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


class CVAE(nn.Module):
    """Either architecture: `prior` is None for `cvae` (the latent family's fixed prior: z ~ N(0, I),
    component weights uniform or learnt without y) and r(z|y) (and r(c|y)) for `cvae_re`. The model owns
    its objective (`loss`); drawing samples for users is `posterior.Posterior`'s."""

    def __init__(self, cfg: ModelConfig, problem: AnyProblem):
        super().__init__()
        self.cfg = cfg
        self.latent = latent_family(cfg)
        self.n_points, self.k = problem.n_points, problem.k
        self.x_shape = tuple(problem.x_shape)
        encoder, decoder = bodies_for(problem)
        self.encoder = encoder(cfg, problem, self.latent) if self.latent.needs_encoder else None
        self.decoder = decoder(cfg, problem, self.latent)
        self.prior = PriorNet(cfg, problem.n_points, problem.k, self.latent, problem.y_scale) if cfg.arch == "cvae_re" else None
        if self.prior is None and self.latent.components > 1 and cfg.component_prior == "learnt":
            self.component_logits = nn.Parameter(torch.zeros(self.latent.components))
        else:
            self.register_parameter("component_logits", None)
        # log sigma^2 of the reconstruction (decoder_scale: learnt)
        self.log_scale = nn.Parameter(torch.zeros(())) if cfg.decoder_scale == "learnt" else None

    def prior_params(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generation path's latent parameters for each y: mu/logvar (Gaussian part) and logits
        (component weights before the softmax)."""
        if self.prior is not None:
            return self.prior(y)
        return self.latent.fixed_prior(y, self.component_logits)

    def component_weights(self, y: torch.Tensor) -> torch.Tensor:
        """r(c | y), (M, K): the posterior weight the model gives each hypothesis."""
        return torch.softmax(self.prior_params(y)["logits"], dim=-1)

    def reconstruction_nll(self, mse: torch.Tensor) -> torch.Tensor:
        """The reconstruction term from a mean squared error: itself, or with a learnt noise scale the
        Gaussian negative log-likelihood 0.5 * (mse / sigma^2 + log sigma^2)."""
        if self.log_scale is None:
            return mse
        return 0.5 * (mse * torch.exp(-self.log_scale) + self.log_scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Recognition pass: the parameters of q (suffix _q) and r (suffix _p), and the decoded x (x_hat
        (B, *x_shape) for a Gaussian latent, every hypothesis x_all (B, K, *x_shape) for component latents)."""
        q = self.encoder(x, y) if self.encoder is not None else {}
        return self.latent.recognise(self, x, y, q, self.prior_params(y), generator)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, problem: AnyProblem, tc: TrainConfig, beta: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training objective beta*KL + w_x*recon + w_y*physics of a batch, and its named parts.

        The physics term runs the forward problem on decoded x inside the graph and penalises the misfit to
        y, on reconstructions and on samples drawn through the generation path, so it trains the path users
        sample from (the latent family says how). `generator`: the run's own random generator."""
        ctx = LossContext(problem, tc, beta, generator)
        out = self(x, y, generator)
        kl_opt, recon, physics, parts = self.latent.terms(self, out, x, y, ctx)
        if self.log_scale is not None:
            parts["decoder_sigma"] = torch.exp(0.5 * self.log_scale.detach())
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
        """Samples (M, n, *x_shape) through the generation path for fixed draws (`LatentFamily.draws`)."""
        return self.latent.decode(self, y, self.prior_params(y), draws)


def bodies_for(problem: AnyProblem) -> tuple[type[nn.Module], type[nn.Module]]:
    """The encoder and decoder classes of a problem's kind."""
    return (Encoder, Decoder) if problem.is_lines else (FieldEncoder, FieldDecoder)


def build_model(cfg: ModelConfig, problem: AnyProblem) -> CVAE:
    """The one place a config becomes a network: trials, retraining and loading a checkpoint all call it."""
    if problem.is_lines:
        cfg.validate(n_points=problem.n_points)
    else:
        cfg.validate(grid=tuple(problem.x_shape))
    return CVAE(cfg, problem)
