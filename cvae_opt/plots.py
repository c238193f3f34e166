"""Pictures of generated samples against the given measurements, for trial artifacts and reports.

For each shown y: the generated x0 and x1 lines (with the exact solutions dashed, where they can be
enumerated) and, beside them, every condition's given y against forward(x_hat).
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
from .problems import Problem


def samples_figure(
    model: CVAE | None, problem: Problem, y: torch.Tensor, n_samples: int = 20, seed: int = 0, title: str = "",
    samples: torch.Tensor | None = None,
) -> plt.Figure:
    """Draw `samples` (M, S, P, 2) for y (M, P, k), or, without them, n_samples drawn from `model`."""
    y = y.detach().cpu().float()
    if samples is None:
        samples = model.generate(y, n_samples, generator=torch.Generator().manual_seed(seed))
    samples = samples.detach().cpu().double()
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
            if problem.cosines:
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


def save_figure(fig: plt.Figure, path: Path | str, dpi: int = 90) -> Path:
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
    finally:
        plt.close(fig)
