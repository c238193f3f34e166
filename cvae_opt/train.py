"""The training loop: a `Training` run yields each epoch's metrics, so a caller (the Optuna objective,
`train`, a scheduler running several trials in one process) reports and stops in its own loop.

Every run owns its random generators (model initialisation, the latent noise of the loss, the batch
order, fresh pairs, the evaluation draws) and touches no global seed, so two runs interleaved in one
process give the results each gives alone. The loss is the model's (`CVAE.loss`).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .config import Config, TrainConfig
from .data import Pairs, draw_pairs, load_data
from .devices import resolve_device, resolve_precision
from .errors import NonFiniteLoss
from .families import family_of
from .epoch_metrics import Evaluator
from .layers import body_precision
from .models import CVAE, build_model
from .problems import Problem, resolve_problem

EpochCallback = Callable[[int, dict[str, float]], None]


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
def validation_loss(
    model: CVAE, problem: Problem, val: Pairs, tc: TrainConfig, beta: float, batch: int = 4096,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    was = model.training
    model.eval()
    sums: dict[str, float] = {}
    try:
        for i in range(0, len(val), batch):
            xb, yb = val.x[i : i + batch], val.y[i : i + batch]
            _, parts = model.loss(xb, yb, problem, tc, beta, generator)  # no_grad: physics reported even when w_y is 0
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


_INIT_LOCK = threading.Lock()


def init_model(cfg: Config, problem: Problem, device: torch.device) -> tuple[CVAE, torch.Generator]:
    """The model as seed `cfg.train.seed` initialises it, and the run's generator for the latent noise of
    the loss on `device`. torch's layers initialise from its global generator: that is forked and seeded
    under a lock for the construction alone, so no other run's draws are disturbed; on the CPU the
    noise generator goes on from the state initialisation left, as one seeded stream would."""
    seed = cfg.train.seed
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg.model, problem)
        state = torch.get_rng_state()
    if device.type == "cpu":
        noise = torch.Generator()
        noise.set_state(state)
    else:
        noise = torch.Generator(device=device).manual_seed(seed)
    return model.to(device), noise


class Training:
    """One training run from scratch as `cfg` says: `epochs()` yields each epoch's metrics; `result()`
    the model and history so far. Raises NonFiniteLoss, naming the epoch, step and loss part, as soon as a
    loss turns NaN or inf. With `val_loss_every_epoch` False the validation loss (val_*) is computed after
    the last epoch only: a trial whose metric does not need it saves a pass over the validation pairs."""

    def __init__(
        self, cfg: Config, data: tuple[Pairs, Pairs] | None = None, log: Callable[[str], None] | None = None,
        val_loss_every_epoch: bool = True,
    ):
        cfg.validate()  # a config built in code gets the checks a loaded one had
        self.cfg, self.log, self.val_loss_every_epoch = cfg, log, val_loss_every_epoch
        tc = cfg.train
        self.problem = resolve_problem(cfg.data.problem)
        family_of(self.problem).check_train(tc, self.problem)
        self.device = resolve_device(tc.device)
        self.precision = resolve_precision(tc.precision, self.device)  # what the bodies multiply in
        self.body_dtype = torch.bfloat16 if self.precision == "bf16" else None
        train_pairs, val_pairs = data if data is not None else load_data(cfg.data, self.problem)
        self.train_pairs, self.val_pairs = train_pairs.to(self.device), val_pairs.to(self.device)
        self.model, self.noise = init_model(cfg, self.problem, self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.n = len(self.train_pairs)
        self.batch = max(1, min(tc.batch_size, self.n))
        self.steps_per_epoch = math.ceil(self.n / self.batch)
        self.sched = None
        if tc.lr_schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, tc.epochs * self.steps_per_epoch))
        self.evaluator = Evaluator.for_config(tc, self.problem, self.val_pairs)
        self.fresh = torch.Generator(device=self.device).manual_seed(cfg.data.seed + 1) if cfg.data.fresh else None
        self.order = torch.Generator().manual_seed(tc.seed)  # the batch order
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0
        self._eval_seconds, self._since_eval = 0.0, 0.0  # the last validation's cost, training since it
        self._last_val: dict[str, float] | None = None  # the latest epoch's metrics that include validation

    def _validate_now(self, epoch: int, last: bool) -> bool:
        """Every epoch, or with `eval_overhead` only once the training since the last validation is at least
        that validation's cost over the share (and always at the first and last epoch)."""
        share = self.cfg.train.eval_overhead
        return share == 0 or last or epoch == 0 or self._since_eval * share >= self._eval_seconds

    def _val_noise(self) -> torch.Generator:
        """The same draws for every validation loss, apart from the training's: how often a run validates
        changes nothing it trains (a trial, validating only at its end, and its retrain train alike)."""
        return torch.Generator(device=self.device).manual_seed(self.cfg.train.seed + 11)

    def _val_text(self, metrics: dict[str, float]) -> str:
        """The latest validation figures for a progress line, marked with their epoch when not this one's
        (with `eval_overhead` most epochs do not validate)."""
        val = self._last_val
        if val is None:
            return "val -"
        when = "" if val is metrics else f" (epoch {int(val['epoch'])})"
        text = f"val{when} score {val['score']:.4f}"
        if "misfit_rmse" in val:
            text += f"  misfit {val['misfit_rmse']:.4f}"
        if "mode_precision" in val:
            text += f"  modes P {val['mode_precision']:.3f} R {val['mode_recall']:.3f}"
        return text

    def result(self) -> TrainResult:
        return TrainResult(self.model, self.problem, list(self.history), self.seconds)

    def epochs(self) -> Iterator[dict[str, float]]:
        """Train epoch by epoch, yielding each epoch's metrics (losses, validation metrics, seconds)."""
        tc = self.cfg.train
        for epoch in range(len(self.history), tc.epochs):
            t0 = time.perf_counter()
            sums = self._epoch(epoch)
            train_seconds = time.perf_counter() - t0
            self._since_eval += train_seconds
            metrics: dict[str, float] = {"epoch": epoch + 1}
            metrics.update({f"train_{k}": float(v) / self.steps_per_epoch for k, v in sums.items()})
            last = epoch + 1 == tc.epochs
            if self._validate_now(epoch, last):
                if self.val_loss_every_epoch or last:
                    metrics.update(validation_loss(self.model, self.problem, self.val_pairs, tc, tc.beta,
                                                   generator=self._val_noise()))
                metrics.update(self.evaluator.epoch(self.model, tc, last=last))
                self._eval_seconds, self._since_eval = time.perf_counter() - t0 - train_seconds, 0.0
            metrics["epoch_seconds"] = train_seconds
            metrics["eval_seconds"] = time.perf_counter() - t0 - train_seconds
            self.seconds += time.perf_counter() - t0
            self.history.append(metrics)
            if "score" in metrics:
                self._last_val = metrics
            if self.log is not None:
                eta = self.seconds / (epoch + 1) * (tc.epochs - epoch - 1)
                self.log(f"epoch {epoch + 1}/{tc.epochs}  loss {metrics['train_loss']:.4f}  {self._val_text(metrics)}  "
                         f"{train_seconds:.1f}s/epoch  elapsed {self.seconds:.0f}s  ETA {eta:.0f}s")
            yield metrics

    def _epoch(self, epoch: int) -> dict[str, torch.Tensor]:
        """One pass over the training pairs; the summed loss parts."""
        tc, model, device, bs = self.cfg.train, self.model, self.device, self.batch
        model.train()
        if self.fresh is not None:  # new pairs from the prior every epoch, drawn on the training device
            self.train_pairs = draw_pairs(self.problem, self.n, self.fresh, self.cfg.data.noise)
        pairs = self.train_pairs
        perm = torch.randperm(self.n, generator=self.order).to(device)
        sums: dict[str, torch.Tensor] = {}
        first_bad = torch.full((), -1, dtype=torch.long, device=device)
        first_value = torch.zeros((), device=device)
        first_parts: torch.Tensor | None = None  # which loss parts were finite at the first bad step
        for step in range(self.steps_per_epoch):
            idx = perm[step * bs : (step + 1) * bs]
            beta = beta_at(tc, epoch, step / self.steps_per_epoch)
            # the latent family's schedule (the hypotheses' spread ceiling), at its final value on the last step
            model.latent.anneal(model, (epoch * self.steps_per_epoch + step + 1) / (tc.epochs * self.steps_per_epoch))
            with body_precision(self.body_dtype):
                loss, parts = model.loss(pairs.x[idx], pairs.y[idx], self.problem, tc, beta, self.noise)
            # the first non-finite step is recorded on the device and read every FINITE_CHECK_EVERY steps:
            # one host sync per check instead of one per step
            now = ~torch.isfinite(loss.detach()) & (first_bad < 0)
            first_bad = torch.where(now, step, first_bad)
            first_value = torch.where(now, loss.detach(), first_value)
            finite = torch.isfinite(torch.stack([v.detach() for k, v in parts.items() if k != "loss"]))  # one op
            first_parts = finite if first_parts is None else torch.where(now, finite, first_parts)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            self.opt.step()
            if self.sched is not None:
                self.sched.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            if (step + 1) % FINITE_CHECK_EVERY == 0 or step + 1 == self.steps_per_epoch:
                _check_finite(first_bad, first_value, first_parts, [k for k in parts if k != "loss"], epoch)
        return sums


def seconds_per_epoch(cfg: Config, data: tuple[Pairs, Pairs] | None = None, epochs: int = 2) -> float:
    """What one epoch of this config costs on this machine now: a throwaway run of the same model, data and
    settings (nothing of it is kept), its training loop plus its validation metrics spread over the epochs
    between two validations (`eval_overhead`), the fastest of `epochs` epochs: the first pays one-off costs (kernel set-up, bfloat16 primitives: up to several
    times a warm epoch). A study with a seconds budget turns it into each trial's epochs (`epochs_within`)."""
    probe = Config.from_dict(cfg.to_dict())
    probe.train.epochs = epochs
    probe.train.eval_overhead = 0.0  # every probe epoch validates: its cost is measured, then spread
    runs = [(float(m["epoch_seconds"]), float(m["eval_seconds"]))
            for m in Training(probe, data, val_loss_every_epoch=False).epochs()]
    train_s, eval_s = min(t for t, _ in runs), min(e for _, e in runs)
    share = cfg.train.eval_overhead  # 0: every epoch validates
    every = 1 if share == 0 else max(1, math.ceil(eval_s / max(share * train_s, 1e-9)))  # epochs between validations
    return train_s + eval_s / every


def epochs_within(seconds: float, per_epoch: float, cap: int) -> int:
    """The whole epochs that fit in `seconds` at `per_epoch` seconds each: at least 1, at most `cap`."""
    return max(1, min(int(cap), int(seconds / max(per_epoch, 1e-9))))


def budget_step(epoch: int, epochs: int, seconds: float) -> int:
    """Where epoch `epoch` of `epochs` lies on a seconds budget's axis (what a trial reports its value at, so
    pruners compare trials at equal training time): ceil(seconds * epoch / epochs), the last epoch at
    ceil(seconds)."""
    return max(1, math.ceil(seconds * epoch / epochs - 1e-9))


def train(
    cfg: Config,
    callback: EpochCallback | None = None,
    data: tuple[Pairs, Pairs] | None = None,
    log: Callable[[str], None] | None = None,
    val_loss_every_epoch: bool = True,
) -> TrainResult:
    """Train a model from scratch as `cfg` says (`Training`, run to the end). `callback(epoch, metrics)`
    runs after every epoch (it may raise to stop)."""
    run = Training(cfg, data, log, val_loss_every_epoch)
    for metrics in run.epochs():
        if callback is not None:
            callback(int(metrics["epoch"]), metrics)
    return run.result()
