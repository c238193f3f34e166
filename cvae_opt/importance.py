"""Hyperparameter importance of a study, as data: which trials to compare, and Optuna's evaluators'
numbers for them. With an architecture choice (studies/both.yaml) trials are compared per architecture:
over all of them the conditional parameters would be silently dropped."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

COMPLETE = optuna.trial.TrialState.COMPLETE
MIN_TRIALS = 3  # fewer complete trials than this give no meaningful importance


@dataclass
class Group:
    """Trials over which importance is meaningful. `params`: set in every trial and varying;
    `left_out`: set in some trials only; `constant`: one value only."""

    label: str
    trials: list[optuna.trial.FrozenTrial]
    params: list[str]
    left_out: list[str]
    constant: list[str]

    @property
    def enough(self) -> bool:
        return len(self.trials) >= MIN_TRIALS and bool(self.params)

    def study(self, directions: list[optuna.study.StudyDirection]) -> optuna.Study:
        """An in-memory study of the group's trials, for Optuna's importance functions and plots."""
        sub = optuna.create_study(directions=directions)
        sub.add_trials(self.trials)
        return sub


@dataclass
class Importance:
    """One group's importances for one target metric: {evaluator: {param: importance}}, and the
    evaluators that failed, with why."""

    group: Group
    target_name: str
    target: Callable[[optuna.trial.FrozenTrial], float] | None
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def ranked_params(self) -> list[str]:
        """Parameters, most important first (by their largest importance over the evaluators)."""
        best: dict[str, float] = {}
        for imp in self.values.values():
            for p, v in imp.items():
                best[p] = max(best.get(p, 0.0), v)
        return sorted(best, key=lambda p: -best[p])


def groups(study: optuna.Study) -> list[Group]:
    """Per architecture when the study chooses one, else all complete trials."""
    done = study.get_trials(deepcopy=False, states=(COMPLETE,))
    archs = sorted({t.params["arch"] for t in done if "arch" in t.params})
    if len(archs) > 1:
        split = [(f"arch = {a}", [t for t in done if t.params.get("arch") == a]) for a in archs]
    else:
        split = [("all complete trials", done)]
    out = []
    for label, trials in split:
        names = set().union(*(t.params for t in trials)) if trials else set()
        common = [n for n in (trials[0].params if trials else {}) if all(n in t.params for t in trials)]
        varying = [n for n in common if len({repr(t.params[n]) for t in trials}) > 1]
        out.append(Group(label, trials, varying, sorted(names - set(common)), sorted(set(common) - set(varying))))
    return out


def conditional_params(study: optuna.Study) -> list[str]:
    """Parameters that only some complete trials have."""
    done = study.get_trials(deepcopy=False, states=(COMPLETE,))
    if not done:
        return []
    every = set.intersection(*(set(t.params) for t in done))
    return sorted(set().union(*(t.params for t in done)) - every)


def evaluators() -> list[tuple[str, Callable[[], Any]]]:
    """fANOVA (when scikit-learn is installed) and PED-ANOVA, as (name, factory)."""
    evs = []
    try:
        import sklearn  # noqa: F401

        evs.append(("fANOVA", lambda: optuna.importance.FanovaImportanceEvaluator(seed=0)))
    except ImportError:
        pass
    evs.append(("PED-ANOVA", lambda: optuna.importance.PedAnovaImportanceEvaluator()))
    return evs


def targets(study: optuna.Study, metrics: list[str]) -> list[tuple[Callable | None, str]]:
    """(target, name) per objective: the value itself for one objective, each value for several."""
    if len(study.directions) == 1:
        return [(None, metrics[0])]
    return [(lambda t, i=i: t.values[i], name) for i, name in enumerate(metrics)]


def importances(study: optuna.Study, group: Group, metrics: list[str]) -> list[Importance]:
    """Every evaluator's importances for every target metric over the group's trials."""
    sub = group.study(study.directions)
    out = []
    for target, name in targets(study, metrics):
        result = Importance(group, name, target)
        for ename, make in evaluators():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result.values[ename] = dict(optuna.importance.get_param_importances(
                        sub, evaluator=make(), params=group.params, target=target))
            except Exception as exc:  # an evaluator that cannot handle this group is reported, not fatal
                result.failed[ename] = str(exc)
        out.append(result)
    return out
