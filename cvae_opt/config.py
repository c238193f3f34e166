"""The complete description of one training run: data, model and training settings.

A trial, an exported best config and a retrain all go through `Config`, so retraining from an exported
file runs the same code as the trial that found it. `Config.from_dict` refuses unknown keys and wrong
types with the key path, so a typo in a YAML file is one clear line, not a silent default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .models import ModelConfig


@dataclass
class DataConfig:
    problem: str = "two_birds"  # built-in name or 'package.module:callable'
    train_size: int = 100_000
    val_size: int = 2_000
    seed: int = 0
    noise: float = 0.0  # std of Gaussian noise added to synthetic y
    train_file: str | None = None  # challenge-format file instead of synthetic training pairs
    val_file: str | None = None
    cache_dir: str = "storage/data"
    fresh: bool = False  # draw train_size new pairs from the prior every epoch, on the training device


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
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_conditions: int = 100  # validation y used for generation metrics each epoch
    # how the trial metrics draw (component latents): posterior | coverage, and the weights' temperature
    eval_draw: str = "posterior"
    eval_temperature: float = 1.0
    eval_samples: int = 10  # samples per validation y
    # refined-pipeline metrics (refined_*) after the last epoch: LM iterations (0 = off) and oversampling,
    # as `generate --refine eval_refine --oversample eval_oversample` on the validation conditions
    eval_refine: int = 0
    eval_oversample: int = 10
    # a cheap refined estimate at every epoch before the last (refined_*_estimate: the first N validation
    # conditions, oversample 2), so that studies with a refined_* objective can be pruned; 0 = off
    eval_refine_estimate: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "config") -> "Config":
        return _build(cls, d, where)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml_file(cls, path: Path | str) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such config file")
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"{path}: malformed YAML{at}: {getattr(exc, 'problem', exc)}") from None
        if isinstance(d, dict) and "config" in d and isinstance(d["config"], dict):
            d = d["config"]  # exported files may wrap the config with provenance
        return cls.from_dict(d, where=str(path))


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


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
    except (TypeError, ValueError):
        raise UserError(f"{where}: {value!r} is not a valid {base}") from None
    raise AssertionError(f"unhandled field type {typ}")


def _build(cls: type, d: Any, where: str) -> Any:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a mapping, found {type(d).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise UserError(f"{where}.{unknown[0]}: unknown key; known keys: {', '.join(known)}")
    kwargs = {}
    for name, value in d.items():
        f = known[name]
        if cls is Config:
            kwargs[name] = _build(_SECTIONS[name], value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, str(f.type), f"{where}.{name}")
    return cls(**kwargs)


def replace_path(cfg: Config, dotted: str, value: Any) -> Config:
    """A copy of cfg with one 'section.key' set (and type-checked), for command-line overrides."""
    section, _, key = dotted.partition(".")
    d = cfg.to_dict()
    if section not in d or key not in d[section]:
        raise UserError(f"unknown config key {dotted!r}")
    d[section][key] = value
    return Config.from_dict(d)
