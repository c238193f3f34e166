"""A toy latent family, written as a user would, outside the package: a conditional point estimate (no
latent at all: x = decoder(y)), the baseline every CVAE should beat. Named in a config as
`latent_type: toy_latent:PointLatent`; tests/test_plugins.py runs it through the commands."""

import torch
import torch.nn.functional as F

from cvae_opt.latents import LatentFamily


class PointLatent(LatentFamily):
    name = "point"

    @property
    def needs_encoder(self) -> bool:
        return False  # nothing to recognise

    def recognise(self, model, x, y, q, p, generator):
        return {"x_hat": model.decoder(None, y)}

    def terms(self, model, out, x, y, ctx):
        recon = model.reconstruction_nll(F.mse_loss(out["x_hat"], x) / ctx.x_var)
        physics = None if ctx.physics_off else F.mse_loss(ctx.problem(out["x_hat"]), y) / ctx.y_var
        zero = recon.new_zeros(())
        return zero, recon, physics, {"kl": zero, "recon": recon}

    def draws(self, y, n, generator, weights, spec):
        return {"slot": torch.zeros(y.shape[0], n)}  # nothing random: every sample is the point estimate

    def decode(self, model, y, p, draws):
        n = draws["slot"].shape[1]
        x = model.decoder(None, y)
        return x.unsqueeze(1).expand(x.shape[0], n, *x.shape[1:])
