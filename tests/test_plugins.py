"""A new latent family and a new problem family, each one file under tests/ (toy_latent.py,
toy_problem.py) and no package module touched: a study, export, retrain, generate and evaluate run with
them through the commands, as a user's plug-ins would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import torch
import yaml

from cvae_opt.config import Config
from cvae_opt.data import make_pairs, save_pairs
from cvae_opt.posterior import Posterior
from cvae_opt.storage import open_storage
from cvae_opt.train import train

TESTS = Path(__file__).resolve().parent


def cli(module, *args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", f"cvae_opt.{module}", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_study_export_retrain_generate_with_a_toy_problem_family_and_a_toy_latent_family(tmp_path):
    study = {
        "name": "toy", "problem": "toy_problem:PRODUCT",
        "data": {"train_size": 1000, "val_size": 100, "seed": 0},
        "budget": {"epochs": 2},
        "objective": {"metric": "chi2_median", "direction": "minimize"},
        "sampler": {"name": "random", "args": {"seed": 0}}, "pruner": None,
        "fixed": {"hidden": 32, "eval_conditions": 10, "eval_samples": 8},
        "search": {
            "latent_type": {"type": "categorical", "choices": ["toy_latent:PointLatent", "gaussian", "categorical"]},
            "components": {"type": "int", "low": 2, "high": 4, "condition": {"latent_type": ["categorical"]}},
            "lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True},
        },
    }
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    r = cli("run", "--study", "toy.yaml", "--trials", 4, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = optuna.load_study(study_name="toy", storage=open_storage(f"sqlite:///{tmp_path}/storage/cvae_opt.db"))
    done = [t for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and all(t.value > 0 for t in done)
    assert {t.params["latent_type"] for t in done} >= {"toy_latent:PointLatent"}  # the toy family ran as a trial
    assert any(t.user_attrs.get("samples_artifact") for t in done)  # the family's figure was drawn

    r = cli("export", "--study", "toy", "--out", "best.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    best = best.get("config", best)
    best["model"]["latent_type"] = "toy_latent:PointLatent"  # retrain the toy latent whichever trial won
    (tmp_path / "point.yaml").write_text(yaml.safe_dump(best))
    r = cli("retrain", "--config", "point.yaml", "--out", "point", "--epochs", 30, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    sys.path.insert(0, str(TESTS))
    from toy_problem import PRODUCT

    conds = make_pairs(PRODUCT, 6, seed=99, cache_dir=None)
    save_pairs(tmp_path / "conds.pt", conds, challenge_layout=False)
    # a checkpoint names its problem and latent by import path: they load only when the user gives the same specs
    r = cli("generate", "--checkpoint", "point/checkpoint.pt", "--conditions", "conds.pt", "--samples", 5,
            "--out", "sub.pt", cwd=tmp_path)
    assert r.returncode == 2 and "pass --problem toy_problem:PRODUCT" in r.stderr, r.stderr
    r = cli("generate", "--checkpoint", "point/checkpoint.pt", "--conditions", "conds.pt", "--samples", 5,
            "--out", "sub.pt", "--problem", "toy_problem:PRODUCT", "--latent-type", "toy_latent:PointLatent", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("evaluate", "--submission", "sub.pt", "--truth", "conds.pt", "--problem", "toy_problem:PRODUCT", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    scores = json.loads(r.stdout)
    assert scores["problem"] == "toy_product" and scores["samples_per_condition"] == 5
    assert scores["diversity"] == 0.0  # a point estimate: five copies of one answer
    # trained, the point estimate fits its y far better than models drawn from the prior do
    prior = PRODUCT.draw_prior(6 * 5, torch.Generator().manual_seed(1)).view(6, 5, 2)
    assert scores["misfit_rmse"] < 0.5 * PRODUCT.family.evaluate(PRODUCT, prior, conds.y)["misfit_rmse"], scores


def test_the_toy_latent_family_trains_on_two_birds_in_process():
    sys.path.insert(0, str(TESTS))
    cfg = Config.from_dict({
        "data": {"train_size": 512, "val_size": 64, "fresh": True},
        "model": {"latent_type": "toy_latent:PointLatent", "hidden": 32, "channels": [4], "kernels": [5]},
        "train": {"epochs": 2, "eval_conditions": 5, "eval_samples": 3, "device": "cpu"},
    })
    res = train(cfg)
    assert res.model.encoder is None and res.history[-1]["train_loss"] < res.history[0]["train_loss"] * 1.5
    x = Posterior(res.model, res.problem).sample(torch.zeros(2, 50, 2), 3)
    assert x.shape == (2, 3, 50, 2) and torch.equal(x[:, 0], x[:, 1])
