"""Pictures of generated samples against the given measurements, for trial artifacts and reports.

Line problems, for each shown y: the generated x0 and x1 lines (with the exact solutions dashed, where
they can be enumerated) and, beside them, every condition's given y against forward(x_hat).

Grid problems (gravity2d), for each shown y: the true model (when known), three samples, the samples'
mean and standard-deviation maps next to the exact posterior's (where known), and the observed data
against the data the samples predict.

Benchmark tasks, for each shown y: the samples of parameter pairs, over the benchmark's reference
posterior samples where y is one of its observations.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection

from .files import atomic_write
from .metrics import can_enumerate, enumerate_solutions
from .models import CVAE
from .posterior import Posterior
from .families import family_of
from .problems import LineProblem, Problem


def samples_figure(
    model: CVAE | None, problem: Problem, y: torch.Tensor, n_samples: int = 20, seed: int = 0, title: str = "",
    samples: torch.Tensor | None = None, truth: torch.Tensor | None = None,
) -> plt.Figure:
    """Draw `samples` (M, S, *x_shape) for y (M, P, k), or, without them, n_samples drawn from `model`;
    `truth` (M, *x_shape), the true models where known (shown for grid problems)."""
    y = y.detach().cpu().float()
    if samples is None:
        samples = Posterior(model, problem).sample(y, n_samples, seed=seed)
    samples = samples.detach().cpu().double()
    return family_of(problem).figure(problem, y, samples, truth, title)


def lines_figure(problem: LineProblem, y: torch.Tensor, samples: torch.Tensor, title: str = "") -> plt.Figure:
    """The line family's figure: the samples' lines (exact solutions dashed, where they can be enumerated)
    and each condition's y against the samples' forward values."""
    with torch.no_grad():
        fwd = problem(samples).numpy()
    sols = enumerate_solutions(problem, y) if can_enumerate(problem) else None
    m, k = y.shape[0], problem.k
    t = np.arange(problem.n_points, dtype=float)
    fig, axes = plt.subplots(m, 1 + k, figsize=(3.6 * (1 + k), 2.4 * m), squeeze=False)
    # one LineCollection per group instead of one Line2D per curve: a trial's plot is part of the
    # trial's bookkeeping, and hundreds of Line2D artists made it cost half a second
    for i in range(m):
        ax = axes[i, 0]
        if sols is not None and len(sols[i]):
            curves = [np.column_stack([t, s[:, c]]) for s in sols[i] for c in (0, 1)]
            ax.add_collection(LineCollection(curves, colors="k", linewidths=0.8, linestyles="--", alpha=0.6))
        xs = samples[i].numpy()
        for c, color in ((0, "tab:blue"), (1, "tab:orange")):
            ax.add_collection(LineCollection([np.column_stack([t, s[:, c]]) for s in xs], colors=color, linewidths=0.9, alpha=0.5))
        ax.set_xlim(t[0], t[-1])
        ax.set_ylim(problem.box[0] - 0.1, problem.box[1] + 0.1)
        n_sol = f", {len(sols[i])} exact solutions dashed" if sols is not None else ""
        ax.set_title(f"y #{i + 1}: x0 (blue), x1 (orange){n_sol}", fontsize=8)
        for j in range(k):
            ax = axes[i, 1 + j]
            ax.add_collection(LineCollection([np.column_stack([t, f[:, j]]) for f in fwd[i]], colors="tab:green", linewidths=0.8, alpha=0.35))
            ax.plot(t, y[i, :, j].numpy(), color="k", lw=1.6)
            ax.set_xlim(t[0], t[-1])
            if getattr(problem, "cosines", None):
                ax.set_ylim(-1.2, 1.2)
            else:
                lo = min(float(fwd[i][..., j].min()), float(y[i, :, j].min()))
                hi = max(float(fwd[i][..., j].max()), float(y[i, :, j].max()))
                pad = 0.05 * (hi - lo) + 1e-6
                ax.set_ylim(lo - pad, hi + pad)
            ax.set_title(f"y{j}: given (black) vs forward(x̂) (green)", fontsize=8)
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    # fixed margins (in inches, so any number of rows looks the same): tight_layout measured every tick
    # label and cost a third of the figure's time
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.45 / w, right=1 - 0.15 / w, bottom=0.35 / h, top=1 - (0.7 if title else 0.35) / h,
                        wspace=0.22, hspace=0.55)
    return fig


def _station_axis(problem: Problem) -> tuple[np.ndarray, str]:
    if problem.positions is not None:
        return np.asarray(problem.positions), "station position (m)"
    return np.arange(problem.n_points, dtype=float), "station"


def field_figure(
    problem: Problem, y: torch.Tensor, samples: torch.Tensor, truth: torch.Tensor | None = None, title: str = "",
    rows: int = 2,
) -> plt.Figure:
    """Grid models: per shown y, two rows of maps (true model, three samples; sample mean, exact mean,
    sample std, exact std) and the data panel (observed, the samples' predictions, their spread)."""
    m = min(rows, len(y))
    post = problem.posterior
    xs = samples[:m].numpy()
    nz, nx = problem.x_shape[-2], problem.x_shape[-1]
    cell = problem.cell or 1.0
    extent = (0.0, nx * cell, nz * cell, 0.0)
    units = problem.x_units or "x"
    with torch.no_grad():
        fwd = problem(samples[:m]).numpy()[..., 0]
    fig = plt.figure(figsize=(17.0, 4.6 * m))
    gs = fig.add_gridspec(2 * m, 5)
    lim = float(np.percentile(np.abs(xs), 99)) or 1.0
    if truth is not None:
        lim = max(lim, float(np.abs(truth[:m].numpy()).max()))
    stdmax = float(xs.std(axis=1).max())
    if post is not None:
        stdmax = max(stdmax, float(post.std.max()))

    def show(ax: plt.Axes, img: np.ndarray, name: str, std: bool = False, first: bool = False) -> None:
        im = ax.imshow(img, extent=extent, cmap="viridis" if std else "RdBu_r", vmin=0 if std else -lim,
                       vmax=stdmax if std else lim, aspect="auto", interpolation="nearest")
        ax.set_title(name, fontsize=8)
        if first:
            ax.set_ylabel("depth (m)" if problem.cell else "row", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)

    t, xlabel = _station_axis(problem)
    for i in range(m):
        r = 2 * i
        top = [("true model", truth[i].numpy()) if truth is not None else None] + [
            (f"sample {j + 1}", xs[i, j]) for j in range(min(3, xs.shape[1]))]
        for c, item in enumerate(top[:4]):
            ax = fig.add_subplot(gs[r, c])
            if item is None:
                ax.axis("off")
                ax.text(0.5, 0.5, "true model unknown", ha="center", va="center", fontsize=8)
            else:
                show(ax, item[1], f"y #{i + 1}: {item[0]} ({units})", first=c == 0)
        bottom = [("sample mean", xs[i].mean(axis=0), False)]
        if post is not None:
            bottom.append(("exact posterior mean", post.mean(y[i : i + 1])[0], False))
        bottom.append((f"sample std ({xs.shape[1]} samples)", xs[i].std(axis=0), True))
        if post is not None:
            bottom.append(("exact posterior std", post.std, True))
        for c, (name, img, std) in enumerate(bottom[:4]):
            show(fig.add_subplot(gs[r + 1, c]), img, f"{name} ({units})", std, first=c == 0)
        ax = fig.add_subplot(gs[r : r + 2, 4])
        ax.add_collection(LineCollection([np.column_stack([t, f]) for f in fwd[i]], colors="tab:green", linewidths=0.7, alpha=0.3))
        ax.plot(t, y[i, :, 0].numpy(), "k.", ms=4, label="observed")
        ax.set_xlim(t[0], t[-1])
        lo, hi = min(fwd[i].min(), float(y[i].min())), max(fwd[i].max(), float(y[i].max()))
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
        ax.set_title(f"observed (black) vs predicted (green), {problem.y_units or 'y'}", fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.tick_params(labelsize=6)
        chi2 = (((fwd[i] - y[i, :, 0].numpy()) / problem.noise) ** 2).mean(axis=1)
        ax.text(0.02, 0.02, f"chi2/datum median {np.median(chi2):.2f}", transform=ax.transAxes, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.04, right=0.98, bottom=0.05, top=0.93 if title else 0.96, wspace=0.3, hspace=0.45)
    return fig


def task_figure(problem: Problem, y: torch.Tensor, samples: torch.Tensor, truth: torch.Tensor | None = None,
                title: str = "", rows: int = 2) -> plt.Figure:
    """Benchmark tasks, for each shown y: scatter plots of parameter pairs (theta_1, theta_2), ... (up to 3
    pairs), the samples in blue, the true parameters as a star, and, where y is one of the benchmark's
    observations, its reference posterior samples in grey beneath."""
    from .benchmark_tasks import match_observations, reference_samples

    m = min(rows, len(y))
    d = problem.x_shape[0]
    pairs = [(i, i + 1) for i in range(0, d - 1, 2)][:3] or [(0, 0)]
    which = match_observations(problem.name, y[:m])
    fig, axes = plt.subplots(m, len(pairs), figsize=(4.2 * len(pairs), 4.0 * m), squeeze=False)
    for i in range(m):
        ref = reference_samples(problem.name, which[i])[:2000].numpy() if which[i] is not None else None
        for c, (a, b) in enumerate(pairs):
            ax = axes[i, c]
            if ref is not None:
                ax.scatter(ref[:, a], ref[:, b], s=2, c="0.7", alpha=0.4, label="reference posterior", rasterized=True)
            xs = samples[i].reshape(samples.shape[1], -1).numpy()
            ax.scatter(xs[:, a], xs[:, b], s=2, c="tab:blue", alpha=0.4, label="samples", rasterized=True)
            if truth is not None:
                t = truth[i].reshape(-1).numpy()
                ax.scatter([t[a]], [t[b]], marker="*", s=120, c="tab:red", label="true parameters")
            lim = problem.task.bound
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xlabel(f"theta_{a + 1}", fontsize=8)
            ax.set_ylabel(f"theta_{b + 1}", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == 0 and c == 0:
                ax.legend(fontsize=7, markerscale=3, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: Path | str, dpi: int = 90) -> Path:
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
    finally:
        plt.close(fig)
