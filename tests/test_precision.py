"""`train.precision: bf16`: the MLP bodies' matrix products run in bfloat16 while training, everything the
loss, the optimiser, checkpoints and sampling read stays float32. The linear layers a run calls are
observed through torch's function-override mode, so nothing of the package is patched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from pathlib import Path

from cvae_opt.config import Config
from cvae_opt.devices import resolve_precision
from cvae_opt.errors import UserError
from cvae_opt.layers import BodyLinear, body_precision
from cvae_opt.models import build_model
from cvae_opt.posterior import Posterior
from cvae_opt.problems import TWO_BIRDS
from cvae_opt.studies import apply_params
from cvae_opt.train import Training, train


class LinearCalls(TorchFunctionMode):
    """The input dtype of every F.linear call made inside the block."""

    def __init__(self):
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


def config(cache, precision: str, **train) -> Config:
    t = {"epochs": 3, "batch_size": 64, "lr": 2e-3, "eval_conditions": 4, "eval_samples": 3, "seed": 0,
         "device": "cpu", "precision": precision, "w_y": 0.0, "lr_schedule": "cosine"}
    t.update(train)
    m = {"arch": "cvae_re", "head": "line", "latent_type": "hypotheses", "components": 6, "recognition": "exact",
         "hidden": 64, "prior_hidden": 64, "decoder_depth": 2, "prior_depth": 2, "channels": [8], "kernels": [5]}
    return Config.from_dict({"data": {"train_size": 640, "val_size": 64, "cache_dir": str(cache)}, "model": m, "train": t})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def test_a_body_layer_multiplies_in_bfloat16_inside_the_block_and_hands_float32_on():
    torch.manual_seed(0)
    layer = BodyLinear(16, 8)
    x = torch.randn(5, 16)
    exact = F.linear(x, layer.weight, layer.bias)
    assert torch.equal(layer(x), exact)  # outside the block: plain float32
    with body_precision(torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32
    rounded = F.linear(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16()).float()
    assert torch.equal(out, rounded)
    assert not torch.equal(out, exact) and torch.allclose(out, exact, atol=0.05)  # bfloat16's 8-bit mantissa
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32  # float32 master weights
    # the setting ends with the block, on this thread
    assert torch.equal(layer(x), exact)


def test_bf16_training_runs_the_bodies_in_bfloat16_and_the_output_layers_in_float32(cache):
    calls = {}
    for precision in ("fp32", "bf16"):
        run = Training(config(cache, precision, epochs=1))
        with LinearCalls() as log:
            next(run.epochs())
        calls[precision] = log.dtypes
    assert calls["fp32"] and set(calls["fp32"]) == {torch.float32}
    bf = calls["bf16"]
    assert bf.count(torch.bfloat16) > 0 and bf.count(torch.float32) > 0
    # per training step: the hidden layers of the decoder (its input layer and decoder_depth - 1), the prior
    # network (prior_depth) and the scale network (prior_depth), 2 + 2 + 2, in bfloat16; their output
    # layers (end points, logits, scales) in float32
    steps = 640 // 64
    assert bf.count(torch.bfloat16) == 6 * steps
    assert bf.count(torch.float32) >= 3 * steps


def test_bf16_training_learns_and_keeps_float32_weights_and_samples(cache):
    fp = train(config(cache, "fp32"))
    bf = train(config(cache, "bf16"))
    first, last = bf.history[0]["train_loss"], bf.history[-1]["train_loss"]
    assert last < first - 0.5, (first, last)  # it trains: the mixture likelihood improves
    # close to the float32 run of the same seed, not the same
    assert bf.history[-1]["val_loss"] == pytest.approx(fp.history[-1]["val_loss"], abs=1.0)
    assert bf.history[-1]["val_loss"] != fp.history[-1]["val_loss"]
    assert all(p.dtype == torch.float32 for p in bf.model.parameters())
    y = TWO_BIRDS(torch.full((2, 50, 2), 0.5))
    x = Posterior(bf.model, TWO_BIRDS).sample(y, 4, seed=0)
    assert x.shape == (2, 4, 50, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_an_unknown_precision_is_refused_in_one_line(cache):
    with pytest.raises(UserError, match=r"train\.precision: unknown 'fp16'; use one of fp32, bf16, auto"):
        config(cache, "fp16")


def test_a_study_can_search_the_precision(cache):
    cfg = apply_params(config(cache, "fp32"), {"precision": "bf16"})
    assert cfg.train.precision == "bf16"
    model = build_model(cfg.model, TWO_BIRDS)
    assert any(isinstance(m, BodyLinear) for m in model.modules())
    # the same state-dict keys as a model whose bodies are plain nn.Linear: older checkpoints load
    keys = set(model.state_dict())
    assert "decoder.trunk.0.weight" in keys and "prior.mlp.0.weight" in keys


def test_auto_is_bf16_exactly_where_the_cpu_multiplies_it_in_hardware():
    flags = set()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    else:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    native = bool(flags & {"amx_tile", "avx512_bf16"})
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
