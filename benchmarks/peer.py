"""The peer, side by side: the `sbi` library's neural posterior estimation (NPE: a normalising flow or a
mixture density network learning p(theta | y) from simulated pairs) against a trained CVAE, for the
same training wall time, scored by the same metrics on the same held-out conditions.

- gravity2d / gravity2d_blocks: theta is the density model (512 cells), y the 32 g_z readings; both
  are scored on `PROBLEM:test` (50 held-out truths, 200 samples each) by `cvae_opt.field_metrics`.
- two_birds: theta is the four end points (the low-dimensional parametrisation a user of sbi would
  pick, which hands the peer the straightness and box for free), y the 100 measured values; scored on
  `two_birds:scoring` (50 conditions, 30 samples each) by `cvae_opt.metrics` (mode precision, recall).

The CVAE side is a training run directory (`cvae-opt retrain --out DIR`: checkpoint.pt, metrics.json
with its training seconds); the peer trains on its own simulated pairs for those seconds (or
`--seconds`), with the threads torch has (both cores here). sbi is the benchmark's extra
(`pip install 'cvae-opt[peer]'`), not the package's.

    python benchmarks/peer.py --problem gravity2d --cvae storage/retrain/gravity_re
    python benchmarks/peer.py --problem two_birds --cvae storage/retrain/cvae_re --estimator nsf
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

from cvae_opt.api import load_generator  # noqa: E402
from cvae_opt.data import load_pairs, make_pairs  # noqa: E402
from cvae_opt.field_metrics import evaluate_field_samples  # noqa: E402
from cvae_opt.metrics import enumerate_solutions, evaluate_samples  # noqa: E402
from cvae_opt.problems import LineProblem, line_ends, line_points, resolve_problem  # noqa: E402

TEST = {"two_birds": ("two_birds:scoring", 30), "gravity2d": ("gravity2d:test", 200),
        "gravity2d_blocks": ("gravity2d_blocks:test", 200)}
SHOWN = {
    "two_birds": ["mode_precision", "mode_recall", "valid_fraction", "misfit_rmse", "diversity"],
    "gravity": ["chi2_median", "chi2_le2", "mean_error", "std_ratio_p10", "std_ratio_p90", "coverage_50_constrained",
                "coverage_90_constrained", "coverage_50", "coverage_90", "sbc_ks", "energy_score", "diversity"],
}


def to_theta(problem, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return line_ends(x.double()).float() if isinstance(problem, LineProblem) else x.flatten(1)


def from_theta(problem, theta: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return line_points(theta.double(), problem.n_points) if isinstance(problem, LineProblem) else theta.double().view(-1, *problem.x_shape)


def sbi_prior(problem):  # noqa: ANN001, ANN201
    """The prior sbi is given: a box on the end points (two birds); none for the fields (sbi then uses an
    improper prior: NPE trains on the simulated pairs alone, and samples are drawn from the estimator
    directly, so the prior would only serve sbi's rejection of samples outside its support)."""
    from sbi.utils import BoxUniform

    if isinstance(problem, LineProblem):
        lo, hi = problem.box
        return BoxUniform(torch.full((4,), lo), torch.full((4,), hi))
    return None


def train_peer(problem, args, seconds: float, log=print):  # noqa: ANN001, ANN201
    from sbi.inference import NPE
    from sbi.neural_nets import posterior_nn

    pairs = make_pairs(problem, args.pairs, seed=args.seed)
    theta, y = to_theta(problem, pairs.x), pairs.y.flatten(1)
    builder = posterior_nn(model=args.estimator, hidden_features=args.hidden, num_transforms=args.transforms,
                           num_components=args.components)
    prior = sbi_prior(problem)
    inference = NPE(prior=prior, density_estimator=builder, show_progress_bars=False)
    inference.append_simulations(theta, y)
    t0 = time.perf_counter()
    epoch = 0
    estimator = None
    while time.perf_counter() - t0 < seconds:
        epoch += 1
        estimator = inference.train(training_batch_size=args.batch, learning_rate=args.lr, max_num_epochs=epoch,
                                    resume_training=epoch > 1, stop_after_epochs=10**9)
        if epoch % 5 == 0:
            val = inference._summary["best_validation_loss"][-1] if inference._summary.get("best_validation_loss") else float("nan")
            log(f"  peer epoch {epoch}: {time.perf_counter() - t0:.0f}s, best validation loss {val:.3f}")
    trained = time.perf_counter() - t0
    posterior = inference.build_posterior(estimator)
    return posterior, estimator, trained, epoch


def peer_samples(problem, estimator, y: torch.Tensor, n: int) -> torch.Tensor:  # noqa: ANN001
    """n draws per y from the trained density estimator (no rejection: the line parametrisation is
    clamped into the box, as sbi's rejection would keep only those inside)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(y), 10):
            cond = y[i : i + 10].flatten(1)
            th = estimator.sample((n,), condition=cond)  # (n, B, d)
            out.append(th.transpose(0, 1))
    theta = torch.cat(out)  # (M, n, d)
    if isinstance(problem, LineProblem):
        theta = theta.clamp(*problem.box)
    return from_theta(problem, theta.reshape(-1, theta.shape[-1])).view(len(y), n, *problem.x_shape)


def score(problem, x: torch.Tensor, test) -> dict[str, float]:  # noqa: ANN001
    if isinstance(problem, LineProblem):
        return evaluate_samples(problem, x, test.y, enumerate_solutions(problem, test.y), test.x)
    return evaluate_field_samples(problem, x, test.y, test.x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problem", default="gravity2d", choices=sorted(TEST))
    ap.add_argument("--cvae", required=True, help="CVAE training directory (checkpoint.pt, metrics.json)")
    ap.add_argument("--seconds", type=float, help="peer training time (default: the CVAE's, from metrics.json)")
    ap.add_argument("--estimator", default="maf", help="sbi density estimator: maf, nsf, mdn, made (default maf)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--transforms", type=int, default=5)
    ap.add_argument("--components", type=int, default=10, help="mixture components (mdn)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=100_000, help="simulated pairs the peer trains on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args(argv)
    problem = resolve_problem(args.problem)
    test_name, s = TEST[args.problem]
    test = load_pairs(test_name, problem)
    cvae_dir = Path(args.cvae)
    meta = json.loads((cvae_dir / "metrics.json").read_text())
    seconds = args.seconds or float(meta["seconds"])
    print(machine_line(f"peer benchmark, {args.problem}, {len(test.y)} conditions x {s} samples, {torch.get_num_threads()} threads"))
    gen = load_generator(cvae_dir / "checkpoint.pt")
    rows = {f"CVAE ({gen.config.model.arch}, {float(meta['seconds']):.0f} s)": score(problem, gen.sample(test.y, s, seed=0).x, test)}
    print(f"sbi NPE ({args.estimator}, hidden {args.hidden}, {args.transforms} transforms, lr {args.lr:g}, batch {args.batch}, "
          f"{args.pairs} pairs): training for {seconds:.0f} s")
    posterior, estimator, trained, epochs = train_peer(problem, args, seconds)
    rows[f"sbi NPE {args.estimator} ({trained:.0f} s, {epochs} epochs)"] = score(problem, peer_samples(problem, estimator, test.y, s), test)
    if problem.posterior is not None:
        rows["exact posterior (limit)"] = score(problem, problem.posterior.sample(test.y, s, seed=1), test)
    shown = SHOWN["two_birds" if isinstance(problem, LineProblem) else "gravity"]
    width = max(len(r) for r in rows) + 2
    print(" " * width + "".join(f"{k[:14]:>15}" for k in shown))
    for name, r in rows.items():
        print(f"{name:<{width}}" + "".join(f"{r[k]:>15.3f}" if k in r else f"{'-':>15}" for k in shown))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
