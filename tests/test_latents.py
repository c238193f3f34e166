"""Categorical and mixed latents: exact marginalisation, component prior per architecture, the
per-hypothesis physics term, posterior and coverage draws, fresh pairs, exact posterior mode weights."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cvae_opt.checkpoints import save_checkpoint
from cvae_opt.config import Config
from cvae_opt.data import draw_pairs, load_pairs, make_pairs, draw_models
from cvae_opt.errors import UserError
from cvae_opt.metrics import enumerate_solutions, evaluate_samples, expected_recall, mode_weights
from cvae_opt.models import ModelConfig, build_model
from cvae_opt.problems import LINE_PRODUCT, TWO_BIRDS
from cvae_opt.posterior import Posterior, SamplingOptions
from cvae_opt.train import train


def cfg_for(arch="cvae_re", latent_type="categorical", recognition="encoder", **train_kw):
    t = {"epochs": 1, "batch_size": 128, "eval_conditions": 10, "eval_samples": 4, "lr": 1e-3, "beta": 1e-3}
    t.update(train_kw)
    return Config.from_dict({
        "data": {"train_size": 1024, "val_size": 200, "cache_dir": "storage/data"},
        "model": {"arch": arch, "latent_type": latent_type, "components": 6, "latent": 2, "hidden": 64,
                  "prior_hidden": 64, "channels": [8], "kernels": [8], "recognition": recognition},
        "train": t,
    })


@pytest.fixture(scope="module")
def batch():
    p = make_pairs(TWO_BIRDS, 64, seed=3, cache_dir=None)
    return p.x, p.y


@pytest.mark.parametrize("latent_type", ["categorical", "mixed"])
@pytest.mark.parametrize("arch", ["cvae", "cvae_re"])
def test_all_hypotheses_decoded_in_one_pass(arch, latent_type, batch):
    cfg = cfg_for(arch, latent_type)
    model = build_model(cfg.model, TWO_BIRDS)
    x, y = batch
    out = model(x, y)
    assert out["x_all"].shape == (64, 6, 50, 2)
    assert out["logits_q"].shape == out["logits_p"].shape == (64, 6)
    # each hypothesis is a straight, in-box, correctly sloped line pair (line head)
    ends = out["x_all"][..., [0, -1], :]
    assert bool((ends >= 0.1 - 1e-6).all() and (ends <= 1 + 1e-6).all())
    assert bool((ends[..., 1, 0] <= ends[..., 0, 0] + 1e-6).all() and (ends[..., 1, 1] >= ends[..., 0, 1] - 1e-6).all())
    # decoding one chosen component gives that hypothesis (the mixed latent's z fixed by eval mode below)
    if latent_type == "categorical":
        c = torch.arange(64) % 6
        one = model.decoder(None, y, c)
        assert torch.allclose(one, out["x_all"][torch.arange(64), c], atol=1e-6)


def test_component_prior_per_architecture(batch):
    _, y = batch
    re = build_model(cfg_for("cvae_re").model, TWO_BIRDS)
    w = re.component_weights(y)
    assert w.shape == (64, 6) and not torch.allclose(w[0], w[1])  # r(c | y) depends on y
    uni = cfg_for("cvae").model
    uni.component_prior = "uniform"
    m = build_model(uni, TWO_BIRDS)
    assert m.component_logits is None and torch.allclose(m.component_weights(y), torch.full((64, 6), 1 / 6))
    learnt = build_model(cfg_for("cvae").model, TWO_BIRDS)
    assert learnt.component_logits is not None
    assert torch.allclose(learnt.component_weights(y)[0], learnt.component_weights(y)[1])  # no y dependence


def test_exact_recognition_gives_the_marginal_likelihood(batch):
    """With q(c|x,y) the model's own posterior, beta*KL + w_x*recon is -beta*log sum_c r_c exp(-w_x recon_c/beta):
    the bound is tight, and no other q gives a lower value."""
    x, y = batch
    cfg = cfg_for("cvae_re", "categorical", "exact", w_y=0.0, w_x=2.0, beta=0.01)
    torch.manual_seed(0)
    model = build_model(cfg.model, TWO_BIRDS)
    assert model.encoder is None  # nothing to recognise with: the posterior is computed
    loss, parts = model.loss(x, y, TWO_BIRDS, cfg.train, beta=0.01)
    out = model(x, y)
    recon_c = ((out["x_all"] - x.unsqueeze(1)) ** 2).mean(dim=(-1, -2))
    log_r = torch.log_softmax(out["logits_p"], -1)
    marginal = (-0.01 * torch.logsumexp(log_r - 2.0 * recon_c / 0.01, dim=1)).mean()
    assert torch.allclose(loss, marginal, rtol=1e-5, atol=1e-7)
    # an encoder's q can only give a looser bound
    enc = cfg_for("cvae_re", "categorical", "encoder", w_y=0.0, w_x=2.0, beta=0.01)
    torch.manual_seed(0)
    m2 = build_model(enc.model, TWO_BIRDS)
    m2.prior.load_state_dict(model.prior.state_dict())
    m2.decoder.load_state_dict(model.decoder.state_dict())
    loose, _ = m2.loss(x, y, TWO_BIRDS, enc.train, beta=0.01)
    assert float(loose.detach()) > float(loss.detach())


def test_physics_term_weights_hypotheses_without_training_the_weights(batch):
    x, y = batch
    cfg = cfg_for("cvae_re", "categorical", w_x=0.0, beta=0.0, w_y=1.0)
    model = build_model(cfg.model, TWO_BIRDS)
    loss, parts = model.loss(x, y, TWO_BIRDS, cfg.train, beta=0.0)
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in model.decoder.parameters() if p.grad is not None) > 0
    # the prior network's component logits get no gradient from the physics term
    g = model.prior.head.logits.weight.grad
    assert g is None or float(g.abs().sum()) == 0.0
    # the value is the r(c|y)-weighted misfit of every hypothesis
    out = model(x, y)
    misfit = ((TWO_BIRDS(out["x_all"]) - y.unsqueeze(1)) ** 2).mean(dim=(-1, -2))
    w = torch.softmax(out["logits_p"], -1)
    assert torch.allclose(parts["physics"], (w * misfit).sum(1).mean(), rtol=1e-5)
    # temperature 0: every hypothesis alike
    cfg.train.physics_temperature = 0.0
    _, p0 = model.loss(x, y, TWO_BIRDS, cfg.train, beta=0.0)
    assert torch.allclose(p0["physics"], misfit.mean(), rtol=1e-5)


def test_choose_components_posterior_and_coverage():
    model = build_model(cfg_for("cvae_re").model, TWO_BIRDS)
    w = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.005, 0.005], [0.9, 0.02, 0.02, 0.02, 0.02, 0.02]])
    g = torch.Generator().manual_seed(0)
    c = model.latent.choose(w, 20000, g, "posterior")
    freq = torch.stack([torch.bincount(c[i], minlength=6).double() / 20000 for i in range(2)])
    assert torch.allclose(freq, w.double(), atol=0.01)
    cov = model.latent.choose(w, 8, g, "coverage")
    assert cov[0, :4].tolist() == [0, 1, 2, 3]  # every component of weight >= 0.01 once, heaviest first
    assert set(cov[0, 4:].tolist()) <= {0, 1, 2, 3}  # then repeats among them, never the negligible ones
    assert sorted(cov[1, :6].tolist()) == [0, 1, 2, 3, 4, 5] and cov[1, 0] == 0
    flat = model.latent.choose(w, 20000, g, "posterior", temperature=0.0)
    f1 = torch.bincount(flat[1], minlength=6).double() / 20000
    assert torch.allclose(f1, torch.full((6,), 1 / 6, dtype=torch.float64), atol=0.015)
    # a lower min weight lets the light hypotheses in (`--min-weight 0.001`: refinement starts from them too)
    light = model.latent.choose(w, 8, g, "coverage", min_weight=0.001)
    assert light[0, :6].tolist() == [0, 1, 2, 3, 4, 5] or light[0, :6].tolist() == [0, 1, 2, 3, 5, 4]
    flat = model.latent.choose(w, 20000, g, "posterior", temperature=0.0, min_weight=0.001)
    assert torch.bincount(flat[0], minlength=6).min() > 2500  # all six alike, the 0.005 ones included


@pytest.mark.parametrize("latent_type", ["categorical", "mixed"])
def test_generation_is_reproducible_and_batch_independent(latent_type, batch):
    _, y = batch
    model = build_model(cfg_for("cvae_re", latent_type).model, TWO_BIRDS)
    coverage = SamplingOptions(draw="coverage")
    a = Posterior(model, TWO_BIRDS).sample(y[:10], 7, coverage, batch=8, generator=torch.Generator().manual_seed(4))
    b = Posterior(model, TWO_BIRDS).sample(y[:10], 7, coverage, batch=8192, generator=torch.Generator().manual_seed(4))
    assert a.shape == (10, 7, 50, 2) and torch.allclose(a, b, atol=1e-6)
    gauss = build_model(cfg_for("cvae_re", "gaussian").model, TWO_BIRDS)
    with pytest.raises(UserError, match="categorical, mixed or hypotheses"):
        Posterior(gauss, TWO_BIRDS).sample(y[:2], 3, coverage)


@pytest.mark.parametrize("recognition", ["encoder", "exact"])
def test_categorical_training_lowers_the_loss_and_saves(recognition, tmp_path):
    """Real training steps on fresh pairs: the loss falls, the history is complete, the model reloads."""
    cfg = cfg_for("cvae_re", "categorical", recognition, epochs=4, w_y=0.1, physics_temperature=0.5)
    cfg.data.fresh = True
    res = train(cfg)
    h = res.history
    assert len(h) == 4 and h[-1]["train_loss"] < h[0]["train_loss"]
    assert {"train_kl_components", "train_physics_gen", "mode_precision", "exact_posterior_recall"} <= set(h[-1])
    path = save_checkpoint(tmp_path / "c.pt", res.model, cfg)
    from cvae_opt.checkpoints import load_checkpoint
    model, cfg2, _ = load_checkpoint(path)
    assert cfg2.model.latent_type == "categorical"
    y = make_pairs(TWO_BIRDS, 5, seed=9, cache_dir=None).y
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(Posterior(model, TWO_BIRDS).sample(y, 4, generator=g()), Posterior(res.model, TWO_BIRDS).sample(y, 4, generator=g()))


def test_fresh_pairs_are_exact_and_new_every_epoch():
    gen = torch.Generator().manual_seed(0)
    a, b = draw_pairs(TWO_BIRDS, 500, gen), draw_pairs(TWO_BIRDS, 500, gen)
    assert not torch.allclose(a.x, b.x)
    assert torch.allclose(TWO_BIRDS(a.x), a.y, atol=1e-6)
    ends = a.x[:, [0, -1]]
    assert bool((ends >= 0.1).all() and (ends <= 1.0).all())
    assert bool((ends[:, 1, 0] <= ends[:, 0, 0]).all() and (ends[:, 1, 1] >= ends[:, 0, 1]).all())
    # same distribution as the cached synthetic pairs: end-point means within sampling error
    ref = draw_models(TWO_BIRDS, 20000, torch.Generator().manual_seed(1))[:, [0, -1]].double()
    big = draw_pairs(TWO_BIRDS, 20000, torch.Generator().manual_seed(2)).x[:, [0, -1]].double()
    assert torch.allclose(ref.mean(0), big.mean(0), atol=0.01)
    # a training file and fresh pairs contradict each other: one clear error
    cfg = cfg_for()
    cfg.data.fresh, cfg.data.train_file = True, "somewhere.pt"
    with pytest.raises(UserError, match="data.fresh"):
        train(cfg)


def test_bad_latent_settings_are_one_clear_error():
    for key, value, match in (("latent_type", "flow", "model.latent_type"), ("components", 1, "model.components"),
                              ("recognition", "oracle", "model.recognition"),
                              ("component_prior", "y", "model.component_prior")):
        mc = ModelConfig(**{key: value, "latent_type": "categorical"} if key != "latent_type" else {key: value})
        with pytest.raises(UserError, match=match):
            mc.validate()
    with pytest.raises(UserError, match="config.train.eval_draw: unknown 'everything'"):
        cfg_for(eval_draw="everything")  # refused when the config is read, before any training
    cfg = cfg_for()
    cfg.train.eval_draw = "everything"  # a config changed in code is checked when training starts
    with pytest.raises(UserError, match="train.eval_draw"):
        train(cfg)


def test_exact_posterior_mode_weights(challenge):
    """Weights from the closed-form Jacobian agree with autograd's Jacobian of the forward problem, and on
    the 50 scoring conditions 30 exact-posterior draws cover 0.679 of the modes in expectation."""
    s = load_pairs(challenge / "scoring_dataset.pt", TWO_BIRDS)
    sols = enumerate_solutions(TWO_BIRDS, s.y[:3])
    w = mode_weights(TWO_BIRDS, sols)
    for sol, wi in zip(sols, w):
        assert abs(wi.sum() - 1) < 1e-9 and (wi > 0).all()
        logw = []
        for line in sol:
            e = torch.tensor([line[0, 0], line[-1, 0], line[0, 1], line[-1, 1]], dtype=torch.float64)

            def f(e):
                t = torch.linspace(0, 1, 50, dtype=torch.float64)
                x = torch.stack([e[0] + (e[1] - e[0]) * t, e[2] + (e[3] - e[2]) * t], -1)
                return TWO_BIRDS(x).flatten()

            J = torch.autograd.functional.jacobian(f, e)
            prior = 1 / ((0.9 * (1 - e[1])) * (0.9 * (1 - e[2])))
            logw.append(float(torch.log(prior) - 0.5 * torch.logdet(J.T @ J)))
        ref = np.exp(np.array(logw) - max(logw))
        assert np.allclose(wi, ref / ref.sum(), rtol=1e-6)
    all_w = mode_weights(TWO_BIRDS, enumerate_solutions(TWO_BIRDS, s.y))
    assert abs(expected_recall(all_w, 30) - 0.679) < 0.001
    assert expected_recall(all_w, 30, temperature=0.0) > expected_recall(all_w, 30, temperature=0.5) > 0.8
    m = evaluate_samples(TWO_BIRDS, torch.as_tensor(np.repeat(sols[0][:1], 3, axis=0))[None], s.y[:1], sols[:1])
    assert m["exact_posterior_recall"] == pytest.approx(expected_recall(w[:1], 3))
    # uniform weights: 1 - (1 - 1/m)^n per mode
    assert expected_recall([np.full(4, 0.25)], 3) == pytest.approx(1 - 0.75**3)


def test_line_product_has_a_continuum_of_solutions():
    x = draw_models(LINE_PRODUCT, 1, torch.Generator().manual_seed(0)).double()[0]
    y = LINE_PRODUCT(x)
    # scale the descending line up and the ascending one down: the same y, another valid pair
    lam = 1.05
    other = torch.stack([x[:, 0] * lam, x[:, 1] / lam], -1)
    assert torch.allclose(LINE_PRODUCT(other), y, atol=1e-12) and not torch.allclose(other, x)


def _cli(py, *args, cwd):
    return subprocess.run([py, "-m", "cvae_opt.generate", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_generate_draw_modes_recorded(tmp_path, challenge, py):
    cfg = cfg_for("cvae_re", "categorical", epochs=1)
    res = train(cfg)
    ck = save_checkpoint(tmp_path / "cat.pt", res.model, cfg)
    r = _cli(py, "--checkpoint", ck, "--conditions", challenge / "scoring_dataset.pt", "--samples", 5,
             "--draw", "coverage", "--temperature", 0.5, "--out", tmp_path / "sub.pt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "sub.pt.json").read_text())
    assert meta["draw"] == "coverage" and meta["temperature"] == 0.5 and meta["latent_type"] == "categorical"
    assert len(load_pairs(tmp_path / "sub.pt", TWO_BIRDS)) == 250
    gcfg = cfg_for("cvae_re", "gaussian", epochs=1)
    gres = train(gcfg)
    gck = save_checkpoint(tmp_path / "gauss.pt", gres.model, gcfg)
    r = _cli(py, "--checkpoint", gck, "--conditions", challenge / "scoring_dataset.pt", "--draw", "coverage",
             "--out", tmp_path / "g.pt", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Gaussian latent" in r.stderr
    assert not (tmp_path / "g.pt").exists()


def test_learnt_decoder_scale_is_the_gaussian_likelihood(batch):
    x, y = batch
    cfg = cfg_for("cvae_re", "categorical", "exact", w_y=0.0, beta=0.01)
    cfg.model.decoder_scale = "learnt"
    model = build_model(cfg.model, TWO_BIRDS)
    with torch.no_grad():
        model.log_scale.fill_(-3.0)
    loss, parts = model.loss(x, y, TWO_BIRDS, cfg.train, beta=0.01)
    out = model(x, y)
    mse_c = ((out["x_all"] - x.unsqueeze(1)) ** 2).mean(dim=(-1, -2))
    nll_c = 0.5 * (mse_c / np.exp(-3.0) - 3.0)
    marginal = (-0.01 * torch.logsumexp(torch.log_softmax(out["logits_p"], -1) - nll_c / 0.01, dim=1)).mean()
    assert torch.allclose(loss, marginal, rtol=1e-5) and float(parts["decoder_sigma"]) == pytest.approx(np.exp(-1.5))
    loss.backward()
    assert model.log_scale.grad is not None and float(model.log_scale.grad) != 0.0
    # the Gaussian latent takes the same option
    g = cfg_for("cvae_re", "gaussian")
    g.model.decoder_scale = "learnt"
    gm = build_model(g.model, TWO_BIRDS)
    l2, p2 = gm.loss(x, y, TWO_BIRDS, g.train, beta=0.01)
    assert torch.isfinite(l2) and "decoder_sigma" in p2


def test_checkpoints_from_before_latent_types_still_load(tmp_path, batch):
    """Gaussian checkpoints written before this change named the latent head's layers mu/logvar directly."""
    cfg = cfg_for("cvae_re", "gaussian")
    model = build_model(cfg.model, TWO_BIRDS)
    old = {k.replace("head.gauss.", "head."): v for k, v in model.state_dict().items()}
    assert "encoder.head.mu.weight" in old and "prior.head.logvar.bias" in old
    torch.save({"format": "cvae-opt-checkpoint/1", "config": cfg.to_dict(), "state_dict": old, "metrics": {}},
               tmp_path / "old.pt")
    from cvae_opt.checkpoints import load_checkpoint
    loaded, _, _ = load_checkpoint(tmp_path / "old.pt")
    _, y = batch
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    assert torch.equal(Posterior(loaded, TWO_BIRDS).sample(y[:3], 4, generator=g()), Posterior(model, TWO_BIRDS).sample(y[:3], 4, generator=g()))
