"""Metrics for generated samples grouped by their given y, and exact enumeration of the modes.

Definitions (all on samples of shape (M, S, n_points, 2) for M given y, S samples each):

- misfit_rmse: RMSE of forward(x_hat) against the given y, pooled over every value.
- r2: R^2 of a least-squares line through each channel of each sample (1 = perfectly straight), mean.
- slope_signs: share of samples whose fitted slopes have the problem's signs (x0 down, x1 up).
- valid: a sample is valid when its own misfit RMSE <= `valid_misfit` (0.05), both channels have
  R^2 >= 0.99, the slope signs are right and every point lies in the prior box (+-0.02).
- valid_fraction: share of valid samples.
- diversity: mean over groups of the mean pairwise RMS distance between samples, where a pair counts
  only when both samples are valid (others add 0). One repeated answer scores 0; invalid samples score 0.
- score (higher is better, in [0, 1]): with per-sample quality
      q = exp(-misfit / 0.1) * clip(min R^2, 0, 1) * [slope signs right],
  score = mean over groups of 0.5 * mean(q) + 0.5 * mean over pairs of sqrt(q_i q_j) * min(1, d_ij / 0.1),
  d_ij the RMS distance between two samples. It rewards fit and spread at once, and unlike the mode
  metrics it is defined for every problem and moves smoothly while a model is still poor, which
  pruning needs. With one sample per y it is mean(q).
- mode_precision / mode_recall (problems whose conditions are all cosines): a sample hits an exact
  solution when every point is within `tol` (0.02) of it, which for straight lines is every end point
  within tol. Precision: share of samples that hit some solution. Recall: share of all exact solutions
  (pooled over the given y) hit by at least one sample. mode_pr = sqrt(precision x recall), one
  number that needs both (the two birds study's objective: its samples must sit on solutions and
  reach many of them; `score` ranks a model whose samples fit y near no solution above one on them).
- exact_posterior_recall: the mode recall that S independent draws from the exact posterior reach in
  expectation (`mode_weights`, `expected_recall`): light modes are rarely drawn, so posterior samples
  cannot cover every mode; coverage draws can.
- truth_recall (with true x): share of given y whose true x is hit by at least one sample.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .problems import LineProblem, Problem, line_ends, line_fit, line_points, sample_misfit

VALID_MISFIT = 0.05
VALID_R2 = 0.99
HIT_TOL = 0.02
SCORE_MISFIT_SCALE = 0.1
SCORE_DISTANCE_SCALE = 0.1


def can_enumerate(problem: Problem) -> bool:
    """Whether every condition is a cosine of the line pair, so the exact solutions can be enumerated."""
    cosines = getattr(problem, "cosines", None)
    return cosines is not None and len(cosines) >= 2


def enumerate_solutions(
    problem: Problem, y: torch.Tensor | np.ndarray, accept_rmse: float = 5e-3, screen: float = 0.1
) -> list[np.ndarray]:
    """Every straight-line pair inside the prior box (with the declared slope signs) whose forward
    values match y, for problems whose conditions are cos(p*x0 + q*x1 + phi).

    On a line the phase u_j(t) = p_j*x0(t) + q_j*x1(t) + phi_j is linear in t, so each condition's
    phase at the two ends is +-arccos(y) + 2*pi*m; the pairs of end phases that reproduce all points of
    y are kept, and two conditions' phases give the end points by a 2x2 linear solve. Candidates are
    polished by Gauss-Newton on the four end points and de-duplicated. Returns, per given y, an array
    (n_solutions, n_points, 2).
    """
    if not can_enumerate(problem):
        raise ValueError(f"problem {problem.name!r} is not a sum of cosine conditions; its modes cannot be enumerated")
    y = np.asarray(torch.as_tensor(y).detach().cpu().double())
    terms = np.array(problem.cosines, dtype=np.float64)  # (k, 3)
    lo, hi = problem.box
    n = problem.n_points
    t = np.linspace(0.0, 1.0, n)
    # the best-conditioned pair of conditions for the solve
    best, pair = -1.0, (0, 1)
    for a in range(len(terms)):
        for b in range(a + 1, len(terms)):
            d = abs(terms[a, 0] * terms[b, 1] - terms[a, 1] * terms[b, 0])
            if d > best:
                best, pair = d, (a, b)
    a, b = pair
    A = terms[[a, b], :2]
    A_inv = np.linalg.inv(A)
    return [_enumerate_one(yi, terms, a, b, A_inv, lo, hi, t, problem.slopes, accept_rmse, screen) for yi in y]


def _phase_lines(yj: np.ndarray, p: float, q: float, phi: float, lo: float, hi: float, t: np.ndarray, screen: float) -> np.ndarray:
    """End phases (u(0), u(1)) of every linear phase whose cosine matches yj at all points."""
    u_min = phi + min(p * lo, p * hi) + min(q * lo, q * hi) - 0.5
    u_max = phi + max(p * lo, p * hi) + max(q * lo, q * hi) + 0.5

    def branches(v: float) -> np.ndarray:
        base = math.acos(min(1.0, max(-1.0, v)))
        ms = np.arange(math.floor((u_min - base) / (2 * math.pi)) - 1, math.ceil((u_max + base) / (2 * math.pi)) + 2)
        c = np.concatenate([base + 2 * math.pi * ms, -base + 2 * math.pi * ms])
        return c[(c >= u_min) & (c <= u_max)]

    c0, c1 = branches(yj[0]), branches(yj[-1])
    u = c0[:, None, None] + (c1[None, :, None] - c0[:, None, None]) * t  # (n0, n1, P)
    ok = np.abs(np.cos(u) - yj).max(axis=-1) < screen
    i0, i1 = np.nonzero(ok)
    return np.stack([c0[i0], c1[i1]], axis=-1)


def _enumerate_one(y, terms, a, b, A_inv, lo, hi, t, slopes, accept_rmse, screen) -> np.ndarray:
    ua = _phase_lines(y[:, a], *terms[a], lo, hi, t, screen)
    ub = _phase_lines(y[:, b], *terms[b], lo, hi, t, screen)
    n = len(t)
    if len(ua) == 0 or len(ub) == 0:
        return np.zeros((0, n, 2))
    # all combinations: rhs (na, nb, end, 2)
    rhs = np.stack(
        [np.broadcast_to((ua - terms[a, 2])[:, None, :], (len(ua), len(ub), 2)),
         np.broadcast_to((ub - terms[b, 2])[None, :, :], (len(ua), len(ub), 2))], axis=-1
    )
    ends = rhs @ A_inv.T  # (na, nb, 2 ends, 2 channels): x at t=0 and t=1
    ends = ends.reshape(-1, 2, 2)
    e = np.stack([ends[:, 0, 0], ends[:, 1, 0], ends[:, 0, 1], ends[:, 1, 1]], axis=-1)  # s0, e0, s1, e1
    margin = 0.01
    keep = ((e >= lo - margin) & (e <= hi + margin)).all(axis=-1)
    e = e[keep]
    if len(e) == 0:
        return np.zeros((0, n, 2))
    e = _gauss_newton(e, y, terms, t)
    x = _lines(e, t)
    u = x @ terms[:, :2].T + terms[:, 2]
    rmse = np.sqrt(((np.cos(u) - y) ** 2).mean(axis=(-1, -2)))
    tol = 1e-3
    ok = (rmse < accept_rmse) & ((e >= lo - tol) & (e <= hi + tol)).all(axis=-1)
    for c, sign in enumerate(slopes):
        d = e[:, 2 * c + 1] - e[:, 2 * c]
        if sign < 0:
            ok &= d <= tol
        elif sign > 0:
            ok &= d >= -tol
    e, rmse = e[ok], rmse[ok]
    order = np.argsort(rmse)
    kept: list[np.ndarray] = []
    for i in order:
        if all(np.abs(e[i] - k).max() > 1e-3 for k in kept):
            kept.append(e[i])
    if not kept:
        return np.zeros((0, n, 2))
    return _lines(np.clip(np.array(kept), lo, hi), t)


def _lines(e: np.ndarray, t: np.ndarray) -> np.ndarray:
    """End points (N, 4) -> lines (N, P, 2) on the grid t: `problems.line_points` on arrays."""
    return line_points(torch.from_numpy(np.ascontiguousarray(e, dtype=np.float64)), len(t)).numpy()


def _jacobian(e: np.ndarray, terms: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phases u (N, P, k) of end points e (N, 4) and the Jacobian (N, P*k, 4) of cos(u) with respect to e."""
    p, q = terms[:, 0], terms[:, 1]
    w0 = np.stack([1 - t, t], axis=-1)  # d x(t) / d (start, end)
    u = _lines(e, t) @ terms[:, :2].T + terms[:, 2]
    s = -np.sin(u)
    J = np.concatenate(
        [(s * p)[..., None] * w0[None, :, None, :], (s * q)[..., None] * w0[None, :, None, :]], axis=-1
    ).reshape(len(e), -1, 4)
    return u, J


def _gauss_newton(e: np.ndarray, y: np.ndarray, terms: np.ndarray, t: np.ndarray, iters: int = 6) -> np.ndarray:
    """Polish end points (N, 4) to least squares on all conditions (the arccos of values near +-1 is
    ill-conditioned, so the linear solve alone is off by up to ~1e-4)."""
    for _ in range(iters):
        u, J = _jacobian(e, terms, t)
        r = (np.cos(u) - y).reshape(len(e), -1)
        JtJ = J.transpose(0, 2, 1) @ J + 1e-9 * np.eye(4)
        step = np.linalg.solve(JtJ, (J.transpose(0, 2, 1) @ r[..., None]))[..., 0]
        e = e - step
    return e


def mode_weights(problem: Problem, solutions: list[np.ndarray]) -> list[np.ndarray]:
    """The exact posterior's weight of each enumerated solution of each y (each y's weights sum to 1).

    For a noiseless (or slightly noisy) measurement the posterior concentrates on the solutions, and
    the mass near solution e is proportional to prior(e) / sqrt(det(J^T J)), J the derivatives of the
    n_points*k values of y with respect to the 4 end points there. The prior density of the end points
    follows from how they are drawn (`problems.ends_from_unit` of a uniform u): a descending channel
    contributes 1 / ((hi - lo)(hi - end)), an ascending one 1 / ((hi - lo)(hi - start)). Light modes
    are the ones a posterior sampler rarely shows: see `expected_recall`."""
    if not can_enumerate(problem):
        raise ValueError(f"problem {problem.name!r}: mode weights need enumerable (cosine) conditions")
    terms = np.array(problem.cosines, dtype=np.float64)
    lo, hi = problem.box
    t = np.linspace(0.0, 1.0, problem.n_points)
    out = []
    for sols in solutions:
        if len(sols) == 0:
            out.append(np.zeros(0))
            continue
        e = line_ends(torch.from_numpy(sols)).numpy()  # (n, 4)
        J = _jacobian(e, terms, t)[1]
        _, logdet = np.linalg.slogdet(J.transpose(0, 2, 1) @ J)
        log_prior = np.zeros(len(e))
        for c, sign in enumerate(problem.slopes):
            start, end = e[:, 2 * c], e[:, 2 * c + 1]
            free = end if sign < 0 else start  # the point drawn second lies between the first and the top
            log_prior -= np.log(hi - lo) + (np.log(np.maximum(hi - free, 1e-9)) if sign != 0 else np.log(hi - lo))
        logw = log_prior - 0.5 * logdet
        w = np.exp(logw - logw.max())
        out.append(w / w.sum())
    return out


def expected_recall(weights: list[np.ndarray], n: int, temperature: float = 1.0) -> float:
    """Expected mode recall of n independent draws per y from weights (tempered: w^T renormalised),
    pooled over all modes as `mode_recall` is. With the exact posterior's `mode_weights` and T = 1 it
    is the limit a perfect posterior sampler reaches with n samples per y."""
    hit = total = 0.0
    for w in weights:
        if len(w) == 0:
            continue
        wt = w**temperature if temperature > 0 else np.ones_like(w)
        wt = wt / wt.sum()
        hit += float((1.0 - (1.0 - wt) ** n).sum())
        total += len(w)
    return hit / max(total, 1.0)


def _hit_matrix(samples: np.ndarray, sols: np.ndarray, tol: float) -> np.ndarray:
    """(S, n_sol) bool: every point of the sample within tol of the solution."""
    if len(sols) == 0:
        return np.zeros((len(samples), 0), dtype=bool)
    d = np.abs(samples[:, None] - sols[None]).max(axis=(-1, -2))
    return d <= tol


def solutions_found(samples: torch.Tensor, solutions: list[np.ndarray], tol: float = HIT_TOL) -> list[np.ndarray]:
    """For each y, which of its enumerated solutions at least one of its samples (M, S, P, 2) hits (every
    point within `tol`): a bool array per y, what `mode_recall` pools. Lets a caller split recall by
    condition (e.g. by how many solutions a y has)."""
    xs = torch.as_tensor(samples).detach().double().cpu().numpy()
    return [_hit_matrix(xs[g], solutions[g], tol).any(axis=0) for g in range(len(solutions))]


def evaluate_samples(
    problem: Problem, samples: torch.Tensor, y: torch.Tensor, solutions: list[np.ndarray] | None = None,
    truth: torch.Tensor | None = None, weights: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """The metrics of samples (M, S, *x_shape) answering y (M, P, k) as the problem's family computes them
    (line pairs: `evaluate_line_samples`; fields: `field_metrics.evaluate_field_samples`)."""
    from .families import family_of

    return family_of(problem).evaluate(problem, samples, y, truth, solutions, weights)


def evaluate_line_samples(
    problem: LineProblem,
    samples: torch.Tensor,
    y: torch.Tensor,
    solutions: list[np.ndarray] | None = None,
    truth: torch.Tensor | None = None,
    tol: float = HIT_TOL,
    valid_misfit: float = VALID_MISFIT,
    weights: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """All metrics for samples (M, S, P, 2) answering y (M, P, k); see the module docstring.
    `weights`: the solutions' `mode_weights`, when the caller has them (a trial's every epoch)."""
    samples = torch.as_tensor(samples).detach().double().cpu()
    y = torch.as_tensor(y).detach().double().cpu()
    m, s = samples.shape[:2]
    misfit_s = sample_misfit(problem, samples, y).numpy()  # (M, S)
    xs = samples.numpy()
    r2, slope, _ = (v.numpy() for v in line_fit(samples))  # (M, S, 2)
    signs_ok = np.ones((m, s), dtype=bool)
    for c, sign in enumerate(problem.slopes):
        if sign < 0:
            signs_ok &= slope[..., c] <= 1e-9
        elif sign > 0:
            signs_ok &= slope[..., c] >= -1e-9
    lo, hi = problem.box
    in_box = ((xs >= lo - HIT_TOL) & (xs <= hi + HIT_TOL)).all(axis=(-1, -2))
    r2_min = r2.min(axis=-1)
    valid = (misfit_s <= valid_misfit) & (r2_min >= VALID_R2) & signs_ok & in_box
    quality = np.exp(-misfit_s / SCORE_MISFIT_SCALE) * np.clip(r2_min, 0.0, 1.0) * signs_ok

    flat = xs.reshape(m, s, -1)
    div = np.zeros(0)
    if s > 1:
        iu = np.triu_indices(s, 1)
        d = np.empty((m, len(iu[0])))
        step = max(1, 4_000_000 // (s * s * flat.shape[-1]))  # all pairs of a block of groups at once, bounded memory
        for g in range(0, m, step):
            blk = flat[g : g + step]
            d[g : g + step] = np.sqrt(((blk[:, :, None] - blk[:, None]) ** 2).mean(-1))[:, iu[0], iu[1]]
        v = (valid[:, :, None] & valid[:, None, :])[:, iu[0], iu[1]]
        div = (d * v).mean(axis=1)
        qq = np.sqrt(quality[:, :, None] * quality[:, None, :])[:, iu[0], iu[1]]
        spread = (qq * np.minimum(1.0, d / SCORE_DISTANCE_SCALE)).mean(axis=1)
        score = float(np.mean(0.5 * quality.mean(axis=1) + 0.5 * spread))
    else:
        score = float(quality.mean())

    out: dict[str, float] = {
        "score": score,
        "misfit_rmse": float(np.sqrt((misfit_s**2).mean())),  # pooled over every value: samples are of one size
        "r2": float(r2.mean()),
        "slope_signs": float(signs_ok.mean()),
        "valid_fraction": float(valid.mean()),
        "diversity": float(np.mean(div)) if len(div) else 0.0,
        "n_conditions": int(m),
        "samples_per_condition": int(s),
    }
    if solutions is not None:
        hits = [_hit_matrix(xs[g], solutions[g], tol) for g in range(m)]
        n_sol = sum(h.shape[1] for h in hits)
        out["mode_precision"] = float(np.mean([h.any(axis=1).mean() if h.shape[1] else 0.0 for h in hits]))
        out["mode_recall"] = float(sum(int(h.any(axis=0).sum()) for h in hits) / max(n_sol, 1))
        out["mode_pr"] = math.sqrt(out["mode_precision"] * out["mode_recall"])
        out["solutions_per_condition"] = n_sol / m
        # what a perfect posterior sampler would reach with as many independent draws: the honest ceiling
        # of mode_recall for posterior draws (coverage draws can exceed it)
        out["exact_posterior_recall"] = expected_recall(weights if weights is not None else mode_weights(problem, solutions), s)
    if truth is not None:
        tr = torch.as_tensor(truth).detach().double().cpu().numpy()
        out["truth_recall"] = float(np.mean([_hit_matrix(xs[g], tr[g : g + 1], tol).any() for g in range(m)]))
    return out
