"""The simulation-based-inference benchmark (sbibm; Lueckmann et al., AISTATS 2021): the tuned CVAE against
sbi's NPE trained on the same simulations in the same run, and against the benchmark's published NPE.

For each task and simulation budget: one seeded set of that many simulations (`data.simulations`: the
CVAE's training and validation pairs together); a time-boxed `cvae_re` study on them (`studies/two_moons.yaml`
with the task and budget substituted, the budget's epochs, `--jobs` workers, its objective minus the
energy score on the held-out validation simulations: no reference samples); its best config retrained as
`cvae-opt retrain` does; 10,000 samples for each of the benchmark's ten observations; C2ST against the
10,000 reference samples of each (`cvae_opt.c2st`, sbibm's settings), mean and standard deviation over
the ten. Beside it, sbi's NPE (`--npe`, default maf: sbi's default estimator, and its default training:
batch 200, lr 5e-4, 10% validation, stop after 20 epochs without improvement) trained on the same
simulations, sampled with sbi's own rejection of samples outside the prior, scored the same way. Last
column: the published NPE C2ST (sbibm's `benchmarking_sbi/results/main_paper.csv`, mean over the ten;
that NPE is a neural spline flow, hidden 50, training batch 10,000, z-scored; its gaussian_mixture figures
predate sbibm 1.1's fix of that simulator, which drew one mixture component per batch: the suite's
simulator is the fixed one, so that row compares against another simulator). Each run starts its studies
afresh (a study of the same name in `--storage` is deleted first).

    python benchmarks/sbibm.py --tasks two_moons --budgets 1000                   # one row, ~10 minutes
    python benchmarks/sbibm.py                                                   # every task and budget (hours)
    python benchmarks/sbibm.py --tasks gaussian_linear_uniform --budgets 10000   # the sanity row
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

from cvae_opt.api import best_config, run_study, train_config  # noqa: E402
from cvae_opt.benchmark_tasks import N_OBSERVATIONS, observations, reference_samples, task_named  # noqa: E402
from cvae_opt.c2st import c2st  # noqa: E402
from cvae_opt.config import Config  # noqa: E402
from cvae_opt.data import load_data  # noqa: E402
from cvae_opt.posterior import Posterior, SamplingOptions  # noqa: E402
from cvae_opt.problems import resolve_problem  # noqa: E402

# sbibm's published NPE C2ST (mean over the ten observations) at 10^3 / 10^4 / 10^5 simulations
PUBLISHED_NPE = {
    "two_moons": {1000: 0.725, 10_000: 0.606, 100_000: 0.542},
    "gaussian_mixture": {1000: 0.731, 10_000: 0.661, 100_000: 0.555},
    "gaussian_linear_uniform": {1000: 0.696, 10_000: 0.553, 100_000: 0.509},
    "slcp": {1000: 0.975, 10_000: 0.901, 100_000: 0.831},
}
EPOCHS = {1000: 300, 10_000: 100, 100_000: 30}  # each trial's full budget: about 4,000-22,000 steps
MINUTES = {1000: 5.0, 10_000: 10.0, 100_000: 20.0}  # the study's time box
SAMPLES = 10_000


def study_file(task: str, budget: int, out: Path) -> Path:
    """studies/two_moons.yaml for another task and budget: the same space, that budget's epochs."""
    spec = yaml.safe_load((ROOT / "studies" / "two_moons.yaml").read_text())
    spec["name"] = f"sbibm_{task}_{budget}"
    spec["problem"] = task
    spec["description"] = f"cvae_re on sbibm's {task} at {budget} simulations (benchmarks/sbibm.py)"
    spec["data"] = {"simulations": budget, "val_size": min(2000, budget // 10), "seed": 0, "fresh": False}
    spec["budget"] = {"epochs": EPOCHS[budget]}
    spec["pruner"]["args"]["min_resource"] = max(1, EPOCHS[budget] // 10)
    path = out / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def c2st_per_observation(task: str, sample: callable, n: int) -> list[float]:  # noqa: ANN001
    """C2ST of `sample(i)` (n samples for observation i) against n reference samples, i = 1..10."""
    return [c2st(sample(i), reference_samples(task, i)[:n]) for i in range(1, N_OBSERVATIONS + 1)]


def run_cvae(task: str, budget: int, args: argparse.Namespace, out: Path) -> dict:
    import optuna

    path = study_file(task, budget, out)
    try:  # a fresh study each run: the time box, trial counts and best are this run's
        optuna.delete_study(study_name=f"sbibm_{task}_{budget}", storage=args.storage)
    except KeyError:
        pass
    t0 = time.perf_counter()
    study = run_study(str(path), trials=100_000, storage=args.storage, jobs=args.jobs,
                      timeout=60 * (args.minutes or MINUTES[budget]), quiet=True)
    study_s = time.perf_counter() - t0
    cfg = best_config(study)
    t0 = time.perf_counter()
    gen = train_config(cfg, out=out / f"{study.study_name}-best")
    train_s = time.perf_counter() - t0
    _, y = observations(task)
    within = cfg.train.eval_within if cfg.model.latent_type == "hypotheses" else "mean"
    x = Posterior(gen.model, gen.problem).sample(y.unsqueeze(-1), args.samples, SamplingOptions(within=within), seed=0)
    scores = c2st_per_observation(task, lambda i: x[i - 1], args.samples)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    return {"c2st": scores, "study_seconds": study_s, "train_seconds": train_s, "trials": len(study.trials),
            "complete": len(done), "best_score": study.best_value, "latent": cfg.model.latent_type}


def run_npe(task: str, budget: int, args: argparse.Namespace) -> dict:
    from sbi.inference import NPE
    from sbi.utils import BoxUniform

    t = task_named(task)
    problem = resolve_problem(task)
    data = yaml.safe_load(study_file(task, budget, Path(args.out)).read_text())["data"]
    cfg = Config.from_dict({"data": {**data, "problem": task}})
    train, val = load_data(cfg.data, problem)  # the CVAE's simulations, all of them
    theta = torch.cat([train.x, val.x]).float()
    xs = torch.cat([train.y, val.y]).flatten(1).float()
    prior = BoxUniform(low=-t.bound * torch.ones(t.dim_theta), high=t.bound * torch.ones(t.dim_theta))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    inference = NPE(prior=prior, density_estimator=args.npe, show_progress_bars=False)
    inference.append_simulations(theta, xs).train()
    train_s = time.perf_counter() - t0
    posterior = inference.build_posterior()
    _, y = observations(task)
    scores = c2st_per_observation(task, lambda i: posterior.sample((args.samples,), x=y[i - 1], show_progress_bars=False),
                                  args.samples)
    return {"c2st": scores, "train_seconds": train_s, "epochs": int(inference._summary["epochs_trained"][-1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["two_moons", "gaussian_mixture", "slcp"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[1000, 10_000, 100_000], choices=sorted(EPOCHS))
    ap.add_argument("--minutes", type=float, help="the study's time box for every budget (default 5 / 10 / 20)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--samples", type=int, default=SAMPLES, help="per observation (the benchmark's 10,000; fewer for a quick look)")
    ap.add_argument("--npe", default="maf", choices=["maf", "nsf", "mdn"])
    ap.add_argument("--storage", default="sqlite:///storage/sbibm.db")
    ap.add_argument("--out", default="reports/sbibm", help="study files, retrained models and the JSON of figures")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("sbi") is None:  # before the studies: fail now, not after 20 minutes
        print("error: benchmarks/sbibm.py needs sbi: pip install -e '.[peer]'", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(machine_line(f"sbibm C2ST, 10 observations x {args.samples:,} samples", ("torch", "sbi", "scikit-learn")))
    print("| task | simulations | study box | CVAE C2ST | sbi NPE same run | NPE published | CVAE study / retrain (s) | NPE training (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    figures = {}
    json_path = out / "sbibm.json"
    if json_path.is_file():
        figures = json.loads(json_path.read_text())
    for task in args.tasks:
        for budget in args.budgets:
            cv = run_cvae(task, budget, args, out)
            npe = run_npe(task, budget, args)
            figures[f"{task}/{budget}"] = {"cvae": cv, "npe": npe, "published_npe": PUBLISHED_NPE[task][budget]}
            json_path.write_text(json.dumps(figures, indent=2) + "\n")
            c, n = np.array(cv["c2st"]), np.array(npe["c2st"])
            print(f"| {task} | {budget:,} | {args.minutes or MINUTES[budget]:g} min, {cv['trials']} trials "
                  f"({cv['complete']} complete), best {cv['latent']} | {c.mean():.3f} ± {c.std():.3f} | "
                  f"{n.mean():.3f} ± {n.std():.3f} ({args.npe}, {npe['epochs']} epochs) | "
                  f"{PUBLISHED_NPE[task][budget]:.3f} | {cv['study_seconds']:.0f} / {cv['train_seconds']:.0f} | "
                  f"{npe['train_seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
