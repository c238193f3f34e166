"""Problem families: one interface for every kind of problem the suite can tune a CVAE for.

A problem (`problems.LineProblem`, `problems.FieldProblem`, or a user's own class) names its family in
its `family` attribute: a registered name (`lines`, `fields`) or a `ProblemFamily` instance. The family
says everything that differs between kinds, so no other module tests what kind a problem is:

- the networks' bodies (`bodies`) and the model shapes they accept (`check_model`);
- how x and y are scaled (`x_scale`, `y_scale`): the one home of "x in units of the prior's scale, y in
  units of the noise", which the loss and the networks use;
- what a user's problem object must satisfy (`probe`, run once per resolved import path);
- which metrics it computes (`metrics`: declared data, so a study asking for another is refused at
  load), how it computes them (`evaluate`, with `solutions` where exact modes can be enumerated) and
  whether refinement applies (`refinable`);
- how y is drawn for x (`simulate`: a forward map plus Gaussian noise, or a stochastic simulator), the
  prior's support samplers must stay in (`in_support`), and the data and training settings it refuses
  (`check_data`, `check_train`);
- its figure (`figure`) and its data files' layout (`challenge_layout`, `as_models`).

A new problem kind is one module with a `ProblemFamily` subclass and a `register` call (or an instance
set as its problems' `family`).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    import matplotlib.pyplot as plt
    import torch
    from torch import nn

    from ..config import DataConfig, ModelConfig, TrainConfig

# metric names every family reports from the validation loss
LOSS_METRICS = ("val_loss", "val_kl", "val_recon", "val_physics")


@dataclass(frozen=True)
class HypothesisSpace:
    """The parameters theta in which a hypothesis of the `hypotheses` latent is a diagonal Gaussian:
    `dims` numbers per model, `to_theta` x (..., *x_shape) -> (..., dims), `from_theta` its inverse.
    `decode_all` (decoder, z, y) -> (B, K, dims), where the decoder can emit theta without building x
    (the line head's end points): the training loss then never builds K full models per pair."""

    dims: int
    to_theta: Callable[[Any], Any]
    from_theta: Callable[[Any], Any]
    decode_all: Callable[[Any, Any, Any], Any] | None = None

    def theta_all(self, decoder: Any, z: Any, y: Any) -> Any:
        """Every hypothesis' mean in theta, (B, K, dims), for rows (z, y)."""
        if self.decode_all is not None:
            return self.decode_all(decoder, z, y)
        return self.to_theta(decoder(z, y))


class ProblemFamily:
    """What a kind of problem declares and computes. Subclasses set `name` and override what differs."""

    name: ClassVar[str]
    challenge_layout: ClassVar[bool] = False  # files of pairs in the challenge's (N, 1, P, w) layout

    # -- networks -----------------------------------------------------------------------------------
    def bodies(self, problem: Any) -> tuple[type["nn.Module"], type["nn.Module"]]:
        """The encoder q(. | x, y) and decoder p(x | ., y) classes, each built as cls(cfg, problem, latent)."""
        raise NotImplementedError

    def check_model(self, cfg: "ModelConfig", problem: Any, where: str = "model") -> None:
        """Refuse (UserError) a model config whose layers do not fit the problem's shapes."""

    def check_train(self, tc: "TrainConfig", problem: Any, where: str = "train") -> None:
        """Refuse (UserError) training settings the problem cannot honour (a physics term without a forward map)."""

    def check_data(self, d: "DataConfig", problem: Any, where: str = "data") -> None:
        """Refuse (UserError) a data config the problem cannot honour (fresh pairs under a fixed budget)."""

    def hypothesis_space(self, cfg: "ModelConfig", problem: Any) -> HypothesisSpace:
        """Where a hypothesis' learnt spread lives (the `hypotheses` latent): by default x itself, per value."""
        shape = tuple(problem.x_shape)
        return HypothesisSpace(math.prod(shape), lambda x: x.flatten(-len(shape)),
                               lambda t: t.view(*t.shape[:-1], *shape))

    def x_scale(self, problem: Any) -> float:
        """The typical size of x: networks and the reconstruction loss see x / x_scale."""
        return float(getattr(problem, "x_scale", 1.0))

    def y_scale(self, problem: Any) -> float:
        """The noise level of y (1 without noise): networks see y / y_scale, the physics term is chi2 per datum."""
        noise = float(getattr(problem, "noise", 0.0))
        return noise if noise > 0 else 1.0

    # -- data -----------------------------------------------------------------------------------------
    def simulate(self, problem: Any, x: "torch.Tensor", generator: "torch.Generator", noise: float = 0.0) -> "torch.Tensor":
        """y for models x (no gradient): the forward map (in x's dtype), plus, with `noise` > 0, Gaussian
        noise of that std drawn from `generator` (then float32, on its device). A family with a stochastic
        simulator draws y its own way."""
        import torch

        with torch.no_grad():
            y = problem(x)
        if noise > 0:
            y = y.float() + noise * torch.randn(y.shape, generator=generator, device=generator.device)
        return y

    def has_forward(self, problem: Any) -> bool:
        """Whether y is a function of x the loss can differentiate (the physics term, misfits)."""
        return True

    def in_support(self, problem: Any, x: "torch.Tensor") -> "torch.Tensor | None":
        """(..., ) bool for models x (..., *x_shape): inside the prior's support, where a sampler must stay
        (samples outside are drawn again); None where every x is allowed."""
        return None

    # -- user problems ------------------------------------------------------------------------------
    def probe(self, spec: str, problem: Any) -> None:
        """Check a problem found at import path `spec` once (shapes, gradient, finiteness): one UserError."""

    # -- metrics and refinement ---------------------------------------------------------------------
    def metrics(self, problem: Any) -> tuple[str, ...]:
        """The objective metrics a trial on this problem reports (validation conditions have true models)."""
        raise NotImplementedError

    def refinable(self, problem: Any) -> bool:
        """Whether the refined pipeline (refinement, oversampling, refined_* metrics) applies."""
        return False

    def solutions(self, problem: Any, y: "torch.Tensor") -> list | None:
        """The exact solutions of each y, where they can be enumerated (else None)."""
        return None

    def evaluate(self, problem: Any, samples: "torch.Tensor", y: "torch.Tensor", truth: "torch.Tensor | None" = None,
                 solutions: list | None = None, weights: list | None = None) -> dict[str, float]:
        """The metrics of samples (M, S, *x_shape) answering y (M, P, k)."""
        raise NotImplementedError

    # -- figures and files --------------------------------------------------------------------------
    def figure(self, problem: Any, y: "torch.Tensor", samples: "torch.Tensor", truth: "torch.Tensor | None",
               title: str) -> "plt.Figure":
        """The samples figure for the shown y."""
        raise NotImplementedError

    def declared(self, problem: Any) -> tuple:
        """What the problem declares beyond its forward values, for the data cache's key."""
        return (tuple(problem.x_shape), problem.n_points, problem.k, float(getattr(problem, "noise", 0.0)))


FAMILIES: dict[str, ProblemFamily | str] = {
    "lines": "cvae_opt.families.lines:LINES",
    "fields": "cvae_opt.families.fields:FIELDS",
    "tasks": "cvae_opt.families.tasks:TASKS",
}


def register(family: ProblemFamily) -> ProblemFamily:
    """Make a family available by its name (a problem's `family = NAME`)."""
    FAMILIES[family.name] = family
    return family


def family_of(problem: Any) -> ProblemFamily:
    """The family a problem declares (`problem.family`: an instance or a registered name)."""
    fam = getattr(problem, "family", None)
    if isinstance(fam, ProblemFamily):
        return fam
    if isinstance(fam, str) and fam in FAMILIES:
        entry = FAMILIES[fam]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = FAMILIES[fam] = getattr(importlib.import_module(module), attr)
        return entry
    from ..errors import UserError

    raise UserError(f"problem {getattr(problem, 'name', problem)!r} declares no known family ({fam!r}); "
                    f"set its `family` to one of {', '.join(FAMILIES)} or a ProblemFamily instance")


__all__ = ["LOSS_METRICS", "HypothesisSpace", "ProblemFamily", "FAMILIES", "register", "family_of"]
