"""The whole pipeline on a GPU: training (Gaussian and categorical latents), a trial with refined metrics,
generate with --refine --oversample, report, and the refined pipeline's pieces against the CPU. They
skip on a machine without CUDA, so the first GPU run catches what a CPU cannot (tensors left on the
wrong device, device-dependent results)."""

import json

import optuna
import pytest
import torch

from cvae_opt.checkpoints import load_checkpoint, save_checkpoint
from cvae_opt.config import Config
from cvae_opt.data import load_pairs, draw_models
from cvae_opt.problems import TWO_BIRDS
from cvae_opt.posterior import Posterior, SamplingOptions
from cvae_opt.refine import refine, select_diverse
from cvae_opt.train import train
from test_study_pipeline import cli, study_of, write_study

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here; these run on a GPU machine")


def cfg_on(device, **model):
    m = {"arch": "cvae_re", "head": "line", "latent": 4, "hidden": 64, "channels": [8, 16], "kernels": [8, 4]}
    m.update(model)
    return Config.from_dict({
        "data": {"train_size": 2000, "val_size": 200, "cache_dir": None, "fresh": True},
        "model": m,
        "train": {"epochs": 2, "batch_size": 250, "eval_conditions": 10, "eval_samples": 4, "device": device,
                  "w_y": 0.1, "eval_refine": 10, "eval_oversample": 2},
    })


@pytest.mark.parametrize("model", [{}, {"latent_type": "categorical", "components": 8}, {"latent_type": "mixed", "components": 4}])
def test_training_and_refined_metrics_on_cuda(tmp_path, model):
    cfg = cfg_on("cuda", **model)
    res = train(cfg)
    assert next(res.model.parameters()).device.type == "cuda"
    last = res.history[-1]
    for key in ("train_loss", "val_loss", "score", "mode_recall", "refined_mode_recall"):
        assert key in last and last[key] == last[key], key  # present and not NaN
    f = save_checkpoint(tmp_path / "m.pt", res.model, cfg, last)
    model_cpu, _, _ = load_checkpoint(f, torch.device("cpu"))  # a GPU checkpoint loads on a CPU machine
    assert next(model_cpu.parameters()).device.type == "cpu"


def test_the_refined_pipeline_gives_the_same_answer_on_cuda_and_cpu():
    s = load_pairs("two_birds:scoring", TWO_BIRDS)
    y = s.y[:8]
    x0 = draw_models(TWO_BIRDS, 8 * 12, torch.Generator().manual_seed(0)).view(8, 12, 50, 2)
    cpu = refine(TWO_BIRDS, x0, y, 20)
    gpu = refine(TWO_BIRDS, x0.cuda(), y.cuda(), 20)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
    keep_cpu = select_diverse(TWO_BIRDS, cpu, y, 5)
    keep_gpu = select_diverse(TWO_BIRDS, cpu.cuda(), y.cuda(), 5)
    assert keep_gpu.device.type == "cuda" and torch.equal(keep_gpu.cpu(), keep_cpu)
    res = train(cfg_on("cuda", latent_type="categorical", components=8))
    yg = y.cuda()
    x = Posterior(res.model, TWO_BIRDS).sample(yg, 5, SamplingOptions(refine_steps=10, oversample=3), seed=0, to_cpu=False)
    assert x.shape == (8, 5, 50, 2) and x.device.type == "cuda"  # the device before any copy to the CPU
    raw = Posterior(res.model, TWO_BIRDS).sample(yg, 5, seed=0, to_cpu=False)
    res.model.cpu()  # the draws come from a CPU generator: the same seed gives the same raw samples on the CPU
    assert torch.allclose(raw.cpu(), Posterior(res.model, TWO_BIRDS).sample(y, 5, seed=0), atol=1e-4)


def test_a_study_generate_and_report_on_cuda(tmp_path):
    fixed = {"latent": 4, "hidden": 32, "channels": [8], "kernels": [5], "eval_conditions": 10, "eval_samples": 3,
             "eval_refine": 20, "eval_oversample": 4, "head": "line", "w_y": 0.0}
    f = write_study(tmp_path / "ref.yaml", name="ref", fixed=fixed,
                    objective={"metric": "refined_mode_recall", "direction": "maximize"})
    r = cli("run", "--study", f, "--trials", 2, "--device", "cuda", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    trials = study_of(tmp_path, "ref").trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(t.user_attrs["config"]["train"]["device"] == "cuda" for t in trials)
    assert cli("export", "--study", "ref", "--out", "best.yaml", cwd=tmp_path).returncode == 0
    r = cli("retrain", "--config", "best.yaml", "--out", "retrained", "--device", "cuda", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("generate", "--checkpoint", "retrained/checkpoint.pt", "--conditions", "two_birds:scoring", "--samples", 5,
            "--refine", 20, "--oversample", 3, "--device", "cuda", "--out", "sub.pt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("evaluate", "--submission", "sub.pt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mode_precision"] > 0.5  # refined samples lie on exact solutions
    r = cli("report", "--study", "ref", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "reports" / "ref" / "index.html").is_file()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_jobs_spread_over_the_gpus(tmp_path):
    f = write_study(tmp_path / "tiny.yaml", pruner=None)
    r = cli("run", "--study", f, "--trials", 4, "--jobs", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "spread over 2 GPUs" in r.stdout
    devices = {t.user_attrs["config"]["train"]["device"] for t in study_of(tmp_path, "tiny").trials}
    assert devices == {"cuda:0", "cuda:1"}
