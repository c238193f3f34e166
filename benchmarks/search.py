"""Time to quality: the wall time a study of the default `cvae_re` space takes until a trial first
reaches a fixed raw quality on validation conditions, for four ways of searching, median over
sampler seeds, printed side by side with the ratio to random search.

Each run is the user's command (`python -m cvae_opt.run`, SQLite storage in a temporary folder) on
a copy of the study file with the benchmark's budget; the benchmark watches the storage and stops
the run with Ctrl-C (SIGINT, as a user would) once a complete trial reaches the threshold, or when
the run's time cap or trial cap is reached ("not reached": the cap counts as its time, so a median
that includes it is a lower bound, printed with >=).

    python benchmarks/search.py                                  # 3 seeds, 12 epochs, 5,000 fresh pairs (about 50 minutes)
    python benchmarks/search.py --threshold 0.03 --cap 1200 --seeds 0 1 2 3 4 --only random tpe
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402
from cvae_opt.studies import find_study_file  # noqa: E402


def strategies(pruner: dict | None, epochs: int) -> dict[str, dict]:
    """name -> (sampler, pruner) overrides of the study file. Hyperband over epochs: the smallest rung
    trains 1 epoch, each rung keeps the best third."""
    return {
        "random, no pruning": {"sampler": {"name": "random", "args": {}}, "pruner": None},
        "TPE, no pruning": {"pruner": None},
        "TPE + study's pruner": {"pruner": pruner},
        "TPE + Hyperband": {"pruner": {"name": "hyperband", "args": {"min_resource": 1, "max_resource": epochs,
                                                                     "reduction_factor": 3}}},
    }


def best_so_far(db: Path, study: str) -> list[tuple[float, float]]:
    """(seconds since the study's first trial started, value) of every complete trial, in completion order."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT t.datetime_start, t.datetime_complete, v.value, t.state FROM trials t JOIN studies s USING (study_id) "
            "LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
            "WHERE s.study_name = ? ORDER BY t.trial_id", (study,)
        ).fetchall()
    except sqlite3.OperationalError:  # the schema is not written yet
        return []
    finally:
        con.close()
    if not rows:
        return []
    from datetime import datetime

    t0 = min(datetime.fromisoformat(r[0]) for r in rows if r[0])
    out = [((datetime.fromisoformat(r[1]) - t0).total_seconds(), float(r[2]))
           for r in rows if r[3] == "COMPLETE" and r[1] and r[2] is not None]
    return sorted(out)


def one_run(spec: dict, name: str, seed: int, args, tmp: Path) -> dict:
    """Run the study until a complete trial reaches the threshold (then Ctrl-C), the cap, or the trial cap."""
    tag = f"{name.split(',')[0].split()[0].lower()}-{abs(hash(name)) % 10_000}-{seed}"
    f = tmp / f"{tag}.yaml"
    f.write_text(yaml.safe_dump(spec, sort_keys=False))
    db = tmp / f"{tag}.db"
    cmd = [sys.executable, "-m", "cvae_opt.run", "--study", str(f), "--trials", str(args.trials), "--seed", str(seed),
           "--storage", f"sqlite:///{db}", "--artifacts", str(tmp / "artifacts"), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reached = None
    while proc.poll() is None:
        time.sleep(2)
        done = best_so_far(db, spec["name"])
        hit = [t for t, v in done if v >= args.threshold]
        if hit:
            reached = hit[0]
            break
        if time.perf_counter() - t0 > args.cap:
            break
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    elif proc.returncode != 0:
        raise SystemExit(f"{name}, seed {seed}: the study failed: {proc.stderr.read()[-2000:]}")
    done = best_so_far(db, spec["name"])
    hit = [t for t, v in done if v >= args.threshold]
    reached = hit[0] if hit else None
    con = sqlite3.connect(db)
    trials, epochs = con.execute(
        "SELECT COUNT(DISTINCT t.trial_id), COUNT(iv.trial_intermediate_value_id) FROM trials t "
        "LEFT JOIN trial_intermediate_values iv ON iv.trial_id = t.trial_id"
    ).fetchone()
    con.close()
    return {"reached": reached, "best": max((v for _, v in done), default=float("nan")), "trials": trials,
            "epochs": epochs, "wall": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="cvae_re")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=12, help="epochs per trial (the study's budget is 40)")
    ap.add_argument("--train-size", type=int, default=5000, help="fresh training pairs per epoch")
    ap.add_argument("--eval-conditions", type=int, default=100, help="validation conditions per evaluation")
    ap.add_argument("--threshold", type=float, default=0.02,
                    help="raw score on validation conditions to reach (0.02: the top 5%% of 40 random configs at the default budget)")
    ap.add_argument("--trials", type=int, default=80, help="trial cap per run")
    ap.add_argument("--cap", type=float, default=360, help="seconds per run before it counts as not reached")
    ap.add_argument("--only", nargs="+", help="run only the strategies whose names start with these words")
    args = ap.parse_args()

    base = yaml.safe_load(find_study_file(args.study).read_text())
    base["budget"] = {"epochs": args.epochs}
    base["data"] = {**base.get("data", {}), "train_size": args.train_size}
    base["fixed"] = {**base.get("fixed", {}), "eval_conditions": args.eval_conditions}
    base["artifacts"] = {"checkpoints": False, "plots": "none"}
    if base.get("objective", {}).get("metric") != "score":
        raise SystemExit("this benchmark's threshold is a raw score: use a study whose objective is score")
    runs = strategies(base.get("pruner"), args.epochs)
    if args.only:
        runs = {k: v for k, v in runs.items() if any(k.lower().startswith(w.lower()) for w in args.only)}
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cvae-opt-search-") as tmp:
        for name, change in runs.items():
            spec = {**base, **change}
            for seed in args.seeds:
                r = one_run(spec, name, seed, args, Path(tmp))
                results.setdefault(name, []).append(r)
                got = f"{r['reached']:.0f} s" if r["reached"] is not None else f"not reached in {r['wall']:.0f} s"
                print(f"  {name}, seed {seed}: {got}; {r['trials']} trials, {r['epochs']} epochs, best {r['best']:.4f}",
                      flush=True)
    print(machine_line(
        f"time to quality, study {args.study} ({args.epochs} epochs x {args.train_size} fresh pairs, "
        f"{args.eval_conditions} validation conditions), threshold score >= {args.threshold}, seeds {args.seeds}, "
        f"cap {args.cap:.0f} s or {args.trials} trials per run"
    ))
    print("| search | median time to threshold (s) | per seed (s) | reached | ratio to random |")
    print("| --- | --- | --- | --- | --- |")
    ref = None
    for name, rs in results.items():
        times = [r["reached"] if r["reached"] is not None else r["wall"] for r in rs]
        med = statistics.median(times)
        lower = any(r["reached"] is None for r in rs) and med >= min(r["wall"] for r in rs if r["reached"] is None)
        if name.startswith("random"):
            ref = (med, lower)
        ratio = "" if ref is None else f"{med / ref[0]:.2f}"
        if ref is not None and ref[1] and not name.startswith("random"):
            ratio += " (random's median is a lower bound: this is an upper bound)"
        per = ", ".join(f"{r['reached']:.0f}" if r["reached"] is not None else f">{r['wall']:.0f}" for r in rs)
        print(f"| {name} | {'>=' if lower else ''}{med:.0f} | {per} | {sum(r['reached'] is not None for r in rs)}/{len(rs)} "
              f"| {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
