"""Defects found by reading the code (issue 24), each pinned by a test that failed before its fix."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cvae_opt.errors import UserError
from cvae_opt.problems import resolve_problem

ROOT = Path(__file__).resolve().parents[1]

PROFILE = (
    "import torch\nfrom cvae_opt.problems import FieldProblem\n"
    "CALLS = [0]\n"
    "A = torch.rand(8, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)\n"
    "def forward(x):\n"
    "    CALLS[0] += 1\n"
    "    return (x @ A.to(x).T).unsqueeze(-1)\n"
    "problem = FieldProblem(name='profile', forward=forward, x_shape=(24,), n_points=8,\n"
    "    prior=lambda n, gen, dtype=torch.float64: torch.randn(n, 24, generator=gen, dtype=dtype), noise=0.1)\n"
)


@pytest.fixture
def profile(tmp_path, monkeypatch):
    (tmp_path / "rprofile.py").write_text(PROFILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "rprofile:problem"


def study_file(tmp_path, problem, metric, **fixed):
    body = {
        "name": "s", "problem": problem, "data": {"train_size": 300, "val_size": 40, "cache_dir": str(tmp_path / "c")},
        "budget": {"epochs": 1}, "objective": {"metric": metric, "direction": "maximize"},
        "sampler": {"name": "random", "args": {"seed": 0}}, "pruner": None,
        "fixed": {"latent": 2, "hidden": 16, "channels": [4], "kernels": [3], "eval_conditions": 5,
                  "eval_samples": 4, **fixed},
        "search": {"lr": {"type": "float", "low": 1e-3, "high": 2e-3}},
    }
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(body))
    return f


def run_cli(tmp_path, f, *extra):
    return subprocess.run([sys.executable, "-m", "cvae_opt.run", "--study", str(f), "--trials", "1", *extra],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})


@pytest.mark.parametrize("metric", ["valid_fraction", "r2", "mode_recall", "refined_score"])
def test_a_field_study_on_a_line_metric_is_refused_at_load(tmp_path, profile, metric):
    from cvae_opt.objective import Objective
    from cvae_opt.studies import load_study_file

    fixed = {"eval_refine": 10} if metric.startswith("refined_") else {}
    spec = load_study_file(str(study_file(tmp_path, profile, metric, **fixed)))
    with pytest.raises(UserError, match=rf"objective metric '{metric}' is not computed for problem 'profile'"):
        Objective(spec)


def test_a_line_study_on_a_field_metric_is_refused_before_the_storage_is_touched(tmp_path):
    f = study_file(tmp_path, "two_birds", "mean_error", head="line")
    r = run_cli(tmp_path, f)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        r.stderr.strip().splitlines()[0]] and "objective metric 'mean_error' is not computed for problem 'two_birds'" in r.stderr
    assert not (tmp_path / "storage").exists()


def test_a_field_study_without_pruner_below_the_first_rung_is_refused_not_a_keyerror(tmp_path, profile):
    # before the fix: the run ended with a KeyError traceback at float(result.last[m])
    f = study_file(tmp_path, profile, "valid_fraction")
    r = run_cli(tmp_path, f, "--epochs", "1")
    assert r.returncode == 2 and "KeyError" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "is not computed for problem 'profile'" in r.stderr


def test_a_field_study_with_refinement_is_refused_at_load(tmp_path, profile):
    from cvae_opt.objective import Objective
    from cvae_opt.studies import load_study_file

    spec = load_study_file(str(study_file(tmp_path, profile, "score", eval_refine=10)))
    with pytest.raises(UserError, match=r"problem .profile. \(fields\) has no refinement, so no refined_\* metrics; set eval_refine: 0"):
        Objective(spec)


def test_a_problem_by_import_path_is_probed_once_per_process(profile):
    import rprofile

    first = resolve_problem(profile)
    calls = rprofile.CALLS[0]
    assert calls >= 1  # the probe ran
    for _ in range(3):
        assert resolve_problem(profile) is first
    assert rprofile.CALLS[0] == calls  # ... once
    # an edited (reloaded) module is probed again
    import importlib

    importlib.reload(rprofile)
    again = resolve_problem(profile)
    assert again is not first and rprofile.CALLS[0] >= 1


def test_benchmark_headers_name_the_usable_cores_and_come_from_one_place():
    code = "import sys; sys.path.insert(0, 'benchmarks'); from _common import machine_line; print(machine_line('x'))"
    r = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert " 1 usable cores (of " in r.stdout and "torch " in r.stdout
    for f in (ROOT / "benchmarks").glob("*.py"):
        if f.name != "_common.py":
            text = f.read_text()
            assert "platform.machine()" not in text and "os.cpu_count()" not in text, f.name
