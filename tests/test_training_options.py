"""Training options through `cvae_opt.train.train(cfg)`: each option must change what training does, and
each test fails if the option were ignored. What happens inside the optimiser (learning rate, gradient
norm, the weights before the first step, the number of steps) is read through torch's global optimizer
step hooks, so nothing of the package is patched."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from cvae_opt.commands import evaluate
from cvae_opt.commands.common import run_main
from cvae_opt.config import Config
from cvae_opt.data import Pairs, load_pairs, make_pairs, save_pairs
from cvae_opt.metrics import evaluate_samples
from cvae_opt.latents import kl_gaussians
from cvae_opt.models import build_model
from cvae_opt.posterior import Posterior, SamplingOptions
from cvae_opt.problems import TWO_BIRDS
from cvae_opt.refine import refine
from cvae_opt.train import beta_at, train

TRAIN, BATCH = 500, 50  # 10 steps per epoch


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def config(cache, model=None, data=None, **train) -> Config:
    t = {"epochs": 1, "batch_size": BATCH, "lr": 1e-3, "eval_conditions": 3, "eval_samples": 2, "seed": 0,
         "device": "cpu"}
    t.update(train)
    m = {"arch": "cvae_re", "latent": 4, "hidden": 32, "channels": [8], "kernels": [5]}
    m.update(model or {})
    d = {"train_size": TRAIN, "val_size": 50, "cache_dir": str(cache)}
    d.update(data or {})
    return Config.from_dict({"data": d, "model": m, "train": t})


@contextmanager
def optimizer_steps():
    """One record per optimizer step taken while inside: learning rate and gradient norm as the step
    sees them (after any clipping), and the parameters before the first step."""
    steps: list[dict] = []

    def hook(opt, args, kwargs):
        params = [p for g in opt.param_groups for p in g["params"]]
        grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
        rec = {"lr": opt.param_groups[0]["lr"], "grad_norm": float(torch.cat(grads).norm())}
        if not steps:
            rec["params"] = [p.detach().clone() for p in params]
        steps.append(rec)

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield steps
    finally:
        handle.remove()


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


def kl_weight(h: dict) -> float:
    """The weight the KL term had in an epoch's training loss: loss = w * KL + w_x * recon + w_y * physics
    (w_x = w_y = 1 here), averaged over the epoch's steps."""
    return (h["train_loss"] - h["train_recon"] - h["train_physics"]) / h["train_kl"]


# -- KL warm-up and free bits ------------------------------------------------------------------------


def test_kl_warmup_ramps_the_kl_weight(cache):
    plain = train(config(cache, epochs=2))
    warm = train(config(cache, epochs=2, kl_warmup=2))
    assert [kl_weight(h) for h in plain.history] == pytest.approx([1.0, 1.0], rel=1e-4)
    w1, w2 = (kl_weight(h) for h in warm.history)
    tc = config(cache, epochs=2, kl_warmup=2).train
    steps = TRAIN // BATCH
    # epoch 1 ramps from 0 to beta_at(.., 0, 9/10) = 0.45, epoch 2 from 0.5 to 0.95
    assert beta_at(tc, 0, 0.0) == 0.0 and beta_at(tc, 1, 0.0) == 0.5 and beta_at(tc, 2, 0.0) == 1.0
    assert 0.0 < w1 <= beta_at(tc, 0, (steps - 1) / steps) + 1e-6
    assert beta_at(tc, 1, 0.0) - 1e-6 <= w2 <= beta_at(tc, 1, (steps - 1) / steps) + 1e-6
    assert warm.history[0]["train_loss"] < plain.history[0]["train_loss"]  # the same seed, a lighter KL term
    # validation is reported at the full beta either way
    assert warm.history[0]["val_loss"] == pytest.approx(
        warm.history[0]["val_kl"] + warm.history[0]["val_recon"] + warm.history[0]["val_physics"], rel=1e-4)


def test_free_bits_clamp_the_optimised_kl_per_dimension(cache):
    # far above every dimension's KL: the optimised KL is latent * free_bits, whatever the model does
    res = train(config(cache, free_bits=5.0))
    h = res.history[0]
    assert h["train_loss"] - h["train_recon"] - h["train_physics"] == pytest.approx(4 * 5.0, rel=1e-5)
    assert h["train_kl"] < 2.0  # the reported KL is the real one, not the clamped one

    # per dimension, not on the total: with the threshold between the dimensions' KLs only the small
    # ones are raised to it
    cfg = config(cache, model={"latent": 8})
    torch.manual_seed(0)
    model = build_model(cfg.model, TWO_BIRDS)
    pairs = make_pairs(TWO_BIRDS, 64, seed=3, cache_dir=None)
    with torch.no_grad():
        out = model(pairs.x, pairs.y)
        kl_dims = kl_gaussians(out["mu_q"], out["logvar_q"], out["mu_p"], out["logvar_p"]).mean(0)
    fb = float(kl_dims.median())
    assert (kl_dims < fb).any() and (kl_dims > fb).any()

    def loss(free_bits):
        tc = config(cache, model={"latent": 8}, free_bits=free_bits).train
        torch.manual_seed(1)
        with torch.no_grad():
            return model.loss(pairs.x, pairs.y, TWO_BIRDS, tc, beta=1.0)

    (l0, p0), (l1, p1) = loss(0.0), loss(fb)
    assert float(p1["kl"]) == pytest.approx(float(p0["kl"]))  # reported unclamped
    per_dim = float(torch.clamp(kl_dims, min=fb).sum() - kl_dims.sum())
    on_total = max(float(kl_dims.sum()), 8 * fb) - float(kl_dims.sum())
    assert float(l1 - l0) == pytest.approx(per_dim, rel=1e-3, abs=1e-6)
    assert abs(per_dim - on_total) > 1e-3


# -- the optimiser: learning-rate schedule, gradient clipping, weight decay ---------------------------


def test_cosine_schedule_decays_the_learning_rate_to_zero(cache):
    with optimizer_steps() as const:
        a = train(config(cache, epochs=2, lr=3e-3))
    with optimizer_steps() as cos:
        b = train(config(cache, epochs=2, lr=3e-3, lr_schedule="cosine"))
    total = 2 * TRAIN // BATCH
    assert len(const) == len(cos) == total
    assert [s["lr"] for s in const] == [3e-3] * total
    expected = [3e-3 * (1 + math.cos(math.pi * i / total)) / 2 for i in range(total)]
    assert [s["lr"] for s in cos] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert cos[-1]["lr"] < 0.01 * 3e-3
    assert torch.equal(flat(const[0]["params"]), flat(cos[0]["params"]))  # the same start
    assert not torch.equal(flat(a.model.parameters()), flat(b.model.parameters()))


def test_grad_clip_bounds_the_gradient_and_the_weights_move_less(cache):
    def run(**opt):
        with optimizer_steps() as steps:
            res = train(config(cache, **opt))
        start = flat(steps[0]["params"])
        return steps, start, float((flat(res.model.parameters()) - start).norm())

    free_steps, free_start, free_move = run()
    clip = 1e-8
    clip_steps, clip_start, clip_move = run(grad_clip=clip)
    assert torch.equal(free_start, clip_start)
    assert min(s["grad_norm"] for s in free_steps) > 1e3 * clip
    assert max(s["grad_norm"] for s in clip_steps) <= clip * (1 + 1e-4)
    assert clip_move < 0.1 * free_move, (clip_move, free_move)
    # a clip above every gradient norm changes nothing
    big = 10 * max(s["grad_norm"] for s in free_steps)
    _, _, same_move = run(grad_clip=big)
    assert same_move == pytest.approx(free_move, rel=1e-5)


def test_weight_decay_shrinks_the_weights(cache):
    norms = {}
    for wd in (0.0, 0.01, 0.1):
        res = train(config(cache, epochs=2, lr=1e-2, weight_decay=wd))
        assert math.isfinite(res.last["train_loss"])
        norms[wd] = float(flat(res.model.parameters()).norm())
    assert norms[0.1] < norms[0.01] < norms[0.0], norms
    assert norms[0.1] < 0.5 * norms[0.0], norms


# -- the model: batch norm -----------------------------------------------------------------------------


def test_batch_norm_layers_are_built_and_trained(cache):
    def batch_norms(model):
        return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    assert not batch_norms(build_model(config(cache).model, TWO_BIRDS))
    cfg = config(cache, model={"batch_norm": True}, epochs=2)
    assert batch_norms(build_model(cfg.model, TWO_BIRDS))
    res = train(cfg)
    layers = batch_norms(res.model)
    assert layers and all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in res.history)
    steps = 2 * TRAIN // BATCH
    assert all(int(m.num_batches_tracked) >= steps for m in layers)  # every layer saw every training batch
    assert all(float(m.running_mean.abs().sum()) > 0 for m in layers)


# -- data from files ---------------------------------------------------------------------------------


def test_training_and_validation_pairs_from_files(cache, tmp_path, challenge, capsys):
    train_pairs = make_pairs(TWO_BIRDS, 300, seed=5, cache_dir=None)
    save_pairs(tmp_path / "train.pt", train_pairs)
    scoring = load_pairs("two_birds:scoring", TWO_BIRDS)
    val = Pairs(scoring.x[:7], scoring.y[:7])  # 7 of the challenge's scoring conditions
    save_pairs(tmp_path / "val.pt", val)
    data = {"train_size": 2000, "val_size": 200, "train_file": str(tmp_path / "train.pt"), "val_file": str(tmp_path / "val.pt")}
    cfg = config(cache, data=data, epochs=2, batch_size=100, eval_conditions=100, eval_samples=3)
    with optimizer_steps() as steps:
        res = train(cfg)
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert len(steps) == 2 * 3  # 300 pairs in batches of 100, not 2,000 synthetic ones
    last = res.last
    assert last["n_conditions"] == 7 and last["samples_per_condition"] == 3
    # the exact solutions counted are those of exactly these 7 y (as `evaluate` counts them for the file)
    assert run_main(evaluate.main, ["--submission", str(tmp_path / "val.pt")]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert ref["n_conditions"] == 7 and ref["mode_precision"] == 1.0
    assert last["solutions_per_condition"] == pytest.approx(ref["solutions_per_condition"])
    # and without the files, the same config trains on its synthetic pairs
    with optimizer_steps() as synthetic:
        synth = train(config(cache, data={"train_size": 2000, "val_size": 200}, epochs=1, batch_size=100,
                             eval_conditions=100, eval_samples=3))
    assert len(synthetic) == 20 and synth.last["n_conditions"] == 100


# -- refinement and generation in batches ------------------------------------------------------------


def test_refinement_in_several_batches_equals_one_batch():
    m, s = 3, 4
    truth = make_pairs(TWO_BIRDS, m, seed=11, cache_dir=None)
    g = torch.Generator().manual_seed(0)
    near = truth.x.unsqueeze(1) + 0.01 * torch.randn(m, s // 2, 50, 2, generator=g)  # noisy near-misses
    far = make_pairs(TWO_BIRDS, m * s // 2, seed=12, cache_dir=None).x.view(m, s // 2, 50, 2)  # random lines
    x = torch.cat([near, far], dim=1)
    one = refine(TWO_BIRDS, x, truth.y, steps=8)
    many = refine(TWO_BIRDS, x, truth.y, steps=8, batch=5)  # 12 samples in batches of 5, 5, 2
    assert many.shape == one.shape == x.shape
    assert torch.allclose(many, one, atol=1e-5)
    # refinement did something, so the comparison is not of two copies of x
    before = evaluate_samples(TWO_BIRDS, near, truth.y)["misfit_rmse"]
    after = evaluate_samples(TWO_BIRDS, one[:, : s // 2], truth.y)["misfit_rmse"]
    assert after < 0.1 * before, (before, after)


@pytest.mark.parametrize("latent", [{"latent_type": "gaussian"}, {"latent_type": "categorical", "components": 8}])
def test_generation_in_small_batches_equals_one_batch(cache, latent):
    torch.manual_seed(0)
    model = build_model(config(cache, model=latent).model, TWO_BIRDS)
    y = make_pairs(TWO_BIRDS, 5, seed=13, cache_dir=None).y
    post = Posterior(model, TWO_BIRDS)
    big = post.sample(y, 4, seed=2, batch=8192)
    small = post.sample(y, 4, seed=2, batch=4)  # one y per decoder pass
    assert big.shape == (5, 4, 50, 2)
    assert torch.allclose(small, big, atol=1e-6)
    assert not torch.allclose(post.sample(y, 4, seed=3, batch=4), big, atol=1e-3)
    # the refined pipeline too: oversampled draws refined in small decoder batches
    opts = SamplingOptions(refine_steps=4, oversample=2)
    assert torch.allclose(post.sample(y, 4, opts, seed=2, batch=4), post.sample(y, 4, opts, seed=2, batch=8192), atol=1e-5)


def test_grad_norms_benchmark_prints_every_epochs_norms_before_the_clip(cache, tmp_path):
    """benchmarks/grad_norms.py (the measurement behind the cvae_re study's grad_clip) trains the config and
    prints each epoch's gradient norms as the steps had them, the clip applied to the update only."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "c.yaml"
    path.write_text(config(cache, epochs=5).to_yaml())
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "grad_norms.py"

    def norms(*extra):
        r = subprocess.run([sys.executable, str(script), "--config", str(path), "--epochs", "2", *extra],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        rows = re.findall(r"epoch +(\d+)  loss +(\S+)  grad norm median +(\S+)  max +(\S+)", r.stdout)
        assert [int(e) for e, *_ in rows] == [1, 2], r.stdout
        return r.stdout, [(float(m), float(x)) for _, _, m, x in rows]

    out, free = norms()
    assert "2 of 5 epochs, 10 steps each, clip off" in out
    assert all(0 < m <= x < math.inf for m, x in free)
    out, clipped = norms("--clip", "1e-8")
    assert "clip 1e-08" in out
    assert min(m for m, _ in clipped) > 1e-6  # what is printed is the norm before clipping, not the clipped one


def test_eval_overhead_validates_seldom_and_trains_the_same_model(cache):
    """With `eval_overhead` a run validates only as often as keeps validation near that share of its
    training time (the first and last epoch always), and what it trains does not depend on how often it
    validates: the validation loss draws its own noise, not the training's."""
    every = train(config(cache, epochs=6, eval_conditions=20, eval_samples=10))
    lines: list[str] = []
    seldom = train(config(cache, epochs=6, eval_conditions=20, eval_samples=10, eval_overhead=0.001),
                   log=lines.append)
    assert [h["epoch"] for h in every.history if "score" in h] == [1, 2, 3, 4, 5, 6]
    assert [h["epoch"] for h in seldom.history if "score" in h] == [1, 6]
    assert [h["epoch"] for h in seldom.history if "val_loss" in h] == [1, 6]
    for (name, a), b in zip(every.model.state_dict().items(), seldom.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert every.last["score"] == seldom.last["score"]
    # progress lines between validations show the latest figures with their epoch, never a NaN
    assert len(lines) == 6 and not any("nan" in line for line in lines)
    assert "(epoch" not in lines[0] and "(epoch" not in lines[5]
    assert all(f"val (epoch 1) score {seldom.history[0]['score']:.4f}" in line for line in lines[1:5])
