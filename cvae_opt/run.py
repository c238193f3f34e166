"""Run a study: `python -m cvae_opt.run --study cvae_re --trials 200`.

TPE (or the study file's sampler) with pruning, trials stored in SQLite (or any SQLAlchemy URL),
checkpoints and sample plots in the artifact store. Running the same command again resumes the study.
`--jobs N` starts N worker processes on the same storage.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import optuna
import torch

from .cli import EXIT_INTERRUPTED, run_main
from .devices import resolve_device, worker_device
from .errors import NonFiniteLoss, UserError
from .objective import ArtifactError, Objective, Overrides
from .sampling import make_pruner, make_sampler, pruner_name
from .storage import DEFAULT_ARTIFACTS, DEFAULT_STORAGE, HEARTBEAT_SECONDS, artifact_store, mask_url, open_storage
from .studies import StudySpec, load_study
from .trials import best_trial_or_none, keep_best_checkpoints

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.run",
        description="Run (or resume) a hyperparameter study of a CVAE.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m cvae_opt.run --study cvae_re --trials 200\n"
        "  python -m cvae_opt.run --study both --trials 50 --jobs 2 --storage postgresql://user:pw@db/cvae\n"
        "  python -m cvae_opt.run --study cvae --trials 3 --epochs 1 --train-size 2000   # smoke run",
    )
    ap.add_argument("--study", required=True, help="study name in studies/ (cvae, cvae_re, both) or a path to a study file")
    ap.add_argument("--trials", "--n-trials", dest="trials", type=int, default=200, help="trials to add (default 200)")
    ap.add_argument("--storage", default=DEFAULT_STORAGE, help=f"SQLAlchemy URL (default {DEFAULT_STORAGE})")
    ap.add_argument("--study-name", help="name in the storage (default: the study file's name)")
    ap.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    ap.add_argument("--jobs", "--n-jobs", dest="jobs", type=int, default=1, help="worker processes on the same storage")
    ap.add_argument("--seed", type=int, help="sampler seed (worker i uses seed + i) and training/data seed")
    ap.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the study's, auto)")
    ap.add_argument("--sampler", help="override the study's sampler: tpe, random, cmaes, gp, qmc, nsgaii, nsgaiii")
    ap.add_argument("--pruner", help="override the study's pruner: median, percentile, hyperband, successive_halving, threshold, patient, wilcoxon, none")
    ap.add_argument("--n-startup-trials", type=int, help="random trials before the sampler models the results")
    ap.add_argument("--epochs", type=int, help="override the study's epoch budget (smoke runs)")
    ap.add_argument("--train-size", type=int, help="override the number of training pairs (smoke runs)")
    ap.add_argument("--artifacts", default=DEFAULT_ARTIFACTS, help=f"artifact folder (default {DEFAULT_ARTIFACTS})")
    ap.add_argument("--heartbeat", type=int, default=HEARTBEAT_SECONDS,
                    help=f"seconds between worker heartbeats (default {HEARTBEAT_SECONDS}); a trial silent for 3x this "
                    "long is marked failed and retried once")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    ap.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    return ap


def _check_args(args: argparse.Namespace) -> None:
    for name in ("trials", "jobs", "epochs", "train_size", "n_startup_trials", "heartbeat"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "n_startup_trials" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'n_startup_trials' else 'a positive integer'}, got {v}")
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {args.timeout}")


def _apply_cli(spec: StudySpec, args: argparse.Namespace) -> None:
    if args.sampler:
        same = args.sampler.lower() == spec.sampler["name"].lower()
        spec.sampler = {"name": args.sampler, "args": spec.sampler["args"] if same else {}}
    if args.pruner:
        if args.pruner.lower() in ("none", "nop"):
            spec.pruner = None
        else:
            same = spec.pruner is not None and args.pruner.lower() == spec.pruner["name"].lower()
            spec.pruner = {"name": args.pruner, "args": spec.pruner["args"] if same else {}}


def _counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    out = {s.name.lower(): 0 for s in FINISHED}
    for t in trials:
        if t.state in FINISHED:
            out[t.state.name.lower()] += 1
    out["finished"] = sum(out[s.name.lower()] for s in FINISHED)
    return out


def _fmt_elapsed(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


class Progress:
    """One line per finished trial: count, its result, the best so far, the state counts, elapsed."""

    def __init__(self, spec: StudySpec, total: int, start_finished: int, quiet: bool):
        self.spec, self.total, self.start, self.quiet = spec, total, start_finished, quiet
        self.t0 = time.perf_counter()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.quiet:
            return
        c = _counts(study)
        done = c["finished"] - self.start
        if trial.state == optuna.trial.TrialState.COMPLETE:
            res = ", ".join(f"{m} {v:.4g}" for m, v in zip(self.spec.metrics, trial.values))
        elif trial.state == optuna.trial.TrialState.PRUNED:
            res = f"pruned at epoch {trial.user_attrs.get('pruned_at_epoch', '?')}"
        else:
            reason = str(trial.user_attrs.get("fail_reason", "")).strip()
            res = f"failed: {reason.splitlines()[0][:200]}" if reason else "failed"
        if self.spec.multi_objective:
            best = f"{len(study.best_trials)} on the Pareto front"
        else:
            b = best_trial_or_none(study)
            best = f"best {b.value:.4g} (trial {b.number})" if b else "no complete trial yet"
        elapsed = time.perf_counter() - self.t0
        eta = f", ETA {_fmt_elapsed(elapsed / max(done, 1) * max(self.total - done, 0))}" if 0 < done < self.total else ""
        print(
            f"[{done:>{len(str(self.total))}}/{self.total}] trial {trial.number} {trial.state.name.lower()}: {res} | "
            f"{best} | {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed | "
            f"elapsed {_fmt_elapsed(elapsed)}{eta}",
            flush=True,
        )


def summary(study: optuna.Study, spec: StudySpec, url: str, artifacts: str, start: dict[str, int], seconds: float, interrupted: bool) -> str:
    c = _counts(study)
    run = {k: c[k] - start.get(k, 0) for k in c}
    lines = [
        f"{'interrupted' if interrupted else 'done'}: study {study.study_name!r} in {mask_url(url)} after {_fmt_elapsed(seconds)}",
        f"  this run: {run['finished']} trials ({run['complete']} complete, {run['pruned']} pruned, {run['fail']} failed)",
        f"  whole study: {c['finished']} trials ({c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed)",
    ]
    if spec.multi_objective:
        front = study.best_trials
        lines.append(f"  Pareto front ({', '.join(f'{m} {d}' for m, d in zip(spec.metrics, spec.directions))}): {len(front)} trials")
        for t in front[:10]:
            lines.append(f"    trial {t.number}: " + ", ".join(f"{m} {v:.4g}" for m, v in zip(spec.metrics, t.values)))
    else:
        b = best_trial_or_none(study)
        if b is None:
            lines.append("  no complete trial yet")
        else:
            lines.append(f"  best trial {b.number}: {spec.metrics[0]} = {b.value:.6g}")
            for k, v in b.params.items():
                lines.append(f"    {k}: {v:.4g}" if isinstance(v, float) else f"    {k}: {v}")
    if url.startswith("grpc://"):  # optuna-dashboard's own command line takes SQLAlchemy URLs only
        lines.append(f"  browse: cvae-opt dashboard --storage {url} --artifacts {artifacts}")
    else:
        lines.append(f"  browse: optuna-dashboard {mask_url(url)} --artifact-dir {artifacts}")
    lines.append(f"  report: python -m cvae_opt.report --study {study.study_name} --storage {mask_url(url)}")
    if interrupted:
        lines.append("  resume: run the same command again")
    return "\n".join(lines)


def _masked_argv(argv: list[str], url: str) -> str:
    masked = mask_url(url)
    return " ".join(shlex.quote(masked if a == url else a) for a in ["python", "-m", "cvae_opt.run", *argv])


def _share(total: int, jobs: int, index: int) -> int:
    return total // jobs + (1 if index < total % jobs else 0)


def _interruptible() -> None:
    """Ctrl-C (SIGINT) and a scheduler's SIGTERM both end the study cleanly: the running trial is
    failed, the summary printed, exit 130. SIGINT is re-armed because shells start background jobs
    with it ignored."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)


@dataclass
class Worker:
    """One worker process's share of a run: its study set-up, built and checked before the storage is
    opened (a bad study file, device or data file then touches nothing)."""

    args: argparse.Namespace
    argv: list[str]
    spec: StudySpec
    study_name: str
    index: int
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    requested_device: str
    n_cuda: int
    objective: Objective

    @property
    def lead(self) -> bool:
        """Worker 0 records the study's attributes, starts the others and prints the summary."""
        return self.index == 0


def prepare(args: argparse.Namespace, argv: list[str]) -> Worker:
    _check_args(args)
    spec = load_study(args.study)
    _apply_cli(spec, args)
    index = args.worker_index
    seed = args.seed if args.seed is not None else spec.sampler["args"].get("seed")
    sampler = make_sampler(spec.sampler, None if seed is None else seed + index, args.n_startup_trials)
    pruner = make_pruner(spec.pruner)
    requested = args.device or spec.base_config().train.device
    resolve_device(requested)  # a device this machine lacks is one error line, before any trial
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = worker_device(requested, index, n_cuda)
    objective = Objective(spec, Overrides(args.epochs, args.train_size, device, args.seed))
    objective.artifacts = artifact_store(args.artifacts)  # created once everything above is checked
    return Worker(args, argv, spec, args.study_name or spec.name, index, sampler, pruner, requested, n_cuda, objective)


def open_study(w: Worker) -> optuna.Study:
    """Create or resume the study; one that was created for other directions or metrics is refused."""
    storage = open_storage(w.args.storage, heartbeat=w.args.heartbeat)
    url = mask_url(w.args.storage)
    try:
        study = optuna.create_study(study_name=w.study_name, storage=storage, sampler=w.sampler, pruner=w.pruner,
                                    directions=w.spec.directions, load_if_exists=True)
    except ValueError as exc:
        raise UserError(f"study {w.study_name!r}: {exc}") from None
    if [d.name.lower() for d in study.directions] != w.spec.directions:
        raise UserError(
            f"study {w.study_name!r} in {url} was created with directions {[d.name.lower() for d in study.directions]}, "
            f"this study file asks for {w.spec.directions}; use another --study-name"
        )
    if study.metric_names is not None and list(study.metric_names) != list(w.spec.metrics):
        raise UserError(
            f"study {w.study_name!r} in {url} was created for metrics {list(study.metric_names)}, "
            f"this study file asks for {list(w.spec.metrics)}; use another --study-name"
        )
    return study


def record_launch(study: optuna.Study, w: Worker) -> None:
    """What the dashboard, report and export read back: metric names, the study file, where its
    artifacts are and every command that launched it (passwords masked)."""
    with warnings.catch_warnings():  # the dashboard then names the values (score...), not "Objective 0"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(w.spec.metrics))
    command = _masked_argv(w.argv, w.args.storage)
    study.set_user_attr("study_file", w.spec.text)
    study.set_user_attr("study_path", w.spec.path)
    study.set_user_attr("metrics", w.spec.metrics)
    study.set_user_attr("storage", mask_url(w.args.storage))
    study.set_user_attr("artifacts", w.args.artifacts)
    study.set_user_attr("launch_commands", list(study.user_attrs.get("launch_commands", [])) + [command])
    study.set_user_attr("launch_command", command)


def announce(study: optuna.Study, w: Worker, finished: int) -> None:
    """The start-up line: what is added to which study, how, and why a pruner may not be used."""
    spec, args = w.spec, w.args
    extra = ""
    if spec.multi_objective and spec.pruner is not None:
        extra = f"; note: Optuna does not prune multi-objective trials, so pruner {pruner_name(spec.pruner)} is not used"
    elif spec.metrics[0].startswith("refined_") and spec.pruner is not None:
        if spec.base_config().train.eval_refine_estimate > 0:
            extra = f"; pruning on {spec.metrics[0]}_estimate, a cheap estimate before the last epoch"
        else:
            extra = (f"; note: {spec.metrics[0]} exists after the last epoch only, so pruner {pruner_name(spec.pruner)} "
                     "is not used (set eval_refine_estimate: 10 under fixed to prune on a cheap estimate)")
    spread = ""
    if args.jobs > 1 and worker_device(w.requested_device, 1, w.n_cuda) != w.requested_device:
        spread = f" spread over {min(args.jobs, w.n_cuda)} GPUs (worker i on cuda:(i mod {w.n_cuda}))"
    print(
        f"study {w.study_name!r} ({spec.path}) in {mask_url(args.storage)}: {finished} trials so far; "
        f"adding {args.trials} with {type(w.sampler).__name__}, pruner {pruner_name(None if spec.multi_objective else spec.pruner)}, "
        f"{args.jobs} worker(s){spread}{extra}",
        flush=True,
    )


def start_workers(w: Worker) -> list[subprocess.Popen]:
    """Workers 1..jobs-1 as processes running this same command on the same storage."""
    children = []
    for i in range(1, w.args.jobs):
        if _share(w.args.trials, w.args.jobs, i) > 0:
            cmd = [sys.executable, "-m", "cvae_opt.run", *w.argv, "--worker-index", str(i)]
            children.append(subprocess.Popen(cmd))
    return children


def optimize(study: optuna.Study, w: Worker, children: list[subprocess.Popen], start: dict[str, int], quiet: bool) -> bool:
    """Run this worker's trials and wait for the others; returns whether it was interrupted (Ctrl-C or
    SIGTERM: the running trial fails, the children get SIGINT and a minute to stop)."""
    try:
        study.optimize(
            w.objective,
            n_trials=_share(w.args.trials, w.args.jobs, w.index),
            timeout=w.args.timeout,
            catch=(NonFiniteLoss, UserError, ArtifactError),
            callbacks=[Progress(w.spec, w.args.trials, start["finished"], quiet)],
            gc_after_trial=False,
        )
        for ch in children:
            ch.wait()
        return False
    except KeyboardInterrupt:
        for ch in children:
            if ch.poll() is None:
                ch.send_signal(signal.SIGINT)
        for ch in children:
            try:
                ch.wait(timeout=60)
            except subprocess.TimeoutExpired:
                ch.kill()
        return True


def report_failed_workers(children: list[subprocess.Popen], heartbeat: int) -> bool:
    """One error line per worker that died; returns whether any did."""
    failed = [(i, ch) for i, ch in enumerate(children, 1) if ch.returncode not in (0, EXIT_INTERRUPTED, -signal.SIGINT)]
    for i, ch in failed:
        how = f"was killed by signal {-ch.returncode}" if ch.returncode < 0 else f"exited with status {ch.returncode}"
        print(
            f"error: worker {i} (pid {ch.pid}) {how}; finished trials are safe, a trial it left running is marked "
            f"failed and re-queued {3 * heartbeat}s after its last heartbeat: run the same command again to finish it",
            file=sys.stderr,
        )
    return bool(failed)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    w = prepare(parser().parse_args(argv), argv)
    study = open_study(w)
    if threading.current_thread() is threading.main_thread():
        _interruptible()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported on the progress line
    if w.lead:
        record_launch(study, w)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // w.args.jobs))
    quiet = w.args.quiet or not w.lead
    start = _counts(study)
    if w.lead and not quiet:
        announce(study, w, start["finished"])
    children = start_workers(w) if w.lead else []
    t0 = time.perf_counter()
    interrupted = optimize(study, w, children, start, quiet)
    if w.lead and not interrupted and w.objective.keep_best and w.objective.checkpoints and not w.spec.multi_objective:
        # the last trials to finish were not ranked by a later one: rank them now
        keep_best_checkpoints(study, w.objective.artifacts, w.objective.keep_best)
    if w.lead:
        print(summary(study, w.spec, w.args.storage, w.args.artifacts, start, time.perf_counter() - t0, interrupted), flush=True)
    if interrupted:
        return EXIT_INTERRUPTED
    return 1 if report_failed_workers(children, w.args.heartbeat) else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
