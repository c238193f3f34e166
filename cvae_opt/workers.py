"""Running a study: the one implementation behind `cvae-opt run` and `cvae_opt.run_study`, so a study
started from Python and one started from the shell run the same code and, for the same seed, the same
trials. Workers beyond the first are processes running the equivalent command on the same storage.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

import optuna
import torch

from .machine import usable_cores
from .devices import resolve_device, worker_device
from .errors import NonFiniteLoss, UserError
from .objective import INTERRUPTED_ATTR, ArtifactError, Objective, Overrides
from .samplers import make_pruner, make_sampler, pruner_name
from .storage import (DEFAULT_ARTIFACTS, DEFAULT_STORAGE, HEARTBEAT_SECONDS, STORAGE_ENV, artifact_store, check_storage,
                      mask_url, open_storage, sqlite_target)
from .studies import (STUDY_NAME_RULE, StudySpec, check_study_name, load_study_file, recorded_search_space,
                      search_space_changes)
from .trials import best_trial_or_none, keep_best_checkpoints
from .trials import optimize as trials_optimize

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
REQUEUED_FROM_ATTR = "requeued_from"  # on the trial that re-runs an interrupted one: that trial's number
PROGRESS_POLL_SECONDS = 30.0  # how often the lead prints the other workers' finished trials while its own runs


@dataclass
class RunOptions:
    """Everything `cvae-opt run` takes, with its defaults (the flags are these names with dashes)."""

    study: str
    trials: int = 200
    storage: str = DEFAULT_STORAGE
    study_name: str | None = None
    timeout: float | None = None
    jobs: int = 1
    seed: int | None = None
    device: str | None = None
    sampler: str | None = None
    pruner: str | None = None
    n_startup_trials: int | None = None
    epochs: int | None = None
    train_size: int | None = None
    artifacts: str = DEFAULT_ARTIFACTS
    heartbeat: int = HEARTBEAT_SECONDS
    quiet: bool = False
    allow_changed_space: bool = False
    worker_index: int = 0

    def to_argv(self, storage: bool = True) -> list[str]:
        """The command-line arguments of these options (the worker index left out): what the study
        records as its launch command, and, without the storage (`storage=False`: extra workers get it
        through $CVAE_OPT_STORAGE, so that its password is not in their command lines, which `ps`
        shows to every user), what extra workers run."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "worker_index" or value is None or value is False or (value == f.default and f.name != "study"):
                continue
            if f.name == "storage" and not storage:
                continue
            out += [f"--{f.name.replace('_', '-')}"] if value is True else [f"--{f.name.replace('_', '-')}", str(value)]
        return out


@dataclass
class RunResult:
    study: optuna.Study
    interrupted: bool
    failed_workers: int  # extra worker processes that died (their trials are retried; run again to finish)


def check_options(args: "RunOptions") -> None:
    """Bad values are one error line, before anything is opened."""
    for name in ("trials", "jobs", "epochs", "train_size", "n_startup_trials", "heartbeat"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "n_startup_trials" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'n_startup_trials' else 'a positive integer'}, got {v}")
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {args.timeout}")


def _apply_overrides(spec: StudySpec, args: "RunOptions") -> None:
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
    """One line per finished trial: count, its result, the best so far, the state counts, elapsed. The lead
    worker prints them all: each time one of its own trials ends, it also prints the trials the other
    workers finished since, and `watch` prints those every PROGRESS_POLL_SECONDS while its own trial runs
    (a 243-epoch trial takes 10 minutes); the other workers print nothing, so lines do not interleave."""

    def __init__(self, spec: StudySpec, total: int, start_finished: int, quiet: bool, timeout: float | None = None):
        self.spec, self.total, self.start, self.quiet, self.timeout = spec, total, start_finished, quiet, timeout
        self.t0, self.started = time.perf_counter(), datetime.now()  # Optuna's trial times are naive local times
        self.shown: set[int] = set()  # trials printed so far
        self.lock = threading.Lock()  # the trial callback and the watcher thread print through one lock

    def eta(self, elapsed: float, done: int) -> str:
        """Time left: the trials left at the pace so far, or the --timeout left if that ends sooner (no new
        trial starts after it; the running one still finishes)."""
        if not 0 < done < self.total:
            return ""
        left = elapsed / done * (self.total - done)
        if self.timeout is not None and self.timeout - elapsed < left:
            return f", timeout in {_fmt_elapsed(max(self.timeout - elapsed, 0.0))}"
        return f", ETA {_fmt_elapsed(left)}"

    def result(self, trial: optuna.trial.FrozenTrial) -> str:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            return ", ".join(f"{m} {v:.4g}" for m, v in zip(self.spec.metrics, trial.values))
        if trial.state == optuna.trial.TrialState.PRUNED:
            where = f"pruned at epoch {trial.user_attrs.get('pruned_at_epoch', '?')}"
            epochs = (trial.user_attrs.get("config") or {}).get("train", {}).get("epochs")
            if "seconds_per_epoch" in trial.user_attrs and trial.intermediate_values and epochs:
                # a seconds budget: where on the axis the pruner compared it, and of how many epochs
                where += f" of {epochs} ({max(trial.intermediate_values)} s of training)"
            return where
        reason = str(trial.user_attrs.get("fail_reason", "")).strip()
        return f"failed: {reason.splitlines()[0][:200]}" if reason else "failed"

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial | None = None) -> None:
        """Print `trial` (this worker's, just finished) after the other workers' trials not printed yet;
        without `trial`, only those (after the other workers have stopped)."""
        if self.quiet:
            return
        with self.lock:
            self._print(study, trial)

    def _print(self, study: optuna.Study, trial: optuna.trial.FrozenTrial | None) -> None:
        finished = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
        own = [] if trial is None else [trial]
        new = sorted((t for t in finished if t.number not in self.shown and t.number not in {o.number for o in own}
                      and (t.datetime_complete or datetime.max) >= self.started),  # earlier runs' are not news
                     key=lambda t: (t.datetime_complete or datetime.max, t.number))
        c = _counts(study)
        done = c["finished"] - self.start
        if self.spec.multi_objective:
            best = f"{len(study.best_trials)} on the Pareto front"
        else:
            b = best_trial_or_none(study)
            best = f"best {b.value:.4g} (trial {b.number})" if b else "no complete trial yet"
        elapsed = time.perf_counter() - self.t0
        eta = self.eta(elapsed, done)
        width = len(str(self.total))
        for t in [*new, *own]:
            self.shown.add(t.number)
            print(
                f"[{done:>{width}}/{self.total}] trial {t.number} {t.state.name.lower()}: {self.result(t)} | "
                f"{best} | {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed | "
                f"elapsed {_fmt_elapsed(elapsed)}{eta}",
                flush=True,
            )


def watch(progress: Progress, study: optuna.Study, stop: threading.Event, every: float = PROGRESS_POLL_SECONDS) -> threading.Thread:
    """A daemon thread printing the other workers' finished trials every `every` seconds until `stop` is set.
    It only reads: a storage error on a poll is skipped (the trial's own callback and the next poll
    print what it missed; a storage that is really down fails the trial loop itself)."""

    def loop() -> None:
        while not stop.wait(every):
            try:
                progress(study)
            except Exception:  # noqa: BLE001 - a display poll must never stop the study
                continue

    thread = threading.Thread(target=loop, name="cvae-opt-progress", daemon=True)
    thread.start()
    return thread


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
        lines.append("  resume: run the same command again (a trial stopped mid-way is re-queued with its parameters)")
    return "\n".join(lines)


def _masked_argv(argv: list[str], url: str) -> str:
    masked = mask_url(url)
    return " ".join(shlex.quote(masked if a == url else a) for a in ["python", "-m", "cvae_opt.run", *argv])


def _share(total: int, jobs: int, index: int) -> int:
    return total // jobs + (1 if index < total % jobs else 0)


@dataclass
class Worker:
    """One worker process's share of a run: its study set-up, built and checked before the storage is
    opened (a bad study file, device or data file then touches nothing)."""

    options: RunOptions
    spec: StudySpec
    study_name: str
    index: int
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    requested_device: str
    n_cuda: int
    objective: Objective
    notes: list[str] = dataclasses.field(default_factory=list)  # printed by the lead worker at start-up

    @property
    def lead(self) -> bool:
        """Worker 0 records the study's attributes, starts the others and prints the summary."""
        return self.index == 0


def prepare(args: RunOptions) -> Worker:
    check_options(args)
    notes = []
    if args.jobs > args.trials:  # a worker without a trial would only load the data
        notes.append(f"--jobs {args.jobs} capped at {args.trials} (the trials to add)")
        args = dataclasses.replace(args, jobs=args.trials)
    spec = load_study_file(args.study)
    # reports/NAME is built from the study name: one folder name, checked before anything is written
    if args.study_name is not None:
        name = check_study_name(args.study_name)
    else:
        name = check_study_name(spec.name, f"{spec.path}: name",
                                f"set name: or pass --study-name NAME {STUDY_NAME_RULE}")
    _apply_overrides(spec, args)
    index = args.worker_index
    seed = args.seed if args.seed is not None else spec.sampler["args"].get("seed")
    sampler = make_sampler(spec.sampler, None if seed is None else seed + index, args.n_startup_trials)
    pruner = make_pruner(spec.pruner)
    requested = args.device or spec.base_config().train.device
    resolve_device(requested)  # a device this machine lacks is one error line, before any trial
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = worker_device(requested, index, n_cuda)
    # the storage is checked (and a server reached) before the data is drawn, and nothing is written yet
    check_storage(args.storage, create=True, jobs=args.jobs, reach=True)
    target = sqlite_target(args.storage)
    if target is not None and target.memory:
        notes.append(f"--storage {args.storage} keeps the study in this process only: nothing is written, and it "
                     "is gone when the process ends (pass a file, sqlite:///storage/NAME.db, to keep it)")
    objective = Objective(spec, Overrides(args.epochs, args.train_size, device, args.seed))
    objective.artifacts = artifact_store(args.artifacts)  # created once everything above is checked
    return Worker(args, spec, name, index, sampler, pruner, requested, n_cuda, objective, notes)


def open_study(w: Worker) -> optuna.Study:
    """Create or resume the study; one that was created for other directions or metrics, or (unless
    --allow-changed-space) with another search space, is refused before anything is written to it."""
    storage = open_storage(w.options.storage, heartbeat=w.options.heartbeat)
    url = mask_url(w.options.storage)
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
    check_search_space(study, w, url)
    return study


def check_search_space(study: optuna.Study, w: Worker, url: str) -> None:
    """A resumed study must keep the search space it was created with (the search section of the study
    file it recorded, compared as parsed: comments and layout do not count): two spaces in one study
    mislead the sampler, the importances and the report."""
    recorded = study.user_attrs.get("study_file")
    if w.options.allow_changed_space or not isinstance(recorded, str):
        return
    space = recorded_search_space(recorded, f"the study file recorded by study {w.study_name!r}")
    changes = [] if space is None else search_space_changes(space, w.spec.search)
    if changes:
        shown = ", ".join(changes[:6]) + (f" and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise UserError(
            f"study {w.study_name!r} in {url} was created with another search space ({shown}); pass --study-name "
            "NEW for a new study, or --allow-changed-space to add trials anyway"
        )


def record_launch(study: optuna.Study, w: Worker) -> None:
    """What the dashboard, report and export read back: metric names, the study file, where its
    artifacts are and every command that launched it (passwords masked)."""
    with warnings.catch_warnings():  # the dashboard then names the values (score...), not "Objective 0"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(w.spec.metrics))
    command = _masked_argv(w.options.to_argv(), w.options.storage)
    before = study.user_attrs.get("study_file")
    if isinstance(before, str) and before != w.spec.text:  # another file (--allow-changed-space, or edited comments)
        study.set_user_attr("study_files_before", list(study.user_attrs.get("study_files_before", [])) + [before])
    study.set_user_attr("study_file", w.spec.text)
    study.set_user_attr("study_path", w.spec.path)
    study.set_user_attr("metrics", w.spec.metrics)
    study.set_user_attr("storage", mask_url(w.options.storage))
    study.set_user_attr("artifacts", w.options.artifacts)
    study.set_user_attr("launch_commands", list(study.user_attrs.get("launch_commands", [])) + [command])
    study.set_user_attr("launch_command", command)


def announce(study: optuna.Study, w: Worker, finished: int) -> None:
    """The start-up line: what is added to which study, how, and why a pruner may not be used."""
    spec, args = w.spec, w.options
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


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Queue again, with its parameters, each trial that Ctrl-C or SIGTERM stopped while it ran, once (a
    trial that re-runs one names it in `requeued_from`); returns the numbers re-queued. The lead worker
    does it before the others start, so that they do not queue it twice."""
    trials = study.get_trials(deepcopy=False)
    done = {t.user_attrs.get(REQUEUED_FROM_ATTR) for t in trials}
    out = []
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(INTERRUPTED_ATTR) and t.number not in done:
            study.enqueue_trial(t.params, user_attrs={REQUEUED_FROM_ATTR: t.number}, skip_if_exists=False)
            out.append(t.number)
    return out


def start_workers(w: Worker) -> list[subprocess.Popen]:
    """Workers 1..jobs-1 as processes running this same command on the same storage; the storage URL
    goes through the environment, not the command line, which every user of the machine can read."""
    children = []
    env = {**os.environ, STORAGE_ENV: w.options.storage}
    for i in range(1, w.options.jobs):
        if _share(w.options.trials, w.options.jobs, i) > 0:
            cmd = [sys.executable, "-m", "cvae_opt.run", *w.options.to_argv(storage=False), "--worker-index", str(i)]
            children.append(subprocess.Popen(cmd, env=env))
    return children


def _stop(children: list[subprocess.Popen]) -> None:
    """SIGINT to the workers still running, and a minute for them to stop."""
    for ch in children:
        if ch.poll() is None:
            ch.send_signal(signal.SIGINT)
    for ch in children:
        try:
            ch.wait(timeout=60)
        except subprocess.TimeoutExpired:
            ch.kill()


def optimize(study: optuna.Study, w: Worker, children: list[subprocess.Popen], start: dict[str, int], quiet: bool) -> bool:
    """Run this worker's trials and wait for the others; returns whether it was interrupted (Ctrl-C or
    SIGTERM: the running trial fails, the children get SIGINT and a minute to stop)."""
    progress = Progress(w.spec, w.options.trials, start["finished"], quiet, w.options.timeout)
    stop = threading.Event()
    if children and not quiet:
        watch(progress, study, stop)
    try:
        dropped = trials_optimize(
            study, w.objective, _share(w.options.trials, w.options.jobs, w.index), w.options.timeout,
            catch=(NonFiniteLoss, UserError, ArtifactError), callbacks=[progress], gc_after_trial=False,
        )
        if dropped:
            print(f"warning: {dropped} trial(s) of this worker were failed as stale while they ran (heartbeats "
                  f"delayed past {3 * w.options.heartbeat}s: an overloaded storage?); their retries run them again",
                  file=sys.stderr, flush=True)
        for ch in children:
            ch.wait()
        progress(study)  # the other workers' last trials
        return False
    except KeyboardInterrupt:
        _stop(children)
        return True
    except BaseException:  # a storage that refuses writes, a bug: the other workers are not left behind
        _stop(children)
        raise
    finally:
        stop.set()


def report_failed_workers(children: list[subprocess.Popen], heartbeat: int) -> int:
    """One error line per worker that died; returns how many did."""
    failed = [(i, ch) for i, ch in enumerate(children, 1) if ch.returncode not in (0, 130, -signal.SIGINT)]  # 130: Ctrl-C
    for i, ch in failed:
        how = f"was killed by signal {-ch.returncode}" if ch.returncode < 0 else f"exited with status {ch.returncode}"
        print(
            f"error: worker {i} (pid {ch.pid}) {how}; finished trials are safe, a trial it left running is marked "
            f"failed and re-queued {3 * heartbeat}s after its last heartbeat: run the same command again to finish it",
            file=sys.stderr,
        )
    return len(failed)


def run_study(options: RunOptions) -> RunResult:
    """Create or resume the study and run this worker's share of the trials (and, from worker 0, start
    the other workers and print the summary). Ctrl-C ends it cleanly: the running trial fails, the
    result says it was interrupted, and running it again resumes."""
    w = prepare(options)
    options = w.options  # --jobs capped at --trials
    study = open_study(w)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported on the progress line
    requeued = []
    if w.lead:
        record_launch(study, w)
        requeued = requeue_interrupted(study)
    torch.set_num_threads(max(1, usable_cores() // options.jobs))
    quiet = options.quiet or not w.lead
    start = _counts(study)
    if w.lead and not quiet:
        if requeued:
            w.notes.append(f"re-queued interrupted trial(s) {', '.join(map(str, requeued))} with their parameters")
        for note in w.notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
        announce(study, w, start["finished"])
    children = start_workers(w) if w.lead else []
    t0 = time.perf_counter()
    interrupted = optimize(study, w, children, start, quiet)
    if w.lead and not interrupted and w.objective.keep_best and w.objective.checkpoints and not w.spec.multi_objective:
        # the last trials to finish were not ranked by a later one: rank them now
        keep_best_checkpoints(study, w.objective.artifacts, w.objective.keep_best)
    if w.lead:
        print(summary(study, w.spec, options.storage, options.artifacts, start, time.perf_counter() - t0, interrupted),
              flush=True)
    failed = 0 if interrupted else report_failed_workers(children, options.heartbeat)
    return RunResult(study, interrupted, failed)
