"""The hypotheses latent (issue 25): K Gaussian hypotheses with learnt, y-dependent scales, trained by the
exact mixture likelihood; draws take a hypothesis' mean or a draw within its spread."""

import math

import pytest
import torch

from cvae_opt.config import Config
from cvae_opt.data import make_pairs
from cvae_opt.errors import UserError
from cvae_opt.models import build_model
from cvae_opt.posterior import Posterior, SamplingOptions
from cvae_opt.problems import TWO_BIRDS, resolve_problem
from cvae_opt.train import train


def cfg_for(arch="cvae_re", recognition="exact", head="line", spread_ceiling=0.0, **train_kw):
    t = {"epochs": 1, "batch_size": 128, "eval_conditions": 8, "eval_samples": 4, "lr": 1e-3, "beta": 1.0,
         "w_x": 1.0, "w_y": 0.0, "device": "cpu"}
    t.update(train_kw)
    return Config.from_dict({
        "data": {"train_size": 1024, "val_size": 64, "fresh": True},
        "model": {"arch": arch, "latent_type": "hypotheses", "components": 5, "hidden": 32, "prior_hidden": 32,
                  "channels": [4], "kernels": [5], "recognition": recognition, "head": head,
                  "spread_ceiling": spread_ceiling},
        "train": t,
    })


@pytest.fixture(scope="module")
def batch():
    p = make_pairs(TWO_BIRDS, 16, seed=3, cache_dir=None)
    return p.x, p.y


def direct_mixture_nll(model, x, y, per_pair=False):
    """-log sum_c r(c|y) N(ends(x); mu_c(y), diag(sigma_c(y))^2), computed here from the networks' outputs
    (its mean over the batch, or each pair's)."""
    ends_x = torch.stack([x[:, 0, 0], x[:, -1, 0], x[:, 0, 1], x[:, -1, 1]], dim=-1)  # (B, 4)
    xa = model.decoder(None, y)  # every hypothesis as lines (B, K, P, 2): the path users draw from
    mu = torch.stack([xa[:, :, 0, 0], xa[:, :, -1, 0], xa[:, :, 0, 1], xa[:, :, -1, 1]], dim=-1)  # (B, K, 4)
    sigma = torch.exp(model.latent_net(y))
    normal = torch.distributions.Normal(mu, sigma)
    log_n = normal.log_prob(ends_x.unsqueeze(1)).sum(-1)  # (B, K)
    log_r = torch.log_softmax(model.prior_params(y)["logits"], dim=-1)
    nll = -torch.logsumexp(log_r + log_n, dim=1)
    return nll if per_pair else nll.mean()


@pytest.mark.parametrize("arch", ["cvae_re", "cvae"])
def test_the_loss_is_the_exact_mixture_likelihood(batch, arch):
    x, y = batch
    cfg = cfg_for(arch)
    torch.manual_seed(0)
    model = build_model(cfg.model, TWO_BIRDS)
    with torch.no_grad():  # scales that differ by hypothesis and end point, so the check is not of a constant
        model.latent_net.out.bias.copy_(torch.linspace(-2.0, 0.5, model.latent_net.out.bias.numel()))
    loss, parts = model.loss(x, y, TWO_BIRDS, cfg.train, beta=1.0)
    assert torch.allclose(loss, direct_mixture_nll(model, x, y), rtol=1e-5, atol=1e-5)
    assert {"kl", "recon", "kl_components", "hypothesis_sigma", "loss"} <= set(parts)


def test_condition_weights_weight_each_pair_by_its_y_effective_number_of_hypotheses(batch):
    """train.condition_weight_power: each pair's mixture likelihood weighted by exp(H(r(c|y)))^power (mean 1 over
    the batch) while training; validation (no gradient) keeps the plain mean."""
    x, y = batch
    cfg = cfg_for(condition_weight_power=1.0)
    torch.manual_seed(0)
    model = build_model(cfg.model, TWO_BIRDS)
    with torch.no_grad():  # prior weights far from uniform and different per y, so the weights differ
        model.prior.head.logits.weight.mul_(40.0)
    log_r = torch.log_softmax(model.prior_params(y)["logits"].detach(), dim=-1)
    n_eff = torch.exp(-(log_r.exp() * log_r).sum(-1))
    assert n_eff.max() / n_eff.min() > 1.5
    nll = direct_mixture_nll(model, x, y, per_pair=True).detach()
    loss, _ = model.loss(x, y, TWO_BIRDS, cfg.train, beta=1.0)
    assert torch.allclose(loss, (n_eff / n_eff.mean() * nll).mean(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(loss, nll.mean(), rtol=1e-4, atol=1e-4)
    half = cfg_for(condition_weight_power=0.5)
    loss_half, _ = model.loss(x, y, TWO_BIRDS, half.train, beta=1.0)
    w = n_eff.sqrt()
    assert torch.allclose(loss_half, (w / w.mean() * nll).mean(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        val, _ = model.loss(x, y, TWO_BIRDS, cfg.train, beta=1.0)
    assert torch.allclose(val, nll.mean(), rtol=1e-5, atol=1e-5)


def test_condition_weights_weight_the_physics_term_and_change_what_training_learns(batch):
    x, y = batch
    torch.manual_seed(0)
    cfg = cfg_for(condition_weight_power=1.0, w_y=0.1)
    model = build_model(cfg.model, TWO_BIRDS)
    with torch.no_grad():
        model.prior.head.logits.weight.mul_(40.0)
    _, trained = model.loss(x, y, TWO_BIRDS, cfg.train, beta=1.0)
    with torch.no_grad():
        _, plain = model.loss(x, y, TWO_BIRDS, cfg.train, beta=1.0)
    assert not torch.allclose(trained["physics"], plain["physics"], rtol=1e-4, atol=1e-6)  # weighted while training
    runs = [train(cfg_for(condition_weight_power=p, seed=0)) for p in (0.0, 1.0)]
    assert all(math.isfinite(r.last["train_loss"]) and math.isfinite(r.last["val_loss"]) for r in runs)
    a, b = (r.model.state_dict() for r in runs)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_condition_weight_power_is_bounded():
    with pytest.raises(UserError, match=r"train.condition_weight_power: 5.0; use a power in \[0, 4\]"):
        cfg_for(condition_weight_power=5.0)


@pytest.mark.parametrize("model", [{"arch": "cvae"}, {"latent_type": "gaussian"}, {"latent_type": "mixed"}])
def test_condition_weights_need_y_dependent_hypothesis_weights(model):
    d = cfg_for(condition_weight_power=1.0).to_dict()
    d["model"].update(model)
    with pytest.raises(UserError, match=r"train.condition_weight_power 1.0 needs hypothesis weights that depend on y.*set it to 0"):
        Config.from_dict(d)


def test_encoder_recognition_trains_the_same_likelihood_bound(batch):
    """With q(c | x, y) from the encoder the loss is an upper bound on the mixture NLL, tight at exact q."""
    x, y = batch
    torch.manual_seed(1)
    enc = build_model(cfg_for(recognition="encoder").model, TWO_BIRDS)
    exact = build_model(cfg_for(recognition="exact").model, TWO_BIRDS)
    exact.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("encoder.")})
    bound, parts = enc.loss(x, y, TWO_BIRDS, cfg_for(recognition="encoder").train, beta=1.0)
    tight, _ = exact.loss(x, y, TWO_BIRDS, cfg_for().train, beta=1.0)
    assert torch.isfinite(bound) and float(bound) >= float(tight) - 1e-5
    assert torch.allclose(tight, direct_mixture_nll(exact, x, y), rtol=1e-5, atol=1e-5)


def test_the_scales_get_gradients_and_stay_finite(batch):
    x, y = batch
    cfg = cfg_for()
    model = build_model(cfg.model, TWO_BIRDS)
    with torch.no_grad():
        model.latent_net.out.bias.fill_(-30.0)  # far below the floor: clamped, the loss stays finite
    loss, _ = model.loss(x, y, TWO_BIRDS, cfg.train, beta=1.0)
    assert torch.isfinite(loss)
    with torch.no_grad():
        model.latent_net.out.bias.fill_(-1.0)
    loss, _ = model.loss(x, y, TWO_BIRDS, cfg.train, beta=1.0)
    loss.backward()
    g = model.latent_net.out.bias.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_draws_within_a_hypothesis_follow_its_scale():
    cfg = cfg_for()
    model = build_model(cfg.model, TWO_BIRDS)
    log_sigma = torch.tensor([-5.0, -4.0, -3.0, -6.0])
    with torch.no_grad():
        model.latent_net.out.bias.copy_(log_sigma.repeat(5))  # every hypothesis: these four end-point scales
        model.prior.head.logits.weight.zero_()  # r(c | y): all weight on hypothesis 2, so every draw is of it
        model.prior.head.logits.bias.copy_(torch.tensor([0.0, 0.0, 60.0, 0.0, 0.0]))
    y = make_pairs(TWO_BIRDS, 2, seed=5, cache_dir=None).y
    post = Posterior(model, TWO_BIRDS)
    ends = lambda t: torch.stack([t[..., 0, 0], t[..., -1, 0], t[..., 0, 1], t[..., -1, 1]], dim=-1)  # noqa: E731
    mean = ends(post.sample(y, 3, seed=1).double())  # (2, 3, 4): the hypothesis' mean, three times
    assert torch.equal(mean[:, 0], mean[:, 2])
    draws = ends(post.sample(y, 4000, SamplingOptions(within="spread"), seed=2).double())  # (2, 4000, 4)
    d = draws - mean[:, :1]
    sigma = torch.exp(log_sigma).double()
    assert torch.allclose(d.std(1), sigma.expand(2, 4), rtol=0.06), d.std(1)
    assert (d.mean(1).abs() < 4 * sigma / math.sqrt(4000)).all()
    # and the draws keep straight lines: every sample is the line through its drawn end points
    x = post.sample(y, 5, SamplingOptions(within="spread"), seed=3).double()
    t = torch.linspace(0, 1, 50, dtype=torch.float64)
    e = ends(x)
    assert torch.allclose(x[..., 0], e[..., :1] + (e[..., 1:2] - e[..., :1]) * t, atol=1e-5)


def test_max_spread_draws_only_the_hypotheses_at_most_that_broad():
    """--max-spread S: hypotheses whose learnt spread (largest std over the end points, x units) exceeds S
    get no draws, the others keep their weights' proportions; a y with none that sharp keeps all."""
    cfg = cfg_for()
    model = build_model(cfg.model, TWO_BIRDS)
    with torch.no_grad():  # hypotheses 0-4 with spreads e^-5, e^-2, e^-6, e^-1, e^-4 (one end point each)
        bias = torch.full((5, 4), -7.0)
        bias[:, 1] = torch.tensor([-5.0, -2.0, -6.0, -1.0, -4.0])
        model.latent_net.out.bias.copy_(bias.flatten())
        model.prior.head.logits.weight.zero_()  # weights 0.1, 0.4, 0.1, 0.3, 0.1
        model.prior.head.logits.bias.copy_(torch.tensor([0.1, 0.4, 0.1, 0.3, 0.1]).log())
    y = make_pairs(TWO_BIRDS, 2, seed=5, cache_dir=None).y
    spread = model.latent.spread(model, y)
    assert torch.allclose(spread, torch.tensor([-5.0, -2.0, -6.0, -1.0, -4.0]).exp().expand(2, 5) * model.x_scale)
    post = Posterior(model, TWO_BIRDS)
    means = model.decoder(None, y).detach()  # (2, 5, 50, 2)

    def which(x):  # the hypothesis each sample is the mean of
        return (x.unsqueeze(2) - means.unsqueeze(1)).abs().amax(dim=(-1, -2)).argmin(-1)

    limit = float(torch.exp(torch.tensor(-3.0)) * model.x_scale)  # hypotheses 0, 2 and 4 are sharper
    c = which(post.sample(y, 6000, SamplingOptions(max_spread=limit), seed=0))
    counts = torch.stack([(c == k).float().mean() for k in range(5)])
    assert counts[1] == 0 and counts[3] == 0
    assert torch.allclose(counts[[0, 2, 4]], torch.full((3,), 1 / 3), atol=0.02)  # 0.1 : 0.1 : 0.1 renormalised
    cov = which(post.sample(y, 5, SamplingOptions(draw="coverage", max_spread=limit), seed=0))
    assert set(cov[0, :3].tolist()) == {0, 2, 4} and not {1, 3} & set(cov.flatten().tolist())
    none = which(post.sample(y, 6000, SamplingOptions(max_spread=1e-6), seed=0))  # none that sharp: all, as r(c|y)
    assert abs(float((none == 1).float().mean()) - 0.4) < 0.03


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_max_spread_must_be_a_positive_number(value):
    model = build_model(cfg_for().model, TWO_BIRDS)
    with pytest.raises(UserError, match=r"max spread must be a finite number > 0 in x units \(--max-spread\)"):
        Posterior(model, TWO_BIRDS).sample(torch.zeros(1, 50, 2), 2, SamplingOptions(max_spread=value))


def test_spread_draws_need_a_family_with_a_spread():
    gauss = build_model(Config.from_dict({"model": {"latent_type": "gaussian", "channels": [4], "kernels": [5],
                                                    "hidden": 16}}).model, TWO_BIRDS)
    with pytest.raises(UserError, match="has no learnt spread to draw within"):
        Posterior(gauss, TWO_BIRDS).sample(torch.zeros(1, 50, 2), 2, SamplingOptions(within="spread"))
    with pytest.raises(UserError, match="has no learnt spread; it needs model.latent_type hypotheses"):
        Posterior(gauss, TWO_BIRDS).sample(torch.zeros(1, 50, 2), 2, SamplingOptions(max_spread=0.05))


@pytest.mark.parametrize("head", ["line", "signal"])
def test_training_sharpens_the_hypotheses(head):
    cfg = cfg_for(head=head, epochs=3, eval_within="spread")
    res = train(cfg)
    h = res.history
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["train_hypothesis_sigma"] < h[0]["train_hypothesis_sigma"]  # scales start broad and sharpen
    assert {"mode_precision", "mode_recall", "score"} <= set(h[-1])


def test_the_spread_ceiling_falls_over_training_to_its_final_value_and_stays_in_the_checkpoint(tmp_path):
    from cvae_opt.checkpoints import load_checkpoint, save_checkpoint
    from cvae_opt.train import Training

    cfg = cfg_for(epochs=4, spread_ceiling=0.05)
    run = Training(cfg)
    ceilings = [math.exp(float(run.model.latent_net.ceiling)) for _ in run.epochs()]
    # log-linear from the initial spread (1 x-scale) to 0.05 at the last step: 0.05 ** (epoch / 4)
    assert ceilings == pytest.approx([0.05 ** (e / 4) for e in (1, 2, 3, 4)], rel=1e-5)
    y = make_pairs(TWO_BIRDS, 6, seed=8, cache_dir=None).y
    model = run.result().model
    with torch.no_grad():
        model.latent_net.out.bias.fill_(1.0)  # every hypothesis asks for a std of e, far above the ceiling
    assert float(model.latent.spread(model, y).detach().max()) == pytest.approx(0.05, rel=1e-5)
    model.zero_grad()
    pairs = make_pairs(TWO_BIRDS, 8, seed=9, cache_dir=None)
    model.loss(pairs.x, pairs.y, TWO_BIRDS, cfg.train, beta=1.0)[0].backward()
    assert model.latent_net.out.bias.grad.abs().sum() > 0  # held at the ceiling, the scales still learn
    loaded, _, _ = load_checkpoint(save_checkpoint(tmp_path / "c.pt", model, cfg))
    assert float(loaded.latent.spread(loaded, y).detach().max()) == pytest.approx(0.05, rel=1e-5)  # the config sets it again
    plain = cfg_for(epochs=1)
    free = build_model(plain.model, TWO_BIRDS)
    with torch.no_grad():
        free.latent_net.out.bias.fill_(1.0)
    assert float(free.latent.spread(free, y).detach().max()) == pytest.approx(math.e, rel=1e-5)  # no ceiling: as learnt


def test_the_spread_ceiling_needs_the_hypotheses_latent_and_a_non_negative_value():
    with pytest.raises(UserError, match=r"spread_ceiling 0.02 bounds the learnt spread of the hypotheses latent"):
        Config.from_dict({"model": {"latent_type": "categorical", "spread_ceiling": 0.02}})
    with pytest.raises(UserError, match=r"model.spread_ceiling: -1.0; it must be >= 0"):
        cfg_for(spread_ceiling=-1)


def test_a_field_problem_takes_the_hypotheses_latent_per_cell():
    problem = resolve_problem("gravity2d")
    cfg = Config.from_dict({"model": {"latent_type": "hypotheses", "components": 3, "body": "mlp", "hidden": 32,
                                      "prior_hidden": 32}})
    model = build_model(cfg.model, problem)
    assert model.latent_net.out.out_features == 3 * 16 * 32
    y = problem(problem.draw_prior(2, torch.Generator().manual_seed(0), torch.float32))
    x = Posterior(model, problem).sample(y, 4, SamplingOptions(within="spread"), seed=0)
    assert x.shape == (2, 4, 16, 32) and torch.isfinite(x).all()


def test_a_checkpoint_reloads_and_generate_records_the_within_and_max_spread_options(tmp_path):
    import json
    import subprocess
    import sys

    from cvae_opt.checkpoints import load_checkpoint, save_checkpoint

    cfg = cfg_for()
    res = train(cfg)
    f = save_checkpoint(tmp_path / "h.pt", res.model, cfg)
    loaded, _, _ = load_checkpoint(f)
    y = make_pairs(TWO_BIRDS, 3, seed=8, cache_dir=None).y
    spread = SamplingOptions(within="spread")
    assert torch.equal(Posterior(loaded, TWO_BIRDS).sample(y, 4, spread, seed=0),
                       Posterior(res.model, TWO_BIRDS).sample(y, 4, spread, seed=0))
    r = subprocess.run([sys.executable, "-m", "cvae_opt.generate", "--checkpoint", str(f), "--conditions",
                        "two_birds:scoring", "--samples", "3", "--within", "spread", "--max-spread", "0.5",
                        "--out", str(tmp_path / "s.pt")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "s.pt.json").read_text())
    assert meta["within"] == "spread" and meta["max_spread"] == 0.5 and meta["latent_type"] == "hypotheses"
