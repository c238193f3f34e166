"""The decoder's structured output noise (`decoder_scale: structured`, issue 26): its likelihood, its
draws, and a model that carries it learning a linear-Gaussian posterior's spread."""

import pytest
import torch

from cvae_opt.config import Config
from cvae_opt.data import draw_pairs
from cvae_opt.errors import UserError
from cvae_opt.latents import DrawSpec
from cvae_opt.models import build_model
from cvae_opt.output_noise import FLOOR, StructuredNoise
from cvae_opt.posterior import Posterior
from cvae_opt.problems import FieldProblem

NOISE = 0.3
A = torch.tensor([[1.0, 0.5, 0.0, -0.3, 0.2, 0.0], [0.0, 1.0, 0.8, 0.0, -0.5, 0.3], [0.4, 0.0, 0.0, 1.0, 0.6, -0.7]],
                 dtype=torch.float64)

# a 6-cell profile, x ~ N(0, I), y = A x + N(0, NOISE^2) at 3 points: p(x | y) = N(S A^T y / NOISE^2, S),
# S = (I + A^T A / NOISE^2)^-1, the same covariance for every y
LINEAR = FieldProblem(
    name="linear6", forward=lambda x: (x @ A.to(x).T).unsqueeze(-1), x_shape=(6,), n_points=3,
    prior=lambda n, gen, dtype=torch.float64: torch.randn(n, 6, generator=gen, dtype=dtype, device=gen.device),
    noise=NOISE,
)
POST_COV = torch.linalg.inv(torch.eye(6, dtype=torch.float64) + A.T @ A / NOISE**2)


def noise_with_values(dims=6, seed=0) -> StructuredNoise:
    g = torch.Generator().manual_seed(seed)
    noise = StructuredNoise(dims)
    a = 0.6 * torch.randn(dims, dims, generator=g) + torch.diag(torch.linspace(0.2, 1.5, dims))
    noise.running_cov.copy_(a @ a.T)
    return noise


def test_the_likelihood_is_the_full_covariance_gaussians():
    noise = noise_with_values()
    r = torch.randn(9, 6, generator=torch.Generator().manual_seed(1))
    cov = noise.running_cov.double() + FLOOR**2 * torch.eye(6, dtype=torch.float64)  # written out here
    direct = -torch.distributions.MultivariateNormal(torch.zeros(6, dtype=torch.float64), cov).log_prob(r.double()) / 6
    noise.eval()
    assert torch.allclose(noise.nll(r).double(), direct, rtol=1e-5, atol=1e-5)
    assert torch.allclose(noise.std().double(), cov.diagonal().sqrt(), atol=1e-6)


def test_training_moves_the_covariance_toward_the_residuals():
    """Each training step of a model is an M-step on the running covariance: fed residuals of a known
    covariance it converges to it; an evaluation-mode or no-grad reconstruction leaves it alone."""
    cfg = Config.from_dict({"model": {"arch": "cvae_re", "body": "mlp", "latent": 2, "hidden": 8, "prior_hidden": 8,
                                      "decoder_scale": "structured"}})
    model = build_model(cfg.model, LINEAR)
    noise = model.output_noise
    target = noise_with_values(seed=4).running_cov
    chol = torch.linalg.cholesky(target)
    g = torch.Generator().manual_seed(3)
    zero = torch.zeros(256, 6)
    before = noise.running_cov.clone()
    model.eval()
    model.reconstruction(zero, torch.randn(256, 6, generator=g) @ chol.T)
    model.train()
    with torch.no_grad():
        model.reconstruction(zero, torch.randn(256, 6, generator=g) @ chol.T)
    assert torch.equal(noise.running_cov, before)
    for _ in range(800):
        x = torch.randn(256, 6, generator=g) @ chol.T
        term = model.reconstruction(zero, x)
    assert torch.allclose(term, (x**2).mean(-1))  # the networks' term is the squared error
    assert torch.allclose(noise.running_cov, target, atol=0.08 * float(target.diagonal().max()))


def test_draws_follow_the_declared_covariance():
    noise = noise_with_values()
    eps = noise.draws(1, 40_000, torch.Generator().manual_seed(2))
    with torch.no_grad():
        d = noise.sample(eps)[0].double()
    emp = d.T @ d / d.shape[0]
    cov = noise.covariance().detach().double()
    assert torch.allclose(emp, cov, atol=0.05 * float(cov.diagonal().max()))
    assert eps.shape == (1, 40_000, 6)


@pytest.mark.parametrize("latent_type", ["categorical", "mixed", "hypotheses"])
def test_structured_needs_the_gaussian_latent(latent_type):
    with pytest.raises(UserError, match="decoder_scale structured needs latent_type gaussian"):
        Config.from_dict({"model": {"latent_type": latent_type, "decoder_scale": "structured"}}).model.validate()


def test_a_structured_model_learns_the_linear_gaussian_posterior():
    """Real training steps on fresh pairs; then the raw samples' mean and covariance against the exact
    posterior's."""
    torch.manual_seed(0)
    cfg = Config.from_dict({"model": {"arch": "cvae_re", "body": "mlp", "skip": True, "latent": 2, "hidden": 64,
                                      "prior_hidden": 32, "decoder_scale": "structured"}})
    model = build_model(cfg.model, LINEAR)
    tc = Config.from_dict({"train": {"beta": 1e-3, "w_y": 0.0}}).train
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 800)
    g = torch.Generator().manual_seed(0)
    for _ in range(800):
        pairs = draw_pairs(LINEAR, 256, g)
        loss, parts = model.loss(pairs.x, pairs.y, LINEAR, tc, tc.beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert torch.isfinite(loss)
    with torch.no_grad():  # validation reports the noise's typical spread and its likelihood
        assert {"noise_sigma", "noise_nll"} <= set(model.loss(pairs.x, pairs.y, LINEAR, tc, tc.beta)[1])
    y = draw_pairs(LINEAR, 4, torch.Generator().manual_seed(5)).y
    x = Posterior(model, LINEAR).sample(y, 4000, seed=1).double()  # (4, 4000, 6)
    post_mean = (y.double().squeeze(-1) @ A) @ POST_COV / NOISE**2  # (4, 6)
    post_std = POST_COV.diagonal().sqrt()
    assert ((x.mean(1) - post_mean).abs() / post_std).max() < 0.15
    ratio = x.std(1) / post_std
    assert ratio.min() > 0.9 and ratio.max() < 1.1, ratio
    centred = x - x.mean(1, keepdim=True)
    emp = torch.einsum("mni,mnj->ij", centred, centred) / (4 * 4000)
    assert torch.allclose(emp, POST_COV, atol=0.05)  # the correlations too (off-diagonals up to 0.37)


def test_draws_carry_the_noise_and_follow_the_seed():
    cfg = Config.from_dict({"model": {"arch": "cvae_re", "body": "mlp", "latent": 2, "hidden": 16, "prior_hidden": 16,
                                      "decoder_scale": "structured"}})
    model = build_model(cfg.model, LINEAR)
    pairs = draw_pairs(LINEAR, 32, torch.Generator().manual_seed(0))
    loss, _ = model.loss(pairs.x, pairs.y, LINEAR, cfg.train, 1.0 / 6)
    loss.backward()
    assert torch.isfinite(loss)
    post = Posterior(model, LINEAR)
    a, b = post.sample(pairs.y[:2], 5, seed=3), post.sample(pairs.y[:2], 5, seed=3)
    assert torch.equal(a, b)  # seeded: the noise comes from the same generator as the latent draws
    draws = post._draws(pairs.y[:2], 5, torch.Generator().manual_seed(3), DrawSpec(), 8192)
    with torch.no_grad():
        means = model.decode(pairs.y[:2], {k: v for k, v in draws.items() if k != "noise"})
    assert draws["noise"].shape == (2, 5, 6) and (a - means).abs().min() > 0


def test_the_factor_follows_the_covariance_it_was_made_from(tmp_path):
    """The Cholesky factor is cached for generation; a training step or a loaded state replaces it."""
    noise = noise_with_values()
    eps = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    first = noise.sample(eps)
    assert torch.equal(noise.sample(eps), first)
    noise.update(10.0 * torch.randn(64, 6, generator=torch.Generator().manual_seed(1)))
    second = noise.sample(eps)
    assert not torch.allclose(second, first)
    other = noise_with_values(seed=9)
    other.sample(eps)
    other.load_state_dict(noise.state_dict())
    assert torch.allclose(other.sample(eps), second)
