"""Export the best trial's complete config: `python -m cvae_opt.export --study cvae_re`.

The YAML holds problem, data, architecture, every hyperparameter, epochs and seeds, exactly as the trial
trained, so `python -m cvae_opt.retrain --config FILE` takes it as it is.
"""

from __future__ import annotations

import argparse
import sys

import optuna
import yaml

from .cli import run_main
from .config import Config
from .errors import UserError
from .files import atomic_write_text
from .storage import add_study_args, mask_url, study_from_args


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best complete trial; for a multi-objective study, the Pareto-front trial best on the first metric."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        raise UserError(f"study {study.study_name!r} has no complete trial yet; run more trials first")
    if len(study.directions) == 1:
        return study.best_trial
    front = study.best_trials
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1
    return min(front, key=lambda t: sign * t.values[0])


def trial_config(trial: optuna.trial.FrozenTrial) -> Config:
    if "config" not in trial.user_attrs:
        raise UserError(f"trial {trial.number} has no stored config (was it run by cvae_opt.run?)")
    return Config.from_dict(trial.user_attrs["config"], where=f"trial {trial.number} config")


def config_yaml(study: optuna.Study, trial: optuna.trial.FrozenTrial, storage_url: str) -> str:
    cfg = trial_config(trial)
    metrics = study.user_attrs.get("metrics", ["value"])
    values = ", ".join(f"{m} = {v:.6g}" for m, v in zip(metrics, trial.values))
    head = [
        f"# Best trial of study {study.study_name!r} in {mask_url(storage_url)}: trial {trial.number}, {values}.",
        f"# Study launched with: {study.user_attrs.get('launch_command', '?')}",
        "# Retrain from scratch with: python -m cvae_opt.retrain --config THIS_FILE",
    ]
    params = yaml.safe_dump({"searched_params": trial.params}, sort_keys=False).splitlines()
    return "\n".join(head + ["# " + line for line in params]) + "\n" + cfg.to_yaml()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.export",
        description="Write the best trial's complete config as YAML, ready for retraining.",
        epilog="example: python -m cvae_opt.export --study cvae_re --out best.yaml && python -m cvae_opt.retrain --config best.yaml",
    )
    add_study_args(ap)
    ap.add_argument("--trial", type=int, help="export this trial number instead of the best")
    ap.add_argument("--out", help="output file (default: print to stdout)")
    args = ap.parse_args(argv)
    study = study_from_args(args)
    if args.trial is not None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number == args.trial]
        if not trials:
            raise UserError(f"study {args.study!r} has no trial {args.trial}")
        trial = trials[0]
    else:
        trial = best_trial(study)
    text = config_yaml(study, trial, args.storage)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out} (trial {trial.number})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
