"""The complete description of one training run: data, model and training settings.

A trial, an exported best config and a retrain all go through `Config`, so retraining from an exported
file runs the same code as the trial that found it. `Config.from_dict` refuses unknown keys, wrong types
and impossible values (a misspelt choice, a negative epoch count) with the key path, so a mistake in a
YAML file is one clear line at load time, not a failure in every trial. This module needs no torch:
reading a study or config file checks it completely without building a network.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError, clipped, shown
from .files import read_yaml

DEFAULT_CACHE_DIR = "storage/data"  # synthetic training pairs, keyed by what the problem computes

# the choices of the string-valued settings; models.py builds what these name
ARCHS = ("cvae", "cvae_re")
HEADS = ("signal", "line")
BODIES = ("conv", "mlp")
LATENT_TYPES = ("gaussian", "categorical", "mixed", "hypotheses")  # latents.py builds them; a user's family is 'module:Class'
COMPONENT_LATENTS = ("categorical", "mixed", "hypotheses")  # those whose `components` is their K
# those whose whole loss `train.condition_weight_power` weights per pair (mixed: its Gaussian KL is a batch term)
WEIGHTED_LATENTS = ("categorical", "hypotheses")
CONDITION_WEIGHT_POWER_MAX = 4.0  # at power p a pair can weigh K^p times another: beyond 4 one y drowns the batch
RECOGNITIONS = ("encoder", "exact")
DECODER_SCALES = ("fixed", "learnt", "structured")
COMPONENT_PRIORS = ("uniform", "learnt")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh")
DRAWS = ("posterior", "coverage")
WITHINS = ("mean", "spread")  # a drawn hypothesis' mean, or a draw within its learnt spread (`hypotheses`)
# the lightest hypothesis (its weight for this y) that coverage draws and tempered draws pick by default: below
# it sit hypotheses the model has all but switched off for that y
MIN_WEIGHT = 0.01
REFINE_METHODS = ("lm", "adam")
LR_SCHEDULES = ("constant", "cosine")
# the MLP bodies' matrix products while training (`layers.body_precision`); auto: bf16 where the device
# multiplies bfloat16 in hardware (`devices.resolve_precision`)
PRECISIONS = ("fp32", "bf16", "auto")
PHYSICS_REDUCE = ("mean", "min")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class DataConfig:
    problem: str = "two_birds"  # built-in name or 'package.module:callable'
    train_size: int = 100_000
    val_size: int = 2_000
    seed: int = 0
    noise: float = 0.0  # std of Gaussian noise added to synthetic y
    train_file: str | None = None  # challenge-format file instead of synthetic training pairs
    val_file: str | None = None
    cache_dir: str = DEFAULT_CACHE_DIR
    fresh: bool = False  # draw train_size new pairs from the prior every epoch, on the training device
    # a fixed simulation budget (the benchmark tasks: 1000, 10000, 100000): training and validation pairs
    # together, so training gets simulations - val_size of them and train_size is not used; 0: no budget
    simulations: int = 0

    @property
    def training_pairs(self) -> int:
        """How many training pairs this config draws: train_size, or under a budget what validation leaves."""
        return self.simulations - self.val_size if self.simulations else self.train_size

    def validate(self, where: str = "data") -> None:
        _at_least(self, where, train_size=1, val_size=1, noise=0.0, simulations=0)
        if self.simulations and self.simulations <= self.val_size:
            raise UserError(f"{where}.simulations {self.simulations} leaves no training pairs after val_size "
                            f"{self.val_size}; set val_size below the budget (e.g. a tenth of it)")
        if self.simulations and (self.fresh or self.train_file):
            raise UserError(f"{where}.simulations is a fixed budget of simulated pairs: drop "
                            f"{'fresh' if self.fresh else 'train_file'}")
        if self.train_file and self.fresh:
            raise UserError(f"{where}.fresh draws new training pairs from the prior every epoch: drop "
                            f"{where}.train_file or set fresh: false")
        if not self.problem or (":" not in self.problem and not self.problem.isidentifier()):
            raise UserError(f"{where}.problem: {shown(self.problem)} is neither a built-in name nor 'package.module:callable'")


@dataclass
class ModelConfig:
    arch: str = "cvae_re"
    latent: int = 16
    channels: list[int] = field(default_factory=lambda: [32, 64])  # one entry per conv layer
    kernels: list[int] = field(default_factory=lambda: [16, 8])
    hidden: int = 256  # encoder and decoder MLP width
    prior_hidden: int = 128  # prior network width (cvae_re)
    prior_depth: int = 2
    activation: str = "relu"
    batch_norm: bool = False
    head: str = "line"
    latent_type: str = "gaussian"  # gaussian | categorical | mixed | 'package.module:Class' (latents.LatentFamily)
    components: int = 32  # K, for categorical and mixed latents
    component_prior: str = "learnt"  # cvae only: uniform | learnt (y-independent logits)
    decoder_depth: int = 2  # hidden layers of the decoder MLP
    # q(c | x, y) of component latents: `encoder` (a network, the CVAE's recognition encoder) or `exact`
    # (the model's own posterior over its K hypotheses, r(c|y) exp(-w_x recon_c / beta) renormalised,
    # which makes the bound tight; a mixed latent keeps the encoder for its Gaussian part)
    recognition: str = "encoder"
    # the reconstruction's noise scale: `fixed` (the loss is a plain mean squared error) or `learnt` (one
    # learnt sigma: the loss is the Gaussian negative log-likelihood 0.5 * (mse / sigma^2 + log sigma^2),
    # so the assignment of x to hypotheses starts soft and sharpens as the fit improves) or `structured`
    # (Gaussian latent: the loss as `fixed`, and every generated sample is the decoder mean plus a draw of
    # N(0, S), S the running covariance of the training residuals, one for all y: cvae_opt/output_noise.py)
    decoder_scale: str = "fixed"
    # field problems (a grid or a profile): the networks' body, `conv` (strided 2D convolutions with
    # `channels` and `kernels` for grids, 1D for profiles) or `mlp` (the model flattened); line problems
    # keep their 1D convolutional encoder
    body: str = "conv"
    # field problems: a linear path from the decoder's input (z, y) straight to x, added to the network's
    # output, so a near-linear posterior map (a linear forward problem with a Gaussian prior) is easy to learn
    skip: bool = False
    # a spike-and-slab output: each value of x is exactly 0 with a probability a gate network predicts
    # from (z, y), else the decoder's value (trained on the values that are not 0); for priors whose
    # models are mostly exact zeros (gravity's blocks: a background of contrast 0). cvae_opt/output_noise.py
    spike: bool = False
    # hypotheses latent: the largest learnt standard deviation a hypothesis may keep (x units; 0 = no ceiling
    # below the family's own). Training lowers the ceiling log-linearly from the hypotheses' initial spread to
    # this value over the run, so a broad hypothesis standing between two solutions (a hedge) must move onto
    # one of them before the end; the trained model keeps the final ceiling when it samples
    spread_ceiling: float = 0.0

    def validate(self, where: str = "model") -> None:
        """Every value a network can be built from; whether its layers fit a problem's shapes is the
        problem family's check (`families.ProblemFamily.check_model`)."""
        _one_of(self, where, arch=ARCHS, head=HEADS, body=BODIES, activation=ACTIVATIONS,
                component_prior=COMPONENT_PRIORS, recognition=RECOGNITIONS, decoder_scale=DECODER_SCALES)
        if ":" not in self.latent_type:  # 'package.module:Class': a user's latent family, checked when built
            _one_of(self, where, latent_type=LATENT_TYPES)
        _at_least(self, where, latent=1, hidden=1, prior_hidden=1, prior_depth=1, decoder_depth=1, spread_ceiling=0.0)
        if self.spread_ceiling > 0 and self.latent_type != "hypotheses":
            raise UserError(f"{where}.spread_ceiling {shown(self.spread_ceiling)} bounds the learnt spread of the hypotheses "
                            f"latent (got latent_type {shown(self.latent_type)}); set it to 0 or latent_type: hypotheses")
        if self.decoder_scale == "structured" and self.latent_type != "gaussian":
            raise UserError(f"{where}.decoder_scale structured needs latent_type gaussian (got {shown(self.latent_type)}: "
                            "its noise covariance is the running covariance of one reconstruction per pair); "
                            "use decoder_scale fixed or learnt with that latent")
        if self.spike and self.latent_type != "gaussian":
            raise UserError(f"{where}.spike needs latent_type gaussian (got {shown(self.latent_type)}: the gate reads the "
                            "decoder's z); set spike: false or latent_type: gaussian")
        if self.spike and self.decoder_scale == "structured":
            raise UserError(f"{where}.spike with decoder_scale structured: the noise would fill the spike's exact zeros; "
                            "use decoder_scale fixed or learnt with spike")
        if len(self.channels) != len(self.kernels) or not self.channels:
            raise UserError(f"{where}.channels {shown(self.channels)} and {where}.kernels {shown(self.kernels)} must be non-empty "
                            "and of one length")
        if min(self.channels) < 1 or min(self.kernels) < 1:
            raise UserError(f"{where}.channels {shown(self.channels)} and {where}.kernels {shown(self.kernels)} must be positive")
        if self.latent_type in COMPONENT_LATENTS and self.components < 2:
            raise UserError(f"{where}.components: {self.components}; a {self.latent_type} latent needs at least 2")


def conv_length(n_points: int, kernels: list[int]) -> int:
    """Sequence length after unpadded convolutions."""
    return n_points - sum(k - 1 for k in kernels)


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine
    weight_decay: float = 0.0
    beta: float = 1.0  # weight of the KL term
    kl_warmup: int = 0  # epochs over which beta ramps up linearly from 0
    free_bits: float = 0.0  # nats per latent dimension below which the KL is not pushed down
    w_x: float = 1.0  # reconstruction weight
    w_y: float = 1.0  # physics (forward misfit) weight
    physics_samples: int = 1  # samples per y drawn through the generation path for the physics term
    physics_reduce: str = "mean"  # mean over those samples, or "min": only the best-fitting one per y is pulled
    # component latents: the physics term weights hypothesis c by r(c|y)^T renormalised (1: the
    # posterior weight, 0: every hypothesis alike, so light ones are pulled onto solutions too)
    physics_temperature: float = 1.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    # categorical and hypotheses latents of cvae_re: each training pair's loss (and so the train_* figures)
    # weighted by its y's effective number of hypotheses, exp(H(r(c|y))), to this power (0 = off, at most 4):
    # y with many solutions get the training effort their many hypotheses need; the optimum q(x|y) = p(x|y)
    # does not move (`latents.condition_weights`); validation figures stay plain means
    condition_weight_power: float = 0.0
    # the MLP bodies' matrix products while training: fp32, bf16 (more steps per second on CPUs with AMX /
    # AVX512-BF16 and on recent GPUs; output layers, loss, optimiser and sampling stay float32), or auto (bf16
    # where the device has it in hardware, else fp32)
    precision: str = "fp32"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_conditions: int = 100  # validation y used for generation metrics each epoch
    # how the trial metrics draw (component latents): posterior | coverage, and the weights' temperature
    eval_draw: str = "posterior"
    eval_temperature: float = 1.0
    eval_within: str = "mean"  # hypotheses latent: the metrics from hypothesis means or draws within their spread
    eval_samples: int = 10  # samples per validation y
    # refined-pipeline metrics (refined_*) after the last epoch: LM iterations (0 = off) and oversampling,
    # as `generate --refine eval_refine --oversample eval_oversample` on the validation conditions
    eval_refine: int = 0
    eval_oversample: int = 10
    # a cheap refined estimate at every epoch before the last (refined_*_estimate: the first N validation
    # conditions, oversample 2), so that studies with a refined_* objective can be pruned; 0 = off
    eval_refine_estimate: int = 0
    # the largest share of training time the per-epoch validation (losses and metrics) may take: 0 =
    # every epoch; e.g. 0.05 validates only as often as keeps it near 5% of the training loop's time (the
    # first and last epochs always). What a long run or a study spends on its curve goes to training.
    eval_overhead: float = 0.0

    def validate(self, where: str = "train") -> None:
        _one_of(self, where, lr_schedule=LR_SCHEDULES, physics_reduce=PHYSICS_REDUCE, eval_draw=DRAWS,
                eval_within=WITHINS, precision=PRECISIONS)
        _at_least(self, where, epochs=1, batch_size=1, eval_samples=1, eval_oversample=1, eval_conditions=0,
                  kl_warmup=0, physics_samples=0, eval_refine=0, eval_refine_estimate=0, weight_decay=0.0,
                  beta=0.0, free_bits=0.0, w_x=0.0, w_y=0.0, physics_temperature=0.0, grad_clip=0.0,
                  eval_temperature=0.0)
        if not self.lr > 0:
            raise UserError(f"{where}.lr: {shown(self.lr)}; the learning rate must be > 0")
        if not 0 <= self.condition_weight_power <= CONDITION_WEIGHT_POWER_MAX:
            raise UserError(f"{where}.condition_weight_power: {shown(self.condition_weight_power)}; use a power in "
                            f"[0, {CONDITION_WEIGHT_POWER_MAX:g}] (0 = every pair alike, 1 = by the effective number of hypotheses)")
        if not 0 <= self.eval_overhead < 1:
            raise UserError(f"{where}.eval_overhead: {shown(self.eval_overhead)}; use a share of the training time in "
                            f"[0, 1), e.g. 0.05 (0 = validate every epoch)")
        if not DEVICE_PATTERN.match(self.device):
            raise UserError(f"{where}.device: unknown device {shown(self.device)}; use auto, cpu, cuda or cuda:N")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "config") -> "Config":
        """Build and check a config; every mistake is one UserError naming its key path."""
        cfg = _build(cls, d, where)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config") -> None:
        self.data.validate(f"{where}.data")
        self.model.validate(f"{where}.model")
        self.train.validate(f"{where}.train")
        m = self.model
        if self.train.condition_weight_power > 0 and (m.arch != "cvae_re" or m.latent_type not in WEIGHTED_LATENTS):
            raise UserError(f"{where}.train.condition_weight_power {shown(self.train.condition_weight_power)} needs hypothesis "
                            f"weights that depend on y: model.arch cvae_re with latent_type "
                            f"{' or '.join(WEIGHTED_LATENTS)} (got {shown(m.arch)}, {shown(m.latent_type)}); set it to 0")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml_file(cls, path: Path | str) -> "Config":
        d = read_yaml(path, "config file")
        if isinstance(d, dict) and "config" in d and isinstance(d["config"], dict):
            d = d["config"]  # exported files may wrap the config with provenance
        return cls.from_dict(d, where=f"{path}: config")


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _one_of(obj: Any, where: str, **choices: tuple[str, ...]) -> None:
    for name, allowed in choices.items():
        value = getattr(obj, name)
        if value not in allowed:
            raise UserError(f"{where}.{name}: unknown {shown(value)}; use one of {', '.join(allowed)}")


def _at_least(obj: Any, where: str, **lows: float) -> None:
    for name, low in lows.items():
        value = getattr(obj, name)
        if not value >= low:  # also refuses NaN
            what = "a positive integer" if low == 1 and isinstance(low, int) else f">= {low:g}"
            raise UserError(f"{where}.{name}: {shown(value)}; it must be {what}")


def _coerce(value: Any, typ: str, where: str) -> Any:
    """YAML gives '1e-3' as a string and 100000.0 as a float: accept what is unambiguous."""
    optional = typ.endswith("| None")
    base = typ.replace("| None", "").strip()
    if value is None:
        if optional:
            return None
        raise UserError(f"{where}: is empty, expected {base}")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError
        if base == "int":
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if not f.is_integer():
                raise ValueError
            return int(f)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if base == "list[int]":
            if isinstance(value, int) and not isinstance(value, bool):
                return [value]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [_coerce(v, "int", f"{where}[{i}]") for i, v in enumerate(value)]
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{where}: {shown(value)} is not a valid {base}") from None
    raise AssertionError(f"unhandled field type {typ}")


def _build(cls: type, d: Any, where: str) -> Any:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a mapping, found {type(d).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(known), key=str)
    if unknown:
        raise UserError(f"{where}.{clipped(unknown[0])}: unknown key; known keys: {', '.join(known)}")
    kwargs = {}
    for name, value in d.items():
        f = known[name]
        if cls is Config:
            kwargs[name] = _build(_SECTIONS[name], value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, str(f.type), f"{where}.{name}")
    return cls(**kwargs)
