"""Generation in the challenge's submission layout: S generated x per given y, pairs (x, given y)."""

from __future__ import annotations

import torch

from .data import Pairs
from .models import CVAE


def generate_pairs(model: CVAE, y: torch.Tensor, n: int, seed: int = 0, batch: int = 8192) -> Pairs:
    """n samples for each given y (M, P, k), in batches; rows ordered y by y, n rows each."""
    gen = torch.Generator().manual_seed(seed)
    x = model.generate(y, n, batch=batch, generator=gen).cpu()  # (M, n, P, 2)
    m = y.shape[0]
    y_rep = y.cpu().unsqueeze(1).expand(m, n, *y.shape[1:]).reshape(m * n, *y.shape[1:])
    return Pairs(x.reshape(m * n, *x.shape[2:]), y_rep.contiguous())
