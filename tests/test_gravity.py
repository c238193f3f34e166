"""The gravity2d problem and the shape-generic machinery: forward operator against a closed form, the
exact posterior against a brute-force computation, both priors, models of any shape, the commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("harmonica")  # the gravity extra; CI installs it (dev extra)

from cvae_opt import gravity as gv  # noqa: E402
from cvae_opt.config import Config  # noqa: E402
from cvae_opt.errors import UserError  # noqa: E402
from cvae_opt.field_metrics import evaluate_field_samples  # noqa: E402
from cvae_opt.models import build_model  # noqa: E402
from cvae_opt.posterior import Posterior  # noqa: E402
from cvae_opt.problems import FieldProblem, gravity2d, resolve_problem  # noqa: E402
from cvae_opt.surveys import read_survey, write_survey  # noqa: E402
from cvae_opt.train import train  # noqa: E402

SMALL = gv.Geometry(nz=4, nx=6, cell=50.0, n_stations=5, margin=100.0)


def prism_2d(x_obs: np.ndarray, x1: float, x2: float, z1: float, z2: float, rho: float) -> np.ndarray:
    """g_z (mGal, down positive) of an infinitely long rectangular prism, the textbook 2D formula:
    2 G rho [F(x2, z2) - F(x1, z2) - F(x2, z1) + F(x1, z1)], F(x, z) = z atan(x / z) + x/2 ln(x^2 + z^2),
    x relative to the station, z depth (positive down, z1 > 0)."""
    def F(x: np.ndarray, z: float) -> np.ndarray:
        return z * np.arctan2(x, z) + 0.5 * x * np.log(x * x + z * z)

    a, b = x1 - x_obs, x2 - x_obs
    return 2 * gv.GRAV_CONST * rho * (F(b, z2) - F(a, z2) - F(b, z1) + F(a, z1)) * gv.SI_TO_MGAL


def test_forward_operator_matches_the_2d_prism_formula():
    geo = gv.Geometry()
    G = gv.compute_sensitivity(geo)  # Harmonica itself, not the cached copy
    assert G.shape == (32, 16 * 32)
    assert np.array_equal(G, gv.sensitivity_matrix(geo))  # what the problem uses
    # a body of 4 x 6 cells, 300 kg/m^3, from 100 m to 300 m depth and 500 m to 800 m across
    x = np.zeros(geo.shape)
    x[2:6, 10:16] = 300.0
    g = G @ x.ravel()
    ref = prism_2d(geo.stations, 500.0, 800.0, 100.0, 300.0, 300.0)
    assert np.abs(g - ref).max() < 1e-4 * np.abs(ref).max()  # 2D to within 1e-4 (strike +-100 km)
    assert g.min() > 0 and np.argmax(g) == np.argmin(np.abs(geo.stations - 650.0))  # positive, peak above the body
    # the deepest cell: the error stays small there too
    x = np.zeros(geo.shape)
    x[-1, 0] = 1.0
    ref = prism_2d(geo.stations, 0.0, 50.0, 750.0, 800.0, 1.0)
    assert np.abs(G @ x.ravel() - ref).max() < 1e-3 * np.abs(ref).max()


def test_problem_forward_is_differentiable_and_batched():
    p = resolve_problem("gravity2d")
    assert p.x_shape == (16, 32) and p.n_points == 32 and p.k == 1
    assert p.noise == pytest.approx(0.0581, abs=5e-4)  # 5% of the median peak anomaly, as documented
    x = p.draw_prior(6, torch.Generator().manual_seed(0), torch.float32).view(2, 3, 16, 32).requires_grad_(True)
    y = p(x)
    assert y.shape == (2, 3, 32, 1)
    y.sum().backward()
    G = torch.from_numpy(gv.sensitivity_matrix())
    assert torch.allclose(x.grad[0, 0].double().flatten(), G.sum(0), rtol=1e-5)


def test_exact_posterior_matches_brute_force_on_a_small_grid():
    prior = gv.GaussianField(std=100.0, length_x=60.0, length_z=60.0)
    G = gv.compute_sensitivity(SMALL)
    noise = 0.05
    post = gv.posterior_of(prior, SMALL, noise)
    C = prior.covariance(SMALL)
    # information form, an independent route: Sigma = (C^-1 + G^T G / s^2)^-1, mean = Sigma G^T y / s^2
    Sigma = np.linalg.inv(np.linalg.inv(C) + G.T @ G / noise**2)
    rng = np.random.default_rng(0)
    x_true = np.linalg.cholesky(C) @ rng.standard_normal(len(C))
    y = G @ x_true + noise * rng.standard_normal(len(G))
    mean = Sigma @ G.T @ y / noise**2
    yt = torch.from_numpy(y).view(1, -1, 1)
    assert np.allclose(post.mean(yt)[0].ravel(), mean, atol=1e-6 * 100)
    assert np.allclose(post.cov, Sigma, atol=1e-6 * 100**2)
    assert np.allclose(post.std.ravel(), np.sqrt(np.diag(Sigma)), rtol=1e-6)
    # Matheron's update draws from it: sample mean and covariance of 40,000 draws
    s = post.sample(yt, 40_000, seed=3)[0].reshape(40_000, -1).numpy()
    sd = np.sqrt(np.diag(Sigma))
    assert np.abs(s.mean(0) - mean).max() < 4 * sd.max() / np.sqrt(40_000) * 1.5
    assert np.abs(np.cov(s.T) - Sigma).max() < 0.05 * Sigma.max()
    # the constrained cells are the ones the posterior std shrinks below 0.7 of the prior's
    assert (post.constrained() == (post.std <= 0.7 * 100.0)).all()


def test_gaussian_prior_has_its_covariance():
    prior = gv.GaussianField(std=100.0, length_x=60.0, length_z=60.0)
    x = gv.draw_prior(prior, SMALL, 40_000, torch.Generator().manual_seed(1), torch.float64).reshape(40_000, -1).numpy()
    assert np.abs(np.cov(x.T) - prior.covariance(SMALL)).max() < 0.04 * 100**2
    assert abs(x.mean()) < 2.0


def test_blocks_prior_draws_compact_bodies():
    prior = gv.Blocks()
    gen = torch.Generator().manual_seed(2)
    x = gv.draw_prior(prior, gv.Geometry(), 400, gen, torch.float64)
    assert x.shape == (400, 16, 32)
    nonzero = (x.abs() > 1e-9).flatten(1)
    assert (nonzero.any(1)).float().mean() > 0.95  # almost every draw has a body inside the grid
    assert (nonzero.float().mean(1) < 0.6).all()  # compact: a background of contrast 0 remains
    assert x.abs().max() <= 3 * 500.0 + 1e-9
    big = x.abs()[x.abs() > 1e-9]
    assert (big >= 100.0 / 4 - 1e-9).float().mean() > 0.9  # cells fully inside a body carry >= 100 kg/m^3
    again = gv.draw_prior(prior, gv.Geometry(), 400, torch.Generator().manual_seed(2), torch.float64)
    assert torch.equal(x, again)  # seeded
    assert resolve_problem("gravity2d_blocks").posterior is None


def test_sbc_breaks_ties_so_a_calibrated_sampler_with_exact_zeros_passes():
    """The blocks prior's background is exactly 0: a sampler drawing from the truth's own distribution
    (an atom at 0 and a continuous part) is calibrated, and a continuous one that smears the atom is not."""
    from cvae_opt.field_metrics import calibration_metrics

    rng = np.random.default_rng(1)

    def spike_slab(*shape):
        return np.where(rng.random(shape) < 0.8, 0.0, rng.normal(size=shape))

    truth = spike_slab(60, 40)
    calibrated = calibration_metrics(spike_slab(60, 200, 40), truth, 1.0)
    smeared = calibration_metrics(np.where(rng.random((60, 200, 40)) < 0.8, 0.01 * rng.normal(size=(60, 200, 40)),
                                           rng.normal(size=(60, 200, 40))), truth, 1.0)
    assert calibrated["sbc_ks"] < 0.03  # strict ranks put every tied truth at the bottom: KS 0.74
    assert smeared["sbc_ks"] > 0.2
    assert calibrated["crps"] < calibration_metrics(np.zeros((60, 200, 40)), truth, 1.0)["crps"]  # a proper score
    one = spike_slab(1, 7, 1)  # the fair CRPS from sorted samples, against the pairwise sums written out
    t = np.array([[0.3]])
    direct = np.abs(one[0, :, 0] - 0.3).mean() - 0.5 * np.abs(one[0, :, None, 0] - one[0, None, :, 0]).sum() / (7 * 6)
    assert calibration_metrics(one, t, 2.0)["crps"] == pytest.approx(direct / 2.0)
    zeros = np.zeros((60, 200, 40))
    assert calibration_metrics(zeros, truth, 1.0)["sbc_ks"] == calibration_metrics(zeros, truth, 1.0)["sbc_ks"]  # seeded


def test_field_metrics_exact_posterior_is_calibrated_and_prior_is_not():
    p = resolve_problem("gravity2d")
    gen = torch.Generator().manual_seed(4)
    truth = p.draw_prior(40, gen, torch.float64)
    y = p(truth) + p.noise * torch.randn(40, 32, 1, generator=gen, dtype=torch.float64)
    exact = evaluate_field_samples(p, p.posterior.sample(y, 200, seed=5), y, truth)
    assert 0.85 < exact["chi2_median"] < 1.2 and exact["chi2_le2"] > 0.97
    assert exact["mean_error"] == pytest.approx(1 / np.sqrt(200), rel=0.25)
    assert 0.9 < exact["std_ratio_p10"] < 1.0 < exact["std_ratio_p90"] < 1.1
    assert abs(exact["coverage_90_constrained"] - 0.9) < 0.04 and abs(exact["coverage_50"] - 0.5) < 0.04
    assert exact["sbc_ks"] < 0.05
    prior = p.draw_prior(40 * 200, gen, torch.float64).view(40, 200, 16, 32)
    floor = evaluate_field_samples(p, prior, y, truth)
    assert floor["chi2_median"] > 20 and floor["mean_error"] > 1.0 and floor["std_ratio_p90"] > 1.4
    assert floor["energy_score"] > exact["energy_score"]  # the proper scores prefer the posterior
    assert floor["dss"] > exact["dss"] and exact["score"] == -exact["dss"]
    # a sampler of the right mean but half the spread pays in the Dawid-Sebastiani score (studies maximise -dss)
    post = p.posterior.sample(y, 200, seed=7)
    narrow = post.mean(1, keepdim=True) + 0.5 * (post - post.mean(1, keepdim=True))
    assert evaluate_field_samples(p, narrow, y, truth)["dss"] > exact["dss"] + 0.5
    one = evaluate_field_samples(p, p.posterior.sample(y, 1, seed=6), y, truth)
    assert one["diversity"] == 0.0 and "mean_error" not in one


def _profile_problem() -> FieldProblem:
    """A user's 1D problem: a 24-cell profile, y = a smoothing of x at 8 points."""
    A = torch.rand(8, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return FieldProblem(
        name="profile", forward=lambda x: (x @ A.to(x).T).unsqueeze(-1), x_shape=(24,), n_points=8,
        prior=lambda n, gen, dtype=torch.float64: torch.randn(n, 24, generator=gen, dtype=dtype, device=gen.device),
        noise=0.1,
    )


PROFILE = _profile_problem()


@pytest.mark.parametrize("body", ["mlp", "conv"])
@pytest.mark.parametrize("latent_type", ["gaussian", "categorical", "mixed"])
@pytest.mark.parametrize("arch", ["cvae", "cvae_re"])
def test_models_of_any_shape_build_and_sample(body, latent_type, arch):
    for problem in (resolve_problem("gravity2d"), PROFILE):
        cfg = Config.from_dict({"model": {"arch": arch, "body": body, "latent_type": latent_type, "components": 3,
                                          "latent": 4, "hidden": 32, "channels": [4, 8], "kernels": [3, 3], "skip": True}})
        model = build_model(cfg.model, problem)
        y = problem(problem.draw_prior(5, torch.Generator().manual_seed(0), torch.float32))
        x = Posterior(model, problem).sample(y, 7, seed=1)
        assert x.shape == (5, 7, *problem.x_shape) and torch.isfinite(x).all()


def test_training_a_grid_model_improves_its_fit(tmp_path):
    cfg = Config.from_dict({
        "data": {"problem": "gravity2d", "train_size": 2000, "val_size": 200, "fresh": True},
        "model": {"arch": "cvae_re", "body": "mlp", "skip": True, "latent": 16, "hidden": 128},
        "train": {"epochs": 4, "batch_size": 128, "beta": 1e-4, "w_y": 0.01, "eval_conditions": 20, "eval_samples": 20, "device": "cpu"},
    })
    result = train(cfg)
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["chi2_median"] < first["chi2_median"]
    for key in ("chi2_le2", "coverage_90", "sbc_ks", "energy_score", "mean_error", "std_ratio_p10", "score"):
        assert np.isfinite(last[key])


def test_a_user_profile_problem_trains_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "myprofile.py").write_text(
        "import torch\nfrom cvae_opt.problems import FieldProblem\n"
        "A = torch.rand(8, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)\n"
        "problem = FieldProblem(name='profile', forward=lambda x: (x @ A.to(x).T).unsqueeze(-1), x_shape=(24,),\n"
        "    n_points=8, prior=lambda n, gen, dtype=torch.float64: torch.randn(n, 24, generator=gen, dtype=dtype),\n"
        "    noise=0.1)\n"
        "bad = FieldProblem(name='bad', forward=lambda x: x[..., :8], x_shape=(24,), n_points=8,\n"
        "    prior=lambda n, gen, dtype=torch.float64: torch.randn(n, 24, generator=gen, dtype=dtype), noise=0.1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = Config.from_dict({
        "data": {"problem": "myprofile:problem", "train_size": 500, "val_size": 50, "cache_dir": str(tmp_path / "cache")},
        "model": {"body": "conv", "channels": [4], "kernels": [3], "latent": 4, "hidden": 32},
        "train": {"epochs": 2, "eval_conditions": 10, "eval_samples": 5, "device": "cpu"},
    })
    result = train(cfg)
    assert result.last["chi2_median"] > 0 and result.model.x_shape == (24,)
    with pytest.raises(UserError, match=r"maps x of shape \(3, 24\) to \(3, 8\), expected \(3, 8, 1\)"):
        resolve_problem("myprofile:bad")


def test_survey_csv_round_trip_and_errors(tmp_path):
    p = resolve_problem("gravity2d")
    y = p(p.draw_prior(2, torch.Generator().manual_seed(0), torch.float64))
    f = write_survey(tmp_path / "survey.csv", p, y)
    assert f.read_text().splitlines()[0] == "x_m,g_mgal_1,g_mgal_2"
    back = read_survey(f, p)
    assert back.shape == (2, 32, 1) and torch.allclose(back.double(), y, rtol=1e-5, atol=1e-6)
    lines = f.read_text().splitlines()
    (tmp_path / "shifted.csv").write_text("\n".join([lines[0]] + [f"{float(r.split(',')[0]) + 5:.3f}," + r.split(",", 1)[1] for r in lines[1:]]) + "\n")
    with pytest.raises(UserError, match="are not the 32 stations"):
        read_survey(tmp_path / "shifted.csv", p)
    (tmp_path / "text.csv").write_text(lines[0] + "\n" + "a,b,c\n")
    with pytest.raises(UserError, match="line 2 is not all numbers"):
        read_survey(tmp_path / "text.csv", p)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cvae_opt", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_gravity_commands_end_to_end(tmp_path):
    """run a gravity study, export, retrain, generate for a survey CSV and for the held-out set, evaluate
    (metrics of a continuous posterior, problem read from the submission's metadata), plot, report."""
    study = tmp_path / "g.yaml"
    text = (Path(__file__).resolve().parents[1] / "studies" / "gravity_re.yaml").read_text()
    study.write_text(text.replace("name: gravity_re", "name: g_small").replace("train_size: 20000, val_size: 1000", "train_size: 600, val_size: 100"))
    r = _cli(["run", "--study", str(study), "--trials", "2", "--epochs", "2"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = _cli(["export", "--study", "g_small", "--out", "best.yaml"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = _cli(["retrain", "--config", "best.yaml", "--epochs", "2", "--out", "rt"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = _cli(["generate", "--checkpoint", "rt/checkpoint.pt", "--conditions", "gravity2d:test", "--samples", "20", "--out", "sub.pt"], tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "sub.pt.json").read_text())
    assert meta["problem"] == "gravity2d" and meta["mode"] == "raw"
    r = _cli(["evaluate", "--submission", "sub.pt", "--truth", "gravity2d:test"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["problem"] == "gravity2d" and out["n_conditions"] == 50 and out["samples_per_condition"] == 20
    for key in ("chi2_median", "chi2_le2", "coverage_50", "coverage_90", "sbc_ks", "mean_error", "std_ratio_p10",
                "std_ratio_p90", "coverage_90_constrained", "diversity"):
        assert np.isfinite(out[key]), key
    p = resolve_problem("gravity2d")
    from cvae_opt.data import load_pairs

    write_survey(tmp_path / "survey.csv", p, load_pairs("gravity2d:test", p).y[:1])
    r = _cli(["generate", "--checkpoint", "rt/checkpoint.pt", "--conditions", "survey.csv", "--samples", "30", "--out", "s.pt"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "30 samples (1 conditions x 30" in r.stdout
    r = _cli(["plot", "--checkpoint", "rt/checkpoint.pt", "--conditions", "gravity2d:test", "--n", "1", "--out", "p.png"], tmp_path)
    assert r.returncode == 0 and (tmp_path / "p.png").stat().st_size > 10_000, r.stderr
    r = _cli(["generate", "--checkpoint", "rt/checkpoint.pt", "--conditions", "survey.csv", "--refine", "5", "--out", "r.pt"], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "refinement and oversampling" in r.stderr
    r = _cli(["report", "--study", "g_small"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "reports" / "g_small" / "samples.png").exists()
