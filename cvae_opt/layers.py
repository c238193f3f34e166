"""The building blocks every network body shares: activations by name, MLPs, and decoding every
hypothesis of a component latent in one batch."""

from __future__ import annotations

import torch
from torch import nn

from .config import ACTIVATIONS as ACTIVATION_NAMES

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES, "config.ACTIVATIONS names what layers.ACTIVATIONS builds"


def mlp(sizes: list[int], act: str, batch_norm: bool) -> nn.Sequential:
    """Linear layers of the given sizes, each followed by (batch norm and) the activation."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers.append(nn.Linear(a, b))
        if batch_norm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


def with_every_component(inp: torch.Tensor, k: int) -> torch.Tensor:
    """Each input row once per component, the component's one-hot appended: (B, F) -> (B * K, F + K), row-major
    by input row. Decoders that take the component as an input decode all K hypotheses in one batch."""
    b = inp.shape[0]
    eye = torch.eye(k, dtype=inp.dtype, device=inp.device)
    return torch.cat([inp.unsqueeze(1).expand(b, k, inp.shape[1]), eye.unsqueeze(0).expand(b, -1, -1)], dim=2).reshape(b * k, -1)
