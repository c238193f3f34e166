import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from cvae_opt.data import Pairs, load_pairs, load_validation, make_pairs, draw_models, save_pairs
from cvae_opt.metrics import enumerate_solutions, evaluate_samples, solutions_found
from cvae_opt.problems import TWO_BIRDS, cosine_problem


@pytest.fixture(scope="module")
def scoring(challenge):
    p = load_pairs(challenge / "scoring_dataset.pt", TWO_BIRDS)
    return p, enumerate_solutions(TWO_BIRDS, p.y)


def test_enumeration_finds_every_true_x_and_about_a_dozen_modes(scoring):
    p, sols = scoring
    counts = [len(s) for s in sols]
    assert 11.0 <= np.mean(counts) <= 12.6 and min(counts) >= 1 and max(counts) <= 40
    for x, s in zip(p.x.double().numpy(), sols):
        assert np.abs(s - x).max(axis=(1, 2)).min() < 1e-3  # the true x is among them
        assert np.abs(np.cos(s @ np.array([[49, 56], [42, 63]])) - np.cos(x @ np.array([[49, 56], [42, 63]]))).max() < 1e-3
        # all distinct, all in the box, all correctly sloped
        assert (s >= 0.1).all() and (s <= 1.0).all()
        assert (s[:, 0, 0] >= s[:, -1, 0]).all() and (s[:, 0, 1] <= s[:, -1, 1]).all()
        if len(s) > 1:
            d = np.abs(s[:, None] - s[None]).max(axis=(2, 3)) + np.eye(len(s))
            assert d.min() > 1e-3


def test_enumeration_on_fresh_draws_of_another_cosine_problem():
    prob = cosine_problem("other", [(20.0, 15.0, 0.3), (11.0, 30.0, 0.0)])
    x = draw_models(prob, 40, torch.Generator().manual_seed(5)).double()
    sols = enumerate_solutions(prob, prob(x))
    for xi, s in zip(x.numpy(), sols):
        assert np.abs(s - xi).max(axis=(1, 2)).min() < 1e-3


def test_true_x_scores_perfectly_and_random_lines_score_nothing(scoring):
    p, sols = scoring
    good = evaluate_samples(TWO_BIRDS, p.x.unsqueeze(1), p.y, sols, truth=p.x)
    assert good["misfit_rmse"] < 1e-4 and good["mode_precision"] == 1.0 and good["truth_recall"] == 1.0
    assert good["r2"] > 0.9999 and good["slope_signs"] == 1.0 and good["valid_fraction"] == 1.0
    rnd = draw_models(TWO_BIRDS, 50 * 30, torch.Generator().manual_seed(0)).view(50, 30, 50, 2)
    bad = evaluate_samples(TWO_BIRDS, rnd, p.y, sols, truth=p.x)
    assert 0.9 < bad["misfit_rmse"] < 1.1
    assert bad["mode_precision"] < 0.01 and bad["mode_recall"] < 0.01
    assert bad["score"] < 0.01 and bad["diversity"] < 0.01


def test_diversity_and_score_reward_spread_over_modes(scoring):
    p, sols = scoring
    all_modes = torch.stack([torch.tensor(s[np.arange(30) % len(s)]) for s in sols])
    collapsed = p.x.unsqueeze(1).expand(50, 30, 50, 2)
    spread = evaluate_samples(TWO_BIRDS, all_modes, p.y, sols)
    one = evaluate_samples(TWO_BIRDS, collapsed, p.y, sols)
    assert spread["mode_recall"] == 1.0 and spread["mode_precision"] == 1.0
    assert one["mode_precision"] == 1.0 and one["mode_recall"] < 0.1
    assert one["diversity"] == 0.0 and spread["diversity"] > 0.1
    assert spread["score"] > 0.9 and 0.45 < one["score"] < 0.55
    # which solutions each y's samples found: what mode_recall pools, per condition
    found = solutions_found(collapsed, sols)
    assert [int(f.sum()) for f in found] == [1] * 50
    assert sum(int(f.sum()) for f in found) / sum(len(s) for s in sols) == pytest.approx(one["mode_recall"])
    assert all(f.all() for f in solutions_found(all_modes, sols))
    # wiggly (not straight) samples are not valid even when they are near a solution
    wiggle = all_modes + 0.03 * torch.sin(torch.linspace(0, 20, 50)).view(1, 1, 50, 1)
    w = evaluate_samples(TWO_BIRDS, wiggle, p.y, sols)
    assert w["mode_precision"] == 0.0 and w["r2"] < 0.99


def run_evaluate(py, *args):
    return subprocess.run([py, "-m", "cvae_opt.evaluate", *args], capture_output=True, text=True, timeout=120)


def test_evaluate_cli_on_the_scoring_file(py, challenge):
    r = run_evaluate(py, "--submission", str(challenge / "scoring_dataset.pt"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["misfit_rmse"] < 1e-4 and out["mode_precision"] == 1.0 and out["n_conditions"] == 50
    assert abs(out["solutions_per_condition"] - 11.84) < 0.5


def test_evaluate_cli_groups_a_submission_and_uses_truth(py, challenge, tmp_path):
    p = load_pairs(challenge / "scoring_dataset.pt", TWO_BIRDS)
    # 3 samples per y: the true x twice and a random line, rows shuffled
    rnd = draw_models(TWO_BIRDS, 50, torch.Generator().manual_seed(1))
    x = torch.cat([p.x, p.x, rnd])
    y = torch.cat([p.y, p.y, p.y])
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(2))
    save_pairs(tmp_path / "sub.pt", Pairs(x[perm], y[perm]))
    r = run_evaluate(py, "--submission", str(tmp_path / "sub.pt"), "--truth", str(challenge / "scoring_dataset.pt"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_conditions"] == 50 and out["samples_per_condition"] == 3
    assert abs(out["mode_precision"] - 2 / 3) < 0.02 and out["truth_recall"] == 1.0


def test_evaluate_cli_bad_input(py, tmp_path):
    f = tmp_path / "bad.pt"
    torch.save(TensorDataset(torch.rand(3, 1, 50, 2), torch.rand(3, 1, 50, 3)), f)
    for args, expect in [
        (["--submission", str(f)], "shape (3, 1, 50, 3)"),
        (["--submission", str(tmp_path / "none.pt")], "no such file"),
        (["--submission", str(f), "--problem", "nope"], "unknown problem"),
    ]:
        r = run_evaluate(sys.executable, *args)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr


def test_user_problem_with_one_condition_end_to_end(tmp_path, monkeypatch, py):
    """k = 1 from a module:callable: data, training, generation and the evaluate CLI."""
    (tmp_path / "oneprob.py").write_text(textwrap.dedent("""
        import torch
        def forward(x):
            return torch.cos(9 * x[..., :1] + 5 * x[..., 1:])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    from cvae_opt.config import Config
    from cvae_opt.posterior import Posterior
    from cvae_opt.train import train

    cfg = Config.from_dict({
        "data": {"problem": "oneprob:forward", "train_size": 2000, "val_size": 100, "cache_dir": str(tmp_path / "cache")},
        "model": {"latent": 4, "hidden": 32, "channels": [8], "kernels": [5]},
        "train": {"epochs": 2, "batch_size": 100, "eval_conditions": 10, "eval_samples": 3},
    })
    res = train(cfg)
    assert res.problem.k == 1 and len(res.history) == 2 and "mode_recall" not in res.last  # no modes to enumerate
    # the reported metrics are those of the model's own samples for the first validation conditions
    val_y = load_validation(cfg.data, res.problem).y[:10]
    again = evaluate_samples(res.problem, Posterior(res.model, res.problem).sample(val_y, 3, seed=7), val_y)
    assert res.last["score"] == pytest.approx(again["score"]) and res.last["misfit_rmse"] == pytest.approx(again["misfit_rmse"])
    val = make_pairs(res.problem, 20, seed=9, cache_dir=None)
    assert val.y.shape == (20, 50, 1)
    sub = Pairs.from_samples(Posterior(res.model, res.problem).sample(val.y, 4), val.y)
    save_pairs(tmp_path / "sub.pt", sub)
    save_pairs(tmp_path / "truth.pt", val)
    r = run_evaluate(py, "--submission", str(tmp_path / "sub.pt"), "--problem", "oneprob:forward",
                     "--truth", str(tmp_path / "truth.pt"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    direct = evaluate_samples(res.problem, sub.x.view(20, 4, 50, 2), val.y, truth=val.x)
    assert out["n_conditions"] == 20 and out["samples_per_condition"] == 4
    for key in ("truth_recall", "misfit_rmse", "score", "valid_fraction"):
        assert out[key] == pytest.approx(direct[key]), key


def test_a_closed_pipe_ends_the_command_quietly(py):
    """`evaluate ... | head`: the reader leaves early; no traceback, exit 141 as Unix tools report it."""
    r = subprocess.run(["bash", "-c", f"'{py}' -m cvae_opt.evaluate --submission two_birds:scoring | true; "
                        "echo \"status ${PIPESTATUS[0]}\" >&2"], capture_output=True, text=True, timeout=300)
    assert r.stderr.strip() == "status 141", r.stderr  # `true` left before the JSON was written
