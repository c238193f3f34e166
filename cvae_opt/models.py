"""The two tuned architectures, built from one config by one function.

- `cvae`: encoder q(z|x,y) (x and y as input channels), decoder p(x|z,y); generation draws z ~ N(0, I).
- `cvae_re` (McAliley & Li 2021): recognition encoder q(z|x,y), prior network r(z|y), decoder p(x|z,y);
  the KL term is KL(q || r) and generation draws z ~ r(z|y).

Both share the same encoder and decoder code, so a study compares architectures, not implementations.

Latent types (`latent_type`):
- `gaussian`: z ~ N(mu, sigma) of `latent` dimensions (the notebooks' model).
- `categorical`: one of `components` (K) hypotheses. The decoder emits all K outputs for a y in one
  pass; the recognition side is q(c | x, y) (K logits from the encoder) and the ELBO is marginalised
  exactly over c (sum over the K outputs weighted by q, categorical KL), so no Gumbel noise or
  sampling of c is needed in training. p(x | y) is then a mixture of K point hypotheses, which is what
  two birds needs: each y has a dozen separate exact solutions.
- `mixed`: a component and a small Gaussian z within it (`latent` dimensions), for problems whose
  solutions form continua rather than points.
The component prior is r(c | y) for `cvae_re` (the prior network gives the weights; generation draws c
from it) and, as that architecture has no prior network, a y-independent one for `cvae`: uniform or a
learnt vector of K logits (`component_prior`).

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
from .config import DRAWS, ModelConfig, conv_length
from .data import repeat_rows
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
LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0


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


class LatentHead(nn.Module):
    """The latent's parameters from features: a Gaussian (mean, log-variance), K component logits, or
    both (mixed)."""

    def __init__(self, width: int, cfg: ModelConfig):
        super().__init__()
        self.gauss = GaussianHead(width, cfg.latent) if cfg.has_gaussian else None
        self.logits = nn.Linear(width, cfg.components) if cfg.has_components else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # checkpoints written before latent types existed hold the Gaussian head as `mu`/`logvar` directly
        for part in ("mu", "logvar"):
            for suffix in ("weight", "bias"):
                if f"{prefix}{part}.{suffix}" in state_dict:
                    state_dict[f"{prefix}gauss.{part}.{suffix}"] = state_dict.pop(f"{prefix}{part}.{suffix}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.gauss is not None:
            out["mu"], out["logvar"] = self.gauss(h)
        if self.logits is not None:
            out["logits"] = self.logits(h)
        return out


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
        self.head = LatentHead(cfg.hidden, cfg)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.convs(torch.cat([x, y], dim=-1).transpose(1, 2)).flatten(1)
        return self.head(self.mlp(torch.cat([h, y.flatten(1)], dim=1)))


class PriorNet(nn.Module):
    """r(z | y) of the dual-encoder CVAE (and r(c | y), the component weights, for component latents)."""

    def __init__(self, cfg: ModelConfig, n_points: int, k: int, y_scale: float = 1.0):
        super().__init__()
        sizes = [n_points * k] + [cfg.prior_hidden] * max(cfg.prior_depth, 1)
        self.mlp = _mlp(sizes, cfg.activation, cfg.batch_norm)
        self.head = LatentHead(cfg.prior_hidden, cfg)
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

    def __init__(self, cfg: ModelConfig, problem: Problem):
        super().__init__()
        n, k = problem.n_points, problem.k
        self.head_kind = cfg.head
        self.n_points, self.box, self.slopes = n, problem.box, problem.slopes
        self.z_dim = cfg.latent if cfg.has_gaussian else 0
        self.n_comp = cfg.components if cfg.has_components else 1
        self.one_hot = cfg.has_components and cfg.head == "signal"
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

    def __init__(self, cfg: ModelConfig, problem: AnyProblem):
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
        self.head = LatentHead(cfg.hidden, cfg)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x / self.x_scale
        h = self.body(x.unsqueeze(1) if self.conv else x).flatten(1)
        return self.head(self.mlp(torch.cat([h, y.flatten(1) / self.y_scale], dim=1)))


class FieldDecoder(nn.Module):
    """p(x | z, c, y) for a field problem: (z, y, one-hot c) through `decoder_depth` layers, then either a
    linear layer to every cell (`body: mlp`) or a coarse map upsampled by 2 per layer through
    convolutions (`body: conv`, channels reversed, one output channel), cropped to the model's shape;
    with `skip`, plus a linear map of the input. Output in the problem's units."""

    def __init__(self, cfg: ModelConfig, problem: AnyProblem):
        super().__init__()
        self.shape = tuple(problem.x_shape)
        self.x_scale, self.y_scale = float(problem.x_scale), float(problem.y_scale)
        self.z_dim = cfg.latent if cfg.has_gaussian else 0
        self.n_comp = cfg.components if cfg.has_components else 1
        self.one_hot = cfg.has_components
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
    """Either architecture: `prior` is None for `cvae` (z ~ N(0, I); component weights uniform or
    learnt without y) and r(z|y) (and r(c|y)) for `cvae_re`."""

    def __init__(self, cfg: ModelConfig, problem: AnyProblem):
        super().__init__()
        self.cfg = cfg
        self.n_points, self.k = problem.n_points, problem.k
        self.x_shape = tuple(problem.x_shape)
        exact_only = cfg.latent_type == "categorical" and cfg.recognition == "exact"
        if problem.is_lines:
            self.encoder = None if exact_only else Encoder(cfg, problem.n_points, problem.k)
            self.decoder = Decoder(cfg, problem)
        else:
            self.encoder = None if exact_only else FieldEncoder(cfg, problem)
            self.decoder = FieldDecoder(cfg, problem)
        self.prior = PriorNet(cfg, problem.n_points, problem.k, problem.y_scale) if cfg.arch == "cvae_re" else None
        if self.prior is None and cfg.has_components and cfg.component_prior == "learnt":
            self.component_logits = nn.Parameter(torch.zeros(cfg.components))
        else:
            self.register_parameter("component_logits", None)
        # log sigma^2 of the reconstruction (decoder_scale: learnt)
        self.log_scale = nn.Parameter(torch.zeros(())) if cfg.decoder_scale == "learnt" else None

    def prior_params(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generation path's latent parameters for each y: mu/logvar (Gaussian part, N(0, I) for
        cvae) and logits (component weights before the softmax)."""
        if self.prior is not None:
            return self.prior(y)
        out: dict[str, torch.Tensor] = {}
        if self.cfg.has_gaussian:
            zeros = y.new_zeros(y.shape[0], self.cfg.latent)
            out["mu"], out["logvar"] = zeros, zeros
        if self.cfg.has_components:
            logits = self.component_logits if self.component_logits is not None else y.new_zeros(self.cfg.components)
            out["logits"] = logits.unsqueeze(0).expand(y.shape[0], -1)
        return out

    def component_weights(self, y: torch.Tensor) -> torch.Tensor:
        """r(c | y), (M, K): the posterior weight the model gives each hypothesis."""
        return torch.softmax(self.prior_params(y)["logits"], dim=-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Recognition pass. Gaussian: x_hat (B, P, 2). Components: x_all (B, K, P, 2), every
        hypothesis decoded (with z ~ q(z|x,y) for mixed), and the logits of q(c|x,y) (from the encoder;
        with exact recognition the loss computes them) and r(c|y)."""
        q = self.encoder(x, y) if self.encoder is not None else {}
        if self.cfg.recognition == "exact":
            q.pop("logits", None)
        p = self.prior_params(y)
        out = {f"{k}_q": v for k, v in q.items()} | {f"{k}_p": v for k, v in p.items()}
        z = None
        if self.cfg.has_gaussian:
            z = q["mu"] + torch.randn_like(q["mu"]) * torch.exp(0.5 * q["logvar"])
        if self.cfg.has_components:
            out["x_all"] = self.decoder(z, y)
        else:
            out["x_hat"] = self.decoder(z, y)
        return out

    def draw(self, y: torch.Tensor, n: int = 1, eps: torch.Tensor | None = None) -> torch.Tensor:
        """n samples per y through the Gaussian generation path, differentiable: (M, n, n_points, 2).
        `eps` (M, n, latent) fixes the standard-normal draws."""
        p = self.prior_params(y)
        m = y.shape[0]
        if eps is None:
            eps = torch.randn(m, n, self.cfg.latent, device=y.device, dtype=y.dtype)
        z = p["mu"].unsqueeze(1) + eps.to(y) * torch.exp(0.5 * p["logvar"]).unsqueeze(1)
        return self.decoder(z.reshape(m * n, -1), repeat_rows(y, n)).view(m, n, *self.x_shape)

    def draw_all(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every hypothesis for each y through the generation path, differentiable: x (M, K, P, 2)
        (one z ~ r(z|y) per y for a mixed latent) and the log-weights log r(c|y) (M, K)."""
        p = self.prior_params(y)
        z = None
        if self.cfg.has_gaussian:
            z = p["mu"] + torch.randn_like(p["mu"]) * torch.exp(0.5 * p["logvar"])
        return self.decoder(z, y), torch.log_softmax(p["logits"], dim=-1)

    def choose_components(
        self, weights: torch.Tensor, n: int, generator: torch.Generator | None = None, draw: str = "posterior",
        temperature: float = 1.0, min_weight: float = 0.01,
    ) -> torch.Tensor:
        """Components (M, n) for n samples per y from weights (M, K), on the CPU.

        posterior: independent draws from the weights (tempered: w^T renormalised over the components of
        weight >= min_weight when T != 1; T = 1 is the model's posterior). coverage: first every distinct
        component of weight >= min_weight, heaviest first, then tempered draws among them, so n samples
        show min(n, #components) different hypotheses."""
        if draw not in DRAWS:
            raise ValueError(f"unknown draw {draw!r}; use one of {', '.join(DRAWS)}")
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        w = weights.detach().double().cpu()
        m, k = w.shape
        thr = min(min_weight, 1.0 / k)
        eligible = (w >= thr) | (w == w.max(dim=1, keepdim=True).values)
        if draw == "posterior" and temperature == 1.0:
            tempered = w
        else:
            tempered = torch.where(eligible, w.clamp_min(1e-300) ** temperature, torch.zeros_like(w))
        tempered = tempered / tempered.sum(dim=1, keepdim=True)
        picks = torch.multinomial(tempered, n, replacement=True, generator=generator)
        if draw == "posterior":
            return picks
        order = torch.argsort(w, dim=1, descending=True)
        count = eligible.sum(dim=1, keepdim=True)
        j = torch.arange(n).unsqueeze(0)
        distinct = order.gather(1, j.clamp(max=k - 1).expand(m, n))
        return torch.where(j < count, distinct, picks)

    def sample(
        self, y: torch.Tensor, n: int, eps: torch.Tensor | None = None, c: torch.Tensor | None = None,
        generator: torch.Generator | None = None, draw: str = "posterior", temperature: float = 1.0,
    ) -> torch.Tensor:
        """n samples per y through the generation path: (M, n, P, 2). `eps` (M, n, latent) fixes the
        Gaussian draws, `c` (M, n) the components (else chosen by `choose_components`)."""
        if not self.cfg.has_components:
            return self.draw(y, n, eps)
        m = y.shape[0]
        p = self.prior_params(y)
        if c is None:
            c = self.choose_components(torch.softmax(p["logits"], dim=-1), n, generator, draw, temperature)
        z = None
        if self.cfg.has_gaussian:
            if eps is None:
                eps = torch.randn(m, n, self.cfg.latent, device=y.device, dtype=y.dtype)
            z = (p["mu"].unsqueeze(1) + eps.to(y) * torch.exp(0.5 * p["logvar"]).unsqueeze(1)).reshape(m * n, -1)
        return self.decoder(z, repeat_rows(y, n), c.to(y.device).reshape(-1)).view(m, n, *self.x_shape)

    @torch.no_grad()
    def generate(
        self, y: torch.Tensor, n: int, batch: int = 8192, generator: torch.Generator | None = None,
        draw: str = "posterior", temperature: float = 1.0,
    ) -> torch.Tensor:
        """n samples for each of M given y, (M, n, n_points, 2), in batches of about `batch` samples.
        With a (CPU) generator the result does not depend on the batch size or the device. `draw` and
        `temperature`: see `choose_components`; a Gaussian latent has only its posterior."""
        if not self.cfg.has_components and (draw != "posterior" or temperature != 1.0):
            raise ValueError("coverage draws and temperatures need a categorical or mixed latent")
        was_training = self.training
        self.eval()
        try:
            y = y.to(next(self.parameters()).device, torch.float32)
            per = max(1, batch // max(n, 1))
            eps = c = None
            if generator is not None and self.cfg.has_gaussian:
                eps = torch.randn(y.shape[0], n, self.cfg.latent, generator=generator)
            if self.cfg.has_components:  # all components chosen at once: independent of the batching
                w = torch.cat([self.component_weights(y[i : i + per]).cpu() for i in range(0, y.shape[0], per)])
                c = self.choose_components(w, n, generator, draw, temperature)
            return torch.cat([
                self.sample(y[i : i + per], n, None if eps is None else eps[i : i + per],
                            None if c is None else c[i : i + per])
                for i in range(0, y.shape[0], per)
            ])
        finally:
            self.train(was_training)


def build_model(cfg: ModelConfig, problem: AnyProblem) -> CVAE:
    """The one place a config becomes a network: trials, retraining and loading a checkpoint all call it."""
    if problem.is_lines:
        cfg.validate(n_points=problem.n_points)
    else:
        cfg.validate(grid=tuple(problem.x_shape))
    return CVAE(cfg, problem)


def kl_gaussians(mu_q: torch.Tensor, lv_q: torch.Tensor, mu_p: torch.Tensor, lv_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, e^lv_q) || N(mu_p, e^lv_p)) of diagonal Gaussians, per latent dimension (sum(-1) gives
    the total; free bits needs the dimensions apart).

    0.5 * ( lv_p - lv_q + (e^lv_q + (mu_q - mu_p)^2) / e^lv_p - 1 ). With mu_p = lv_p = 0 it is the
    usual KL to N(0, I).
    """
    return 0.5 * (lv_p - lv_q + (torch.exp(lv_q) + (mu_q - mu_p) ** 2) * torch.exp(-lv_p) - 1.0)


def kl_categorical(logits_q: torch.Tensor, logits_p: torch.Tensor) -> torch.Tensor:
    """KL(q || r) of categorical distributions given by logits (..., K), summed over the K components."""
    log_q = torch.log_softmax(logits_q, dim=-1)
    return (log_q.exp() * (log_q - torch.log_softmax(logits_p, dim=-1))).sum(-1)
