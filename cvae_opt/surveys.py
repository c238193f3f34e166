"""Survey files: measurements along a profile as a CSV, the way a field crew hands them over.

Layout: a header row, then one row per station. The first column is the station position along the
profile in metres (the problem's convention: x = 0 at the grid's left edge); every further column is one
survey's readings in the problem's units (g_z in mGal for gravity2d), so one file may hold several
surveys of the same stations. Positions must be the problem's stations (to within 1 m): a model is
trained for one station layout.

    x_m,gz_mgal
    -400.0,0.412
    -322.6,0.538
    ...
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, clipped
from .files import atomic_write_text
from .problems import Problem, resolve_problem

POSITION_TOLERANCE = 1.0  # metres


def read_survey(path: str | Path, problem: Problem | str) -> torch.Tensor:
    """The surveys of a CSV as measurements (M, n_points, 1), float32; one UserError for any mistake.
    `problem`: a problem or its name (`gravity2d`)."""
    path = Path(path)
    problem = resolve_problem(problem)
    if getattr(problem, "positions", None) is None or getattr(problem, "k", None) != 1:  # a line problem has none
        raise UserError(f"{path}: problem {problem.name!r} declares no station positions; give its measurements "
                        "as a file of pairs or an array")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read it as CSV ({type(exc).__name__})") from None
    if len(rows) < 2 or len(rows[0]) < 2:
        raise UserError(f"{path}: expected a header row and one row per station, with the position (m) in the "
                        "first column and one column of readings per survey")
    ragged = next((i for i, r in enumerate(rows[1:], start=2) if len(r) != len(rows[0])), None)
    if ragged is not None:
        raise UserError(f"{path}: line {ragged} has {len(rows[ragged - 1])} columns; every row must have "
                        f"{len(rows[0])}, as the header has")
    bad = next((i for i, r in enumerate(rows[1:], start=2) if not _numeric(r)), None)
    if bad is not None:
        raise UserError(f"{path}: line {bad} is not all numbers: {clipped(','.join(rows[bad - 1]))}")
    values = np.array([[float(c) for c in r] for r in rows[1:]], dtype=np.float64)
    stations = np.asarray(problem.positions)
    order = np.argsort(values[:, 0])
    values = values[order]
    if len(values) != len(stations) or np.abs(values[:, 0] - stations).max() > POSITION_TOLERANCE:
        raise UserError(
            f"{path}: its {len(values)} stations are not the {len(stations)} stations problem {problem.name!r} was "
            f"built for ({stations[0]:g} m to {stations[-1]:g} m, every {stations[1] - stations[0]:.4g} m); "
            "train on a problem with your stations (gravity2d(geometry=Geometry(...)) by import path)"
        )
    if not np.isfinite(values).all():
        raise UserError(f"{path}: holds NaN or inf readings; remove or fill those stations")
    return torch.from_numpy(values[:, 1:].T.copy()).float().unsqueeze(-1)


def _numeric(row: list[str]) -> bool:
    try:
        [float(c) for c in row]
    except ValueError:
        return False
    return True


def write_survey(path: str | Path, problem: Problem | str, y: torch.Tensor, units: str | None = None) -> Path:
    """Write measurements y (M, n_points, 1) as a survey CSV that `read_survey` reads back."""
    problem = resolve_problem(problem)
    y = torch.as_tensor(y).detach().cpu().double().reshape(-1, problem.n_points)
    unit = (units or problem.y_units or "value").replace("/", "_").lower()
    names = ["x_m"] + [f"g_{unit}" if len(y) == 1 else f"g_{unit}_{i + 1}" for i in range(len(y))]
    lines = [",".join(names)]
    for j, pos in enumerate(problem.positions):
        lines.append(",".join([f"{pos:.3f}"] + [f"{float(v):.6g}" for v in y[:, j]]))
    return atomic_write_text(Path(path), "\n".join(lines) + "\n")
