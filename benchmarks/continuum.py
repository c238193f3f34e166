"""Latent types on a problem whose solutions form a continuum: `line_product` (y = x0 * x1 point by
point; scaling one line up and the other down keeps y, so every y has a one-parameter family of
solutions). Trains the same cvae_re with a Gaussian, a mixed and a categorical latent for several
seeds and prints, on validation conditions, the valid fraction and the diversity (mean pairwise
distance between valid samples) of raw posterior draws: the mixed latent should match the Gaussian
one on a continuum, where a categorical-only model can show at most K points of it.

    python benchmarks/continuum.py                    # 3 seeds, about 5 minutes on 2 cores
    python benchmarks/continuum.py --seeds 0 --epochs 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402
from cvae_opt.config import Config  # noqa: E402
from cvae_opt.data import make_pairs  # noqa: E402
from cvae_opt.metrics import evaluate_samples  # noqa: E402
from cvae_opt.posterior import Posterior  # noqa: E402
from cvae_opt.problems import LINE_PRODUCT  # noqa: E402
from cvae_opt.train import train  # noqa: E402

LATENTS = {
    "gaussian": {"latent_type": "gaussian", "latent": 4},
    "mixed": {"latent_type": "mixed", "latent": 2, "components": 8},
    "categorical": {"latent_type": "categorical", "components": 8},
}


def config(latent: dict, seed: int, epochs: int) -> Config:
    return Config.from_dict({
        "data": {"problem": "line_product", "train_size": 20000, "val_size": 2000, "seed": 0, "fresh": True},
        "model": {"arch": "cvae_re", "head": "line", "hidden": 256, "prior_hidden": 256, "activation": "silu",
                  "channels": [16, 32], "kernels": [8, 4], **latent},
        "train": {"epochs": epochs, "batch_size": 512, "lr": 1e-3, "lr_schedule": "cosine", "beta": 1e-3,
                  "w_x": 1.0, "w_y": 1.0, "seed": seed, "eval_conditions": 20, "eval_samples": 5},
    })


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--conditions", type=int, default=100)
    ap.add_argument("--samples", type=int, default=30)
    args = ap.parse_args()
    val = make_pairs(LINE_PRODUCT, args.conditions, seed=424242, cache_dir=None)
    results: dict[str, list[dict]] = {}
    for name, latent in LATENTS.items():
        for seed in args.seeds:
            res = train(config(latent, seed, args.epochs))
            x = Posterior(res.model, res.problem).sample(val.y, args.samples, seed=seed)
            m = evaluate_samples(LINE_PRODUCT, x, val.y)
            m["train_seconds"] = res.seconds
            results.setdefault(name, []).append(m)
            print(f"{name} seed {seed}: valid {m['valid_fraction']:.3f} diversity {m['diversity']:.4f} "
                  f"misfit {m['misfit_rmse']:.4f} ({res.seconds:.0f}s)", flush=True)
    print()
    print(machine_line(f"line_product, {args.conditions} validation y x {args.samples} posterior draws, "
                       f"cvae_re, {args.epochs} epochs of 20,000 fresh pairs, mean ± std over seeds {args.seeds}"))
    print("| latent | valid fraction | diversity | misfit RMSE | training (s) |")
    print("| --- | --- | --- | --- | --- |")
    for name, ms in results.items():
        cells = [f"{np.mean([m[k] for m in ms]):.4f} ± {np.std([m[k] for m in ms]):.4f}"
                 for k in ("valid_fraction", "diversity", "misfit_rmse")]
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean([m['train_seconds'] for m in ms]):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
