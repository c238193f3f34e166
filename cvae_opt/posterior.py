"""The posterior sampler: the one place between a trained model and everyone who wants samples from it.

`Posterior(model, problem).sample(y, n, options, generator=...)` draws n models x for each measurement y:
the latent family's draws (z, and a hypothesis picked by `draw` and `temperature`) made at once on the
CPU from the caller's generator, decoded in batches on the model's device, then, as `options` ask,
refined against y and thinned to the n that fit, farthest apart (`refine`). The options are checked
once, in `SamplingOptions.check`, against the model's latent family and the problem's kind. The network
holds no sampling policy (sbi's `DirectPosterior` keeps it apart the same way).

With a seeded generator the samples depend neither on the batch size nor on the device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .config import DRAWS, MIN_WEIGHT, REFINE_METHODS, WITHINS
from .errors import UserError
from .latents import DrawSpec, sharp_weights
from .models import CVAE
from .families import family_of
from .problems import Problem, supports_forward_mode


@dataclass(frozen=True)
class SamplingOptions:
    """How samples are drawn. Raw (the default): one decoder pass each. `draw`: posterior (by the model's
    weights) or coverage (every distinct hypothesis first); `temperature`: weights^T renormalised
    (component latents); `within`: a drawn hypothesis' mean, or (spread) a draw within its learnt spread
    (the hypotheses latent); `min_weight`: the lightest hypothesis coverage and tempered draws may pick;
    `max_spread` (hypotheses latent, x units; None: no limit): hypotheses whose learnt spread is broader are
    not drawn (`latents.sharp_weights`).
    `refine_steps` > 0: that many iterations fitting each sample to its y
    (`refine_method` lm or adam, `refine_lr` Adam's step); `oversample` K: K times as many drawn, the n
    that fit, farthest apart, kept."""

    draw: str = "posterior"
    temperature: float = 1.0
    within: str = "mean"
    min_weight: float = MIN_WEIGHT
    max_spread: float | None = None
    refine_steps: int = 0
    refine_method: str = "lm"
    refine_lr: float = 0.2
    oversample: int = 1

    @property
    def mode(self) -> str:
        return "raw" if not (self.refine_steps or self.oversample > 1) else "refined"

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, model: CVAE, problem: Problem) -> None:
        """What the options, the model and the problem allow; one UserError for each mistake."""
        if self.refine_steps < 0 or self.oversample < 1:
            raise UserError(f"refine must be >= 0 and oversample >= 1 (--refine, --oversample), got "
                            f"{self.refine_steps} and {self.oversample}")
        if (self.refine_steps or self.oversample > 1) and not family_of(problem).refinable(problem):
            raise UserError(
                f"problem {problem.name!r}: refinement and oversampling (--refine, --oversample) fit line end points; "
                f"for a problem of the {family_of(problem).name} family use the raw samples (drop those options)"
            )
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserError(f"temperature must be a finite number >= 0 (--temperature), got {self.temperature}")
        if not (math.isfinite(self.min_weight) and 0 <= self.min_weight <= 1):
            raise UserError(f"min weight must be a finite number in [0, 1] (--min-weight), got {self.min_weight}")
        if self.max_spread is not None:
            if isinstance(self.max_spread, bool) or not isinstance(self.max_spread, (int, float)) or not (
                    math.isfinite(self.max_spread) and self.max_spread > 0):
                raise UserError(f"max spread must be a finite number > 0 in x units (--max-spread), got {self.max_spread}")
            if not model.latent.has_spread:
                raise UserError(f"max spread {self.max_spread:g} (--max-spread): this model's "
                                f"{model.latent.title or model.latent.name} latent has no learnt spread; it needs "
                                "model.latent_type hypotheses (drop --max-spread)")
        if not (math.isfinite(self.refine_lr) and self.refine_lr > 0):
            raise UserError(f"refine lr must be a finite number > 0 (--refine-lr), got {self.refine_lr}")
        if self.draw not in DRAWS:
            raise UserError(f"draw {self.draw!r}: use one of {', '.join(DRAWS)}")
        if self.within not in WITHINS:
            raise UserError(f"within {self.within!r}: use one of {', '.join(WITHINS)}")
        if self.within != "mean" and not model.latent.has_spread:
            raise UserError(f"within {self.within} (--within): this model's {model.latent.title or model.latent.name} latent "
                            "has no learnt spread to draw within; it needs model.latent_type hypotheses")
        if self.refine_method not in REFINE_METHODS:
            raise UserError(f"refine method {self.refine_method!r}: use one of {', '.join(REFINE_METHODS)}")
        if not model.latent.has_components and (self.draw != "posterior" or self.temperature != 1.0
                                                or self.min_weight != MIN_WEIGHT):
            raise UserError(
                f"draw {self.draw}, temperature {self.temperature:g}, min weight {self.min_weight:g}: this model has a {model.latent.title or model.latent.name} latent, "
                "which has only its posterior; coverage draws, temperatures and min weights need model.latent_type categorical, "
                "mixed or hypotheses"
            )
        if self.refine_steps and self.refine_method == "lm" and not supports_forward_mode(problem):
            raise UserError(
                f"problem {problem.name!r} does not support forward-mode differentiation, which LM refinement needs; "
                "use refine method adam (--refine-method adam)"
            )


RAW = SamplingOptions()


class Posterior:
    """p(x | y) as a trained model draws it, for one problem."""

    def __init__(self, model: CVAE, problem: Problem):
        self.model, self.problem = model, problem

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check(self, options: SamplingOptions) -> None:
        options.check(self.model, self.problem)

    def sample(
        self, y: torch.Tensor, n: int, options: SamplingOptions = RAW, *, generator: torch.Generator | None = None,
        seed: int | None = None, batch: int = 8192, to_cpu: bool = True, checked: bool = False,
    ) -> torch.Tensor:
        """n samples for each of M given y (M, P, k): (M, n, *x_shape), on the CPU (or, `to_cpu` False, the
        model's device). Random draws from `generator` (a CPU generator), else from a new one seeded with
        `seed` (default 0). `checked`: the caller has checked the options already (a trial, every epoch).

        Memory stays a small multiple of the output: the draws are made at once (a few numbers per
        sample), decoded `batch` samples at a time (a single y's samples too) into the output, and with
        refinement or oversampling the K-times pool is drawn, refined and thinned a block of y at a time
        (about POOL_BLOCK samples), never whole. The sizes are the caller's to bound (`Generator.sample`
        refuses an output past its limit before drawing)."""
        if not checked:
            self.check(options)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        spec = DrawSpec(options.draw, options.temperature, options.within, options.min_weight, options.max_spread)
        pool = n * options.oversample
        draws = self._draws(y, pool, generator, spec, batch)
        out_device = torch.device("cpu") if to_cpu else self.device
        if not (options.refine_steps or options.oversample > 1):
            x = self._decode(y, draws, pool, batch, out_device)
            return self._in_support(x, y, generator, spec, batch)
        from .refine import refine, select_diverse

        out = None
        rows = max(1, POOL_BLOCK // pool)
        for i in range(0, y.shape[0], rows):
            block = {k: v[i : i + rows] for k, v in draws.items()}
            yd = y[i : i + rows].to(self.device, torch.float32)
            x = self._decode(yd, block, pool, batch, self.device)
            if options.refine_steps:
                x = refine(self.problem, x, yd, options.refine_steps, lr=options.refine_lr, method=options.refine_method)
            if options.oversample > 1:
                x = select_diverse(self.problem, x, yd, n)
            if out is None:
                out = torch.empty((y.shape[0], *x.shape[1:]), dtype=x.dtype, device=out_device)
            out[i : i + rows] = x
            del x
        return out if out is not None else torch.empty((0, n, *self.model.x_shape), device=out_device)

    def _in_support(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, spec: DrawSpec,
                    batch: int) -> torch.Tensor:
        """Samples outside the prior's support (where the problem's family declares one) replaced by new
        draws for the same y that fall inside, as sbi's rejection does; after SUPPORT_ROUNDS rounds of n new
        draws per y, what is still outside stays (the `outside_prior` metric counts it)."""
        family = family_of(self.problem)
        inside = family.in_support(self.problem, x)
        if inside is None:
            return x
        n = x.shape[1]
        for _ in range(SUPPORT_ROUNDS):
            rows = torch.nonzero(~inside.all(dim=1)).flatten()
            if len(rows) == 0:
                break
            yr = y[rows.to(y.device)]
            extra = self._decode(yr, self._draws(yr, n, generator, spec, batch), n, batch, x.device)
            ok = family.in_support(self.problem, extra)
            for r, i in enumerate(rows.tolist()):
                slots = torch.nonzero(~inside[i]).flatten()
                good = extra[r][ok[r]][: len(slots)]
                x[i, slots[: len(good)]] = good
                inside[i, slots[: len(good)]] = True
        return x

    def _weights(self, y: torch.Tensor, spec: DrawSpec) -> torch.Tensor:
        """r(c | y) for a batch of y, without the hypotheses broader than `spec.max_spread` when it is set."""
        w = self.model.component_weights(y)
        if spec.max_spread is None:
            return w
        return sharp_weights(w, self.model.latent.spread(self.model, y), spec.max_spread)

    @torch.no_grad()
    def _draws(self, y: torch.Tensor, n: int, generator: torch.Generator, spec: DrawSpec, batch: int
               ) -> dict[str, torch.Tensor]:
        """Everything random about n samples per y, at once on the CPU (the component weights computed a
        batch of y at a time): the samples then depend neither on the batching nor on the device."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            y = y.to(self.device, torch.float32)
            per = max(1, batch // max(n, 1))
            weights = None
            if model.latent.has_components:  # all components chosen at once: independent of the batching
                weights = torch.cat([self._weights(y[i : i + per], spec).cpu() for i in range(0, y.shape[0], per)])
            draws = model.latent.draws(y, n, generator, weights, spec)
            if model.output_noise is not None:  # p(x|z,y)'s own noise, drawn after the latent's (same streams)
                draws["noise"] = model.output_noise.draws(y.shape[0], n, generator)
            if model.spike is not None:  # the spike's gate: which values are exactly 0 (same streams, after)
                draws["spike"] = model.spike.draws(y.shape[0], n, generator)
            return draws
        finally:
            model.train(was_training)

    @torch.no_grad()
    def _decode(self, y: torch.Tensor, draws: dict[str, torch.Tensor], n: int, batch: int,
                out_device: torch.device) -> torch.Tensor:
        """One decoder pass per sample, about `batch` samples a pass (several y a pass, or a slice of one
        y's samples), in eval mode, written into the output (M, n, *x_shape) on `out_device`."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            y = y.to(self.device, torch.float32)
            m = y.shape[0]
            batch = max(1, batch)
            per, cols = (max(1, batch // max(n, 1)), n) if n <= batch else (1, batch)
            out = None
            for i in range(0, m, per):
                for j in range(0, n, cols):
                    part = {k: _columns(v[i : i + per], j, cols, n) for k, v in draws.items()}
                    x = model.decode(y[i : i + per], part)
                    if out is None:
                        out = torch.empty((m, n, *x.shape[2:]), dtype=x.dtype, device=out_device)
                    out[i : i + per, j : j + cols] = x
            return out if out is not None else torch.empty((0, n, *model.x_shape), device=out_device)
        finally:
            model.train(was_training)


SUPPORT_ROUNDS = 20  # rounds of redrawing samples that fell outside the prior's support
POOL_BLOCK = 1 << 17  # samples refined and thinned at a time (the oversampled pool of a block of y)
MAX_OUTPUT_BYTES = 2 * 10**9  # Generator.sample's default limit on the samples drawn (--max-output-gb 2)


def samples_bytes(x_shape: tuple[int, ...], m: int, n: int, oversample: int = 1) -> int:
    """The bytes of M x n samples of shape x_shape as float32, times the oversampling factor (the pool
    drawn before it is thinned to n): what `Generator.sample` checks against its limit before drawing."""
    size = 4 * max(1, oversample) * m * n
    for d in x_shape:
        size *= int(d)
    return size


def check_output_size(x_shape: tuple[int, ...], m: int, n: int, oversample: int, limit: float | None) -> None:
    """Refuse, before anything is drawn, samples whose size passes `limit` bytes (None: no limit)."""
    need = samples_bytes(x_shape, m, n, oversample)
    if limit is None or need <= limit:
        return
    pool = f" x {oversample} oversampled" if oversample > 1 else ""
    size = f"{need / 1e9:,.1f} GB" if need >= 1e8 else f"{need / 1e6:,.1f} MB" if need >= 1e5 else f"{need:,} bytes"
    raise UserError(
        f"{m:,} conditions x {n:,} samples{pool} of shape {tuple(x_shape)} need about {size}, over the "
        f"limit of {limit / 1e9:g} GB; draw fewer (--samples) or raise the limit (--max-output-gb, max_output_bytes=)"
    )


def _columns(v: torch.Tensor, j: int, cols: int, n: int) -> torch.Tensor:
    """Samples j..j+cols of a draw tensor (M, n, ...); one without a samples axis is passed whole."""
    return v[:, j : j + cols] if cols < n and v.dim() >= 2 and v.shape[1] == n else v
