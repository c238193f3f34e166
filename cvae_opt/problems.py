"""Forward problems: what a model x is, how it is drawn, and how it maps to measurements y.

Every problem maps x of shape (..., *x_shape) to y of shape (..., n_points, k) with torch operations, so
it is differentiable, batched and runs on any device; the physics term of the loss needs that. A problem
answers the `Problem` interface and names its kind in `family` (`families`: what differs between kinds,
from network bodies to metrics). Two kinds are built in:

- `LineProblem`: the line-pair family (two birds). x is a pair of straight lines (n_points, 2) given by four
  end points; the prior is the box the end points live in and each channel's slope sign. Its end-point
  parametrisation (decoder `line` head, refinement) and the enumeration of exact solutions stay with it.
- `FieldProblem`: a model of any shape (a 1D profile, a 2D grid of cells) with a prior it draws from,
  a declared Gaussian noise on y, units, and optionally its exact posterior (`gravity2d`).

A third, `benchmark_tasks.TaskProblem` (family `tasks`), holds the simulation-based-inference
benchmark's tasks: a stochastic simulator instead of a forward map.

All answer `x_shape`, `draw_prior`, `noise` and `x_scale` (the family turns those into the units the
networks and the loss work in).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

from .errors import UserError

Forward = Callable[[torch.Tensor], torch.Tensor]


class Problem(Protocol):
    """What every problem answers: a name, the shapes of x (*x_shape) and y (n_points, k), a differentiable
    batched forward map (`__call__`), prior draws, the noise on y, the prior's scale and its family."""

    name: str
    n_points: int
    k: int
    noise: float
    x_scale: float
    family: Any  # a registered family name or a families.ProblemFamily

    @property
    def x_shape(self) -> tuple[int, ...]: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def draw_prior(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor: ...


@dataclass(frozen=True)
class LineProblem:
    """A pair of straight lines x (n_points, 2) mapped to y (n_points, k): the two-birds family."""

    name: str
    forward: Forward
    k: int
    n_points: int = 50
    box: tuple[float, float] = (0.1, 1.0)
    # +1: the channel ascends (start <= end), -1: it descends, 0: either.
    slopes: tuple[int, int] = (-1, 1)
    # Set when every condition is cos(p*x0 + q*x1 + phi): exact solutions can then be enumerated.
    cosines: tuple[tuple[float, float, float], ...] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    family = "lines"
    noise = 0.0  # synthetic y are exact unless the data config adds noise
    x_scale = 1.0
    posterior = None
    x_units = ""
    y_units = ""

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.n_points, 2)

    def draw_prior(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """x drawn as the challenge draws it: for a descending channel the end ~ U(box), the start ~
        U(end, top); for an ascending one the start ~ U(box), the end ~ U(start, top). In `dtype` on the
        generator's device."""
        u = torch.rand(n, 4, generator=generator, dtype=dtype, device=generator.device)
        return line_points(ends_from_unit(u, self.box, self.slopes), self.n_points)


@dataclass(frozen=True, eq=False)
class FieldProblem:
    """A problem whose model is a field of any shape (a profile, a grid of cells), drawn from its prior.

    `prior(n, generator, dtype)` returns n models (n, *x_shape) on the generator's device; `noise` is the
    standard deviation of the Gaussian noise on each y value (training pairs carry it, and fit is judged
    against it: chi-squared per datum); `x_scale` is the prior's typical |x|; `posterior` (optional) is the
    exact p(x | y), with `sample(y, n, seed)`, `mean(y)`, `std` and `constrained()`; `positions` are where
    the n_points measurements are taken (for surveys read from files and for figures)."""

    name: str
    forward: Forward
    x_shape: tuple[int, ...]
    n_points: int
    prior: Callable[[int, torch.Generator, torch.dtype], torch.Tensor]
    noise: float
    x_scale: float = 1.0
    k: int = 1
    x_units: str = ""
    y_units: str = ""
    posterior: Any = None
    positions: tuple[float, ...] | None = None
    cell: float | None = None  # the cell size of a grid (m), for figures
    description: str = ""

    family = "fields"
    cosines = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def draw_prior(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return self.prior(n, generator, dtype)


def cosine_problem(
    name: str,
    terms: Sequence[tuple[float, float, float]],
    box: tuple[float, float] = (0.1, 1.0),
    slopes: tuple[int, int] = (-1, 1),
    n_points: int = 50,
) -> LineProblem:
    """A problem whose conditions are y_j = cos(p_j*x0 + q_j*x1 + phi_j)."""
    terms = tuple((float(p), float(q), float(phi)) for p, q, phi in terms)
    coef = torch.tensor([[p for p, _, _ in terms], [q for _, q, _ in terms]], dtype=torch.float64)
    phase = torch.tensor([phi for _, _, phi in terms], dtype=torch.float64)

    on_device: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        # coefficients copied once per device and dtype, not on every call (a blocking copy on a GPU)
        key = (x.device, x.dtype)
        if key not in on_device:
            on_device[key] = (coef.to(x), phase.to(x))
        c, ph = on_device[key]
        return torch.cos(x @ c + ph)

    return LineProblem(name, forward, len(terms), n_points, box, slopes, terms)


TWO_BIRDS = cosine_problem("two_birds", [(49.0, 42.0, 0.0), (56.0, 63.0, 0.0)])


def _line_product(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 0] * x[..., 1]).unsqueeze(-1)


# y = x0 * x1 point by point: a y is explained by a one-parameter family of line pairs (scale one line
# up and the other down while both stay straight, in the box and correctly sloped), a continuum rather
# than separate points. The test bed of the mixed latent: a categorical-only model cannot cover it.
LINE_PRODUCT = LineProblem("line_product", _line_product, k=1)
BUILTIN: dict[str, LineProblem] = {TWO_BIRDS.name: TWO_BIRDS, LINE_PRODUCT.name: LINE_PRODUCT}


def gravity2d(prior: str = "gaussian", name: str | None = None, geometry: Any = None, **prior_options: Any) -> FieldProblem:
    """The 2D gravity problem (`cvae_opt.gravity`): density contrast (kg/m^3) on a grid under a profile,
    g_z (mGal) at surface stations. `prior`: gaussian (exact posterior known) or blocks; `geometry` a
    `gravity.Geometry` (grid, cell size, stations); `prior_options` set the prior's parameters (for
    gaussian: std, length_x, length_z; for blocks: max_bodies, contrast, width, thickness, max_dip)."""
    from . import gravity as gv

    geo = geometry if geometry is not None else gv.Geometry()
    p = gv.prior_named(prior, **prior_options)
    G = gv.sensitivity_matrix(geo)
    noise = gv.noise_std(p, geo)
    scale = p.std if isinstance(p, gv.GaussianField) else 100.0
    return FieldProblem(
        name=name or ("gravity2d" if prior == "gaussian" and not prior_options and geometry is None else f"gravity2d_{prior}"),
        forward=gv.LinearForward(G, geo.shape), x_shape=geo.shape, n_points=geo.n_stations,
        prior=lambda n, gen, dtype=torch.float64: gv.draw_prior(p, geo, n, gen, dtype),
        noise=noise, x_scale=scale, x_units="kg/m^3", y_units="mGal", posterior=gv.posterior_of(p, geo, noise),
        positions=tuple(float(v) for v in geo.stations), cell=geo.cell,
        description=f"2D gravity, {prior} prior, {geo.nz} x {geo.nx} cells of {geo.cell:g} m, {geo.n_stations} stations",
    )


# built when first named: they need Harmonica (the `gravity` extra) and a few seconds to build
def _gravity_grid(prior: str, grid: str) -> Callable[[], FieldProblem]:
    def build() -> FieldProblem:
        from .gravity import GEOMETRIES

        name = "gravity2d" + ("" if grid == "default" else f"_{grid}") + ("" if prior == "gaussian" else f"_{prior}")
        return gravity2d(prior, name=name, geometry=GEOMETRIES[grid])

    return build


LAZY: dict[str, Callable[[], Any]] = {
    "gravity2d": lambda: gravity2d("gaussian"),
    "gravity2d_blocks": lambda: gravity2d("blocks", name="gravity2d_blocks"),
    # the field-size grid: 32 x 64 cells of 50 m under 64 stations (gravity.GEOMETRIES)
    "gravity2d_32x64": _gravity_grid("gaussian", "32x64"),
    "gravity2d_32x64_blocks": _gravity_grid("blocks", "32x64"),
    # 64 x 128 cells under 128 stations: for timing how the suite grows with the grid (no exact posterior,
    # no held-out test set; benchmarks/grid_scaling.py)
    "gravity2d_64x128": _gravity_grid("gaussian", "64x128"),
}


def _benchmark_task(name: str) -> Callable[[], Any]:
    def build() -> Any:
        from .benchmark_tasks import task_problem

        return task_problem(name)

    return build


# the simulation-based-inference benchmark's tasks (cvae_opt.benchmark_tasks: sbibm's definitions)
BENCHMARK_TASKS = ("two_moons", "gaussian_mixture", "gaussian_linear_uniform", "slcp")
LAZY.update({name: _benchmark_task(name) for name in BENCHMARK_TASKS})


def check_line_forward(spec: str, forward: Forward, n_points: int) -> int:
    """Probe a user forward function once; return k. Catches the mistakes that would otherwise surface
    deep inside training: wrong shape, numpy instead of torch, no batching."""
    x = torch.rand(2, 3, n_points, 2, dtype=torch.float32, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.1
    x.requires_grad_(True)
    try:
        y = forward(x)
    except Exception as exc:  # the user's code: report whatever it raised
        raise UserError(
            f"problem {spec!r}: calling it on x of shape (2, 3, {n_points}, 2) raised "
            f"{type(exc).__name__}: {exc}; it must map x (..., {n_points}, 2) to y (..., {n_points}, k)"
        ) from None
    if not isinstance(y, torch.Tensor):
        raise UserError(
            f"problem {spec!r} returned {type(y).__name__}, expected a torch.Tensor of shape "
            f"(..., {n_points}, k) computed with torch operations"
        )
    if y.dim() != 4 or tuple(y.shape[:3]) != (2, 3, n_points) or y.shape[3] < 1:
        raise UserError(
            f"problem {spec!r} maps x of shape (2, 3, {n_points}, 2) to {tuple(y.shape)}, "
            f"expected (2, 3, {n_points}, k) with k >= 1"
        )
    if not y.requires_grad:
        raise UserError(
            f"problem {spec!r} returned a tensor without gradient: write it with torch operations "
            "(not numpy, not .detach()) so the physics loss can train through it"
        )
    if not torch.isfinite(y).all():
        raise UserError(f"problem {spec!r} returned NaN or inf for x inside the prior box")
    return int(y.shape[3])


_BUILT: dict[str, FieldProblem] = {}
# problems given by import path, probed once per process: spec -> (the object found there, the problem)
_PROBED: dict[str, tuple[Any, Problem]] = {}


def check_field_problem(spec: str, problem: Any) -> None:
    """Probe a user field problem once: its prior's and its forward map's shapes, gradient, finiteness."""
    shape = tuple(problem.x_shape)
    try:
        x = problem.draw_prior(3, torch.Generator().manual_seed(0), torch.float32)
    except Exception as exc:
        raise UserError(f"problem {spec!r}: drawing from its prior raised {type(exc).__name__}: {exc}") from None
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != (3, *shape):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserError(f"problem {spec!r}: its prior returned {got} for 3 draws, expected (3, {', '.join(map(str, shape))})")
    x = x.float().requires_grad_(True)
    try:
        y = problem(x)
    except Exception as exc:
        raise UserError(f"problem {spec!r}: calling it on x of shape {tuple(x.shape)} raised {type(exc).__name__}: {exc}; "
                        f"it must map x (..., {', '.join(map(str, shape))}) to y (..., {problem.n_points}, {problem.k})") from None
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (3, problem.n_points, problem.k):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise UserError(f"problem {spec!r} maps x of shape {tuple(x.shape)} to {got}, expected (3, {problem.n_points}, {problem.k})")
    if not y.requires_grad:
        raise UserError(f"problem {spec!r} returned a tensor without gradient: write it with torch operations "
                        "(not numpy, not .detach()) so the physics loss can train through it")
    if not torch.isfinite(y).all():
        raise UserError(f"problem {spec!r} returned NaN or inf for draws from its prior")


def resolve_problem(spec: str | Problem) -> Problem:
    """A built-in name (`two_birds`, `gravity2d`, `gravity2d_blocks`, `gravity2d_32x64`,
    `gravity2d_32x64_blocks`; the benchmark tasks `two_moons`, `gaussian_mixture`,
    `gaussian_linear_uniform`, `slcp`) or an import path
    `package.module:attr`, where attr is a problem (any object with a `family`: a LineProblem, a
    FieldProblem, a user's own kind) or a forward function of line pairs (then the default box and slopes
    apply). A problem found by import path is probed once per process by its family."""
    if not isinstance(spec, str):
        return spec
    if spec in BUILTIN:
        return BUILTIN[spec]
    if spec in LAZY:
        if spec not in _BUILT:
            _BUILT[spec] = LAZY[spec]()
        return _BUILT[spec]
    if ":" not in spec:
        raise UserError(
            f"unknown problem {spec!r}: use one of {sorted(BUILTIN) + sorted(LAZY)} or an import path 'package.module:callable'"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UserError(
            f"problem {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
            "check the name and that it is on PYTHONPATH"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"problem {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    seen = _PROBED.get(spec)
    if seen is not None and seen[0] is obj:  # probed already, and not reloaded or edited since
        return seen[1]
    if hasattr(obj, "family") and not isinstance(obj, type):
        from .families import family_of

        family_of(obj).probe(spec, obj)
        problem: Problem = obj
    elif not callable(obj):
        raise UserError(f"problem {spec!r} is a {type(obj).__name__}, expected a problem or a callable")
    else:
        problem = LineProblem(name=spec, forward=obj, k=check_line_forward(spec, obj, 50))
    _PROBED[spec] = (obj, problem)
    return problem


# what `package.module:attr` may look like when read from a file and shown back in a message
IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", re.ASCII)


def check_stored_spec(stored: str, given: str | None, *, builtin: bool, what: str, where: str, option: str,
                      keyword: str) -> None:
    """The one rule for a spec read from a file (a checkpoint's config, a submission's metadata) that
    picks code: importing `package.module:attr` runs that module, so nothing from a file decides which
    code runs. A file's built-in name (`builtin`) is used as it is; its import path only when the user gives
    the same spec (`option` on the command line, `keyword=` in the API); a given spec must be the stored
    one. Anything else is a UserError naming the fix. A stored name without ':' is left to its resolver
    (an unknown name imports nothing)."""
    if given is not None:
        if given == stored:
            return  # the user's own spec: they chose to run it
        fix = f"drop {option} or pass {option} {stored}" if builtin else (
            f"pass {option} {stored} (or {keyword}={stored!r}) if you trust it" if IMPORT_PATH.fullmatch(stored)
            else "it cannot be loaded")
        raise UserError(f"{where} names {what} {stored!r}, but {option} (or {keyword}=) gives {given!r}; {fix}")
    if builtin or ":" not in stored:
        return
    if not IMPORT_PATH.fullmatch(stored):
        raise UserError(f"{where} names {what} {stored!r}: neither a built-in name nor an import path "
                        "'package.module:attr'; refused")
    raise UserError(f"{where} names {what} {stored!r} by import path; loading it would run that code. "
                    f"If you trust it, pass {option} {stored} (or {keyword}={stored!r})")


def is_builtin_problem(name: str) -> bool:
    return name in BUILTIN or name in LAZY


def check_stored_problem(stored: str, given: str | None, where: str) -> None:
    """A problem a file names (`where`: e.g. 'checkpoint PATH'), by `check_stored_spec`: a built-in
    name, or an import path the user gives too (`given`: --problem, problem=)."""
    check_stored_spec(stored, given, builtin=is_builtin_problem(stored), what="problem", where=where,
                      option="--problem", keyword="problem")


def resolve_stored_problem(stored: str, given: str | None, where: str) -> Problem:
    """`check_stored_problem`, then the problem."""
    check_stored_problem(stored, given, where)
    return resolve_problem(stored)


def supports_forward_mode(problem: Problem) -> bool:
    """Whether forward-mode differentiation (`torch.func.jvp`) runs through the problem, as
    Levenberg-Marquardt refinement needs; a custom autograd.Function without a jvp does not."""
    x = problem.draw_prior(1, torch.Generator().manual_seed(0), torch.float64)
    try:
        torch.func.jvp(problem, (x,), (torch.ones_like(x),))
    except (RuntimeError, NotImplementedError):
        return False
    return True


def sample_misfit(problem: Problem, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The RMS misfit of each sample x (M, S, *x_shape) to its given y (M, P, k): (M, S), float64, on x's
    device, without gradient, in y's units. Metrics, refinement and the diverse selection all judge fit by it.
    Computed about 65,536 samples at a time, so an oversampled pool is never copied whole in float64."""
    with torch.no_grad():
        yd = y.double().to(x.device).unsqueeze(1)
        m, s = x.shape[:2]
        step = max(1, (1 << 16) // max(1, m))
        parts = [((problem(x[:, a : a + step].double()) - yd) ** 2).mean(dim=(-1, -2)).sqrt() for a in range(0, max(s, 1), step)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def line_points(ends: torch.Tensor, n_points: int) -> torch.Tensor:
    """End points (..., 4) = (x0 start, x0 end, x1 start, x1 end) -> straight lines (..., n_points, 2)."""
    t = torch.linspace(0.0, 1.0, n_points, dtype=ends.dtype, device=ends.device)
    start = ends[..., [0, 2]].unsqueeze(-2)
    stop = ends[..., [1, 3]].unsqueeze(-2)
    return start + (stop - start) * t.unsqueeze(-1)


def ends_from_unit(u: torch.Tensor, box: tuple[float, float], slopes: tuple[int, int]) -> torch.Tensor:
    """Map four numbers in [0, 1] to end points inside the box with the declared slope signs.

    The map mirrors how the prior is drawn: a descending channel's end is free in the box and its start
    lies between the end and the top; an ascending one the other way round. Every u in [0, 1]^4 gives a
    valid pair of lines, and every valid pair has such a u, so a sigmoid in front of it makes a decoder
    head that is straight, in the box and correctly sloped by construction.
    """
    lo, hi = box
    out = []
    for c, sign in enumerate(slopes):
        a, b = u[..., 2 * c], u[..., 2 * c + 1]
        if sign < 0:  # descending: end free, start in [end, hi]
            end = lo + (hi - lo) * a
            start = end + (hi - end) * b
        elif sign > 0:  # ascending: start free, end in [start, hi]
            start = lo + (hi - lo) * a
            end = start + (hi - start) * b
        else:
            start = lo + (hi - lo) * a
            end = lo + (hi - lo) * b
        out += [start, end]
    return torch.stack(out, dim=-1)


def unit_from_ends(ends: torch.Tensor, box: tuple[float, float], slopes: tuple[int, int]) -> torch.Tensor:
    """Inverse of `ends_from_unit` (clamped), used to start refinement from a decoded sample."""
    lo, hi = box
    eps = 1e-6
    out = []
    for c, sign in enumerate(slopes):
        start, end = ends[..., 2 * c].clamp(lo, hi), ends[..., 2 * c + 1].clamp(lo, hi)
        if sign < 0:
            start = torch.maximum(start, end)
            a = (end - lo) / (hi - lo)
            b = (start - end) / (hi - end).clamp_min(eps)
        elif sign > 0:
            end = torch.maximum(start, end)
            a = (start - lo) / (hi - lo)
            b = (end - start) / (hi - start).clamp_min(eps)
        else:
            a, b = (start - lo) / (hi - lo), (end - lo) / (hi - lo)
        out += [a, b]
    return torch.stack(out, dim=-1).clamp(0.0, 1.0)



def line_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The least-squares straight line through each channel of samples x (..., P, 2) on an even grid:
    R^2 (..., 2) (1 = straight; a flat channel counts as straight when it is constant), slope (..., 2)
    over the whole line, and end points (..., 4) = (x0 start, x0 end, x1 start, x1 end)."""
    p = x.shape[-2]
    t = torch.linspace(0.0, 1.0, p, dtype=x.dtype, device=x.device)
    tc = (t - t.mean()).unsqueeze(-1)
    mean = x.mean(dim=-2, keepdim=True)
    slope = (tc * (x - mean)).sum(dim=-2) / (tc**2).sum()
    fit = mean + slope.unsqueeze(-2) * tc
    ss_res = ((x - fit) ** 2).sum(dim=-2)
    ss_tot = ((x - mean) ** 2).sum(dim=-2)
    flat = torch.where(ss_res < 1e-10, 1.0, 0.0).to(x.dtype)
    r2 = torch.where(ss_tot > 1e-12, 1.0 - ss_res / ss_tot.clamp_min(1e-12), flat)
    start = mean.squeeze(-2) - slope * t.mean()
    end = start + slope
    ends = torch.stack([start[..., 0], end[..., 0], start[..., 1], end[..., 1]], dim=-1)
    return r2, slope, ends


def line_ends(x: torch.Tensor) -> torch.Tensor:
    """End points (..., 4) of the least-squares lines through samples (..., P, 2): see `line_fit`."""
    return line_fit(x)[2]
