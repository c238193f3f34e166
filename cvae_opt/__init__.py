"""cvae-opt: hyperparameter-optimization studies for conditional VAEs on non-unique inverse problems.

The Python API (see `cvae_opt.api`; the commands call the same functions):

    run_study(study, trials, storage=...)      run or resume a study, as `cvae-opt run`
    load_study(name, storage=...)              an existing study (optuna.Study)
    best_config(study)                         the best trial's complete config, as `cvae-opt export`
    train_config(config, out=...)              train from scratch, as `cvae-opt retrain` -> Generator
    load_generator(checkpoint, problem=)       a checkpoint as a Generator (problem=: its import path, if it has one)
    Generator.sample(y, n, draw=, refine=, oversample=)   models for measurements, as `cvae-opt generate`
    score_samples(samples, truth=...)          the metrics of `cvae-opt evaluate`
    plot_samples(samples)                      the samples figure
    conditions(y)                              measurements from a tensor, an array, a file of pairs or a survey CSV
    gravity2d(prior=, geometry=, ...)          the 2D gravity problem with your grid, stations or prior settings
    read_survey(path, problem), write_survey(path, problem, y)   survey CSVs (station position, readings)
    UserError                                  the one exception for input a user can fix

Importing the package is cheap: the API loads (with torch) on first use.
"""

__version__ = "0.1.0"

_API = ("run_study", "load_study", "best_config", "train_config", "load_generator", "Generator", "Samples",
        "score_samples", "plot_samples", "conditions", "gravity2d", "read_survey", "write_survey")
__all__ = [*_API, "UserError", "Config"]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: the API and torch load on first use
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "UserError":
        from .errors import UserError

        return UserError
    if name == "Config":
        from .config import Config

        return Config
    raise AttributeError(f"module 'cvae_opt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
