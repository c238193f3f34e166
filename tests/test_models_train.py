import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from cvae_opt.checkpoints import load_checkpoint, save_checkpoint
from cvae_opt.config import Config
from cvae_opt.data import Pairs, make_pairs
from cvae_opt.errors import NonFiniteLoss, UserError
from cvae_opt.metrics import enumerate_solutions, evaluate_samples
from cvae_opt.latents import kl_gaussians
from cvae_opt.models import ModelConfig, build_model
from cvae_opt.posterior import Posterior
from cvae_opt.problems import TWO_BIRDS
from cvae_opt.devices import resolve_device
from cvae_opt.train import train, validation_loss


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
    loss, parts = model.loss(x, y, TWO_BIRDS, tc, beta=0.0)
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
            return float(model.loss(pairs[0].x, pairs[0].y, TWO_BIRDS, cfg.train, cfg.train.beta)[0])

    before = full_loss(fresh)
    seen = []
    res = train(cfg, callback=lambda epoch, m: seen.append((epoch, m)), data=pairs)
    after = full_loss(res.model)
    assert after < before * 0.95, (before, after)
    assert [e for e, _ in seen] == [1]
    m = seen[0][1]
    assert all(math.isfinite(m[k]) for k in ("train_loss", "val_loss", "val_physics"))
    # the generation metrics are those of the trained model's samples for the first validation conditions
    y = pairs[1].y[: cfg.train.eval_conditions]
    samples = Posterior(res.model, TWO_BIRDS).sample(y, cfg.train.eval_samples, seed=cfg.train.seed + 7)
    again = evaluate_samples(TWO_BIRDS, samples, y, enumerate_solutions(TWO_BIRDS, y), pairs[1].x[: len(y)])
    for key in ("score", "misfit_rmse", "mode_precision", "mode_recall", "truth_recall"):
        assert m[key] == pytest.approx(again[key]), key


def test_generation_shapes_and_reproducibility(pairs):
    cfg = small_cfg()
    model = build_model(cfg.model, TWO_BIRDS)
    y = pairs[1].y[:7]
    out = Pairs.from_samples(Posterior(model, TWO_BIRDS).sample(y, 5, seed=3, batch=8), y)  # several batches
    assert out.x.shape == (35, 50, 2) and out.y.shape == (35, 50, 2)
    assert torch.equal(out.y[5], y[1]) and torch.equal(out.y[9], y[1])
    assert torch.allclose(out.x, Pairs.from_samples(Posterior(model, TWO_BIRDS).sample(y, 5, seed=3), y).x, atol=1e-6)  # batching changes nothing
    assert not torch.equal(out.x[0], out.x[1])
    assert Posterior(model, TWO_BIRDS).sample(y, 3).shape == (7, 3, 50, 2)


def test_nan_loss_stops_with_a_clear_reason(pairs):
    x, y = pairs[0].x.clone(), pairs[0].y.clone()
    y[1500:] = float("nan")
    from cvae_opt.data import Pairs

    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step \d+ .*non-finite: .*"):
        train(small_cfg(), data=(Pairs(x, y), pairs[1]))


def test_training_steps_read_nothing_back_from_the_device(pairs, monkeypatch):
    """A host read (bool, float, int, item, tolist) of a tensor in the training loop blocks a GPU until it
    catches up; the loop reads the non-finite flag once every FINITE_CHECK_EVERY steps, not once per step."""
    import sys as _sys

    import cvae_opt.train as train_module

    reads = {"n": 0}
    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, **k):
            if "cvae_opt" in _sys._getframe(1).f_code.co_filename:  # the project's code, not torch's optimisers
                reads["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def host_reads(batch_size):
        reads["n"] = 0
        train(small_cfg(batch_size=batch_size), data=pairs)
        return reads["n"]

    few, many = host_reads(1000), host_reads(20)  # 2 and 100 steps, the same evaluation
    assert many - few <= 98 / train_module.FINITE_CHECK_EVERY + 2, (few, many)


def test_w_y_zero_skips_the_physics_term_in_training_steps(pairs):
    from cvae_opt.problems import LineProblem

    calls = []

    def forward(x):  # NaN everywhere: with w_y = 0 it must not reach the loss
        calls.append(torch.is_grad_enabled())
        return torch.full((*x.shape[:-1], 2), float("nan"), dtype=x.dtype)

    nan_problem = LineProblem("nan", forward, 2)
    x, y = pairs[0].x[:64], pairs[0].y[:64]
    for latent in ({}, {"latent_type": "categorical", "components": 8}):
        cfg = small_cfg(w_y=0.0)
        cfg.model = ModelConfig(**{**cfg.model.__dict__, **latent})
        model = build_model(cfg.model, nan_problem)
        calls.clear()
        loss, parts = model.loss(x, y, nan_problem, cfg.train, 0.1)
        assert calls == [] and "physics" not in parts and torch.isfinite(loss)
        loss.backward()
        with torch.no_grad():  # validation still reports it, as a diagnostic, without adding it
            loss, parts = model.loss(x, y, nan_problem, cfg.train, 0.1)
        assert calls == [False] and torch.isnan(parts["physics"]) and torch.isfinite(loss)
        val = validation_loss(model, nan_problem, Pairs(x, y), cfg.train, 0.1)  # the same, with no graph
        assert math.isnan(val["val_physics"]) and math.isfinite(val["val_loss"])


def test_checkpoint_round_trip(tmp_path, pairs):
    cfg = small_cfg()
    res = train(cfg, data=pairs)
    f = save_checkpoint(tmp_path / "m.pt", res.model, cfg, res.last)
    raw = torch.load(f, weights_only=True)  # plain data only
    assert raw["config"]["model"]["latent"] == 8
    model, cfg2, _ = load_checkpoint(f)
    assert cfg2 == cfg
    y = pairs[1].y[:4]
    assert torch.equal(Posterior(model, TWO_BIRDS).sample(y, 3, seed=1), Posterior(res.model, TWO_BIRDS).sample(y, 3, seed=1))


def test_a_device_the_machine_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a one-GPU machine, as torch reports it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UserError, match=r"^device 'cuda:7' asked for, but this machine has 1 CUDA device \(cuda:0\)"):
        resolve_device("cuda:7")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(UserError, match=r"has 4 CUDA devices \(cuda:0 to cuda:3\)"):
        resolve_device("cuda:4")
    with pytest.raises(UserError, match="unknown device 'mps'"):
        resolve_device("mps")


def test_workers_spread_over_the_gpus():
    from cvae_opt.devices import worker_device

    assert [worker_device("auto", i, 3) for i in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert [worker_device("cuda", i, 2) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_device("cuda:1", 0, 4) == "cuda:1" and worker_device("cpu", 3, 4) == "cpu"  # asked for: kept
    assert worker_device("auto", 3, 1) == "auto" and worker_device("auto", 3, 0) == "auto"


def test_device_and_config_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine: auto is the CPU
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # one with a GPU: auto is the GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
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
    """physics_reduce min: the generation term is the best of the draws per y, mean: their average; both
    measured on the very draws the loss made (same seed: the recognition pass, then the draws)."""
    x, y = pairs[0].x[:64], pairs[0].y[:64]
    for reduce in ("mean", "min"):
        cfg = small_cfg(physics_samples=6, physics_reduce=reduce)
        torch.manual_seed(0)
        model = build_model(cfg.model, TWO_BIRDS)
        torch.manual_seed(1)
        parts = model.loss(x, y, TWO_BIRDS, cfg.train, 1.0)[1]
        torch.manual_seed(1)
        with torch.no_grad():
            model(x, y)
            per_sample = ((TWO_BIRDS(model.draw(y, 6)) - y.unsqueeze(1)) ** 2).mean(dim=(-1, -2))  # (64, 6)
        expected = per_sample.min(dim=1).values.mean() if reduce == "min" else per_sample.mean()
        assert torch.isclose(parts["physics_gen"].detach(), expected, rtol=1e-5), reduce
        assert not torch.isclose(per_sample.min(dim=1).values.mean(), per_sample.mean())  # the two rules differ here
    with pytest.raises(UserError, match="config.train.physics_reduce: unknown 'max'"):
        small_cfg(physics_reduce="max")  # refused when the config is read
