"""Challenge-format submissions: (generated x, given y) pairs, several x per given y, grouped by their
given y (in order of first appearance), matched to true x by y, and scored with `metrics`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data import Pairs, load_pairs
from .errors import UserError
from .families import family_of
from .problems import Problem, resolve_problem, resolve_stored_problem


def group_by_condition(pairs: Pairs, where: str = "submission") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, P, 2), (N, P, k) -> samples (M, S, P, 2), y (M, P, k); every y must have the same S."""
    flat = pairs.y.flatten(1)
    uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
    first = torch.full((len(uniq),), len(flat), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(flat)), reduce="amin"
    )
    order = torch.argsort(first)
    counts = torch.bincount(inverse, minlength=len(uniq))[order]
    if counts.min() != counts.max():
        raise UserError(
            f"{where}: the given y have different numbers of samples ({int(counts.min())} to {int(counts.max())}); "
            "expected the same number of generated x for every given y"
        )
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    group = rank[inverse]
    idx = torch.argsort(group, stable=True)
    m, s = len(uniq), int(counts[0])
    return pairs.x[idx].view(m, s, *pairs.x.shape[1:]), pairs.y[idx].view(m, s, *pairs.y.shape[1:])[:, 0]


def match_truth(y: torch.Tensor, truth: Pairs, where: str, tol: float = 1e-4) -> torch.Tensor:
    """The true x of each given y, looked up in a (true x, y) file by its y."""
    d = torch.cdist(y.flatten(1).double(), truth.y.flatten(1).double(), p=float("inf"))
    best, j = d.min(dim=1)
    if (best > tol).any():
        i = int(torch.nonzero(best > tol)[0])
        raise UserError(f"{where}: has no x for given y number {i + 1} of the submission (closest differs by {float(best[i]):.3g})")
    return truth.x[j]


def problem_of(submission: str) -> str | None:
    """The problem a submission written by `generate` was drawn for, from its metadata (SUBMISSION.json)."""
    meta = Path(str(submission) + ".json")
    if not meta.is_file():
        return None
    try:
        value = json.loads(meta.read_text()).get("problem")
    except (ValueError, OSError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def submission_problem(submission: str, given: str | None = None) -> Problem:
    """The problem to score a submission against: the one its metadata (SUBMISSION.json) names, else
    `given` (--problem), else two_birds. The metadata is a file, so it picks no code: its built-in name
    is used, its import path only when `given` is the same spec (`problems.check_stored_spec`)."""
    stored = problem_of(submission)
    if stored is None:
        return resolve_problem(given or "two_birds")
    return resolve_stored_problem(stored, given, f"submission metadata {submission}.json")


def truth_models(y: torch.Tensor, truth: str | Path | Pairs, problem: Problem) -> torch.Tensor:
    """The true x of each given y (M, P, k) from a file of (true x, y) pairs (path or built-in name) or Pairs."""
    pairs = truth if isinstance(truth, Pairs) else load_pairs(truth, problem)
    return match_truth(y, pairs, "truth" if isinstance(truth, Pairs) else str(truth))


def score(problem: Problem, samples: torch.Tensor, y: torch.Tensor, truth: str | Path | Pairs | None = None) -> dict[str, float]:
    """The metrics of samples (M, S, *x_shape) for y (M, P, k): `evaluate`, the API's `score_samples`."""
    true_x = truth_models(y, truth, problem) if truth is not None else None
    family = family_of(problem)
    return family.evaluate(problem, samples, y, true_x, family.solutions(problem, y))


def evaluate_file(submission: str, problem: Problem, truth_file: str | None = None) -> dict[str, float | str]:
    samples, y = group_by_condition(load_pairs(submission, problem), submission)
    out: dict[str, float | str] = {"submission": submission, "problem": problem.name}
    out.update(score(problem, samples, y, truth_file))
    return out
