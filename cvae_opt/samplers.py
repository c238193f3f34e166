"""Samplers and pruners by name, with arguments from the study file, checked before the first trial."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import optuna

from .errors import UserError

SAMPLERS = {
    "tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "gp": "GPSampler",
    "qmc": "QMCSampler", "nsgaii": "NSGAIISampler", "nsga2": "NSGAIISampler", "nsgaiii": "NSGAIIISampler",
    "nsga3": "NSGAIIISampler", "bruteforce": "BruteForceSampler",
}
PRUNERS = {
    "median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner", "sha": "SuccessiveHalvingPruner", "threshold": "ThresholdPruner",
    "patient": "PatientPruner", "wilcoxon": "WilcoxonPruner", "nop": "NopPruner", "none": "NopPruner",
}
# optional packages, checked at start-up so a study does not fail on its first trial
NEEDS = {"CmaEsSampler": ["cmaes"], "GPSampler": ["scipy"], "QMCSampler": ["scipy"], "WilcoxonPruner": ["scipy"]}


def _resolve(kind: str, name: str, table: dict[str, str], module: Any) -> type:
    cls_name = table.get(name.lower().replace("-", "_"), name)
    cls = getattr(module, cls_name, None)
    if not isinstance(cls, type):
        names = sorted(set(table) - {"nsga2", "nsga3", "sha", "none"})
        raise UserError(f"unknown {kind} {name!r}: use one of {', '.join(names)} (or an Optuna class name)")
    for pkg in NEEDS.get(cls_name, []):
        try:
            importlib.import_module(pkg)
        except ImportError:
            raise UserError(f"{kind} {name!r} needs the package {pkg!r}: pip install {pkg}") from None
    return cls


def _construct(kind: str, cls: type, args: dict[str, Any]) -> Any:
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{kind} {cls.__name__}: bad arguments {args}: {exc}") from None


def make_sampler(spec: dict[str, Any], seed: int | None = None, n_startup_trials: int | None = None) -> optuna.samplers.BaseSampler:
    cls = _resolve("sampler", spec["name"], SAMPLERS, optuna.samplers)
    args = dict(spec.get("args") or {})
    params = inspect.signature(cls.__init__).parameters
    if seed is not None and "seed" in params:
        args["seed"] = seed
    if n_startup_trials is not None:
        if "n_startup_trials" not in params:
            raise UserError(f"--n-startup-trials: sampler {cls.__name__} has no startup trials")
        args["n_startup_trials"] = n_startup_trials
    return _construct("sampler", cls, args)


def make_pruner(spec: dict[str, Any] | None) -> optuna.pruners.BasePruner:
    if spec is None:
        return optuna.pruners.NopPruner()
    cls = _resolve("pruner", spec["name"], PRUNERS, optuna.pruners)
    args = dict(spec.get("args") or {})
    if cls is optuna.pruners.PatientPruner and isinstance(args.get("wrapped_pruner"), (dict, str)):
        inner = args["wrapped_pruner"]
        args["wrapped_pruner"] = make_pruner(inner if isinstance(inner, dict) else {"name": inner})
    return _construct("pruner", cls, args)


def pruner_name(spec: dict[str, Any] | None) -> str:
    if spec is None:
        return "none"
    return PRUNERS.get(spec["name"].lower(), spec["name"])
