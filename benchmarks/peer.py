"""The peers, side by side: the `sbi` library's simulation-based posterior estimators learning
p(theta | y) from simulated pairs (NPE with a mixture density network, a neural spline flow or a
masked autoregressive flow; FMPE, flow matching) against a trained CVAE, each peer for the same
training wall time, all scored by the same metric code on the same held-out conditions.

- gravity2d / gravity2d_blocks: theta is the density model (512 cells), y the 32 g_z readings (on the
  32 x 64 grids, gravity2d_32x64[_blocks]: 2,048 cells, 64 readings); all are scored on `PROBLEM:test`
  (50 held-out truths, 200 samples each) by `cvae_opt.field_metrics`. Default peers: `maf,nsf,fmpe`
  (the README's earlier gravity table was `--estimators maf` alone: an affine flow represents the
  Gaussian posterior exactly).
- two_birds: theta is the four end points (the low-dimensional parametrisation a user of sbi would
  pick, which hands the peer the straightness and box for free), y the 100 measured values; scored on
  `two_birds:scoring` (50 conditions, 30 samples each) by `cvae_opt.metrics` (mode precision, recall).
  Default peers: `mdn,nsf,fmpe`.

The CVAE side is a training run directory (`cvae-opt retrain --out DIR`: checkpoint.pt, metrics.json
with its training seconds). One set of simulated pairs (`cvae_opt.data.make_pairs`, the CVAE's
simulator) is drawn once and shared; each peer then trains on it, one after the other, with the
threads torch has (both cores here), for those seconds (or `--seconds`; `--total-seconds` is the
other question, the best peer given the study's whole time plus the retrain). The clock is checked
between batches, not epochs (an epoch of 500,000 pairs is about a minute), and, as sbi does on
convergence, the weights with the best validation loss are kept. Samples are drawn without sbi's
rejection and clamped into the box, and each row states the seconds trained and spent sampling.

Settings, each a flag, chosen to be fair rather than sbi's defaults:
- mdn: 32 components (two birds has about a dozen separate solutions per y), hidden 512.
- nsf / maf / made: hidden 128, 5 transforms (the README's runs).
- NPE, all of those: lr 5e-4, batch 256, sbi's defaults but for the batch.
- fmpe: an MLP, hidden 256, 5 layers, lr 1e-3, batch 512. At sbi's defaults (hidden 100, lr 5e-4,
  batch 200) it reached only precision 0.087 / recall 0.159 in 15 minutes on 2 cores with 300,000
  pairs. Its loss regresses the velocity at one random time and noise draw per pair, so a batch is
  a noisy estimate: a larger batch averages more of that noise for a small cost per pair, and a
  larger step (clipped at gradient norm 5, sbi's default) goes further in a fixed time; the wider
  net is for a field that must split a dozen ways.
- pairs: 500,000 for two birds (the flows saw 300,000 over 24 epochs in 995 s: more data, fewer
  repeats), 100,000 for the fields; 2% of them held out for validation (10,000 pairs pick the best
  weights as well as 50,000, and FMPE scores each at 10 times, so a larger share costs training time).

sbi is the benchmark's extra (`pip install 'cvae-opt[peer]'`), not the package's.

    python benchmarks/peer.py --problem gravity2d --cvae storage/retrain/gravity_re
    python benchmarks/peer.py --problem two_birds --cvae storage/retrain/cvae_re --json reports/peer.json
    python benchmarks/peer.py --problem two_birds --cvae storage/retrain/cvae_re --total-seconds 6300
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

from cvae_opt.api import load_generator  # noqa: E402
from cvae_opt.data import load_pairs, make_pairs  # noqa: E402
from cvae_opt.field_metrics import evaluate_field_samples  # noqa: E402
from cvae_opt.metrics import enumerate_solutions, evaluate_samples  # noqa: E402
from cvae_opt.problems import LineProblem, line_ends, line_points, resolve_problem  # noqa: E402

GRAVITY = ("gravity2d", "gravity2d_blocks", "gravity2d_32x64", "gravity2d_32x64_blocks")
TEST = {"two_birds": ("two_birds:scoring", 30), **{g: (f"{g}:test", 200) for g in GRAVITY}}
ESTIMATORS = {"two_birds": "mdn,nsf,fmpe", **{g: "maf,nsf,fmpe" for g in GRAVITY}}
PAIRS = {"two_birds": 500_000, **{g: 100_000 for g in GRAVITY}}
NPE_MODELS = ("mdn", "nsf", "maf", "made")
SHOWN = {
    "two_birds": ["mode_precision", "mode_recall", "valid_fraction", "misfit_rmse", "diversity"],
    "gravity": ["chi2_median", "chi2_le2", "mean_error", "std_ratio_p10", "std_ratio_p90", "coverage_50_constrained",
                "coverage_90_constrained", "coverage_50", "coverage_90", "sbc_ks", "energy_score", "diversity"],
}
TIMES = ["train_seconds", "sample_seconds"]
Draw = Callable[[torch.Tensor, int], torch.Tensor]  # (B conditions, n) -> (n, B, d) theta


def to_theta(problem, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return line_ends(x.double()).float() if isinstance(problem, LineProblem) else x.flatten(1)


def from_theta(problem, theta: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return line_points(theta.double(), problem.n_points) if isinstance(problem, LineProblem) else theta.double().view(-1, *problem.x_shape)


def sbi_prior(problem):  # noqa: ANN001, ANN201
    """The prior sbi is given: a box on the end points (two birds); none for the fields (sbi then uses an
    improper prior: the peers train on the simulated pairs alone, and samples are drawn without sbi's
    rejection, so the prior would only serve that rejection of samples outside its support)."""
    from sbi.utils import BoxUniform

    if isinstance(problem, LineProblem):
        lo, hi = problem.box
        return BoxUniform(torch.full((4,), lo), torch.full((4,), hi))
    return None


def settings(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One estimator's settings from the flags: what builds it, trains it and labels its row."""
    if name == "fmpe":
        return {"model": args.fmpe_model, "hidden": args.fmpe_hidden, "layers": args.fmpe_layers,
                "lr": args.fmpe_lr, "batch": args.fmpe_batch}
    if name == "mdn":
        return {"components": args.mdn_components, "hidden": args.mdn_hidden, "lr": args.lr, "batch": args.batch}
    if name in NPE_MODELS:
        return {"hidden": args.hidden, "transforms": args.transforms, "lr": args.lr, "batch": args.batch}
    raise SystemExit(f"unknown estimator {name!r}: choose from {', '.join((*NPE_MODELS, 'fmpe'))}")


def label(name: str, s: dict[str, Any]) -> str:
    shape = (f"{s['model']}, hidden {s['hidden']}, {s['layers']} layers" if name == "fmpe" else
             f"{s['components']} components, hidden {s['hidden']}" if name == "mdn" else
             f"hidden {s['hidden']}, {s['transforms']} transforms")
    return f"sbi {'FMPE' if name == 'fmpe' else 'NPE ' + name} ({shape}, lr {s['lr']:g}, batch {s['batch']}"


class _Until:
    """A training loader that ends its epoch at the deadline; counts the batches it gave, so that sbi's
    mean training loss of a cut epoch is over those."""

    def __init__(self, loader, deadline: float) -> None:  # noqa: ANN001
        self.loader, self.deadline, self.count = loader, deadline, 0
        self.batch_size = loader.batch_size

    def __iter__(self) -> Iterator:
        self.count = 0
        for batch in self.loader:
            if time.perf_counter() >= self.deadline:
                return
            self.count += 1
            yield batch

    def __len__(self) -> int:
        return max(self.count, 1)


class _Deadline:
    """Mixed into an sbi trainer (its 0.27 training loop): cuts the epoch under way so that the validation
    after it ends at the deadline, then stops as sbi stops on convergence, with the best-validation
    weights; logs now and then."""

    deadline, log_every, log = float("inf"), 60.0, staticmethod(print)
    _val_seconds, _next_log = 0.0, 0.0

    def _cut(self) -> float:
        return self.deadline - self._val_seconds

    def _train_epoch(self, train_loader, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        return super()._train_epoch(_Until(train_loader, self._cut()), *args, **kwargs)

    def _validate_epoch(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        t0 = time.perf_counter()
        loss = super()._validate_epoch(*args, **kwargs)
        self._val_seconds = time.perf_counter() - t0
        return loss

    def _converged(self, epoch: int, stop_after_epochs: int) -> bool:
        done = super()._converged(epoch, stop_after_epochs)
        now = time.perf_counter()
        if epoch and now >= self._next_log:
            self._next_log = now + self.log_every
            self.log(f"  epoch {epoch}: validation loss {self._val_loss:.3f} (best {self._best_val_loss:.3f})")
        if done or now < self._cut():
            return done
        self._neural_net.load_state_dict(self._best_model_state_dict)
        return True

    def _report_convergence_at_end(self, epoch: int, max_num_epochs: int) -> None:
        pass  # sbi would print "converged": here the clock stopped it


class _NoTracker:
    """sbi's default tracker writes TensorBoard logs into ./sbi-logs (the working tree); nothing reads them."""

    log_dir = None

    def log_metric(self, name: str, value: float, step: int | None = None) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def add_figure(self, name: str, figure: Any, step: int | None = None) -> None: ...  # noqa: ANN401
    def flush(self) -> None: ...


def train_peer(name: str, s: dict[str, Any], theta: torch.Tensor, y: torch.Tensor, prior,  # noqa: ANN001
               seconds: float, args: argparse.Namespace, log=print) -> tuple[Draw, float, int]:  # noqa: ANN001
    """Trains one estimator for `seconds` on the shared pairs; returns its sampler, seconds trained, epochs."""
    import torch._dynamo  # noqa: F401  (torch's first optimiser imports it: seconds, off the first peer's clock)
    from sbi.inference import FMPE, NPE
    from sbi.neural_nets import posterior_flow_nn, posterior_nn

    torch.manual_seed(args.seed)
    if name == "fmpe":
        builder = posterior_flow_nn(model=s["model"], hidden_features=s["hidden"], num_layers=s["layers"])
        inference = type("TimedFMPE", (_Deadline, FMPE), {})(prior=prior, vf_estimator=builder, tracker=_NoTracker(),
                                                              show_progress_bars=False)
    else:
        builder = posterior_nn(model=name, hidden_features=s["hidden"], num_transforms=s.get("transforms", 5),
                               num_components=s.get("components", 10))
        inference = type("TimedNPE", (_Deadline, NPE), {})(prior=prior, density_estimator=builder, tracker=_NoTracker(),
                                                            show_progress_bars=False)
    inference.append_simulations(theta, y)
    inference.log = log
    t0 = time.perf_counter()
    inference.deadline = t0 + seconds
    estimator = inference.train(training_batch_size=s["batch"], learning_rate=s["lr"], validation_fraction=args.val_fraction,
                                stop_after_epochs=10**9)
    trained, epochs = time.perf_counter() - t0, inference.epoch
    estimator.eval()
    if name != "fmpe":
        return (lambda cond, n: estimator.sample((n,), condition=cond)), trained, epochs
    posterior = inference.build_posterior(estimator)
    return (lambda cond, n: posterior.sample_batched((n,), x=cond, reject_outside_prior=False,
                                                     show_progress_bars=False)), trained, epochs


def peer_samples(problem, draw: Draw, y: torch.Tensor, n: int) -> torch.Tensor:  # noqa: ANN001
    """n draws per y from a trained peer, ten conditions at a time (no rejection: the line parametrisation
    is clamped into the box, as sbi's rejection would keep only those inside)."""
    import warnings

    out = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*outside.*prior.*")
        for i in range(0, len(y), 10):
            out.append(draw(y[i : i + 10].flatten(1).float(), n).transpose(0, 1))  # (B, n, d)
    theta = torch.cat(out)  # (M, n, d)
    if isinstance(problem, LineProblem):
        theta = theta.clamp(*problem.box)
    return from_theta(problem, theta.reshape(-1, theta.shape[-1])).view(len(y), n, *problem.x_shape)


def score(problem, x: torch.Tensor, test) -> dict[str, float]:  # noqa: ANN001
    if isinstance(problem, LineProblem):
        return evaluate_samples(problem, x, test.y, enumerate_solutions(problem, test.y), test.x)
    return evaluate_field_samples(problem, x, test.y, test.x)


def timed(sample: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    x = sample()
    return x, time.perf_counter() - t0


def print_table(rows: dict[str, dict[str, Any]], shown: list[str]) -> None:
    cols = shown + TIMES
    width = max(len(r) for r in rows) + 2
    print(" " * width + "".join(f"{k[:14]:>15}" for k in cols))
    for name, r in rows.items():
        print(f"{name:<{width}}" + "".join(f"{r[k]:>15.3f}" if r.get(k) is not None else f"{'-':>15}" for k in cols))


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problem", default="gravity2d", choices=sorted(TEST))
    ap.add_argument("--cvae", required=True, help="CVAE training directory (checkpoint.pt, metrics.json)")
    ap.add_argument("--estimators", "--estimator", help="comma list of mdn, nsf, maf, made, fmpe "
                    f"(default: {', '.join(f'{k} {v}' for k, v in ESTIMATORS.items())})")
    time_ = ap.add_mutually_exclusive_group()
    time_.add_argument("--seconds", type=float, help="each peer's training time (default: the CVAE's, from metrics.json)")
    time_.add_argument("--total-seconds", type=float, help="the best peer given the study's whole time plus the "
                       "retrain: each peer trains for this many seconds instead")
    ap.add_argument("--hidden", type=int, default=128, help="nsf, maf, made: hidden features")
    ap.add_argument("--transforms", type=int, default=5, help="nsf, maf, made: flow transforms")
    ap.add_argument("--mdn-components", "--components", type=int, default=32, help="mdn: mixture components")
    ap.add_argument("--mdn-hidden", type=int, default=512, help="mdn: hidden features")
    ap.add_argument("--lr", type=float, default=5e-4, help="NPE (mdn, nsf, maf, made) learning rate")
    ap.add_argument("--batch", type=int, default=256, help="NPE (mdn, nsf, maf, made) batch size")
    ap.add_argument("--fmpe-model", default="mlp", help="fmpe: vector field net (mlp, ada_mlp, transformer)")
    ap.add_argument("--fmpe-hidden", type=int, default=256)
    ap.add_argument("--fmpe-layers", type=int, default=5)
    ap.add_argument("--fmpe-lr", type=float, default=1e-3)
    ap.add_argument("--fmpe-batch", type=int, default=512)
    ap.add_argument("--pairs", type=int, help="simulated pairs all peers share (default: 500,000 for two_birds, 100,000 for the fields)")
    ap.add_argument("--val-fraction", type=float, default=0.02, help="of the pairs, held out to pick the best weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write every figure and the arguments here")
    args = ap.parse_args(argv)
    args.estimators = [e.strip() for e in (args.estimators or ESTIMATORS[args.problem]).split(",") if e.strip()]
    args.pairs = args.pairs or PAIRS[args.problem]
    return args


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message="torch.triangular_solve is deprecated")  # nflows' LU, in nsf
    args = parse(argv)
    peers = {name: settings(name, args) for name in args.estimators}
    problem = resolve_problem(args.problem)
    test_name, s = TEST[args.problem]
    test = load_pairs(test_name, problem)
    cvae_dir = Path(args.cvae)
    cvae_seconds = float(json.loads((cvae_dir / "metrics.json").read_text())["seconds"])
    seconds = args.total_seconds or args.seconds or cvae_seconds
    budget = "study + retrain time" if args.total_seconds else "the CVAE's time" if not args.seconds else "--seconds"
    print(machine_line(f"peer benchmark, {args.problem}, {len(test.y)} conditions x {s} samples, {torch.get_num_threads()} threads"))
    gen = load_generator(cvae_dir / "checkpoint.pt")
    x, t = timed(lambda: gen.sample(test.y, s, seed=0).x)
    rows = {f"CVAE ({gen.config.model.arch}, {cvae_seconds:.0f} s)": {**score(problem, x, test), "train_seconds": cvae_seconds,
                                                                       "sample_seconds": t}}
    pairs = make_pairs(problem, args.pairs, seed=args.seed)
    theta, y, prior = to_theta(problem, pairs.x), pairs.y.flatten(1).float(), sbi_prior(problem)
    del pairs
    for name, st in peers.items():
        print(f"{label(name, st)}, {args.pairs} pairs): training for {seconds:.0f} s ({budget})")
        draw, trained, epochs = train_peer(name, st, theta, y, prior, seconds, args)
        x, t = timed(lambda: peer_samples(problem, draw, test.y, s))
        rows[f"{label(name, st)}; {trained:.0f} s, {epochs} epochs)"] = {
            **score(problem, x, test), "train_seconds": trained, "sample_seconds": t, "epochs": epochs, "estimator": name, **st}
    if problem.posterior is not None:
        x, t = timed(lambda: problem.posterior.sample(test.y, s, seed=1))
        rows["exact posterior (limit)"] = {**score(problem, x, test), "sample_seconds": t}
    print_table(rows, SHOWN["two_birds" if isinstance(problem, LineProblem) else "gravity"])
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "seconds": seconds, "budget": budget, "rows": rows},
                                              indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
