import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from cvae_opt.checkpoints import load_checkpoint, save_checkpoint
from cvae_opt.config import Config
from cvae_opt.data import make_pairs
from cvae_opt.errors import NonFiniteLoss, UserError
from cvae_opt.generate import generate_pairs
from cvae_opt.models import ModelConfig, build_model, kl_gaussians
from cvae_opt.problems import TWO_BIRDS
from cvae_opt.train import loss_terms, resolve_device, train


def small_cfg(arch="cvae_re", head="line", **train):
    t = {"epochs": 1, "batch_size": 100, "eval_conditions": 10, "eval_samples": 4, "lr": 1e-3}
    t.update(train)
    return Config.from_dict(
        {"data": {"train_size": 2000, "val_size": 200, "cache_dir": "storage/data"},
         "model": {"arch": arch, "head": head, "latent": 8, "hidden": 64, "channels": [8, 16], "kernels": [8, 4]},
         "train": t}
    )


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(TWO_BIRDS, 2000, seed=0, cache_dir=None), make_pairs(TWO_BIRDS, 200, seed=1, cache_dir=None)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(32, 6, generator=g, dtype=torch.float64) for _ in range(4))
    ours = kl_gaussians(mu_q, lv_q, mu_p, lv_p).sum(-1)
    ref = kl_divergence(Normal(mu_q, torch.exp(0.5 * lv_q)), Normal(mu_p, torch.exp(0.5 * lv_p))).sum(-1)
    assert torch.allclose(ours, ref, atol=1e-10)
    zero = torch.zeros_like(mu_q)
    ref0 = kl_divergence(Normal(mu_q, torch.exp(0.5 * lv_q)), Normal(zero, torch.ones_like(zero))).sum(-1)
    assert torch.allclose(kl_gaussians(mu_q, lv_q, zero, zero).sum(-1), ref0, atol=1e-10)
    assert torch.allclose(kl_gaussians(mu_p, lv_p, mu_p, lv_p), torch.zeros_like(mu_p), atol=1e-12)


@pytest.mark.parametrize("head", ["line", "signal"])
@pytest.mark.parametrize("arch", ["cvae", "cvae_re"])
def test_physics_term_trains_the_decoder(arch, head, pairs):
    cfg = small_cfg(arch, head)
    model = build_model(cfg.model, TWO_BIRDS)
    x, y = pairs[0].x[:64], pairs[0].y[:64]
    tc = cfg.train
    tc.w_x, tc.beta = 0.0, 0.0  # only the physics term left
    loss, parts = loss_terms(model, TWO_BIRDS, x, y, tc, beta=0.0)
    loss.backward()
    grads = [p.grad for p in model.decoder.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert "physics_gen" in parts
    if arch == "cvae_re":  # the generation path's misfit reaches the prior network too
        assert sum(float(p.grad.abs().sum()) for p in model.prior.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("head", ["line", "signal"])
@pytest.mark.parametrize("arch", ["cvae", "cvae_re"])
def test_one_epoch_lowers_the_loss(arch, head, pairs):
    cfg = small_cfg(arch, head)
    torch.manual_seed(cfg.train.seed)
    fresh = build_model(cfg.model, TWO_BIRDS)

    def full_loss(model):
        torch.manual_seed(123)
        model.eval()
        with torch.no_grad():
            return float(loss_terms(model, TWO_BIRDS, pairs[0].x, pairs[0].y, cfg.train, cfg.train.beta)[0])

    before = full_loss(fresh)
    seen = []
    res = train(cfg, callback=lambda epoch, m: seen.append((epoch, m)), data=pairs)
    after = full_loss(res.model)
    assert after < before * 0.95, (before, after)
    assert [e for e, _ in seen] == [1]
    m = seen[0][1]
    for key in ("train_loss", "val_loss", "val_physics", "score", "misfit_rmse", "mode_precision", "mode_recall"):
        assert key in m and math.isfinite(m[key])


def test_generation_shapes_and_reproducibility(pairs):
    cfg = small_cfg()
    model = build_model(cfg.model, TWO_BIRDS)
    y = pairs[1].y[:7]
    out = generate_pairs(model, y, 5, seed=3, batch=8)  # several batches
    assert out.x.shape == (35, 50, 2) and out.y.shape == (35, 50, 2)
    assert torch.equal(out.y[5], y[1]) and torch.equal(out.y[9], y[1])
    assert torch.allclose(out.x, generate_pairs(model, y, 5, seed=3).x, atol=1e-6)  # batching changes nothing
    assert not torch.equal(out.x[0], out.x[1])
    assert model.generate(y, 3).shape == (7, 3, 50, 2)


def test_nan_loss_stops_with_a_clear_reason(pairs):
    x, y = pairs[0].x.clone(), pairs[0].y.clone()
    y[1500:] = float("nan")
    from cvae_opt.data import Pairs

    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step \d+ .*non-finite: .*"):
        train(small_cfg(), data=(Pairs(x, y), pairs[1]))


def test_checkpoint_round_trip(tmp_path, pairs):
    cfg = small_cfg()
    res = train(cfg, data=pairs)
    f = save_checkpoint(tmp_path / "m.pt", res.model, cfg, res.last)
    raw = torch.load(f, weights_only=True)  # plain data only
    assert raw["config"]["model"]["latent"] == 8
    model, cfg2, _ = load_checkpoint(f)
    assert cfg2 == cfg
    y = pairs[1].y[:4]
    assert torch.equal(generate_pairs(model, y, 3, seed=1).x, generate_pairs(res.model, y, 3, seed=1).x)


def test_device_and_config_errors():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError):
        resolve_device("tpu9")
    with pytest.raises(UserError, match="kernels"):
        build_model(ModelConfig(kernels=[40, 20]), TWO_BIRDS)
    with pytest.raises(UserError, match="model.head"):
        build_model(ModelConfig(head="spline"), TWO_BIRDS)
    with pytest.raises(UserError, match=r"config.train.lrr: unknown key"):
        Config.from_dict({"train": {"lrr": 1}})
    with pytest.raises(UserError, match=r"config.model.latent: 'big' is not a valid int"):
        Config.from_dict({"model": {"latent": "big"}})
    assert Config.from_dict(Config().to_dict()) == Config()


def test_winner_takes_all_physics_pulls_only_the_best_sample(pairs):
    x, y = pairs[0].x[:64], pairs[0].y[:64]
    parts = {}
    for reduce in ("mean", "min"):
        cfg = small_cfg(physics_samples=6, physics_reduce=reduce)
        torch.manual_seed(0)
        model = build_model(cfg.model, TWO_BIRDS)
        torch.manual_seed(1)
        parts[reduce] = loss_terms(model, TWO_BIRDS, x, y, cfg.train, 1.0)[1]
    assert float(parts["min"]["physics_gen"]) < float(parts["mean"]["physics_gen"])
    assert torch.isclose(parts["min"]["recon"], parts["mean"]["recon"])
    with pytest.raises(UserError, match="physics_reduce"):
        cfg = small_cfg(physics_reduce="max")
        loss_terms(build_model(cfg.model, TWO_BIRDS), TWO_BIRDS, x, y, cfg.train, 1.0)
