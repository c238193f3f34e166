"""The simulation-based-inference benchmark's tasks as problems (issue 28): the simulators and priors
against the benchmark's stored data, C2ST's two ends, the refusals of what the family cannot do, and a
study on two_moons at 10^3 simulations end to end through the commands."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvae_opt import benchmark_tasks as bt
from cvae_opt.c2st import c2st
from cvae_opt.config import Config
from cvae_opt.data import load_data, load_pairs
from cvae_opt.errors import UserError
from cvae_opt.families import family_of
from cvae_opt.models import build_model
from cvae_opt.posterior import Posterior, SamplingOptions
from cvae_opt.problems import resolve_problem
from cvae_opt.studies import check_shapes, load_study_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["two_moons", "gaussian_linear_uniform", "slcp"])
def test_the_simulators_regenerate_the_benchmarks_observations_from_their_seeds(name):
    task = bt.TASKS[name]
    theta, y = bt.observations(name)
    assert theta.shape == (10, task.dim_theta) and y.shape == (10, task.dim_y)
    regenerated = 0
    for i in range(1, 11):
        seed = bt.observation_seed(name, i)
        if seed is None:
            continue
        gen = torch.Generator().manual_seed(seed)
        t = task.draw_prior(1, gen)
        assert torch.allclose(t[0], theta[i - 1], atol=1e-6), (i, t, theta[i - 1])
        # the stored values are printed to 8 significant digits
        assert torch.allclose(task.simulate(t, gen)[0], y[i - 1], rtol=1e-5, atol=1e-5), i
        regenerated += 1
    assert regenerated == 10


def test_gaussian_mixture_moments_and_its_reference_posterior():
    # its observations were not drawn in the order the others were (the prior is, the mixture is not):
    # its simulator is checked by moments of 10,000 seeded draws and against the reference samples
    task = bt.TASKS["gaussian_mixture"]
    theta = torch.tensor([[3.0, -2.0]]).expand(10_000, 2)
    y = task.simulate(theta, torch.Generator().manual_seed(0))
    assert torch.allclose(y.mean(0), torch.tensor([3.0, -2.0]), atol=0.03)
    assert torch.allclose(y.var(0), torch.full((2,), 0.5 * 1.0 + 0.5 * 0.01), rtol=0.05)
    near = (y - theta).abs().max(dim=1).values < 0.3  # the narrow component holds half the draws
    assert 0.5 < float(near.float().mean()) < 0.62
    _, obs = bt.observations("gaussian_mixture")
    for i in (1, 4, 8):  # observations away from the box's edges: the posterior is centred on y
        ref = bt.reference_samples("gaussian_mixture", i)
        if (obs[i - 1].abs() < 8.5).all():
            assert torch.allclose(ref.mean(0), obs[i - 1], atol=0.1)
            assert float(((ref - obs[i - 1]).abs().max(dim=1).values < 0.3).float().mean()) > 0.45


def test_priors_are_the_benchmarks_boxes():
    for task in bt.TASKS.values():
        x = task.draw_prior(20_000, torch.Generator().manual_seed(1))
        assert x.shape == (20_000, task.dim_theta) and task.in_prior(x).all()
        assert x.abs().max() <= task.bound and float(x.std()) == pytest.approx(task.bound / math.sqrt(3), rel=0.03)
        ref = bt.reference_samples(task.name, 3)
        assert ref.shape == (10_000, task.dim_theta) and task.in_prior(ref).all()  # the references are inside too


def test_c2st_near_half_for_the_same_distribution_and_near_one_for_a_shifted_one():
    ref = bt.reference_samples("two_moons", 1)
    same = c2st(ref[:2000], ref[2000:4000])
    assert 0.45 < same < 0.56, same
    shifted = ref[:2000] + 3 * ref.std(0)
    assert c2st(shifted, ref[2000:4000]) > 0.95


def test_the_family_refuses_what_a_task_cannot_do(tmp_path):
    problem = resolve_problem("two_moons")
    fam = family_of(problem)
    assert fam.name == "tasks" and not fam.refinable(problem) and not fam.has_forward(problem)
    with pytest.raises(UserError, match="no physics term"):
        fam.check_train(Config.from_dict({"train": {"w_y": 0.1}}).train, problem)
    with pytest.raises(UserError, match="fixed simulation budget"):
        load_data(Config.from_dict({"data": {"problem": "two_moons", "fresh": True, "train_size": 100}}).data, problem)
    with pytest.raises(UserError, match="nothing to convolve"):
        build_model(Config.from_dict({"model": {"body": "conv"}}).model, problem)
    with pytest.raises(UserError, match="leaves no training pairs"):
        Config.from_dict({"data": {"problem": "two_moons", "simulations": 100, "val_size": 100}})
    with pytest.raises(UserError, match="stochastic"):
        problem(torch.zeros(1, 2))
    # a study asking for the physics term (the default w_y is 1) or refinement is refused at load, naming it
    base = (ROOT / "studies" / "two_moons.yaml").read_text()
    (tmp_path / "physics.yaml").write_text(base.replace("  w_y: 0.0\n", ""))
    r = subprocess.run([sys.executable, "-m", "cvae_opt.run", "--study", "physics.yaml", "--trials", "1", "--quiet"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "fixed.train.w_y 1" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "storage" / "cvae_opt.db").exists()
    # a searched value is checked too, at load (the same check run builds its Objective with)
    (tmp_path / "refine.yaml").write_text(base.replace("search:\n", "search:\n  eval_refine: {type: int, low: 0, high: 40}\n"))
    spec = load_study_file(str(tmp_path / "refine.yaml"))
    with pytest.raises(UserError, match="search.eval_refine"):
        check_shapes(spec, lambda m, where: fam.check_model(m, problem, where), lambda t, where: fam.check_train(t, problem, where))


def test_c2st_of_too_few_or_broken_samples_is_one_clear_error():
    problem = resolve_problem("two_moons")
    fam = family_of(problem)
    theta, y = bt.observations("two_moons")
    with pytest.raises(UserError, match="at least 5 samples"):
        fam.evaluate(problem, theta.view(10, 1, 2).expand(10, 3, 2), y.unsqueeze(-1))
    broken = theta.view(10, 1, 2).expand(10, 20, 2).clone()
    broken[0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN or inf"):
        fam.evaluate(problem, broken, y.unsqueeze(-1))
    assert "val_physics" not in fam.metrics(problem) and "energy_score" in fam.metrics(problem)


def test_a_budget_is_split_into_training_and_validation_pairs(tmp_path):
    cfg = Config.from_dict({"data": {"problem": "two_moons", "simulations": 1000, "val_size": 100,
                                     "cache_dir": str(tmp_path)}})
    problem = resolve_problem("two_moons")
    train, val = load_data(cfg.data, problem)
    assert len(train) == 900 and len(val) == 100 and train.y.shape == (900, 2, 1)
    assert not torch.equal(train.x[:100], val.x)
    again, _ = load_data(cfg.data, problem)  # seeded (and cached): the same simulations
    assert torch.equal(train.y, again.y)


def test_samples_stay_inside_the_prior_box():
    problem = resolve_problem("gaussian_mixture")
    cfg = Config.from_dict({"data": {"problem": "gaussian_mixture"},
                            "model": {"body": "mlp", "latent": 2, "hidden": 16, "prior_hidden": 16}})
    torch.manual_seed(0)
    model = build_model(cfg.model, problem)
    with torch.no_grad():  # the decoder pushed out: a third of the raw draws land outside [-10, 10]^2
        model.decoder.out.bias.add_(torch.tensor([9.0, -9.0]) / problem.x_scale)
    obs = load_pairs("gaussian_mixture:observations", problem)
    x = Posterior(model, problem).sample(obs.y, 300, SamplingOptions(), seed=0)
    assert x.shape == (10, 300, 2) and problem.task.in_prior(x).all()


def test_a_two_moons_study_at_a_thousand_simulations_runs_end_to_end(tmp_path):
    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "cvae_opt", *map(str, args)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        return r.stdout

    from cvae_opt.api import best_config, train_config

    cli("run", "--study", "two_moons", "--trials", 2, "--epochs", 3, "--quiet")
    cfg = best_config("two_moons", storage=f"sqlite:///{tmp_path}/storage/cvae_opt.db")  # what export writes
    assert cfg.data.problem == "two_moons" and cfg.data.simulations == 1000
    cfg.data.cache_dir = str(tmp_path / "storage" / "data")
    train_config(cfg, out=tmp_path / "best")  # what retrain runs
    cli("generate", "--checkpoint", "best/checkpoint.pt", "--conditions", "two_moons:observations",
        "--samples", 300, "--out", "samples.pt")
    out = json.loads(cli("evaluate", "--submission", "samples.pt", "--truth", "two_moons:observations"))
    assert out["problem"] == "two_moons" and out["c2st_observations"] == 10 and out["c2st_samples"] == 300
    assert 0.5 <= out["c2st"] <= 1.0 and out["outside_prior"] == 0.0
    assert all(f"c2st_observation_{i}" in out for i in range(1, 11)) and "energy_score" in out
