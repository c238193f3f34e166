"""The line-pair family (two birds): x is a pair of straight lines (n_points, 2), y is (n_points, k).

Networks: the encoder stacks x and y as channels of a 1-D sequence of n_points through unpadded
convolutions; the decoder has a `signal` head (all n_points x 2 values through transposed convolutions,
as in the notebooks) or a `line` head (the four end points through a map that keeps lines straight,
inside the prior box and correctly sloped by construction). x and y are used as they are (scale 1).
Metrics: `metrics.evaluate_line_samples` (fit, straightness, validity, diversity, score; the exact
modes where every condition is a cosine). Refinement (`refine`) fits the end points to y.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ModelConfig, conv_length
from ..errors import UserError
from ..latents import LatentFamily
from ..layers import ACTIVATIONS, mlp, with_every_component
from ..problems import LineProblem, ends_from_unit, line_points
from . import LOSS_METRICS, ProblemFamily, register

LINE_METRICS = ("score", "misfit_rmse", "r2", "slope_signs", "valid_fraction", "diversity", "truth_recall")
MODE_METRICS = ("mode_precision", "mode_recall", "mode_pr")


class LineEncoder(nn.Module):
    """q(z | x, y): x and y stacked as channels of a 1-D sequence of n_points, unpadded convolutions,
    then the flattened features and y itself through an MLP."""

    def __init__(self, cfg: ModelConfig, problem: LineProblem, latent: LatentFamily):
        super().__init__()
        n_points, k = problem.n_points, problem.k
        convs: list[nn.Module] = []
        c_in = 2 + k
        for c, ks in zip(cfg.channels, cfg.kernels):
            convs.append(nn.Conv1d(c_in, c, ks))
            if cfg.batch_norm:
                convs.append(nn.BatchNorm1d(c))
            convs.append(ACTIVATIONS[cfg.activation]())
            c_in = c
        self.convs = nn.Sequential(*convs)
        feat = c_in * conv_length(n_points, cfg.kernels)
        self.mlp = mlp([feat + n_points * k, cfg.hidden], cfg.activation, cfg.batch_norm)
        self.head = latent.head(cfg.hidden)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.convs(torch.cat([x, y], dim=-1).transpose(1, 2)).flatten(1)
        return self.head(self.mlp(torch.cat([h, y.flatten(1)], dim=1)))


class LineDecoder(nn.Module):
    """p(x | z, c, y) with a `signal` or a `line` head. With components, the line head emits the end
    points of all K hypotheses from one trunk pass (a K x 4 output layer); the signal head takes the
    component as a one-hot input, so all K are decoded as K rows of one batch."""

    def __init__(self, cfg: ModelConfig, problem: LineProblem, latent: LatentFamily):
        super().__init__()
        n, k = problem.n_points, problem.k
        self.head_kind = cfg.head
        self.n_points, self.box, self.slopes = n, problem.box, problem.slopes
        self.z_dim = latent.gaussian_dims
        self.n_comp = latent.components
        self.one_hot = self.n_comp > 1 and cfg.head == "signal"
        c_in = self.z_dim + n * k + (self.n_comp if self.one_hot else 0)
        self.trunk = mlp([c_in, cfg.hidden], cfg.activation, cfg.batch_norm)
        if cfg.head == "line":
            outs = 4 * self.n_comp
            self.out = nn.Sequential(
                *mlp([cfg.hidden] * cfg.decoder_depth, cfg.activation, cfg.batch_norm), nn.Linear(cfg.hidden, outs)
            )
        else:
            self.length = conv_length(n, cfg.kernels)
            self.c_last = cfg.channels[-1]
            self.expand = mlp([cfg.hidden] * (cfg.decoder_depth - 1) + [self.c_last * self.length], cfg.activation, False)
            layers: list[nn.Module] = []
            chans = list(reversed(cfg.channels[:-1])) + [2]
            c_in = self.c_last
            for i, (c, ks) in enumerate(zip(chans, reversed(cfg.kernels))):
                layers.append(nn.ConvTranspose1d(c_in, c, ks))
                if i < len(chans) - 1:
                    if cfg.batch_norm:
                        layers.append(nn.BatchNorm1d(c))
                    layers.append(ACTIVATIONS[cfg.activation]())
                c_in = c
            self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor | None, y: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """x for rows (z, y): (B, P, 2) for component c (B,) or without components, else all K
        hypotheses (B, K, P, 2)."""
        if self.head_kind == "line":
            return self._lines(self.all_ends(z, y), c)
        b = y.shape[0]
        inp = self._input(z, y)
        if self.one_hot:
            if c is None:  # all K: K rows per input row
                return self._emit(self.trunk(with_every_component(inp, self.n_comp))).view(b, self.n_comp, self.n_points, 2)
            onehot = torch.nn.functional.one_hot(c, self.n_comp).to(inp.dtype)
            return self._emit(self.trunk(torch.cat([inp, onehot], dim=1)))
        return self._emit(self.trunk(inp))  # the signal head without components

    def all_ends(self, z: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        """The line head's end points of all K hypotheses, (B, K, 4), without building the lines (what the
        `hypotheses` latent's likelihood needs)."""
        return self.ends(self.trunk(self._input(z, y))).view(y.shape[0], self.n_comp, 4)

    def _input(self, z: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        return y.flatten(1) if z is None or self.z_dim == 0 else torch.cat([z, y.flatten(1)], dim=1)

    def _lines(self, ends: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """(B, K, 4) end points to lines: of component c (B,) if given, else of all K (B, K, P, 2)."""
        b = ends.shape[0]
        if self.n_comp == 1:
            return line_points(ends[:, 0], self.n_points)
        if c is not None:
            ends = ends.gather(1, c.view(b, 1, 1).expand(b, 1, 4)).squeeze(1)
        return line_points(ends, self.n_points)

    def _emit(self, h: torch.Tensor) -> torch.Tensor:
        """The signal head: trunk features to (B, P, 2) through transposed convolutions."""
        h = self.expand(h).view(-1, self.c_last, self.length)
        return self.deconvs(h).transpose(1, 2)

    def ends(self, h: torch.Tensor) -> torch.Tensor:
        u = torch.sigmoid(self.out(h))
        return ends_from_unit(u.view(*u.shape[:-1], -1, 4), self.box, self.slopes).flatten(-2)


class LineFamily(ProblemFamily):
    name = "lines"
    challenge_layout = True

    def bodies(self, problem: Any) -> tuple[type[nn.Module], type[nn.Module]]:
        return LineEncoder, LineDecoder

    def check_model(self, cfg: ModelConfig, problem: Any, where: str = "model") -> None:
        if conv_length(problem.n_points, cfg.kernels) < 1:
            raise UserError(
                f"{where}.kernels {cfg.kernels} shrink {problem.n_points} points to "
                f"{conv_length(problem.n_points, cfg.kernels)}; their sizes minus one must add up to less than {problem.n_points}"
            )

    def hypothesis_space(self, cfg: ModelConfig, problem: Any):
        """The line head's four end points (x0 start, x0 end, x1 start, x1 end); the signal head's points."""
        if cfg.head != "line":
            return super().hypothesis_space(cfg, problem)
        from . import HypothesisSpace

        n = problem.n_points
        return HypothesisSpace(4, lambda x: x[..., [0, -1], :].transpose(-1, -2).flatten(-2),
                               lambda t: line_points(t, n), lambda decoder, z, y: decoder.all_ends(z, y))

    def x_scale(self, problem: Any) -> float:
        return 1.0

    def y_scale(self, problem: Any) -> float:
        return 1.0

    def probe(self, spec: str, problem: Any) -> None:
        from ..problems import check_line_forward

        check_line_forward(spec, problem.forward, problem.n_points)

    def metrics(self, problem: Any) -> tuple[str, ...]:
        own = LINE_METRICS + (MODE_METRICS if self.enumerable(problem) else ())
        return own + LOSS_METRICS + tuple(f"refined_{m}" for m in own)

    def refinable(self, problem: Any) -> bool:
        return True

    def enumerable(self, problem: Any) -> bool:
        from ..metrics import can_enumerate

        return can_enumerate(problem)

    def solutions(self, problem: Any, y: torch.Tensor) -> list | None:
        from ..metrics import enumerate_solutions

        return enumerate_solutions(problem, y) if self.enumerable(problem) else None

    def evaluate(self, problem, samples, y, truth=None, solutions=None, weights=None):
        from ..metrics import evaluate_line_samples

        return evaluate_line_samples(problem, samples, y, solutions, truth, weights=weights)

    def figure(self, problem, y, samples, truth, title):
        from ..figures import lines_figure

        return lines_figure(problem, y, samples, title)

    def declared(self, problem: Any) -> tuple:
        return (problem.n_points, problem.k, problem.box, problem.slopes)


LINES = register(LineFamily())
