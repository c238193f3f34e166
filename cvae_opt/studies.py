"""Study files: one YAML file per study, holding everything a study needs besides its storage.

    name: cvae_re                 # default study name in the storage
    problem: two_birds            # or package.module:callable
    data: {train_size: 20000, val_size: 2000, seed: 0}
    budget: {epochs: 20}          # or {seconds: 600}: each trial the epochs its config trains in that time
    objective: {metric: score, direction: maximize}
        # or, multi-objective: {metrics: [misfit_rmse, diversity], directions: [minimize, maximize]}
    sampler: {name: tpe, args: {n_startup_trials: 10, multivariate: true}}
    pruner: {name: median, args: {n_startup_trials: 5, n_warmup_steps: 4}}    # or null
    fixed: {arch: cvae_re, head: line}    # config values that are not searched
    search:                       # in order; a condition may name only parameters above it
      lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      prior_hidden: {type: int, low: 64, high: 512, log: true, condition: {arch: cvae_re}}

A parameter's name is a config key (`lr`, `latent`...; `train.seed` where a short name is ambiguous)
or one of the derived names `conv_channels`, `conv_depth`, `kernel_size`, which build the per-layer
lists (channels double and kernels halve layer by layer, as in the notebooks' 32/64 with 16/8).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config, DataConfig, ModelConfig, TrainConfig
from .errors import UserError, clipped, shown
from .files import parse_yaml, read_yaml

if TYPE_CHECKING:
    from typing import Callable

    import optuna

    ModelCheck = Callable[[ModelConfig, str], None]
    TrainCheck = Callable[[TrainConfig, str], None]


def _studies_dir() -> Path:
    """The built-in study files: installed as package data (cvae_opt/builtin_studies), or, in a source
    checkout or an editable install, the repository's studies/ they are installed from."""
    here = Path(__file__).resolve().parent
    installed = here / "builtin_studies"
    return installed if installed.is_dir() else here.parent / "studies"


STUDIES_DIR = _studies_dir()
DERIVED = ("conv_channels", "conv_depth", "kernel_size")
# after the last epoch only, with fixed: {eval_refine: STEPS}; no pruning on them
REFINED_METRICS = tuple(
    f"refined_{m}" for m in ("score", "misfit_rmse", "valid_fraction", "diversity", "mode_precision", "mode_recall", "mode_pr", "truth_recall")
)
METRICS = (
    "score", "misfit_rmse", "r2", "slope_signs", "valid_fraction", "diversity", "mode_precision",
    "mode_recall", "mode_pr", "truth_recall", "val_loss", "val_kl", "val_recon", "val_physics", *REFINED_METRICS,
    # field problems (field_metrics): continuous posteriors
    "chi2_median", "chi2_le2", "coverage_50", "coverage_90", "sbc_ks", "energy_score", "crps", "dss", "mean_error",
    "std_ratio_p10", "std_ratio_p90", "coverage_50_constrained", "coverage_90_constrained",
    # benchmark tasks (families.tasks): the share of samples outside the prior's box
    "outside_prior",
)
# samples plots: for trials that enter the best K when they finish (K = keep_best, else 10; the default:
# a plot costs more than the rest of a short trial's bookkeeping), for every complete trial, or none
PLOTS = ("best", "all", "none")
PLOT_BEST_DEFAULT = 10
TOP_KEYS = ("name", "description", "problem", "data", "budget", "objective", "sampler", "pruner", "fixed", "search", "artifacts")


def _config_paths() -> dict[str, str]:
    """short name -> 'section.key' for every unambiguous config key, plus 'section.key' itself."""
    paths: dict[str, list[str]] = {}
    for section, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        for f in dataclasses.fields(cls):
            paths.setdefault(f.name, []).append(f"{section}.{f.name}")
    out = {k: v[0] for k, v in paths.items() if len(v) == 1}
    for v in paths.values():
        for p in v:
            out[p] = p
    return out


CONFIG_PATHS = _config_paths()


@dataclass
class Param:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    condition: dict[str, list[Any]] = field(default_factory=dict)

    def active(self, values: dict[str, Any]) -> bool:
        """Whether the parameter is searched, given the values of the parameters above it."""
        return all(other in values and values[other] in allowed for other, allowed in self.condition.items())

    def extremes(self) -> list[Any]:
        """The values a study file's check tries: the range's ends, or every choice."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass
class StudySpec:
    name: str
    path: str
    text: str
    problem: str
    data: dict[str, Any]
    epochs: int
    metrics: list[str]
    directions: list[str]
    sampler: dict[str, Any]
    pruner: dict[str, Any] | None
    fixed: dict[str, Any]
    search: list[Param]
    artifacts: dict[str, Any]
    description: str = ""
    # budget.seconds: each trial trains the epochs its config fits in this many seconds on this machine
    # (`train.epochs_within`, at most `epochs`), and reports on that seconds axis; None: `epochs` for all
    seconds: float | None = None

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    def base_config(self) -> Config:
        """The config before any parameter is suggested: defaults, then data, budget and fixed values."""
        d = Config().to_dict()
        d["data"].update(self.data)
        d["data"]["problem"] = self.problem
        d["train"]["epochs"] = self.epochs
        for key, value in self.fixed.items():
            section, _, k = CONFIG_PATHS[key].partition(".")
            d[section][k] = value
        return Config.from_dict(d, where=f"{self.path}: fixed")


SECONDS_BUDGET_MAX_EPOCHS = 100_000  # the epoch cap of a seconds budget that names none


STUDY_NAME_MAX = 200  # characters; a folder name is at most 255 bytes, NAME_MAX on Linux and macOS
STUDY_NAME_RULE = f"of letters, digits and '-_.' (at most {STUDY_NAME_MAX} characters, not starting with '.')"


def check_study_name(name: str, where: str = "--study-name", fix: str = "") -> str:
    """Refuse a study name that cannot be one folder name under reports/: empty, with a path separator,
    `.`, `..` or another name starting with '.', a control or other unprintable character, more than
    200 characters or 255 bytes of UTF-8. The one rule for `run` (the study file's `name:` or
    --study-name) and `report` (--study, before it builds reports/NAME); returns the name."""
    why = ""
    if not isinstance(name, str) or not name:
        why = "is empty"
    elif len(name) > STUDY_NAME_MAX:
        why = f"has {len(name)} characters, more than {STUDY_NAME_MAX}"
    elif any(sep in name for sep in ("/", "\\")):
        why = "holds a path separator"
    elif name.startswith("."):
        why = "starts with '.'"
    elif not name.isprintable():  # a space is printable; NUL, newlines, escapes, invisible separators are not
        why = "holds a control or unprintable character"
    elif len(name.encode("utf-8", "surrogateescape")) > 255:
        why = "is longer than 255 bytes in UTF-8"
    if why:
        raise UserError(f"{where}: study name {shown(name)} {why}, so it cannot be a folder name (reports/NAME); "
                        + (fix or f"use {where} NAME {STUDY_NAME_RULE}"))
    return name


def list_studies() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml")) if STUDIES_DIR.is_dir() else []


def find_study_file(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise UserError(f"{p}: no such study file")
        return p
    candidate = STUDIES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise UserError(f"unknown study {shown(name_or_path)}: use one of {list_studies()} or a path to a .yaml study file")


def _err(path: str, key: str, msg: str) -> UserError:
    return UserError(f"{path}: {clipped(key, 120)}: {msg}")  # a key path may hold names from the file


def _num(v: Any, path: str, key: str) -> float:
    if isinstance(v, bool):
        raise _err(path, key, f"{shown(v)} is not a number")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise _err(path, key, f"{shown(v)} is not a number") from None
    if not math.isfinite(f):
        raise _err(path, key, f"{shown(v)} is not a finite number")
    return f


def _param(name: str, raw: Any, path: str, earlier: dict[str, Param]) -> Param:
    key = f"search.{name}"
    if name not in CONFIG_PATHS and name not in DERIVED:
        raise _err(path, key, f"not a config key nor one of {list(DERIVED)}")
    if not isinstance(raw, dict):
        raise _err(path, key, f"expected a mapping with 'type', found {type(raw).__name__}")
    allowed = {"type", "low", "high", "log", "step", "choices", "condition"}
    extra = sorted(set(raw) - allowed, key=str)
    if extra:
        raise _err(path, f"{key}.{extra[0]}", f"unknown key; allowed: {', '.join(sorted(allowed))}")
    typ = raw.get("type")
    if typ not in ("float", "int", "categorical"):
        raise _err(path, f"{key}.type", f"unknown parameter type {shown(typ)}; use float, int or categorical")
    p = Param(name=name, type=typ)
    if typ == "categorical":
        ch = raw.get("choices")
        if not isinstance(ch, list) or not ch:
            raise _err(path, f"{key}.choices", "a categorical parameter needs a non-empty list of choices")
        if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in ch):
            raise _err(path, f"{key}.choices", "choices must be strings, numbers, booleans or null")
        p.choices = ch
        for k in ("low", "high", "log", "step"):
            if k in raw:
                raise _err(path, f"{key}.{k}", "not allowed for a categorical parameter")
    else:
        for k in ("low", "high"):
            if k not in raw:
                raise _err(path, f"{key}.{k}", f"missing; a {typ} parameter needs low and high")
        p.low, p.high = _num(raw["low"], path, f"{key}.low"), _num(raw["high"], path, f"{key}.high")
        if p.low > p.high:
            raise _err(path, key, f"low {shown(raw['low'])} > high {shown(raw['high'])}")
        p.log = raw.get("log", False)
        if not isinstance(p.log, bool):
            raise _err(path, f"{key}.log", f"{shown(p.log)} is not true or false")
        if p.log and p.low <= 0:
            raise _err(path, f"{key}.low", f"a log-scale range needs low > 0, found {shown(raw['low'])}")
        if "step" in raw and raw["step"] is not None:
            p.step = _num(raw["step"], path, f"{key}.step")
            if p.step <= 0:
                raise _err(path, f"{key}.step", "must be > 0")
            if p.log:
                raise _err(path, f"{key}.step", "step and log cannot be combined")
        if typ == "int":
            for k in ("low", "high", "step"):
                v = getattr(p, k)
                if v is not None and not float(v).is_integer():
                    raise _err(path, f"{key}.{k}", f"{v} is not an integer")
            if raw.get("choices") is not None:
                raise _err(path, f"{key}.choices", "only categorical parameters take choices")
    cond = raw.get("condition") or {}
    if not isinstance(cond, dict):
        raise _err(path, f"{key}.condition", "expected a mapping {parameter: value or list of values}")
    for other, values in cond.items():
        if other not in earlier:
            raise _err(
                path, f"{key}.condition.{other}",
                "names no parameter defined above it in search (conditions may only look back)",
            )
        p.condition[other] = values if isinstance(values, list) else [values]
    return p


def load_study_file(name_or_path: str) -> StudySpec:
    """Parse and check a study file; every mistake is reported with its key path."""
    file = find_study_file(name_or_path)
    path = str(file)
    raw = read_yaml(file, "study file")  # sizes checked before anything is read or built
    text = file.read_text(errors="replace")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of study settings at the top level")
    extra = sorted(set(raw) - set(TOP_KEYS), key=str)
    if extra:
        raise _err(path, str(extra[0]), f"unknown key; allowed: {', '.join(TOP_KEYS)}")
    for k in ("objective", "sampler", "search"):
        if k not in raw:
            raise _err(path, k, "missing")

    data = raw.get("data") or {}
    if not isinstance(data, dict):
        raise _err(path, "data", "expected a mapping")
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"epochs", "seconds"}:
        raise _err(path, "budget", "expected a mapping with 'epochs' and/or 'seconds'")
    seconds = budget.get("seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not math.isfinite(seconds) or seconds <= 0):
        raise _err(path, "budget.seconds", f"{shown(seconds)} is not a positive number of seconds")
    epochs = budget.get("epochs", TrainConfig.epochs if seconds is None else SECONDS_BUDGET_MAX_EPOCHS)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise _err(path, "budget.epochs", f"{shown(epochs)} is not a positive integer")

    obj = raw["objective"]
    if not isinstance(obj, dict):
        raise _err(path, "objective", "expected a mapping with metric and direction")
    if "metrics" in obj:
        metrics, directions = obj.get("metrics"), obj.get("directions")
        if not isinstance(metrics, list) or not isinstance(directions, list) or len(metrics) != len(directions) or not metrics:
            raise _err(path, "objective", "metrics and directions must be lists of one length")
    else:
        metrics, directions = [obj.get("metric", "score")], [obj.get("direction", "maximize")]
    for i, (m, d) in enumerate(zip(metrics, directions)):
        if m not in METRICS:
            raise _err(path, "objective.metric", f"unknown metric {shown(m)}; use one of {', '.join(METRICS)}")
        if d not in ("maximize", "minimize"):
            raise _err(path, "objective.direction", f"{shown(d)}; use maximize or minimize")

    def named(key: str, allow_none: bool) -> dict[str, Any] | None:
        v = raw.get(key)
        if v is None and allow_none:
            return None
        if isinstance(v, str):
            v = {"name": v}
        if not isinstance(v, dict) or "name" not in v or set(v) - {"name", "args"}:
            raise _err(path, key, "expected {name: ..., args: {...}}")
        args = v.get("args") or {}
        if not isinstance(args, dict):
            raise _err(path, f"{key}.args", "expected a mapping of keyword arguments")
        return {"name": str(v["name"]), "args": args}

    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise _err(path, "fixed", "expected a mapping of config keys to values")
    for k in fixed:
        if k not in CONFIG_PATHS:
            raise _err(path, f"fixed.{k}", "not a config key")

    search_raw = raw["search"]
    if not isinstance(search_raw, dict) or not search_raw:
        raise _err(path, "search", "expected a non-empty mapping of parameters")
    params: dict[str, Param] = {}
    for name, spec in search_raw.items():
        params[str(name)] = _param(str(name), spec, path, params)
    for p in params.values():
        for other, values in p.condition.items():
            q = params[other]
            if q.type == "categorical":
                bad = [v for v in values if v not in q.choices]
                if bad:
                    raise _err(path, f"search.{p.name}.condition.{other}", f"{shown(bad[0])} is not one of {shown(q.choices, 200)}")

    artifacts = raw.get("artifacts") or {}
    if not isinstance(artifacts, dict) or set(artifacts) - {"checkpoints", "plots", "keep_best"}:
        raise _err(path, "artifacts", "expected {checkpoints: true|false, keep_best: K, plots: best|all|none}")
    artifacts = dict(artifacts)
    plots = artifacts.get("plots", "best")
    artifacts["plots"] = {True: "all", False: "none"}.get(plots, plots) if isinstance(plots, bool) else plots
    if artifacts["plots"] not in PLOTS:
        raise _err(path, "artifacts.plots", f"{shown(plots)} is not one of {', '.join(PLOTS)}")
    keep = artifacts.get("keep_best")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise _err(path, "artifacts.keep_best", f"{shown(keep)} is not a positive integer")

    spec = StudySpec(
        name=str(raw.get("name") or file.stem), path=path, text=text, problem=str(raw.get("problem", "two_birds")),
        data=data, epochs=epochs, metrics=metrics, directions=directions, sampler=named("sampler", False),
        pruner=named("pruner", True), fixed=fixed, search=list(params.values()), artifacts=artifacts,
        description=str(raw.get("description", "")), seconds=None if seconds is None else float(seconds),
    )
    base = spec.base_config()  # checks data and fixed values now, not at the first trial
    _check_search_values(spec, base)
    refined = [m for m in metrics if m.startswith("refined_")]
    if refined and base.train.eval_refine < 1:
        raise _err(path, "objective.metric", f"{shown(refined[0])} is measured on refined samples: add "
                   "'eval_refine: 40' (LM iterations) under fixed")
    return spec


def recorded_search_space(text: str, where: str) -> dict[str, Param] | None:
    """The search space of a study file's text (as a study records it), parsed as `load_study_file` parses
    it, so comments, layout, quoting and number spelling do not count; None when it cannot be read."""
    try:
        raw = parse_yaml(text, where, "study file")
        if not isinstance(raw, dict) or not isinstance(raw.get("search"), dict):
            return None
        params: dict[str, Param] = {}
        for name, spec in raw["search"].items():
            params[str(name)] = _param(str(name), spec, where, params)
        return params
    except UserError:
        return None


def search_space_changes(recorded: dict[str, Param], search: list[Param]) -> list[str]:
    """How `search` differs from a recorded search space, parameter by parameter (order aside): e.g.
    ['lr changed', 'dropout added']; empty when it is the same space."""
    now = {p.name: p for p in search}
    return ([f"{n} changed" for n in recorded if n in now and recorded[n] != now[n]]
            + [f"{n} added" for n in now if n not in recorded]
            + [f"{n} removed" for n in recorded if n not in now])


def apply_params(base: Config, values: dict[str, Any]) -> Config:
    """The config a set of parameter values gives: derived names build the per-layer lists, every other
    name sets its config key; the result is checked like any loaded config."""
    d = base.to_dict()
    model = d["model"]
    depth = int(values.get("conv_depth", len(model["channels"])))
    if any(k in values for k in DERIVED):
        c = int(values.get("conv_channels", model["channels"][0]))
        k = int(values.get("kernel_size", model["kernels"][0]))
        model["channels"] = [c * 2**i for i in range(depth)]
        model["kernels"] = [max(2, k // 2**i) for i in range(depth)]
    for name, v in values.items():
        if name in DERIVED:
            continue
        section, _, key = CONFIG_PATHS[name].partition(".")
        d[section][key] = v
    return Config.from_dict(d)


def _check_search_values(spec: StudySpec, base: Config, check_model: "ModelCheck | None" = None,
                         check_train: "TrainCheck | None" = None) -> None:
    """Every end of every range (and every choice) must give a valid config, with the parameters it is
    conditioned on at their first allowed value: an impossible value is refused at load, not trial 37.
    With `check_model` / `check_train` (once the problem is known: its family's checks), the layers must
    also fit its shapes and the training settings be ones it can honour."""
    for p in spec.search:
        context = {other: allowed[0] for other, allowed in p.condition.items()}
        for v in p.extremes():
            try:
                cfg = apply_params(base, {**context, p.name: v})
                if check_model is not None:
                    check_model(cfg.model, "config.model")
                if check_train is not None:
                    check_train(cfg.train, "config.train")
            except UserError as exc:
                raise _err(spec.path, f"search.{p.name}", f"the value {shown(v)} gives an invalid config: {exc}") from None


def check_shapes(spec: StudySpec, check_model: "ModelCheck", check_train: "TrainCheck | None" = None) -> None:
    """What needs the problem: the fixed model and every searched value must fit its shapes, as
    `check_model(model_config, where)` (its family's `check_model`) says, and, with `check_train`, the
    training settings be ones it can honour (its family's `check_train`: no physics term without a forward map)."""
    base = spec.base_config()
    check_model(base.model, f"{spec.path}: fixed.model")
    if check_train is not None:
        check_train(base.train, f"{spec.path}: fixed.train")
    _check_search_values(spec, base, check_model, check_train)


def suggest_config(trial: optuna.trial.BaseTrial, spec: StudySpec, base: Config | None = None) -> Config:
    """The one place a trial becomes a config (the only `trial.suggest_*` calls): every parameter whose
    condition holds, in file order, applied to the base config. Needs no torch, so a worker that only
    asks and tells (a benchmark, a scheduler) can use it."""
    values: dict[str, Any] = {}
    for p in spec.search:
        if not p.active(values):
            continue
        if p.type == "float":
            v = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            v = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            v = trial.suggest_categorical(p.name, p.choices)
        values[p.name] = v
    return apply_params(base or spec.base_config(), values)
