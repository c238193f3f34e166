"""A non-editable install works on its own: a wheel built from the repository, installed into a
fresh virtual environment, runs a built-in study and the challenge workflow from an unrelated folder
(the study files and the challenge files are package data, storage and reports land in that folder)."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = (".venv", ".git", "storage", "reports", "build", "__pycache__", "*.egg-info", ".pytest_cache")


def sh(*cmd, cwd, env=None, timeout=600):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding a non-editable install of this checkout; its dependencies (torch, optuna...)
    come from the running interpreter's site-packages through a .pth line, so nothing is downloaded.
    A .pth line adds a folder without running the .pth files inside it, so the editable install of
    the running environment stays out."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*SKIP))
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "wheel", src, cwd=tmp)
    wheel = next((tmp / "wheel").glob("cvae_opt-*.whl"))
    venv = tmp / "venv"
    sh(sys.executable, "-m", "venv", venv, cwd=tmp)
    py = venv / "bin" / "python"
    site = Path(sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp)
    shutil.rmtree(src)  # the install must not need its source
    return venv


def test_a_non_editable_install_runs_a_built_in_study_from_another_folder(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CVAE_OPT_CHALLENGE_DATA")}
    py, cli = installed / "bin" / "python", installed / "bin" / "cvae-opt"
    where = sh(py, "-c", "import cvae_opt, cvae_opt.studies as s; print(cvae_opt.__file__); print(s.STUDIES_DIR)",
               cwd=tmp_path, env=env).stdout.split()
    assert all(str(installed) in w for w in where), where  # the installed copy, not the checkout
    r = sh(cli, "run", "--study", "cvae_re", "--trials", 1, "--epochs", 1, "--train-size", 500, cwd=tmp_path, env=env)
    assert "[1/1] trial 0" in r.stdout and "cvae_opt/builtin_studies/cvae_re.yaml" in r.stdout
    assert (tmp_path / "storage" / "cvae_opt.db").is_file()  # storage is relative to where it runs
    sh(cli, "export", "--study", "cvae_re", "--out", "best.yaml", cwd=tmp_path, env=env)
    sh(cli, "retrain", "--config", "best.yaml", "--out", "retrained", cwd=tmp_path, env=env)
    sh(cli, "generate", "--checkpoint", "retrained/checkpoint.pt", "--conditions", "two_birds:scoring",
       "--samples", 3, "--out", "sub.pt", cwd=tmp_path, env=env)
    out = json.loads(sh(cli, "evaluate", "--submission", "sub.pt", "--truth", "two_birds:scoring",
                        cwd=tmp_path, env=env).stdout)
    assert out["n_conditions"] == 50 and out["samples_per_condition"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.yaml", "retrained", "storage", "sub.pt", "sub.pt.json"]


def test_the_installed_package_carries_the_benchmark_data(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("from cvae_opt.benchmark_tasks import TASKS, observations, reference_samples\n"
            "for t in TASKS: print(t, tuple(observations(t)[1].shape), tuple(reference_samples(t, 10).shape))")
    out = sh(installed / "bin" / "python", "-c", code, cwd=tmp_path, env=env).stdout.split("\n")
    assert "two_moons (10, 2) (10000, 2)" in out and "slcp (10, 8) (10000, 5)" in out, out
    assert "gaussian_linear_uniform (10, 10) (10000, 10)" in out and "gaussian_mixture (10, 2) (10000, 2)" in out, out
