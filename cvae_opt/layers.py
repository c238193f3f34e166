"""The building blocks every network body shares: activations by name, MLPs (whose matrix products may run
in bfloat16 while training, `body_precision`), and decoding every hypothesis of a component latent in one
batch."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
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


_BODY = threading.local()  # the dtype of the bodies' matrix products on this thread (None: as the weights)


@contextmanager
def body_precision(dtype: torch.dtype | None) -> Iterator[None]:
    """Inside the block, on this thread, every MLP body layer (`BodyLinear`) computes its matrix product in
    `dtype` (torch.bfloat16: `train.precision: bf16`) and hands float32 on; None leaves them as they are.
    Only the bodies: the output layers (end points, scales, logits, latent means) stay float32, so what the
    loss and the samples read keeps float32's resolution. Thread-local, as the training loop that sets it."""
    before = getattr(_BODY, "dtype", None)
    _BODY.dtype = dtype
    try:
        yield
    finally:
        _BODY.dtype = before


class BodyLinear(nn.Linear):
    """A hidden layer of an MLP body: float32 parameters (what the optimiser steps and checkpoints hold; the
    same state-dict keys as nn.Linear), its product in bfloat16 inside `body_precision(torch.bfloat16)`,
    which CPUs with AMX or AVX512-BF16 and recent GPUs run faster (a 4 x 512 trunk alone about 2x on this
    CPU; a whole training epoch 1.1-1.4x, benchmarks/throughput.py --precision-only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = getattr(_BODY, "dtype", None)
        if dtype is None or dtype == self.weight.dtype:
            return super().forward(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), self.weight.to(dtype), bias).to(self.weight.dtype)


def mlp(sizes: list[int], act: str, batch_norm: bool) -> nn.Sequential:
    """Linear layers of the given sizes (`BodyLinear`), each followed by (batch norm and) the activation."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers.append(BodyLinear(a, b))
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
