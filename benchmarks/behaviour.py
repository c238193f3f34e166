"""Record what short seeded studies of every family produce, to show a refactor changed no behaviour.

    python benchmarks/behaviour.py record OUT.json     # a 3-trial study per family, a retrain, samples
    python benchmarks/behaviour.py compare A.json B.json [--tol 1e-6]

Families: two birds with each latent type (gaussian, categorical, mixed; cvae_re), two birds with the
plain cvae, gravity2d (cvae_re, MLP body) and a user field problem given by import path. For each: the
trials' parameters and values (random sampler, seed 0, no pruner), then the best config retrained for 2
epochs with seed 0 and 5 raw samples for each of 3 validation conditions. `compare` prints the largest
difference per family and exits 1 above the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402

USER_MODULE = """
import torch
from cvae_opt.problems import FieldProblem
A = torch.rand(8, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
problem = FieldProblem(name='profile', forward=lambda x: (x @ A.to(x).T).unsqueeze(-1), x_shape=(24,),
    n_points=8, prior=lambda n, gen, dtype=torch.float64: torch.randn(n, 24, generator=gen, dtype=dtype), noise=0.1)
"""

LINE_SEARCH = """
  beta: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  lr: {type: float, low: 5.0e-4, high: 3.0e-3, log: true}
  hidden: {type: categorical, choices: [32, 64]}
"""


def study_text(name: str, problem: str, fixed: str, data: str, metric: str) -> str:
    return (f"name: {name}\nproblem: {problem}\ndata: {{{data}}}\nbudget: {{epochs: 2}}\n"
            f"objective: {{metric: {metric}, direction: maximize}}\n"
            "sampler: {name: random, args: {seed: 0}}\npruner: null\nartifacts: {checkpoints: false, plots: none}\n"
            f"fixed: {{{fixed}}}\nsearch:{LINE_SEARCH}")


def families(cache: str) -> dict[str, str]:
    lines = f"train_size: 2000, val_size: 200, seed: 0, cache_dir: {cache}"
    common = "eval_conditions: 20, eval_samples: 5, device: cpu, head: line"
    out = {}
    for lt in ("gaussian", "categorical", "mixed"):
        extra = ", components: 8, latent: 4" if lt != "gaussian" else ", latent: 4"
        out[f"two_birds_{lt}"] = study_text(f"b_{lt}", "two_birds", f"arch: cvae_re, latent_type: {lt}{extra}, {common}",
                                            lines, "score")
    out["two_birds_cvae_categorical"] = study_text("b_cvae", "two_birds",
                                                   f"arch: cvae, latent_type: categorical, components: 8, {common}",
                                                   lines, "score")
    field = "arch: cvae_re, body: mlp, latent: 8, eval_conditions: 10, eval_samples: 10, device: cpu"
    out["gravity2d"] = study_text("g", "gravity2d", field, f"train_size: 1000, val_size: 100, seed: 0, cache_dir: {cache}",
                                  "score")
    out["user_profile"] = study_text("u", "behaviour_user:problem", field.replace("body: mlp", "body: conv, channels: [4], kernels: [3]"),
                                     f"train_size: 1000, val_size: 100, seed: 0, cache_dir: {cache}", "score")
    return out


def record(out: Path) -> None:
    import optuna
    import torch

    import cvae_opt

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(2)
    results: dict[str, dict] = {}
    print(machine_line("behaviour record"))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "behaviour_user.py").write_text(USER_MODULE)
        sys.path.insert(0, str(t))
        for fam, text in families(str(t / "cache")).items():
            t0 = time.perf_counter()
            f = t / f"{fam}.yaml"
            f.write_text(text)
            study = cvae_opt.run_study(str(f), trials=3, storage=f"sqlite:///{t}/{fam}.db", artifacts=str(t / "art"),
                                       quiet=True)
            trials = [{"params": tr.params, "value": tr.value} for tr in study.trials]
            cfg = cvae_opt.best_config(study)
            gen = cvae_opt.train_config(cfg, epochs=2, seed=0)
            from cvae_opt.data import load_validation

            y = load_validation(cfg.data, gen.problem).y[:3]
            x = gen.sample(y, n=5, seed=0).x
            results[fam] = {"trials": trials, "samples": x.double().flatten().tolist(),
                            "final": {k: v for k, v in gen.metrics.items() if "seconds" not in k}}
            print(f"{fam}: values {[round(tr['value'], 6) for tr in trials]}, {time.perf_counter() - t0:.1f} s")
    out.write_text(json.dumps(results))
    print(f"wrote {out}")


def compare(a: Path, b: Path, tol: float) -> int:
    A, B = json.loads(a.read_text()), json.loads(b.read_text())
    worst = 0.0
    for fam in A:
        if fam not in B:
            print(f"{fam}: missing from {b}")
            worst = float("inf")
            continue
        ra, rb = A[fam], B[fam]
        d_val = max(abs(x["value"] - y["value"]) for x, y in zip(ra["trials"], rb["trials"]))
        same_params = all(x["params"] == y["params"] for x, y in zip(ra["trials"], rb["trials"]))
        d_x = float(np.max(np.abs(np.array(ra["samples"]) - np.array(rb["samples"]))))
        keys = set(ra["final"]) & set(rb["final"])
        d_m = max((abs(ra["final"][k] - rb["final"][k]) for k in keys
                   if np.isfinite(ra["final"][k]) and np.isfinite(rb["final"][k])), default=0.0)
        print(f"{fam}: params equal {same_params}, max |value diff| {d_val:.2e}, max |sample diff| {d_x:.2e}, "
              f"max |final metric diff| {d_m:.2e}")
        worst = max(worst, d_val, d_x, d_m, 0.0 if same_params else float("inf"))
    print(f"largest difference {worst:.2e} (tolerance {tol:g})")
    return 0 if worst <= tol else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args()
    if args.cmd == "record":
        record(args.out)
        return 0
    return compare(args.a, args.b, args.tol)


if __name__ == "__main__":
    sys.exit(main())
