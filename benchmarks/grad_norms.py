"""Gradient norms of a training run, epoch by epoch: where a loss spike comes from and whether a clip
stops it.

Trains CONFIG (the same `Training` a trial and `retrain` run) for `--epochs` epochs of its own cosine
schedule over `--schedule-epochs` (default: the config's budget, so the first epochs see the learning
rates the full run sees) and prints, per epoch, the training loss and the median and largest gradient
norm of its steps (before clipping: what `torch.nn.utils.clip_grad_norm_` returns). `--clip N` sets
`train.grad_clip` for the run; 0 leaves the config's value.

    python benchmarks/grad_norms.py --config best.yaml --epochs 45                # the config as it is
    python benchmarks/grad_norms.py --config best.yaml --epochs 45 --clip 20      # clipped at norm 20

docs/findings.md section S: the first cvae_re study's best (trial 14) spiked to norm 422 at epoch 36
unclipped; clipped at 20 it did not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

from cvae_opt.config import Config  # noqa: E402
from cvae_opt.train import Training  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a retrain config (export's YAML)")
    ap.add_argument("--epochs", type=int, default=45)
    ap.add_argument("--schedule-epochs", type=int, default=None, help="the cosine schedule's length (default: the config's epochs)")
    ap.add_argument("--clip", type=float, default=0.0, help="train.grad_clip for this run (0: the config's)")
    args = ap.parse_args()

    cfg = Config.from_yaml_file(args.config)
    schedule = args.schedule_epochs or cfg.train.epochs
    cfg.train.epochs = args.epochs
    cfg.train.eval_conditions = 0  # norms only: no sampling metrics
    if args.clip > 0:
        cfg.train.grad_clip = args.clip
    clip = cfg.train.grad_clip
    norms: list[float] = []
    clip_grad_norm = torch.nn.utils.clip_grad_norm_

    def recording(params, max_norm, *a, **k):  # noqa: ANN001, ANN202 - the torch signature
        n = clip_grad_norm(params, max_norm, *a, **k)
        norms.append(float(n))
        return n

    torch.nn.utils.clip_grad_norm_ = recording  # Training calls it by this name when grad_clip > 0
    cfg.train.grad_clip = clip if clip > 0 else 1e30  # unclipped (no norm reaches it): the norm is still measured
    run = Training(cfg)
    if run.sched is not None:
        run.sched = torch.optim.lr_scheduler.CosineAnnealingLR(run.opt, T_max=max(1, schedule * run.steps_per_epoch))
    print(machine_line(f"{args.config}: {args.epochs} of {schedule} epochs, {run.steps_per_epoch} steps each, "
                       f"clip {'off' if clip <= 0 else clip}"))
    t0 = time.perf_counter()
    for m in run.epochs():
        step_norms = norms[-run.steps_per_epoch:]
        print(f"epoch {int(m['epoch']):>4}  loss {m['train_loss']:9.4f}  grad norm median {statistics.median(step_norms):8.2f}  "
              f"max {max(step_norms):9.1f}  {time.perf_counter() - t0:6.0f} s", flush=True)


if __name__ == "__main__":
    main()
