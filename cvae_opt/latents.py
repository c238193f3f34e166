"""Latent families: what z is, how the networks parametrise it, its ELBO terms and how generation draws it.

A family is one class (`LatentFamily`), registered by its `latent_type` name. The model (`models.CVAE`)
asks its family for the latent head of the encoder and prior network, the fixed prior of the plain
`cvae`, the recognition pass, the loss terms (KL, reconstruction, physics) and, for generation, the
draws (z and component) and the decoding of those draws. Nothing outside this module tests a latent
type by name, so a new family is one subclass here or in a user's module (`register`).

- `gaussian`: z ~ N(mu, sigma) of `latent` dimensions (the notebooks' model).
- `categorical`: one of `components` (K) hypotheses. The decoder emits all K outputs for a y in one
  pass; the recognition side is q(c | x, y) (K logits from the encoder, or `recognition: exact`, the
  model's own posterior over its hypotheses) and the ELBO is marginalised exactly over c, so no Gumbel
  noise or sampling of c is needed in training. p(x | y) is a mixture of K point hypotheses.
- `mixed`: a component and a small Gaussian z within it, for solutions that form continua.
- `hypotheses`: K hypotheses, each a Gaussian whose mean the decoder and whose per-parameter scale a
  network predicts from y, trained by the exact mixture likelihood (a mixture density network inside
  the CVAE); draws take a hypothesis' mean or a draw within its spread.

Units: reconstruction errors are in units of the problem's x scale squared, physics misfits in units of
its y scale squared (`LossContext`), so one search space serves problems of any units.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .config import DRAWS, MIN_WEIGHT, ModelConfig, TrainConfig
from .data import repeat_rows
from .errors import UserError

if TYPE_CHECKING:
    from .models import CVAE

LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0


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
    """The latent's parameters from features: a Gaussian (mean, log-variance), K component logits, or both."""

    def __init__(self, width: int, gaussian: int, components: int):
        super().__init__()
        self.gauss = GaussianHead(width, gaussian) if gaussian else None
        self.logits = nn.Linear(width, components) if components > 1 else None

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


@dataclass
class LossContext:
    """What a family's loss terms need besides the batch: the problem (forward map, scales), the training
    settings, the KL weight of this step and the run's own random generator (None: torch's global one)."""

    problem: Any
    tc: TrainConfig
    beta: float
    generator: torch.Generator | None = None
    # x in units of the prior's scale, y in units of the noise (the problem family's scales, squared):
    # reconstruction errors are divided by x_var, the physics term by y_var (chi-squared per datum)
    x_var: float = 1.0
    y_var: float = 1.0
    forward: bool = True  # the problem has a forward map to measure a misfit with (not a benchmark task)

    @property
    def physics_off(self) -> bool:
        """With w_y = 0 a training step skips the physics term (no forward, no backward, and a NaN forward
        cannot reach the loss); without gradients (validation) it is still computed, as a diagnostic,
        where the problem has a forward map."""
        return not self.forward or (self.tc.w_y <= 0 and torch.is_grad_enabled())


def normal(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard-normal draws of `shape` on like's device and dtype, from `generator` (None: torch's global)."""
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def reparametrise(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + eps * sigma, sigma = exp(logvar / 2): a Gaussian draw that gradients flow through."""
    return mu + eps * torch.exp(0.5 * logvar)


def sample_gaussian(params: dict[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row from the Gaussian `params` (mu, logvar) give, the noise from `generator`."""
    return reparametrise(params["mu"], params["logvar"], normal(params["mu"].shape, params["mu"], generator))


def gaussian_kl(out: dict[str, torch.Tensor], free_bits: float) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(q || r) of the Gaussian part of a recognition pass, per batch: (as reported, as optimised with
    free bits per dimension)."""
    kl_dims = kl_gaussians(out["mu_q"], out["logvar_q"], out["mu_p"], out["logvar_p"])
    kl = kl_dims.sum(1).mean()
    return kl, (torch.clamp(kl_dims.mean(0), min=free_bits).sum() if free_bits > 0 else kl)


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


def condition_weights(logits_p: torch.Tensor, power: float) -> torch.Tensor | None:
    """Each training pair's weight (B,), mean 1 over the batch: its y's effective number of hypotheses,
    exp(H(r(c | y))), to `power` (None at 0: every pair alike). A y with many solutions (two birds' crowded
    conditions have 16 to 29) spreads its pairs over as many hypotheses, so each learns from few of them;
    weighting by y alone leaves the optimum q(x | y) = p(x | y) where it was and moves training effort
    toward those y. Not trained through (detached). Normalised per batch: a batch of crowded y alone is
    weighted as a batch of any other y."""
    if power == 0:
        return None
    log_r = torch.log_softmax(logits_p.detach().to(torch.promote_types(logits_p.dtype, torch.float32)), dim=-1)
    w = torch.exp(-power * (log_r.exp() * log_r).sum(-1))
    return w / w.mean()


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-pair values (B,), weighted when `weights` (mean 1) is given."""
    return values.mean() if weights is None else (weights * values).mean()


def misfit(problem: Any, x: torch.Tensor, y: torch.Tensor, y_var: float) -> torch.Tensor:
    """Mean squared data misfit of models x (B, S, *x_shape) to y (B, P, k) in noise units: (B, S)."""
    return ((problem(x) - y.unsqueeze(1)) ** 2).mean(dim=(-1, -2)) / y_var


@dataclass(frozen=True)
class DrawSpec:
    """How generation draws, for a family's `draws`: `draw` posterior or coverage, `temperature` of the
    component weights, `within` mean (a hypothesis' mean) or spread (a draw within its learnt scale),
    `min_weight` the lightest hypothesis coverage draws and tempered draws may pick, `max_spread` (hypotheses
    latent; None: no limit) the broadest learnt spread a drawn hypothesis may have (`sharp_weights`)."""

    draw: str = "posterior"
    temperature: float = 1.0
    within: str = "mean"
    min_weight: float = MIN_WEIGHT
    max_spread: float | None = None


def sharp_weights(weights: torch.Tensor, spread: torch.Tensor, max_spread: float) -> torch.Tensor:
    """The weights (M, K) with every hypothesis whose learnt spread (M, K; x units) exceeds `max_spread` set to
    0, renormalised: a hypothesis the model keeps broad is one it has not placed on a solution (on two birds'
    crowded conditions, a hedge between neighbouring ones: docs/findings.md section W). A y with no hypothesis
    that sharp keeps its weights as they are."""
    keep = spread <= max_spread
    masked = torch.where(keep, weights, torch.zeros_like(weights))
    total = masked.sum(dim=1, keepdim=True)
    return torch.where(total > 0, masked / total.clamp_min(1e-300), weights)


class LatentFamily:
    """One kind of latent. Subclasses set `name` and the flags, and implement `recognise`, `terms`,
    `draws` and `decode`; component families also `choose`."""

    name: ClassVar[str]
    title: ClassVar[str] = ""  # how messages name it (the name when empty)
    has_components: ClassVar[bool] = False  # draws pick one of K hypotheses (coverage draws, temperatures apply)
    has_spread: ClassVar[bool] = False  # a hypothesis has a learnt spread to draw within (`within: spread`)

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    @property
    def gaussian_dims(self) -> int:
        """Gaussian dimensions the decoder takes (0: none)."""
        return 0

    @property
    def components(self) -> int:
        """Hypotheses the decoder emits for one y (1: no component)."""
        return 1

    @property
    def needs_encoder(self) -> bool:
        """Whether recognition needs a network q(. | x, y)."""
        return True

    def modules(self, cfg: ModelConfig, problem: Any) -> nn.Module | None:
        """Networks of the family's own, beside the encoder, decoder and prior network (the model registers
        them as `latent_net`); None for most families."""
        return None

    def head(self, width: int) -> LatentHead:
        """The layer that turns `width` features into this latent's parameters (encoder, prior network)."""
        return LatentHead(width, self.gaussian_dims, self.components)

    def fixed_prior(self, y: torch.Tensor, component_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The y-independent prior of the plain `cvae`: N(0, I) and uniform or learnt component weights."""
        out: dict[str, torch.Tensor] = {}
        if self.gaussian_dims:
            zeros = y.new_zeros(y.shape[0], self.gaussian_dims)
            out["mu"], out["logvar"] = zeros, zeros
        if self.components > 1:
            logits = component_logits if component_logits is not None else y.new_zeros(self.components)
            out["logits"] = logits.unsqueeze(0).expand(y.shape[0], -1)
        return out

    def anneal(self, model: "CVAE", progress: float) -> None:
        """Set what the family schedules over a training run for `progress` in [0, 1] (the share of its
        steps taken, 1 at the last); nothing for most families."""

    def recognise(self, model: "CVAE", x: torch.Tensor, y: torch.Tensor, q: dict, p: dict,
                  generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The recognition pass: q's and r's parameters (suffixed _q, _p) and what the decoder made of x."""
        raise NotImplementedError

    def terms(self, model: "CVAE", out: dict, x: torch.Tensor, y: torch.Tensor, ctx: LossContext
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """(KL as optimised, reconstruction, physics or None, named parts) of one batch."""
        raise NotImplementedError

    def draws(self, y: torch.Tensor, n: int, generator: torch.Generator, weights: torch.Tensor | None,
              spec: DrawSpec) -> dict[str, torch.Tensor]:
        """Everything random about n samples for each of M y, drawn at once on the CPU from `generator`, so
        the samples do not depend on the batch size or the device: eps (M, n, gaussian_dims), c (M, n)."""
        raise NotImplementedError

    def decode(self, model: "CVAE", y: torch.Tensor, p: dict, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """Samples (M, n, *x_shape) through the generation path for fixed draws, differentiable."""
        raise NotImplementedError

    def choose(self, weights: torch.Tensor, n: int, generator: torch.Generator | None = None,
               draw: str = "posterior", temperature: float = 1.0, min_weight: float = MIN_WEIGHT) -> torch.Tensor:
        raise ValueError(f"a {self.name} latent has no components to choose")


class GaussianLatent(LatentFamily):
    name = "gaussian"
    title = "Gaussian"

    @property
    def gaussian_dims(self) -> int:
        return self.cfg.latent

    def recognise(self, model, x, y, q, p, generator):
        out = {f"{k}_q": v for k, v in q.items()} | {f"{k}_p": v for k, v in p.items()}
        z = sample_gaussian(q, generator)
        out["x_hat"] = model.decoder(z, y)
        if model.spike is not None:
            out["spike_logits"] = model.spike(z, y)
        return out

    def terms(self, model, out, x, y, ctx):
        tc = ctx.tc
        kl, kl_opt = gaussian_kl(out, tc.free_bits)
        recon = model.reconstruction(out["x_hat"], x).mean()
        parts = {"kl": kl, "recon": recon}
        if "spike_logits" in out:  # the spike's Bernoulli likelihood of x != 0, per value, beside the slab's
            parts["spike"] = model.spike.nll(out["spike_logits"], x).mean()
            recon = recon + parts["spike"]
        physics = None
        if not ctx.physics_off:
            if "spike_logits" in out:  # the gated samples' misfit, on average over the gate's draws
                physics = model.spike.expected_misfit(ctx.problem, out["x_hat"], out["spike_logits"], y, ctx.y_var).mean()
            else:
                physics = F.mse_loss(ctx.problem(out["x_hat"]), y) / ctx.y_var
            parts["physics_rec"] = physics
        if tc.w_y > 0 and tc.physics_samples > 0:
            if model.spike is not None:
                per_sample = self._spike_misfit_gen(model, y, tc.physics_samples, ctx)
            else:
                per_sample = misfit(ctx.problem, model.draw(y, tc.physics_samples, ctx.generator), y, ctx.y_var)
            if tc.physics_reduce == "min":  # winner takes all: the other samples are free to cover other modes
                parts["physics_gen"] = per_sample.min(dim=1).values.mean()
            else:
                parts["physics_gen"] = per_sample.mean()
            physics = 0.5 * (physics + parts["physics_gen"])
        return kl_opt, recon, physics, parts

    @staticmethod
    def _spike_misfit_gen(model, y, n, ctx) -> torch.Tensor:
        """(B, n): the expected misfit of gated samples from n draws z ~ r(z|y) each (`SpikeGate.expected_misfit`)."""
        p = model.prior_params(y)
        eps = normal((y.shape[0], n, p["mu"].shape[-1]), y, ctx.generator)
        z = reparametrise(p["mu"].unsqueeze(1), p["logvar"].unsqueeze(1), eps).reshape(y.shape[0] * n, -1)
        yr = repeat_rows(y, n)
        slab = model.decoder(z, yr)
        return model.spike.expected_misfit(ctx.problem, slab, model.spike(z, yr), yr, ctx.y_var).view(y.shape[0], n)

    def draws(self, y, n, generator, weights, spec):
        return {"eps": torch.randn(y.shape[0], n, self.gaussian_dims, generator=generator)}

    def decode(self, model, y, p, draws):
        m, n = draws["eps"].shape[:2]
        z = reparametrise(p["mu"].unsqueeze(1), p["logvar"].unsqueeze(1), draws["eps"].to(y)).reshape(m * n, -1)
        yr = repeat_rows(y, n)
        x = model.decoder(z, yr)
        if "spike" in draws and model.spike is not None:  # exactly 0 where the gate's draw says so
            x = x * model.spike.keep(model.spike(z, yr), draws["spike"].to(y).reshape(m * n, -1)).view(x.shape)
        return x.view(m, n, *model.x_shape)


class CategoricalLatent(LatentFamily):
    name = "categorical"
    has_components = True

    @property
    def components(self) -> int:
        return self.cfg.components

    @property
    def needs_encoder(self) -> bool:
        return self.cfg.recognition != "exact"

    def _gaussian_z(self, q: dict, generator: torch.Generator | None) -> torch.Tensor | None:
        return None

    def _params(self, q: dict, p: dict) -> dict[str, torch.Tensor]:
        """q's parameters (suffix _q) and r's (suffix _p); with exact recognition q's logits are the loss's."""
        if self.cfg.recognition == "exact":
            q = {k: v for k, v in q.items() if k != "logits"}
        return {f"{k}_q": v for k, v in q.items()} | {f"{k}_p": v for k, v in p.items()}

    def recognise(self, model, x, y, q, p, generator):
        out = self._params(q, p)
        out["x_all"] = model.decoder(self._gaussian_z(q, generator), y)
        return out

    def _generated(self, model, out, y, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """Every hypothesis the sampler can pick, and its log-weight log r(c|y)."""
        return out["x_all"], torch.log_softmax(out["logits_p"], dim=-1)

    def terms(self, model, out, x, y, ctx):
        tc = ctx.tc
        recon_c = self._recon_c(model, out, x, ctx)
        if self.cfg.recognition == "exact":  # the optimal q of this bound: the model's posterior over its hypotheses
            out["logits_q"] = torch.log_softmax(out["logits_p"], dim=-1) - tc.w_x * recon_c / max(ctx.beta, 1e-8)
        q = torch.softmax(out["logits_q"], dim=-1)  # (B, K)
        # training pairs weighted by their y's effective number of hypotheses (validation: plain means)
        cw = condition_weights(out["logits_p"], tc.condition_weight_power) if torch.is_grad_enabled() else None
        kl_c = weighted_mean(kl_categorical(out["logits_q"], out["logits_p"]), cw)
        kl, kl_opt, parts = self._gaussian_kl(out, tc)
        recon = weighted_mean((q * recon_c).sum(1), cw)
        parts.update(kl=kl + kl_c, kl_components=kl_c, recon=recon)
        physics = None
        if not ctx.physics_off:
            # the misfit of every hypothesis, weighted by r(c|y)^T renormalised (T = physics_temperature; the
            # weights are not trained by it), so each hypothesis is pulled onto the solution nearest to it
            x_gen, log_w = self._generated(model, out, y, ctx)
            w = torch.softmax(log_w.detach() * tc.physics_temperature, dim=-1)
            physics = weighted_mean((w * misfit(ctx.problem, x_gen, y, ctx.y_var)).sum(1), cw)
            parts["physics_gen"] = physics
        return kl_opt + kl_c, recon, physics, parts

    def _recon_c(self, model, out, x, ctx) -> torch.Tensor:
        """The reconstruction term of each hypothesis (B, K), per value in x-scale units."""
        return model.reconstruction(out["x_all"], x.unsqueeze(1))

    def _gaussian_kl(self, out, tc) -> tuple[torch.Tensor, torch.Tensor, dict]:
        zero = out["logits_p"].new_zeros(())
        return zero, zero, {}

    def choose(self, weights, n, generator=None, draw="posterior", temperature=1.0, min_weight=MIN_WEIGHT):
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

    def draws(self, y, n, generator, weights, spec):
        return {"c": self.choose(weights, n, generator, spec.draw, spec.temperature, spec.min_weight)}

    def decode(self, model, y, p, draws):
        c = draws["c"]
        m, n = c.shape
        z = None
        if "eps" in draws:
            z = reparametrise(p["mu"].unsqueeze(1), p["logvar"].unsqueeze(1), draws["eps"].to(y)).reshape(m * n, -1)
        return model.decoder(z, repeat_rows(y, n), c.to(y.device).reshape(-1)).view(m, n, *model.x_shape)


class MixedLatent(CategoricalLatent):
    name = "mixed"

    @property
    def gaussian_dims(self) -> int:
        return self.cfg.latent

    @property
    def needs_encoder(self) -> bool:
        return True  # the Gaussian part is recognised by the encoder even with exact component recognition

    def _gaussian_z(self, q, generator):
        return sample_gaussian(q, generator)

    def _gaussian_kl(self, out, tc):
        kl, kl_opt = gaussian_kl(out, tc.free_bits)
        return kl, kl_opt, {"kl_gaussian": kl}

    def _generated(self, model, out, y, ctx):
        # every hypothesis through the generation path, with one z ~ r(z|y) per y
        p = {k[:-2]: v for k, v in out.items() if k.endswith("_p")}
        return model.decoder(sample_gaussian(p, ctx.generator), y), torch.log_softmax(p["logits"], dim=-1)

    def draws(self, y, n, generator, weights, spec):
        eps = torch.randn(y.shape[0], n, self.gaussian_dims, generator=generator)  # first, as ever: same streams
        return {"eps": eps, "c": self.choose(weights, n, generator, spec.draw, spec.temperature, spec.min_weight)}


LOGSTD_MIN, LOGSTD_MAX = -9.0, 2.0  # a hypothesis' learnt log standard deviation, in x-scale units


class ScaleNet(nn.Module):
    """Each hypothesis' log standard deviation per parameter, predicted from y: (B, K, dims)."""

    def __init__(self, cfg: ModelConfig, problem: Any, components: int, dims: int, y_scale: float,
                 final_ceiling: float | None = None):
        super().__init__()
        from .layers import mlp

        sizes = [problem.n_points * problem.k] + [cfg.prior_hidden] * max(cfg.prior_depth, 1)
        self.body = mlp(sizes, cfg.activation, cfg.batch_norm)
        self.out = nn.Linear(cfg.prior_hidden, components * dims)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)  # every hypothesis starts broad (std 1 x-scale) and sharpens as it fits
        self.k, self.dims, self.y_scale = components, dims, float(y_scale)
        # the largest log std a hypothesis may keep (`model.spread_ceiling`, in x-scale units): the final
        # ceiling, which training lowers toward step by step (`HypothesesLatent.anneal`); not stored, since the
        # config gives it again when a checkpoint is loaded
        self.final_ceiling = LOGSTD_MAX if final_ceiling is None else min(max(final_ceiling, LOGSTD_MIN), LOGSTD_MAX)
        self.register_buffer("ceiling", torch.tensor(self.final_ceiling), persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        raw = self.out(self.body(y.flatten(1) / self.y_scale)).view(y.shape[0], self.k, self.dims)
        ls = raw.clamp(LOGSTD_MIN, LOGSTD_MAX)
        if self.final_ceiling >= LOGSTD_MAX:  # no ceiling below the family's own: nothing more per forward pass
            return ls
        # the ceiling passes gradients straight through: a hypothesis held at it still learns the spread it
        # would take (a hard clamp would freeze every scale from the first step, when all start at log std 0
        # and the ceiling falls below it)
        return ls - (ls - self.ceiling).clamp(min=0).detach()


class HypothesesLatent(CategoricalLatent):
    """K hypotheses, each a diagonal Gaussian over the problem family's hypothesis space (for the line head
    the four end points, else x per value) whose mean the decoder emits and whose scale `ScaleNet`
    predicts from y. The reconstruction term of hypothesis c is its exact negative log-likelihood
    -log N(theta(x); mu_c(y), diag(sigma_c(y))^2) in x-scale units, so with exact recognition, beta = 1 and
    w_x = 1 the loss is the mixture likelihood -log sum_c r(c|y) N_c: each hypothesis starts broad and
    sharpens as it finds its solution, instead of the nearest one taking all from the first step.
    Generation takes a hypothesis' mean, or (`within: spread`) a draw within its spread."""

    name = "hypotheses"
    has_spread = True

    def modules(self, cfg, problem):
        from .families import family_of

        family = family_of(problem)
        self.space = family.hypothesis_space(cfg, problem)
        self.x_scale = family.x_scale(problem)
        ceiling = math.log(cfg.spread_ceiling / self.x_scale) if cfg.spread_ceiling > 0 else None
        return ScaleNet(cfg, problem, self.components, self.space.dims, family.y_scale(problem), ceiling)

    def anneal(self, model, progress: float) -> None:
        """Lower the spread ceiling for training progress in [0, 1]: log-linearly from the hypotheses'
        initial spread (log std 0, one x-scale) to the final ceiling, reached at the last step; a no-op
        without `spread_ceiling`."""
        net = model.latent_net
        if net.final_ceiling < 0:  # below the initial spread: lowered over the run
            net.ceiling.fill_(min(max(float(progress), 0.0), 1.0) * net.final_ceiling)

    def recognise(self, model, x, y, q, p, generator):
        # every hypothesis' mean in theta (B, K, D): for the line head its end points, no lines built
        out = self._params(q, p)
        out["theta_all"] = self.space.theta_all(model.decoder, self._gaussian_z(q, generator), y)
        out["logstd_all"] = model.latent_net(y)
        return out

    def _generated(self, model, out, y, ctx):
        return self.space.from_theta(out["theta_all"]), torch.log_softmax(out["logits_p"], dim=-1)

    def _recon_c(self, model, out, x, ctx):
        theta = self.space.to_theta(x).unsqueeze(1) / self.x_scale  # (B, 1, D)
        mu = out["theta_all"] / self.x_scale  # (B, K, D)
        ls = out["logstd_all"]
        return (0.5 * ((theta - mu) * torch.exp(-ls)) ** 2 + ls + 0.5 * math.log(2 * math.pi)).sum(-1)

    def terms(self, model, out, x, y, ctx):
        kl_opt, recon, physics, parts = super().terms(model, out, x, y, ctx)
        parts["hypothesis_sigma"] = torch.exp(out["logstd_all"].detach()).mean() * self.x_scale
        return kl_opt, recon, physics, parts

    def spread(self, model, y: torch.Tensor) -> torch.Tensor:
        """Each hypothesis' learnt spread for each y, (M, K) in x units: its largest standard deviation over
        the hypothesis space (for the line head, over the four end points)."""
        return torch.exp(model.latent_net(y)).amax(dim=-1) * self.x_scale

    def draws(self, y, n, generator, weights, spec):
        out = super().draws(y, n, generator, weights, spec)
        if spec.within == "spread":
            out["within"] = torch.randn(y.shape[0], n, self.space.dims, generator=generator)
        return out

    def decode(self, model, y, p, draws):
        x = super().decode(model, y, p, {"c": draws["c"]})
        if "within" not in draws:
            return x
        c = draws["c"].to(y.device)
        m, n = c.shape
        ls = model.latent_net(y).gather(1, c.unsqueeze(-1).expand(m, n, self.space.dims))  # (M, n, D)
        theta = self.space.to_theta(x) + torch.exp(ls) * draws["within"].to(x) * self.x_scale
        return self.space.from_theta(theta)


FAMILIES: dict[str, type[LatentFamily]] = {}


def register(family: type[LatentFamily]) -> type[LatentFamily]:
    """Make a latent family available as `model.latent_type: NAME` (built-in or a user's class)."""
    FAMILIES[family.name] = family
    return family


for _family in (GaussianLatent, CategoricalLatent, MixedLatent, HypothesesLatent):
    register(_family)


def check_stored_latent(stored: str, given: str | None, where: str) -> None:
    """A `model.latent_type` read from a file (a checkpoint's config): a registered name, or an import path
    the user gives too (`given`: --latent-type, latent_type=); see `problems.check_stored_spec`."""
    from .problems import check_stored_spec

    check_stored_spec(stored, given, builtin=stored in FAMILIES, what="model.latent_type", where=where,
                      option="--latent-type", keyword="latent_type")


def latent_family(cfg: ModelConfig) -> LatentFamily:
    """The family `cfg.latent_type` names (a registered name or 'package.module:Class'), built for this config."""
    name = cfg.latent_type
    if name in FAMILIES:
        return FAMILIES[name](cfg)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            family = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:
            raise UserError(f"model.latent_type {name!r}: cannot load it ({type(exc).__name__}: {exc})") from None
        if not (isinstance(family, type) and issubclass(family, LatentFamily)):
            raise UserError(f"model.latent_type {name!r} is not a cvae_opt.latents.LatentFamily subclass")
        return family(cfg)
    raise UserError(f"model.latent_type: unknown {name!r}; use one of {', '.join(FAMILIES)} or 'package.module:Class'")
