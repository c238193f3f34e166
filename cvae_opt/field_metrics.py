"""Metrics for samples of a continuous posterior: models of any shape (a grid of cells, a profile).

On samples (M, S, *x_shape) answering M measurements y (M, n_points, k) of a `FieldProblem`:

- chi2: each sample's data misfit normalised by the noise, chi-squared per datum
  mean(((forward(x) - y) / noise)^2); 1 means fitting to the noise level. Reported: `chi2_median` and
  `chi2_le2` (the share of samples with chi2 <= 2). `misfit_rmse`: the RMS misfit in y's units.
- diversity: sqrt of the mean squared distance between two samples of one y, per cell (x's units):
  sqrt(2 * mean per-cell variance). One repeated answer scores 0.
- with true models (held-out truths): `coverage_50` / `coverage_90`, the share of true cells inside the
  samples' central 50% / 90% intervals (nominal: 0.5 / 0.9); `sbc_ks`, the largest distance between the
  distribution of the truth's rank among the samples (per cell, simulation-based calibration) and the
  uniform one (0 for a calibrated sampler, up to ~0.5 for one that always misses); `energy_score`,
  E|X - x| - E|X - X'| / 2 in the prior's units per cell (a proper scoring rule for the joint
  distribution, but nearly blind to a wrong spread in high dimensions); `crps`, the same per cell averaged
  over cells (a proper score of each cell's whole distribution, atoms included); `dss`, the Dawid-Sebastiani
  score per cell, mean of ((x - mean) / std)^2 + 2 log(std / scale) with the samples' mean and std (a
  proper score for each cell's mean and spread, so too narrow and too wide samples both pay); and
  `score` = -dss, what studies maximise.
- with the exact posterior (`problem.posterior`), on the cells the data constrain (posterior standard
  deviation at most 0.7 of the prior's; over all cells prior draws look calibrated, because the stations
  constrain few directions): `mean_error`, the RMS over conditions and cells of (sample mean - posterior
  mean) / posterior std (1/sqrt(S) for exact draws); `std_ratio_p10` / `std_ratio_p90`, percentiles over
  conditions and cells of sample std / posterior std; `coverage_50_constrained` / `coverage_90_constrained`
  with truths; `std_ratio_all_p10/p90` over every cell.
"""

from __future__ import annotations

import numpy as np
import torch

from .problems import Problem

CONSTRAINED_RATIO = 0.7
SBC_TIE_SEED = 7_919  # the tie-breaking draws of `sbc_ks`: fixed, so a figure is reproducible


def chi2_per_datum(problem: Problem, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """(M, S) chi-squared per datum of samples x (M, S, *x_shape) against y (M, P, k)."""
    with torch.no_grad():
        r = problem(x.double()) - y.double().unsqueeze(1)
    return ((r / problem.noise) ** 2).mean(dim=(-1, -2)).numpy()


def _interval_coverage(xs: np.ndarray, truth: np.ndarray, level: float) -> np.ndarray:
    """(M, D) bool: each true cell inside the samples' central `level` interval."""
    lo, hi = np.quantile(xs, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return (truth >= lo) & (truth <= hi)


def _sbc_ks(xs: np.ndarray, truth: np.ndarray) -> float:
    """Largest gap between the CDF of normalised ranks of the truth among the samples and the uniform CDF.

    Ties are broken at random (a fixed seed, so the figure is reproducible): the truth's rank is the
    samples below it plus a uniform share of those equal to it. Without that, a prior with exact values
    (the blocks prior's background is exactly 0 in 89% of cells) would score its own exact posterior as
    miscalibrated, every tied truth ranked below all its tied samples."""
    s = xs.shape[1]
    below = (xs < truth[:, None]).sum(axis=1).ravel()
    ties = (xs == truth[:, None]).sum(axis=1).ravel()
    ranks = below + np.floor(np.random.default_rng(SBC_TIE_SEED).random(below.shape) * (ties + 1))  # 0..S
    u = np.sort((ranks + 0.5) / (s + 1))
    n = len(u)
    grid = np.arange(1, n + 1) / n
    return float(max(np.abs(grid - u).max(), np.abs(grid - 1 / n - u).max()))


def _energy_score(xs: np.ndarray, truth: np.ndarray, scale: float) -> float:
    """Mean over conditions of E|X - x| - 0.5 E|X - X'| with |.| the RMS over cells, in units of `scale`."""
    m, s, d = xs.shape
    to_truth = np.sqrt(((xs - truth[:, None]) ** 2).mean(-1)).mean(1)
    spread = np.empty(m)
    for g in range(m):  # pairwise RMS distances by the Gram trick, one condition at a time
        sq = (xs[g] ** 2).sum(-1)
        d2 = np.clip(sq[:, None] + sq[None] - 2 * xs[g] @ xs[g].T, 0.0, None) / d
        spread[g] = np.sqrt(d2).sum() / (s * max(s - 1, 1))
    return float(np.mean(to_truth - 0.5 * spread) / scale)


def _crps(xs: np.ndarray, truth: np.ndarray, scale: float) -> float:
    """Mean over conditions and cells of each cell's CRPS, E|X - t| - 0.5 E|X - X'| (the fair form, pairs of
    distinct samples), in units of `scale`: a proper score of every cell's whole distribution, atoms
    included (the blocks prior's exact zeros), where the Dawid-Sebastiani score sees two moments only."""
    s = xs.shape[1]
    to_truth = np.abs(xs - truth[:, None]).mean(axis=1)
    if s < 2:
        return float(to_truth.mean() / scale)
    ordered = np.sort(xs, axis=1)
    weights = (2 * np.arange(1, s + 1) - s - 1).reshape(1, s, 1)
    pair = 2 * (weights * ordered).sum(axis=1) / (s * (s - 1))  # E|X - X'| over distinct pairs
    return float(np.mean(to_truth - 0.5 * pair) / scale)


def _dawid_sebastiani(xs: np.ndarray, truth: np.ndarray, var: np.ndarray, scale: float) -> float:
    """Mean over conditions and cells of ((t - mean) / std)^2 + 2 log(std / scale); the std is floored at
    1e-3 scale, so a collapsed sampler scores badly but finitely."""
    std = np.sqrt(np.maximum(var, (1e-3 * scale) ** 2))
    z = (truth - xs.mean(axis=1)) / std
    return float(np.mean(z**2 + 2 * np.log(std / scale)))


def calibration_metrics(xs: np.ndarray, truth: np.ndarray, scale: float) -> dict[str, float]:
    """Samples (M, S, D) against the true models (M, D) they answer, in any problem whose posterior is
    continuous: `coverage_50`, `coverage_90`, `sbc_ks`, `energy_score`, `crps` and `dss` (module docstring), x in
    units of `scale` where a score has units."""
    s = xs.shape[1]
    var = xs.var(axis=1, ddof=1) if s > 1 else np.zeros((xs.shape[0], xs.shape[-1]))
    return {
        "coverage_50": float(_interval_coverage(xs, truth, 0.5).mean()),
        "coverage_90": float(_interval_coverage(xs, truth, 0.9).mean()),
        "sbc_ks": _sbc_ks(xs, truth),
        "energy_score": _energy_score(xs, truth, scale),
        "crps": _crps(xs, truth, scale),
        "dss": _dawid_sebastiani(xs, truth, var, scale),
    }


def evaluate_field_samples(
    problem: Problem, samples: torch.Tensor, y: torch.Tensor, truth: torch.Tensor | None = None,
) -> dict[str, float]:
    """All metrics for samples (M, S, *x_shape) answering y (M, P, k); see the module docstring."""
    samples = torch.as_tensor(samples).detach().double().cpu()
    y = torch.as_tensor(y).detach().double().cpu()
    m, s = samples.shape[:2]
    chi2 = chi2_per_datum(problem, samples, y)
    xs = samples.reshape(m, s, -1).numpy()
    var = xs.var(axis=1, ddof=1) if s > 1 else np.zeros((m, xs.shape[-1]))
    out: dict[str, float] = {
        "chi2_median": float(np.median(chi2)),
        "chi2_le2": float((chi2 <= 2.0).mean()),
        "misfit_rmse": float(np.sqrt((chi2 * problem.noise**2).mean())),
        "diversity": float(np.sqrt(2 * var.mean())),
        "n_conditions": int(m),
        "samples_per_condition": int(s),
    }
    tr = None
    if truth is not None:
        tr = torch.as_tensor(truth).detach().double().cpu().reshape(m, -1).numpy()
        out.update(calibration_metrics(xs, tr, float(problem.x_scale)))
        out["score"] = -out["dss"]
    post = getattr(problem, "posterior", None)
    if post is not None and s > 1:
        mask = post.constrained(CONSTRAINED_RATIO).ravel()
        pstd = post.std.ravel()
        pmean = post.mean(y).reshape(m, -1)
        err = (xs.mean(axis=1) - pmean) / pstd
        ratio = np.sqrt(var) / pstd
        out["constrained_cells"] = int(mask.sum())
        out["mean_error"] = float(np.sqrt((err[:, mask] ** 2).mean()))
        out["std_ratio_p10"], out["std_ratio_p90"] = (float(v) for v in np.percentile(ratio[:, mask], [10, 90]))
        out["std_ratio_all_p10"], out["std_ratio_all_p90"] = (float(v) for v in np.percentile(ratio, [10, 90]))
        if tr is not None:
            out["coverage_50_constrained"] = float(_interval_coverage(xs, tr, 0.5)[:, mask].mean())
            out["coverage_90_constrained"] = float(_interval_coverage(xs, tr, 0.9)[:, mask].mean())
    return out
