"""The seams of issue 24: every run owns its random generators (two trials interleaved in one process equal
the same two apart, and a seed gives the same result in another process), and the objective's loop is
the training loop's."""

import subprocess
import sys
from pathlib import Path

import torch

from cvae_opt.config import Config
from cvae_opt.posterior import Posterior
from cvae_opt.train import Training

ROOT = Path(__file__).resolve().parents[1]


def cfg(latent_type: str, seed: int) -> Config:
    return Config.from_dict({
        "data": {"train_size": 512, "val_size": 64, "seed": seed, "fresh": True},
        "model": {"arch": "cvae_re", "latent_type": latent_type, "components": 4, "latent": 3, "hidden": 32,
                  "prior_hidden": 32, "channels": [4], "kernels": [5], "head": "line"},
        "train": {"epochs": 3, "batch_size": 128, "eval_conditions": 8, "eval_samples": 4, "device": "cpu",
                  "w_y": 0.1, "physics_samples": 2, "seed": seed},
    })


def finished(run: Training) -> tuple[list[dict], dict[str, torch.Tensor]]:
    history = [{k: v for k, v in h.items() if "seconds" not in k} for h in run.history]
    return history, {k: v.clone() for k, v in run.model.state_dict().items()}


def test_two_trials_interleaved_epoch_by_epoch_equal_the_same_two_trained_apart():
    configs = [cfg("gaussian", 1), cfg("mixed", 2)]  # both draw latent noise in every step
    apart = []
    for c in configs:
        run = Training(c)
        for _ in run.epochs():
            pass
        apart.append(finished(run))
    # a global draw between the runs must change nothing either: no run reads torch's global generator
    runs = [Training(c) for c in configs]
    loops = [r.epochs() for r in runs]
    for _ in range(configs[0].train.epochs):
        for loop in loops:
            next(loop)
            torch.rand(17)
    for (history, state), run in zip(apart, runs):
        h2, s2 = finished(run)
        assert h2 == history
        assert s2.keys() == state.keys() and all(torch.equal(s2[k], state[k]) for k in state)
    # and the two trials differ from each other, so the comparison is not of copies
    assert apart[0][0][-1]["train_loss"] != apart[1][0][-1]["train_loss"]


CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))  # the parent's: float sums depend on the thread count
from test_seams import cfg
from cvae_opt.posterior import Posterior
from cvae_opt.train import Training
run = Training(cfg('gaussian', 5))
for _ in run.epochs():
    pass
x = Posterior(run.model, run.problem).sample(run.val_pairs.y[:4], 3, seed=0)
print(repr(float(x.double().sum())), repr(run.history[-1]['train_loss']))
"""


def test_a_seed_gives_the_same_model_in_another_process():
    run = Training(cfg("gaussian", 5))
    for _ in run.epochs():
        pass
    x = Posterior(run.model, run.problem).sample(run.val_pairs.y[:4], 3, seed=0)
    r = subprocess.run([sys.executable, "-c", CHILD, str(torch.get_num_threads())], cwd=ROOT / "tests",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [repr(float(x.double().sum())), repr(run.history[-1]["train_loss"])]
