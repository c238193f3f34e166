"""The built-in gravity grids beyond the default (issue 26, field size): the 32 x 64 grid's forward operator
against the closed-form 2D prism formula, its noise and exact posterior, its held-out test sets, and the
separable prior square root that large grids draw with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("harmonica")  # the gravity extra; CI installs it (dev extra)

from cvae_opt import gravity as gv  # noqa: E402
from cvae_opt.data import load_pairs  # noqa: E402
from cvae_opt.problems import resolve_problem  # noqa: E402
from test_gravity import SMALL, prism_2d  # noqa: E402

GRID = gv.GEOMETRIES["32x64"]


def test_32x64_geometry_spans_its_grid_as_the_default_does():
    default = gv.GEOMETRIES["default"]
    assert GRID.shape == (32, 64) and GRID.cell == default.cell == 50.0 and GRID.n_stations == 64
    for geo in (default, GRID):  # stations from a quarter of the grid's width before it to a quarter past it
        width = geo.nx * geo.cell
        assert geo.stations[0] == pytest.approx(-0.25 * width) and geo.stations[-1] == pytest.approx(1.25 * width)
    spacing = np.diff(GRID.stations)
    assert np.allclose(spacing, spacing[0]) and abs(spacing[0] - np.diff(default.stations)[0]) < 2.0  # ~76-77 m


def test_32x64_forward_operator_matches_the_2d_prism_formula():
    G = gv.compute_sensitivity(GRID)  # Harmonica itself
    assert G.shape == (64, 32 * 64)
    assert np.array_equal(G, gv.sensitivity_matrix(GRID))  # what the problem uses (the cached copy)
    # a body 1.0-1.6 km across, 0.5-1.2 km deep, -250 kg/m^3: 2D to within 1e-4 of the peak (strike +-100 km)
    x = np.zeros(GRID.shape)
    x[10:24, 20:32] = -250.0
    ref = prism_2d(GRID.stations, 1000.0, 1600.0, 500.0, 1200.0, -250.0)
    g = G @ x.ravel()
    assert np.abs(g - ref).max() < 1e-4 * np.abs(ref).max()
    assert g.max() < 0 and np.argmin(g) == np.argmin(np.abs(GRID.stations - 1300.0))  # negative, over the body
    # the deepest corner cell, 1.55-1.6 km down: still within 1e-3
    x = np.zeros(GRID.shape)
    x[-1, -1] = 1.0
    ref = prism_2d(GRID.stations, 3150.0, 3200.0, 1550.0, 1600.0, 1.0)
    assert np.abs(G @ x.ravel() - ref).max() < 1e-3 * np.abs(ref).max()


def test_32x64_problems_noise_posterior_and_test_sets():
    p = resolve_problem("gravity2d_32x64")
    b = resolve_problem("gravity2d_32x64_blocks")
    assert p.x_shape == b.x_shape == (32, 64) and p.n_points == b.n_points == 64
    # the default's rule (5% of the median peak of 4,000 prior draws), as the module docstring states
    assert p.noise == pytest.approx(0.0809, abs=5e-4) and b.noise == pytest.approx(0.0278, abs=5e-4)
    assert p.noise == pytest.approx(gv.noise_std(gv.GaussianField(), GRID))
    assert b.posterior is None and p.posterior is not None
    post = p.posterior
    assert post.std.shape == (32, 64) and (post.std <= post.prior_std + 1e-9).all()
    # the data constrain shallow cells (a third of the top row, 218 cells in all: the coverage metrics'
    # cells) and no cell of the bottom row
    assert post.std[0].mean() < post.std[-1].mean() and post.constrained()[0].mean() > 0.3
    assert post.constrained()[-1].sum() == 0 and post.constrained().sum() > 150
    for name, problem in (("gravity2d_32x64:test", p), ("gravity2d_32x64_blocks:test", b)):
        pairs = load_pairs(name, problem)
        x, y = pairs.x, pairs.y
        assert x.shape == (50, 32, 64) and y.shape == (50, 64, 1)
        resid = (y - problem(x)) / problem.noise  # the declared noise, not a noiseless y
        assert 0.8 < float(resid.std()) < 1.2
    assert load_pairs("gravity2d:test", resolve_problem("gravity2d")).x.shape == (50, 16, 32)


def test_separable_square_root_is_the_covariance():
    prior = gv.GaussianField(std=100.0, length_x=60.0, length_z=60.0)
    Lz, Lx = prior.factors(SMALL)
    assert np.allclose(np.kron(Lz @ Lz.T, Lx @ Lx.T), prior.covariance(SMALL), atol=1e-8 * 100**2)


def test_grids_above_the_dense_limit_draw_by_the_separable_root():
    geo = gv.GEOMETRIES["64x128"]
    assert geo.nz * geo.nx > gv.DENSE_MAX_CELLS
    prior = gv.GaussianField()
    x = gv.draw_prior(prior, geo, 400, torch.Generator().manual_seed(0), torch.float64)
    assert x.shape == (400, 64, 128)
    assert float(x.std()) == pytest.approx(100.0, rel=0.05)
    # neighbour correlations of the squared-exponential field: exp(-0.5 (50/200)^2) across, (50/100)^2 down
    across = float((x[..., 1:] * x[..., :-1]).mean() / x.var())
    down = float((x[:, 1:] * x[:, :-1]).mean() / x.var())
    assert across == pytest.approx(np.exp(-0.5 * 0.25**2), abs=0.02)
    assert down == pytest.approx(np.exp(-0.5 * 0.5**2), abs=0.03)
    assert gv.posterior_of(prior, geo, 0.1) is None  # left out there (dense n_cells^2)
    again = gv.draw_prior(prior, geo, 400, torch.Generator().manual_seed(0), torch.float64)
    assert torch.equal(x, again)
