"""Load on the storage layer the suite configures: N worker processes (8, 32, 64) run the suite's own
study set-up (`open_storage` with heartbeat and retry of stale trials, the `cvae_re` study's TPE sampler
and successive-halving pruner, `suggest_config`, the user attributes a trial records, one report per
epoch) with a stand-in objective that sleeps instead of training, against SQLite, PostgreSQL, and
Optuna's gRPC proxy in front of PostgreSQL (`cvae-opt storage-proxy`).

Printed side by side: trials per second, median and 99th-percentile time of ask and tell, database
connections open at the peak (PostgreSQL's pg_stat_activity, polled every 0.2 s), and errors. With
`--faults`, a quarter of the workers are SIGKILLed mid-trial and the database connections are cut
once (every worker's PostgreSQL connection terminated; for the proxy, the proxy process killed and
restarted on its port); once the workers end and the heartbeat grace has passed, one more worker
runs the retries (as a user would run the command again), and the fault counts are checked: every
trial COMPLETE, PRUNED, or FAIL with exactly one retry that finished; none RUNNING or WAITING; trial
numbers unique; no user attribute lost; the trials in storage are exactly those the workers asked.

    python benchmarks/storage_load.py --postgres-url postgresql://postgres@127.0.0.1:55432/bench
    python benchmarks/storage_load.py --workers 8 --backends sqlite          # no PostgreSQL needed
    python benchmarks/storage_load.py --workers 64 --backends postgres grpc --faults --no-load

PostgreSQL comes from --postgres-url or CVAE_OPT_TEST_POSTGRES_URL (what CI starts); the gRPC runs
need the grpc extra (`pip install -e '.[grpc]'`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from cvae_opt.machine import machine_line  # noqa: E402
from cvae_opt.storage import mask_url, open_grpc_proxy, open_storage  # noqa: E402
from cvae_opt.studies import load_study_file, suggest_config  # noqa: E402
from cvae_opt.trials import RECORDED, optimize, record  # noqa: E402

S = optuna.trial.TrialState
STUDY = "cvae_re"  # the study file whose sampler, pruner and search space the workers use


# -- one worker -----------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> int:
    """A worker as `cvae-opt run` sets one up, around a stand-in objective; every event is appended
    (and flushed) to its own log file at once, so a SIGKILLed worker's record survives it."""
    import warnings

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    log = open(args.log, "a", buffering=1)

    def emit(**event) -> None:
        log.write(json.dumps({"t": time.time(), **event}) + "\n")

    spec = load_study_file(STUDY)
    from cvae_opt.samplers import make_pruner, make_sampler

    storage = open_storage(args.url, heartbeat=args.heartbeat)
    study = optuna.create_study(study_name=args.study_name, storage=storage, directions=spec.directions,
                                sampler=make_sampler(spec.sampler, args.index), pruner=make_pruner(spec.pruner),
                                load_if_exists=True)
    import optuna.study._optimize as optimize_module

    ask, tell = study.ask, optimize_module._tell_with_warning

    def timed_ask(*a, **k):
        t0 = time.perf_counter()
        trial = ask(*a, **k)
        emit(event="asked", number=trial.number, seconds=time.perf_counter() - t0)
        return trial

    def timed_tell(*a, **k):
        t0 = time.perf_counter()
        out = tell(*a, **k)
        emit(event="told", number=k["trial"].number, seconds=time.perf_counter() - t0)
        return out

    study.ask = timed_ask
    optimize_module._tell_with_warning = timed_tell
    worker_id = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        cfg = suggest_config(trial, spec)
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("worker", worker_id)
        lr = math.log10(cfg.train.lr)
        for epoch in range(1, args.epochs + 1):
            time.sleep(args.epoch_seconds)
            value = (1 - math.exp(-epoch / 3)) * math.exp(-((lr + 3) ** 2))  # a smooth stand-in learning curve
            trial.report(value, epoch)
            if epoch < args.epochs and trial.should_prune():
                record(trial, {k: value for k in RECORDED} | {"epoch": epoch})
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned()
        record(trial, {k: value for k in RECORDED} | {"epoch": args.epochs})
        trial.set_user_attr("train_seconds", args.epochs * args.epoch_seconds)
        return value

    emit(event="ready")
    while not Path(args.go).exists():
        time.sleep(0.05)
    try:
        dropped = optimize(study, objective, args.trials, gc_after_trial=False)  # as cvae-opt run's workers do
        if dropped:
            emit(event="dropped", count=dropped)
    except Exception as exc:  # what a real worker would die of: recorded, and the exit status says so
        import traceback

        traceback.print_exc()
        emit(event="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
        return 1
    emit(event="done")
    return 0


# -- the coordinator -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Connections:
    """Peak number of connections to the PostgreSQL database (other than this monitor's own)."""

    def __init__(self, url: str | None):
        self.url, self.peak, self.stop = url, 0, threading.Event()
        self.engine = None
        if url:
            import sqlalchemy

            self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()

    def count(self) -> int:
        import sqlalchemy

        with self.engine.connect() as c:
            return int(c.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalar())

    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.count())
            except Exception:
                pass
            self.stop.wait(0.2)

    def cut(self) -> int:
        """Terminate every other connection to the database (a server-side connection loss)."""
        import sqlalchemy

        with self.engine.connect() as c:
            return len(c.execute(sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()")).fetchall())

    def close(self) -> None:
        self.stop.set()


def start_proxy(pg_url: str, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "cvae_opt", "storage-proxy", "--storage", pg_url,
                             "--port", str(port), "--threads", "16"], stdout=open(log, "a"), stderr=subprocess.STDOUT)
    open_grpc_proxy(f"grpc://127.0.0.1:{port}", timeout=60).close()  # ready
    return proc


def events(logs: list[Path]) -> list[dict]:
    out = []
    for i, f in enumerate(logs):
        for line in f.read_text().splitlines() if f.exists() else []:
            try:
                out.append({"worker": i, **json.loads(line)})
            except json.JSONDecodeError:
                pass  # a line cut by SIGKILL
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    v = sorted(values)
    return v[min(len(v) - 1, int(math.ceil(q * len(v))) - 1)]


def run_load(backend: str, n: int, args: argparse.Namespace, tmp: Path, faults: bool) -> dict:
    args = argparse.Namespace(**{**vars(args), "heartbeat": args.fault_heartbeat if faults else args.heartbeat})
    name = f"load-{backend}-{n}-{'faults' if faults else 'plain'}-{os.getpid()}"
    pg = args.postgres_url
    proxy = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp}/{name}.db"
    elif backend == "postgres":
        url = pg
    else:
        port = free_port()
        proxy = start_proxy(pg, port, tmp / f"{name}-proxy.log")
        url = f"grpc://127.0.0.1:{port}"
    monitor = Connections(pg if backend != "sqlite" else None)
    logs = [tmp / f"{name}-{i}.jsonl" for i in range(n)]
    go = tmp / f"{name}.go"

    def spawn(i: int, log: Path, trials: int) -> subprocess.Popen:
        cmd = [sys.executable, __file__, "--worker", "--url", url, "--study-name", name, "--index", str(i),
               "--trials", str(trials), "--epochs", str(args.epochs), "--epoch-seconds", str(args.epoch_seconds),
               "--heartbeat", str(args.heartbeat), "--log", str(log), "--go", str(go)]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(str(log) + ".err", "w"))

    procs = [spawn(i, logs[i], args.trials) for i in range(n)]
    deadline = time.time() + 600
    while sum('"ready"' in f.read_text() for f in logs if f.exists()) < n:  # imports and storage opened: not timed
        if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.2)
    go.touch()
    t0 = time.time()
    killed: list[int] = []
    cut = ""
    if faults:  # wait until about half the trials are asked, then kill a quarter of the workers mid-trial
        target = n * args.trials // 2
        while sum(e["event"] == "asked" for e in events(logs)) < target and time.time() < t0 + 300:
            time.sleep(0.1)
        ev = events(logs)
        busy = [i for i in range(n) if procs[i].poll() is None and
                [e["event"] for e in ev if e["worker"] == i and e["event"] in ("asked", "told")][-1:] == ["asked"]]
        for i in busy[: n // 4]:
            procs[i].send_signal(signal.SIGKILL)
            killed.append(i)
        if backend == "postgres":
            cut = f"cut {monitor.cut()} connections"
        elif backend == "grpc":
            proxy.kill()
            proxy.wait()
            time.sleep(1.0)  # clients wait for the proxy (waitForReady), retrying calls it dropped
            proxy = start_proxy(pg, port, tmp / f"{name}-proxy.log")
            cut = "proxy restarted"
    codes = [p.wait() for p in procs]
    wall = time.time() - t0
    finish = ""
    if faults:  # after the grace period, the command run again: stale trials failed and retried
        time.sleep(3 * args.heartbeat + 1)
        for attempt in range(3):
            storage = open_storage(url, heartbeat=args.heartbeat)
            st = optuna.load_study(study_name=name, storage=storage)
            optuna.storages.fail_stale_trials(st)
            todo = len(st.get_trials(deepcopy=False, states=(S.RUNNING, S.WAITING)))
            if not todo:
                break
            log = tmp / f"{name}-finish{attempt}.jsonl"
            logs.append(log)
            p = spawn(n + attempt, log, todo)
            p.wait()
            finish = f"{attempt + 1} finishing run(s)"
    monitor.close()
    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=args.heartbeat))
    trials = study.get_trials(deepcopy=False)
    ev = events(logs)
    asks = [e["seconds"] for e in ev if e["event"] == "asked"]
    tells = [e["seconds"] for e in ev if e["event"] == "told"]
    errors = [e["error"] for e in ev if e["event"] == "error"]
    for i, code in enumerate(codes):  # workers that died before their first event (e.g. could not connect)
        if code != 0 and i not in killed and not any(e["worker"] == i and e["event"] == "error" for e in ev):
            lines = [x for x in Path(str(logs[i]) + ".err").read_text().splitlines() if x.strip()]
            errors.append(lines[-1][:300] if lines else f"exit status {code}")
    finished = [t for t in trials if t.state.is_finished()]
    out = {
        "backend": backend, "workers": n, "faults": faults, "trials": len(trials),
        "per_second": len([e for e in ev if e["event"] == "told"]) / wall if wall else math.nan, "wall": wall,
        "ask_median": statistics.median(asks) if asks else math.nan, "ask_p99": pct(asks, 0.99),
        "tell_median": statistics.median(tells) if tells else math.nan, "tell_p99": pct(tells, 0.99),
        "peak_connections": monitor.peak if monitor.engine else None,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
    }
    if faults:
        by_number = {t.number: t for t in trials}
        states = {s.name: sum(t.state == s for t in trials) for s in S}
        fails = [t for t in trials if t.state == S.FAIL]
        retries = {}
        for t in trials:
            origin = t.system_attrs.get("failed_trial")
            if origin is not None:
                retries.setdefault(origin, []).append(t)
        bad_retry = [f.number for f in fails if len(retries.get(f.number, [])) != 1
                     or not retries[f.number][0].state in (S.COMPLETE, S.PRUNED)]
        need = {"config", "worker", "epoch", "score"}
        lost_attrs = [t.number for t in finished if t.state != S.FAIL and not need <= set(t.user_attrs)]
        lost_reports = [t.number for t in finished if t.state != S.FAIL and
                        sorted(t.intermediate_values) != list(range(1, int(t.user_attrs.get("epoch", 0)) + 1))]
        asked = {e["number"] for e in ev if e["event"] == "asked"}
        out.update({
            "killed": len(killed), "cut": cut, "finish": finish, "states": states,
            "dropped": sum(e.get("count", 0) for e in ev if e["event"] == "dropped"),
            "unique_numbers": len(by_number) == len(trials), "retries_ok": not bad_retry, "bad_retry": bad_retry,
            "lost_attrs": lost_attrs, "lost_reports": lost_reports,
            "asked_equals_stored": asked == set(by_number), "asked": len(asked),
        })
    if proxy is not None:
        proxy.terminate()
        proxy.wait()
    return out


def fmt(v: float, unit: str = "ms") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * 1000:.0f}" if unit == "ms" else f"{v:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgres", "grpc"], choices=["sqlite", "postgres", "grpc"])
    ap.add_argument("--trials", type=int, default=4, help="trials per worker (default 4)")
    ap.add_argument("--epochs", type=int, default=5, help="reports per trial (default 5)")
    ap.add_argument("--epoch-seconds", type=float, default=0.2, help="the stand-in's sleep per epoch (default 0.2)")
    ap.add_argument("--heartbeat", type=int, default=60, help="heartbeat seconds of the load runs (default 60, the suite's)")
    ap.add_argument("--fault-heartbeat", type=int, default=20,
                    help="heartbeat seconds of the fault runs: killed trials are stale after 3x (default 20)")
    ap.add_argument("--postgres-url", default=os.environ.get("CVAE_OPT_TEST_POSTGRES_URL"))
    ap.add_argument("--faults", action="store_true", help="also the fault runs, at the largest --workers")
    ap.add_argument("--no-load", action="store_true", help="only the fault runs")
    ap.add_argument("--keep", help="keep the workers' logs and SQLite files in this folder")
    # worker mode
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for a in ("--url", "--study-name", "--log", "--go"):
        ap.add_argument(a, help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    backends = [b for b in args.backends if b == "sqlite" or args.postgres_url]
    if len(backends) < len(args.backends):
        print("no PostgreSQL (--postgres-url or CVAE_OPT_TEST_POSTGRES_URL): running " + ", ".join(backends))
    print(machine_line("storage load", ("optuna", "sqlalchemy")) + "; "
          f"{args.trials} trials x {args.epochs} epochs x {args.epoch_seconds}s per worker, study {STUDY!r} "
          f"(TPE + successive halving), heartbeat {args.heartbeat}s ({args.fault_heartbeat}s in the fault runs)"
          + (f"; PostgreSQL {mask_url(args.postgres_url)}" if args.postgres_url else ""), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cvae-storage-load-") as tmp:
        if args.keep:
            tmp = args.keep
            Path(tmp).mkdir(parents=True, exist_ok=True)
        if not args.no_load:
            print(f"{'storage':<10} {'workers':>7} {'trials':>6} {'trials/s':>8} {'ask ms (median, p99)':>21} "
                  f"{'tell ms (median, p99)':>22} {'peak conns':>10} {'errors':>6}", flush=True)
            for backend in backends:
                for n in args.workers:
                    r = run_load(backend, n, args, Path(tmp), faults=False)
                    rows.append(r)
                    print(f"{backend:<10} {n:>7} {r['trials']:>6} {r['per_second']:>8.1f} "
                          f"{fmt(r['ask_median']):>10}, {fmt(r['ask_p99']):>9} {fmt(r['tell_median']):>11}, {fmt(r['tell_p99']):>9} "
                          f"{r['peak_connections'] if r['peak_connections'] is not None else '-':>10} {r['errors']:>6}"
                          + (f"  e.g. {r['error_examples'][0]}" if r["error_examples"] else ""), flush=True)
        if args.faults:
            n = max(args.workers)
            for backend in [b for b in backends if b != "sqlite"] or backends:
                r = run_load(backend, n, args, Path(tmp), faults=True)
                print(f"\nfaults, {backend}, {n} workers: {r['killed']} SIGKILLed mid-trial, {r['cut'] or 'no server to cut'}, "
                      f"{r['finish'] or 'no finishing run needed'}; {r['errors']} errors in surviving workers, "
                      f"{r['dropped']} results dropped for trials failed as stale while running"
                      + (f" (e.g. {r['error_examples'][0]})" if r["error_examples"] else ""))
                print("  states: " + ", ".join(f"{k.lower()} {v}" for k, v in r["states"].items() if v))
                print(f"  FAIL trials each retried once, retry finished: {'yes' if r['retries_ok'] else 'NO ' + str(r['bad_retry'])}; "
                      f"running or waiting left: {r['states']['RUNNING'] + r['states']['WAITING']}; "
                      f"trial numbers unique: {'yes' if r['unique_numbers'] else 'NO'}")
                print(f"  user attributes lost: {len(r['lost_attrs'])}; reports lost: {len(r['lost_reports'])}; "
                      f"trials in storage {r['trials']} = trials the workers asked {r['asked']}: "
                      f"{'yes' if r['asked_equals_stored'] else 'NO'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
