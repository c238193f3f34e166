"""A 2D gravity inversion: density contrast on a grid of cells under a profile, measured as the
vertical gravity anomaly at surface stations.

Conventions (as in Harmonica): coordinates in metres; the profile runs along easting (x) with the grid's
left edge at x = 0; depth z is positive down with the surface at z = 0 (Harmonica's `upward` is -z);
stations sit on the surface. x, the model, is the density contrast in kg/m^3 of each cell, an array
(nz, nx) with row 0 at the top and column 0 at the left. y is the vertical component of the
gravitational acceleration g_z in mGal, positive downward (so a positive contrast below gives a
positive anomaly), one value per station, as (n_stations, 1).

The forward operator is linear, y = G x + noise, with G the cells' sensitivity matrix (mGal per
kg/m^3) computed once with `harmonica.prism_gravity`: each cell is a prism +-`strike` metres long
along strike, so the problem is two-dimensional to within a relative error of about
(depth / strike)^2 (below 1e-4 for the default grid, checked in tests against the closed-form 2D
rectangular-prism formula). Harmonica is the `gravity` extra (`pip install 'cvae-opt[gravity]'`).

Priors:
- `gaussian`: a Gaussian random field, mean 0, standard deviation 100 kg/m^3, squared-exponential
  correlation exp(-dx^2 / (2 lx^2) - dz^2 / (2 lz^2)) with lx = 200 m across and lz = 100 m down. The
  posterior under the linear forward map and Gaussian noise is Gaussian, computed exactly
  (`GaussianPosterior`) and sampled with Matheron's update (an n_stations-square factorisation). Prior
  draws use a dense square root of the covariance up to `DENSE_MAX_CELLS` cells (what every committed
  figure was drawn with); on larger grids the square root of the separable correlation, Lz (x) Lx (two
  small factorisations), and the exact posterior is left out (its dense covariance alone would be
  n_cells^2 doubles: 537 MB at 64 x 128).
- `blocks`: one to three compact bodies (rectangles or dipping slabs: random position, size, dip and
  contrast between 100 and 500 kg/m^3 of either sign) in a homogeneous background of contrast 0. No
  closed-form posterior: it has the depth / size / density trade-off that makes gravity non-unique.

Grids built in (`GEOMETRIES`): `default` 16 x 32 cells of 50 m under 32 stations from 400 m before the
grid to 400 m past it (`gravity2d`, `gravity2d_blocks`); `32x64`, the same 50 m cells over a domain 1.6 km
deep and 3.2 km across under 64 stations with margins of 800 m, so the stations span the grid as the
default's do (`gravity2d_32x64`, `gravity2d_32x64_blocks`); `64x128` under 128 stations (timing only:
`benchmarks/grid_scaling.py`).

The noise is Gaussian with standard deviation 5% of the median peak anomaly (max |g_z| over the
stations) of 4,000 prior draws (seed 0), fixed per prior and grid: 0.0581 mGal for the gaussian prior and
0.0403 mGal for blocks on the default grid (`Geometry`, `gravity2d`); 0.0809 and 0.0278 mGal on the 32 x 64 grid.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import DEFAULT_CACHE_DIR
from .errors import UserError
from .files import atomic_write

GRAV_CONST = 6.674_30e-11  # m^3 kg^-1 s^-2 (CODATA 2018)
SI_TO_MGAL = 1e5


@dataclass(frozen=True)
class Geometry:
    """The grid under the profile and the stations on it (metres)."""

    nz: int = 16  # cells down
    nx: int = 32  # cells across
    cell: float = 50.0  # cell size (m), square cells
    n_stations: int = 32
    margin: float = 400.0  # stations run from `margin` before the grid's left edge to `margin` past its right
    strike: float = 100_000.0  # half-length of the prisms along strike (m)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.nz, self.nx)

    @property
    def stations(self) -> np.ndarray:
        return np.linspace(-self.margin, self.nx * self.cell + self.margin, self.n_stations)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell centres (x across, z down), each (nz, nx)."""
        xc = (np.arange(self.nx) + 0.5) * self.cell
        zc = (np.arange(self.nz) + 0.5) * self.cell
        return np.meshgrid(xc, zc)


# the built-in grids (see the module docstring); the 32 x 64 one is the field-size problem of issue 26
GEOMETRIES: dict[str, Geometry] = {
    "default": Geometry(),
    "32x64": Geometry(nz=32, nx=64, n_stations=64, margin=800.0),
    "64x128": Geometry(nz=64, nx=128, n_stations=128, margin=1600.0),
}
DENSE_MAX_CELLS = 2048  # prior draws by a dense square root and the exact posterior up to this many cells


def _require_harmonica():  # noqa: ANN202
    try:
        import harmonica
    except ImportError:
        raise UserError(
            "the gravity2d problem computes its forward operator with Harmonica, which is not installed: "
            "pip install 'cvae-opt[gravity]' (or pip install harmonica)"
        ) from None
    return harmonica


def compute_sensitivity(geometry: Geometry) -> np.ndarray:
    """G from Harmonica, one prism per cell (about 2 s for import and compilation, then 0.05 s)."""
    hm = _require_harmonica()
    xs = geometry.stations
    coords = (xs, np.zeros_like(xs), np.zeros_like(xs))
    G = np.empty((geometry.n_stations, geometry.nz * geometry.nx))
    for i in range(geometry.nz):
        top, bottom = -i * geometry.cell, -(i + 1) * geometry.cell
        for j in range(geometry.nx):
            west, east = j * geometry.cell, (j + 1) * geometry.cell
            prism = [west, east, -geometry.strike, geometry.strike, bottom, top]
            G[:, i * geometry.nx + j] = hm.prism_gravity(coords, prism, 1.0, field="g_z")
    return G


def _cache_path(kind: str, *key: object) -> Path:
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
    return Path(os.environ.get("CVAE_OPT_CACHE_DIR", DEFAULT_CACHE_DIR)) / f"gravity2d-{kind}-{digest}.npy"


def _cached(kind: str, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """A value computed once per machine: kept in the data cache (storage/data, or CVAE_OPT_CACHE_DIR), so
    every trial process does not import Harmonica and compile its kernels again. The key holds every input."""
    path = _cache_path(kind, *key)
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            pass  # a partial or foreign file: computed again and rewritten
    value = compute()
    try:
        atomic_write(path, lambda fh: np.save(fh, value, allow_pickle=False))
    except OSError:
        pass  # a read-only cache folder only costs the time
    return value


@lru_cache(maxsize=8)
def _sensitivity(geometry: Geometry) -> np.ndarray:
    return _cached("G", (geometry, _harmonica_version()), lambda: compute_sensitivity(geometry))


def _harmonica_version() -> str:
    try:
        from importlib.metadata import version

        return version("harmonica")
    except Exception:  # not installed: computing G will say how to install it
        return "missing"


def sensitivity_matrix(geometry: Geometry = Geometry()) -> np.ndarray:
    """G (n_stations, nz * nx): the g_z in mGal at each station of each cell at 1 kg/m^3 (cells in row-major
    order, row 0 at the top). Computed once per geometry and process with `harmonica.prism_gravity`."""
    return _sensitivity(geometry).copy()


class LinearForward:
    """y = G x for x (..., nz, nx) -> (..., n_stations, 1), differentiable; G copied to each device and
    dtype once."""

    def __init__(self, G: np.ndarray, shape: tuple[int, int]):
        self.G = torch.from_numpy(np.ascontiguousarray(G))
        self.shape = shape
        self._on: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def matrix(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._on:
            self._on[key] = self.G.to(device=like.device, dtype=like.dtype)
        return self._on[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(-2) @ self.matrix(x).T).unsqueeze(-1)


# -- priors -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GaussianField:
    """A Gaussian random field on the grid: mean 0, standard deviation `std` (kg/m^3), squared-exponential
    correlation with lengths `length_x` across and `length_z` down (m)."""

    std: float = 100.0
    length_x: float = 200.0
    length_z: float = 100.0

    name = "gaussian"

    def covariance(self, geometry: Geometry) -> np.ndarray:
        xc, zc = (a.ravel() for a in geometry.centres())
        dx = (xc[:, None] - xc[None]) / self.length_x
        dz = (zc[:, None] - zc[None]) / self.length_z
        return self.std**2 * np.exp(-0.5 * (dx**2 + dz**2))

    def factors(self, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """Square roots (Lz, Lx) of the correlation down and across, std folded into Lz: the covariance is
        separable, C = Cz (x) Cx in the row-major cell order, so x = Lz E Lx^T for E (nz, nx) ~ N(0, I)."""
        zc = (np.arange(geometry.nz) + 0.5) * geometry.cell
        xc = (np.arange(geometry.nx) + 0.5) * geometry.cell
        roots = []
        for c, length, scale in ((zc, self.length_z, self.std), (xc, self.length_x, 1.0)):
            vals, vecs = np.linalg.eigh(np.exp(-0.5 * ((c[:, None] - c[None]) / length) ** 2))
            roots.append(scale * vecs * np.sqrt(np.clip(vals, 0.0, None)))
        return roots[0], roots[1]


@lru_cache(maxsize=8)
def _field_factor(prior: GaussianField, geometry: Geometry) -> np.ndarray:
    """A square root L of the prior covariance (L L^T = C), by eigendecomposition: the squared-exponential
    covariance is numerically singular, where a Cholesky factorisation fails."""
    vals, vecs = np.linalg.eigh(prior.covariance(geometry))
    return vecs * np.sqrt(np.clip(vals, 0.0, None))


@dataclass(frozen=True)
class Blocks:
    """One to `max_bodies` compact bodies in a background of contrast 0: rectangles or dipping slabs
    (parallelograms), centre anywhere across the grid, top between 0 and 60% of its depth, width 100 to
    600 m, thickness 50 to 300 m, dip -60 to 60 degrees for slabs, contrast 100 to 500 kg/m^3 of either sign.
    Cells take the share of their area inside a body (2 x 2 points per cell); overlapping bodies add."""

    max_bodies: int = 3
    contrast: tuple[float, float] = (100.0, 500.0)
    width: tuple[float, float] = (100.0, 600.0)
    thickness: tuple[float, float] = (50.0, 300.0)
    max_dip: float = 60.0

    name = "blocks"


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=dtype, device=gen.device)


def draw_blocks(prior: Blocks, geometry: Geometry, n: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    dev = gen.device
    sub = 2  # points per cell side
    xs = (torch.arange(geometry.nx * sub, device=dev, dtype=dtype) + 0.5) * geometry.cell / sub
    zs = (torch.arange(geometry.nz * sub, device=dev, dtype=dtype) + 0.5) * geometry.cell / sub
    Z, X = torch.meshgrid(zs, xs, indexing="ij")
    width_m, depth_m = geometry.nx * geometry.cell, geometry.nz * geometry.cell
    count = 1 + torch.randint(prior.max_bodies, (n,), generator=gen, device=dev)
    out = torch.zeros(n, *Z.shape, device=dev, dtype=dtype)
    for b in range(prior.max_bodies):
        cx = _uniform(n, 0.0, width_m, gen, dtype)
        top = _uniform(n, 0.0, 0.6 * depth_m, gen, dtype)
        w = _uniform(n, *prior.width, gen, dtype)
        t = _uniform(n, *prior.thickness, gen, dtype)
        slab = torch.rand(n, generator=gen, device=dev) < 0.5
        dip = torch.where(slab, _uniform(n, -prior.max_dip, prior.max_dip, gen, dtype), torch.zeros((), dtype=dtype, device=dev))
        sign = torch.where(torch.rand(n, generator=gen, device=dev) < 0.5, -1.0, 1.0).to(dtype)
        rho = sign * _uniform(n, *prior.contrast, gen, dtype)
        v = lambda a: a.view(n, 1, 1)  # noqa: E731
        # a slab's horizontal extent shifts with depth by tan(dip): a parallelogram
        shift = (Z.unsqueeze(0) - v(top)) * torch.tan(torch.deg2rad(v(dip)))
        inside = ((X.unsqueeze(0) - v(cx) - shift).abs() <= v(w) / 2) & (Z.unsqueeze(0) >= v(top)) & (Z.unsqueeze(0) <= v(top + t))
        active = (count > b).to(dtype)
        out = out + inside.to(dtype) * v(rho * active)
    return out.view(n, geometry.nz, sub, geometry.nx, sub).mean(dim=(2, 4))


def draw_prior(prior: GaussianField | Blocks, geometry: Geometry, n: int, gen: torch.Generator,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n models (n, nz, nx) from the prior, drawn on the generator's device."""
    if isinstance(prior, GaussianField) and geometry.nz * geometry.nx <= DENSE_MAX_CELLS:
        L = torch.from_numpy(_field_factor(prior, geometry)).to(device=gen.device, dtype=dtype)
        eps = torch.randn(n, L.shape[1], generator=gen, device=gen.device, dtype=dtype)
        return (eps @ L.T).view(n, *geometry.shape)
    if isinstance(prior, GaussianField):  # a large grid: the separable square root, no n_cells^2 matrix
        Lz, Lx = (torch.from_numpy(f).to(device=gen.device, dtype=dtype) for f in prior.factors(geometry))
        eps = torch.randn(n, geometry.nz, geometry.nx, generator=gen, device=gen.device, dtype=dtype)
        return Lz @ eps @ Lx.T
    return draw_blocks(prior, geometry, n, gen, dtype)


# -- the exact posterior of the gaussian prior --------------------------------------------------------
@dataclass
class GaussianPosterior:
    """p(x | y) for x ~ N(0, C), y = G x + e, e ~ N(0, s^2 I): Gaussian with mean K y and covariance
    C - K G C, K = C G^T (G C G^T + s^2 I)^-1 (only an n_stations-square system is factorised).
    Sampled by Matheron's update: x_prior + K (y - G x_prior - e) for a prior draw and a noise draw."""

    C: np.ndarray
    G: np.ndarray
    noise: float
    L: np.ndarray  # prior square root
    shape: tuple[int, int]
    K: np.ndarray = field(init=False)
    cov: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        S = self.G @ self.C @ self.G.T + self.noise**2 * np.eye(len(self.G))
        cf = np.linalg.cholesky(S)
        CGt = self.C @ self.G.T
        self.K = np.linalg.solve(cf.T, np.linalg.solve(cf, CGt.T)).T  # C G^T S^-1
        self.cov = self.C - self.K @ CGt.T

    @property
    def std(self) -> np.ndarray:
        """Posterior standard deviation per cell (nz, nx); it does not depend on y."""
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None)).reshape(self.shape)

    @property
    def prior_std(self) -> np.ndarray:
        return np.sqrt(np.diag(self.C)).reshape(self.shape)

    def constrained(self, ratio: float = 0.7) -> np.ndarray:
        """Cells the data constrain: posterior std at most `ratio` of the prior's (bool, (nz, nx))."""
        return self.std <= ratio * self.prior_std

    def mean(self, y: torch.Tensor | np.ndarray) -> np.ndarray:
        """Posterior means (M, nz, nx) for y (M, n_stations, 1) or (M, n_stations)."""
        yy = np.asarray(torch.as_tensor(y).detach().cpu().double()).reshape(len(y), -1)
        return (yy @ self.K.T).reshape(len(yy), *self.shape)

    def sample(self, y: torch.Tensor | np.ndarray, n: int, seed: int = 0) -> torch.Tensor:
        """n exact posterior draws per y: (M, n, nz, nx), float64."""
        yy = np.asarray(torch.as_tensor(y).detach().cpu().double()).reshape(len(y), -1)
        rng = np.random.default_rng(seed)
        m = len(yy)
        xp = rng.standard_normal((m, n, self.L.shape[1])) @ self.L.T  # prior draws
        e = self.noise * rng.standard_normal((m, n, len(self.G)))
        resid = yy[:, None, :] - xp @ self.G.T - e
        return torch.from_numpy((xp + resid @ self.K.T).reshape(m, n, *self.shape))


# -- noise ----------------------------------------------------------------------------------------------
NOISE_FRACTION = 0.05
NOISE_DRAWS = 4000


@lru_cache(maxsize=16)
def noise_std(prior: GaussianField | Blocks, geometry: Geometry) -> float:
    """5% of the median peak |g_z| over the stations of 4,000 prior draws (seed 0), in mGal."""
    def compute() -> np.ndarray:
        G = torch.from_numpy(_sensitivity(geometry))
        x = draw_prior(prior, geometry, NOISE_DRAWS, torch.Generator().manual_seed(0), torch.float64)
        peak = (x.flatten(1) @ G.T).abs().max(dim=1).values
        return np.array([NOISE_FRACTION * float(peak.median())])

    return float(_cached("noise", (prior, geometry, NOISE_FRACTION, NOISE_DRAWS, float(_sensitivity(geometry).sum())), compute)[0])


def prior_named(name: str, **options: float) -> GaussianField | Blocks:
    if name == "gaussian":
        return GaussianField(**options)
    if name == "blocks":
        return Blocks(**options)
    raise UserError(f"gravity2d: unknown prior {name!r}; use gaussian or blocks")


def posterior_of(prior: GaussianField | Blocks, geometry: Geometry, noise: float) -> GaussianPosterior | None:
    """The exact posterior of the gaussian prior up to DENSE_MAX_CELLS cells; None for blocks (there is
    none in closed form) and for larger grids (left out: dense n_cells^2 matrices)."""
    if not isinstance(prior, GaussianField) or geometry.nz * geometry.nx > DENSE_MAX_CELLS:
        return None
    return GaussianPosterior(prior.covariance(geometry), _sensitivity(geometry), noise,
                             _field_factor(prior, geometry), geometry.shape)
