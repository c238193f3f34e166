"""Training-loop overhead and generation throughput, measured side by side in one run.

For each model: the epoch time of `cvae_opt.train` (its training loop, validation excluded) against an
in-memory floor: the same model, loss and optimizer stepping over batches sliced beforehand, nothing
else. Runs alternate (ours then floor, floor then ours, ...) and the medians are compared. Then the time to
draw 50 x 30 samples. Then the cost of `data.fresh` (new pairs from the prior every epoch, drawn on the
training device) against a fixed training set, for the best cvae_re config: epoch times side by side,
and the time to draw one epoch's pairs alone. Last, the `hypotheses` latent's training step with its
likelihood taken on the decoder's end points directly against the same step that builds every
hypothesis' lines first and reads the end points back (what it did before), with and without the
physics term (which needs the lines).

    python benchmarks/throughput.py                       # 20,000 pairs, CPU or the GPU if present
    python benchmarks/throughput.py --pairs 100000 --device cuda
    python benchmarks/throughput.py --hypotheses-only      # the last table alone (about a minute)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cvae_opt.config import Config  # noqa: E402
from cvae_opt.machine import machine_line  # noqa: E402
from cvae_opt.data import draw_pairs, make_pairs  # noqa: E402
from cvae_opt.models import build_model  # noqa: E402
from cvae_opt.problems import resolve_problem  # noqa: E402
from cvae_opt.devices import resolve_device  # noqa: E402
from cvae_opt.posterior import Posterior  # noqa: E402
from cvae_opt.train import train  # noqa: E402

MODELS = {
    "seed-size cvae_re (studies/baselines/seed_recipe.yaml)": "studies/baselines/seed_recipe.yaml",
    "default study model (line head)": None,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_epoch(cfg: Config, data, device: torch.device) -> float:
    problem = resolve_problem(cfg.data.problem)
    torch.manual_seed(0)
    model = build_model(cfg.model, problem).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    x, y = data[0].x.to(device), data[0].y.to(device)
    bs = cfg.train.batch_size
    batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]
    sync(device)
    t0 = time.perf_counter()
    for xb, yb in batches:
        loss, _ = model.loss(xb, yb, problem, cfg.train, cfg.train.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t0


def our_epoch(cfg: Config, data) -> tuple[float, object]:
    res = train(cfg, data=data)
    return res.history[0]["epoch_seconds"], res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fresh-only", action="store_true", help="only the fresh-pairs table")
    ap.add_argument("--hypotheses-only", action="store_true", help="only the hypotheses-step table")
    ap.add_argument("--precision-only", action="store_true", help="only the bf16 / fp32 table")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if args.fresh_only or args.hypotheses_only or args.precision_only:
        print(machine_line("throughput") + f", device {device}, {torch.get_num_threads()} threads")
        table = fresh_table if args.fresh_only else hypotheses_table if args.hypotheses_only else precision_table
        table(args, device)
        return 0
    print(machine_line("throughput") + ", "
          f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"{args.pairs} pairs, median of {args.repeats}")
    print("| model | our epoch (s) | in-memory floor (s) | ratio | generate 50 x 30 (s) | samples/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, path in MODELS.items():
        cfg = Config.from_yaml_file(ROOT / path) if path else Config()
        cfg.data.train_size, cfg.data.val_size = args.pairs, 500
        cfg.train.epochs, cfg.train.device = 1, str(device)
        cfg.train.eval_conditions = 0
        problem = resolve_problem(cfg.data.problem)
        data = (make_pairs(problem, args.pairs, 0, cache_dir=None), make_pairs(problem, 500, 1, cache_dir=None))
        ours, floor = [], []
        floor_epoch(cfg, data, device)  # warm-up (allocator, kernels)
        for i in range(args.repeats):  # alternate which goes first, so neither gets the warmer caches
            if i % 2:
                floor.append(floor_epoch(cfg, data, device))
            t, res = our_epoch(cfg, data)
            ours.append(t)
            if not i % 2:
                floor.append(floor_epoch(cfg, data, device))
        y = data[1].y[:50].to(device)
        Posterior(res.model, res.problem).sample(y, 30)
        gens = []
        for _ in range(5):
            sync(device)
            t0 = time.perf_counter()
            Posterior(res.model, res.problem).sample(y, 30, seed=0)
            sync(device)
            gens.append(time.perf_counter() - t0)
        o, f, g = statistics.median(ours), statistics.median(floor), statistics.median(gens)
        print(f"| {label} | {o:.2f} | {f:.2f} | {o / f:.3f} | {g:.4f} | {1500 / g:,.0f} |", flush=True)
    fresh_table(args, device)
    hypotheses_table(args, device)
    precision_table(args, device)
    return 0


PRECISION_MODELS = {
    "two birds best (studies/best/cvae_re.yaml)": ("studies/best/cvae_re.yaml", None),
    "the same, physics term off (w_y 0)": ("studies/best/cvae_re.yaml", 0.0),
    "gravity2d best (studies/best/gravity_re.yaml)": ("studies/best/gravity_re.yaml", None),
}


def precision_table(args: argparse.Namespace, device: torch.device) -> None:
    """Seconds per epoch of `train` (fresh pairs, validation metrics off) with `precision: bf16` against
    `fp32`, same config, seed and data, alternating which runs first; medians over `args.repeats`."""
    print()
    print(f"| training epoch of {args.pairs} fresh pairs | fp32 (s) | bf16 (s) | speed-up |")
    print("| --- | --- | --- | --- |")
    for label, (path, w_y) in PRECISION_MODELS.items():
        runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for i in range(args.repeats + 1):  # the first pair warms up (allocator, oneDNN kernels) and is dropped
            for precision in (("fp32", "bf16") if i % 2 else ("bf16", "fp32")):
                cfg = Config.from_yaml_file(ROOT / path)
                cfg.data.train_size, cfg.data.val_size = args.pairs, 500
                cfg.train.epochs, cfg.train.device, cfg.train.eval_conditions = 1, str(device), 0
                cfg.train.precision = precision
                if w_y is not None:
                    cfg.train.w_y = w_y
                res = train(cfg, val_loss_every_epoch=False)
                if i:
                    runs[precision].append(res.history[0]["epoch_seconds"])
        f, b = statistics.median(runs["fp32"]), statistics.median(runs["bf16"])
        print(f"| {label} | {f:.2f} | {b:.2f} | {f / b:.2f}x |", flush=True)


def hypotheses_table(args: argparse.Namespace, device: torch.device, steps: int = 30) -> None:
    """ms per training step of studies/best/cvae_re.yaml: end points straight from the decoder against
    lines built and read back, alternating which runs first; the median over `steps` steps."""
    cfg = Config.from_yaml_file(ROOT / "studies/best/cvae_re.yaml")
    problem = resolve_problem(cfg.data.problem)
    bs = cfg.train.batch_size
    pairs = draw_pairs(problem, bs * 4, torch.Generator(device=device).manual_seed(0))

    def step_ms(w_y: float, ends: bool) -> float:
        tc = dataclasses.replace(cfg.train, w_y=w_y)
        torch.manual_seed(0)
        model = build_model(cfg.model, problem).to(device)
        if not ends:  # the lines path: decode every hypothesis' lines, read their end points back
            model.latent.space = dataclasses.replace(model.latent.space, decode_all=None)
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
        times = []
        for i in range(steps + 3):
            xb, yb = pairs.x[(i % 4) * bs:(i % 4 + 1) * bs], pairs.y[(i % 4) * bs:(i % 4 + 1) * bs]
            sync(device)
            t0 = time.perf_counter()
            loss, _ = model.loss(xb, yb, problem, tc, tc.beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync(device)
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times[3:])

    print()
    print(f"| hypotheses step (studies/best/cvae_re.yaml, K {cfg.model.components}, batch {bs}) | end points (ms) | lines built (ms) | speed-up |")
    print("| --- | --- | --- | --- |")
    for w_y in (cfg.train.w_y, 0.0):
        runs: dict[bool, list[float]] = {True: [], False: []}
        for i in range(args.repeats):
            for ends in ((True, False) if i % 2 else (False, True)):
                runs[ends].append(step_ms(w_y, ends))
        e, l = statistics.median(runs[True]), statistics.median(runs[False])
        print(f"| w_y {w_y:g} | {e:.1f} | {l:.1f} | {l / e:.2f}x |", flush=True)


def fresh_table(args: argparse.Namespace, device: torch.device) -> None:
    """Epoch time with fresh pairs every epoch vs a fixed set, same model, alternating which runs first."""
    cfg = Config.from_yaml_file(ROOT / "studies/best/cvae_re.yaml")
    cfg.data.train_size, cfg.data.val_size = args.pairs, 500
    cfg.train.epochs, cfg.train.device, cfg.train.eval_conditions = 1, str(device), 0
    problem = resolve_problem(cfg.data.problem)
    data = (make_pairs(problem, args.pairs, 0, cache_dir=None), make_pairs(problem, 500, 1, cache_dir=None))
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.repeats):
        for fresh in ((True, False) if i % 2 else (False, True)):
            cfg.data.fresh = fresh
            times[fresh].append(train(cfg, data=data).history[0]["epoch_seconds"])
    gen = torch.Generator(device=device).manual_seed(0)
    draws = []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        draw_pairs(problem, args.pairs, gen)
        sync(device)
        draws.append(time.perf_counter() - t0)
    fr, fx = statistics.median(times[True]), statistics.median(times[False])
    print()
    print(f"| data (studies/best/cvae_re.yaml, {args.pairs} pairs per epoch) | epoch (s) | ratio |")
    print("| --- | --- | --- |")
    print(f"| fixed set | {fx:.2f} | 1.000 |")
    print(f"| fresh pairs every epoch | {fr:.2f} | {fr / fx:.3f} |")
    print(f"| drawing one epoch's pairs alone | {statistics.median(draws):.3f} | |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
