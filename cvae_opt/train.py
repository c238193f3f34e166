"""Training loop over in-memory tensors: seeded, device-aware, one callback per epoch.

The loss is beta*KL + w_x*reconstruction + w_y*physics. The physics term runs the forward problem on
decoded x inside the graph and penalises the misfit to y, on reconstructions and on samples drawn
through the generation path (z from N(0, I) or r(z|y)), so it trains the path users sample from.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config, TrainConfig
from .data import Pairs, draw_pairs, load_data
from .devices import resolve_device
from .errors import NonFiniteLoss
from .evaluation import Evaluator
from .models import CVAE, build_model, kl_categorical, kl_gaussians
from .problems import Problem, resolve_problem

EpochCallback = Callable[[int, dict[str, float]], None]


def loss_terms(
    model: CVAE, problem: Problem, x: torch.Tensor, y: torch.Tensor, tc: TrainConfig, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training objective and its parts: beta*KL + w_x*recon + w_y*physics.

    Gaussian latent: physics = mean of the misfit on reconstructions and on `physics_samples` draws per
    y through the generation path (the reconstruction misfit alone when w_y = 0 or physics_samples = 0).
    Component latents: the ELBO is marginalised exactly over the K components (recon = sum_c q(c|x,y)
    * recon_c, KL = KL(q(c|x,y) || r(c|y)) plus the Gaussian KL of a mixed latent), and physics is the
    misfit of every hypothesis the sampler can pick, weighted by r(c|y)^T renormalised (T =
    physics_temperature; the weights are not trained by it), so each hypothesis is pulled onto the
    solution nearest to it instead of onto a hedge."""
    out = model(x, y)
    cfg = model.cfg
    # x in units of the prior's scale, y in units of the noise (1 for line problems): the physics term is
    # then chi-squared per datum, and one search space serves problems of any units
    xs2, ys2 = float(problem.x_scale) ** 2, float(problem.y_scale) ** 2
    parts: dict[str, torch.Tensor] = {}
    kl = kl_opt = x.new_zeros(())
    if cfg.has_gaussian:
        kl_dims = kl_gaussians(out["mu_q"], out["logvar_q"], out["mu_p"], out["logvar_p"])
        kl = kl_dims.sum(1).mean()
        kl_opt = torch.clamp(kl_dims.mean(0), min=tc.free_bits).sum() if tc.free_bits > 0 else kl
    def nll(mse: torch.Tensor) -> torch.Tensor:  # the reconstruction term, with a learnt noise scale if any
        if model.log_scale is None:
            return mse
        return 0.5 * (mse * torch.exp(-model.log_scale) + model.log_scale)

    if model.log_scale is not None:
        parts["decoder_sigma"] = torch.exp(0.5 * model.log_scale.detach())
    # with w_y = 0 a training step skips the physics term (no forward, no backward, and a NaN forward
    # cannot reach the loss); without gradients (validation) it is still computed, as a diagnostic
    physics_off = tc.w_y <= 0 and torch.is_grad_enabled()
    if not cfg.has_components:
        recon = nll(F.mse_loss(out["x_hat"], x) / xs2)
        parts.update(kl=kl, recon=recon)
        if physics_off:
            physics = None
        else:
            physics = F.mse_loss(problem(out["x_hat"]), y) / ys2
            parts["physics_rec"] = physics
        if tc.w_y > 0 and tc.physics_samples > 0:
            y_gen = problem(model.draw(y, tc.physics_samples))
            per_sample = ((y_gen - y.unsqueeze(1)) ** 2).mean(dim=(-1, -2)) / ys2  # (B, physics_samples)
            if tc.physics_reduce == "min":  # winner takes all: the other samples are free to cover other modes
                parts["physics_gen"] = per_sample.min(dim=1).values.mean()
            else:
                parts["physics_gen"] = per_sample.mean()
            physics = 0.5 * (physics + parts["physics_gen"])
    else:
        recon_c = nll(((out["x_all"] - x.unsqueeze(1)) ** 2).flatten(2).mean(-1) / xs2)  # (B, K)
        if cfg.recognition == "exact":  # the optimal q of this bound: the model's posterior over its hypotheses
            out["logits_q"] = torch.log_softmax(out["logits_p"], dim=-1) - tc.w_x * recon_c / max(beta, 1e-8)
        q = torch.softmax(out["logits_q"], dim=-1)  # (B, K)
        kl_c = kl_categorical(out["logits_q"], out["logits_p"]).mean()
        recon = (q * recon_c).sum(1).mean()
        parts.update(kl=kl + kl_c, kl_components=kl_c, recon=recon)
        if cfg.has_gaussian:
            parts["kl_gaussian"] = kl
        kl_opt = kl_opt + kl_c
        if physics_off:
            physics = None
        else:
            if cfg.latent_type == "mixed":
                x_gen, log_w = model.draw_all(y)
            else:
                x_gen, log_w = out["x_all"], torch.log_softmax(out["logits_p"], dim=-1)
            misfit_c = ((problem(x_gen) - y.unsqueeze(1)) ** 2).mean(dim=(-1, -2)) / ys2  # (B, K)
            w = torch.softmax(log_w.detach() * tc.physics_temperature, dim=-1)
            physics = (w * misfit_c).sum(1).mean()
            parts["physics_gen"] = physics
    total = beta * kl_opt + tc.w_x * recon
    if physics is not None:
        parts["physics"] = physics
        if tc.w_y > 0:
            total = total + tc.w_y * physics
    parts["loss"] = total
    return total, parts


@dataclass
class TrainResult:
    model: CVAE
    problem: Problem
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def last(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


@torch.no_grad()
def validation_loss(model: CVAE, problem: Problem, val: Pairs, tc: TrainConfig, beta: float, batch: int = 4096) -> dict[str, float]:
    was = model.training
    model.eval()
    sums: dict[str, float] = {}
    try:
        for i in range(0, len(val), batch):
            xb, yb = val.x[i : i + batch], val.y[i : i + batch]
            _, parts = loss_terms(model, problem, xb, yb, tc, beta)  # no_grad: physics reported even when w_y is 0
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(xb)
    finally:
        model.train(was)
    return {f"val_{k}": v / max(len(val), 1) for k, v in sums.items()}


def beta_at(tc: TrainConfig, epoch: int, step_frac: float) -> float:
    """Linear KL warm-up over the first `kl_warmup` epochs."""
    if tc.kl_warmup <= 0:
        return tc.beta
    return tc.beta * min(1.0, (epoch + step_frac) / tc.kl_warmup)


FINITE_CHECK_EVERY = 32  # steps between reads of the device-side non-finite flag (and at each epoch's end)


def _check_finite(
    first_bad: torch.Tensor, first_value: torch.Tensor, first_parts: torch.Tensor | None, names: list[str], epoch: int
) -> None:
    """Raise NonFiniteLoss naming the epoch, the first bad step and the loss parts that were bad there."""
    step = int(first_bad)  # the one sync
    if step < 0:
        return
    bad = [k for k, ok in zip(names, first_parts.tolist()) if not ok] if first_parts is not None else []
    raise NonFiniteLoss(
        f"loss became {float(first_value)} at epoch {epoch + 1}, step {step + 1} "
        f"(non-finite: {', '.join(bad) or 'total'}); lower the learning rate or enable grad_clip"
    )


def train(
    cfg: Config,
    callback: EpochCallback | None = None,
    data: tuple[Pairs, Pairs] | None = None,
    log: Callable[[str], None] | None = None,
    val_loss_every_epoch: bool = True,
) -> TrainResult:
    """Train a model from scratch as `cfg` says. `callback(epoch, metrics)` runs after every epoch
    with the validation metrics (it may raise, e.g. optuna.TrialPruned, to stop). Raises
    NonFiniteLoss, naming the epoch, step and loss part, as soon as a loss turns NaN or inf.
    With `val_loss_every_epoch` False the validation loss (val_*) is computed after the last epoch
    only: a trial whose metric does not need it saves a pass over the validation pairs per epoch."""
    cfg.validate()  # a config built in code gets the checks a loaded one had
    tc = cfg.train
    problem = resolve_problem(cfg.data.problem)
    device = resolve_device(tc.device)
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed % 2**32)
    train_pairs, val_pairs = data if data is not None else load_data(cfg.data, problem)
    train_pairs, val_pairs = train_pairs.to(device), val_pairs.to(device)
    model = build_model(cfg.model, problem).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    n = len(train_pairs)
    bs = max(1, min(tc.batch_size, n))
    steps_per_epoch = math.ceil(n / bs)
    total_steps = max(1, tc.epochs * steps_per_epoch)
    sched = None
    if tc.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    evaluator = Evaluator.for_config(tc, problem, val_pairs)
    fresh = torch.Generator(device=device).manual_seed(cfg.data.seed + 1) if cfg.data.fresh else None
    gen = torch.Generator().manual_seed(tc.seed)
    result = TrainResult(model, problem)
    t_start = time.perf_counter()
    for epoch in range(tc.epochs):
        t0 = time.perf_counter()
        model.train()
        if fresh is not None:  # new pairs from the prior every epoch, drawn on the training device
            train_pairs = draw_pairs(problem, n, fresh, cfg.data.noise)
        perm = torch.randperm(n, generator=gen).to(device)
        sums: dict[str, torch.Tensor] = {}
        first_bad = torch.full((), -1, dtype=torch.long, device=device)
        first_value = torch.zeros((), device=device)
        first_parts: torch.Tensor | None = None  # which loss parts were finite at the first bad step
        for step in range(steps_per_epoch):
            idx = perm[step * bs : (step + 1) * bs]
            beta = beta_at(tc, epoch, step / steps_per_epoch)
            loss, parts = loss_terms(model, problem, train_pairs.x[idx], train_pairs.y[idx], tc, beta)
            # the first non-finite step is recorded on the device and read every FINITE_CHECK_EVERY steps:
            # one host sync per check instead of one per step
            now = ~torch.isfinite(loss.detach()) & (first_bad < 0)
            first_bad = torch.where(now, step, first_bad)
            first_value = torch.where(now, loss.detach(), first_value)
            finite = torch.isfinite(torch.stack([v.detach() for k, v in parts.items() if k != "loss"]))  # one op
            first_parts = finite if first_parts is None else torch.where(now, finite, first_parts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            if (step + 1) % FINITE_CHECK_EVERY == 0 or step + 1 == steps_per_epoch:
                _check_finite(first_bad, first_value, first_parts, [k for k in parts if k != "loss"], epoch)
        train_seconds = time.perf_counter() - t0
        metrics: dict[str, float] = {"epoch": epoch + 1}
        metrics.update({f"train_{k}": float(v) / steps_per_epoch for k, v in sums.items()})
        if val_loss_every_epoch or epoch + 1 == tc.epochs:
            metrics.update(validation_loss(model, problem, val_pairs, tc, tc.beta))
        metrics.update(evaluator.epoch(model, tc, last=epoch + 1 == tc.epochs))
        metrics["epoch_seconds"] = train_seconds
        metrics["eval_seconds"] = time.perf_counter() - t0 - train_seconds
        result.history.append(metrics)
        if log is not None:
            elapsed = time.perf_counter() - t_start
            eta = elapsed / (epoch + 1) * (tc.epochs - epoch - 1)
            log(
                f"epoch {epoch + 1}/{tc.epochs}  loss {metrics['train_loss']:.4f}  "
                f"val score {metrics.get('score', float('nan')):.4f}  misfit {metrics.get('misfit_rmse', float('nan')):.4f}  "
                f"{train_seconds:.1f}s/epoch  elapsed {elapsed:.0f}s  ETA {eta:.0f}s"
            )
        if callback is not None:
            callback(epoch + 1, metrics)
    result.seconds = time.perf_counter() - t_start
    return result
