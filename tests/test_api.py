"""The Python API: the README's snippet and the quickstart notebook run as they are, a study started from
Python equals one started from the shell for the same seed, and the calls take measurements in every
documented form and refuse bad ones with the commands' one-line messages."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

import cvae_opt
from cvae_opt.data import load_pairs
from cvae_opt.problems import TWO_BIRDS, sample_misfit
from cvae_opt.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_snippet_runs_as_written(tmp_path):
    r = subprocess.run([sys.executable, "-c", readme_snippet()], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    score = float(r.stdout.strip().splitlines()[-1])
    # what it printed is the score of what it saved
    sub = load_pairs(tmp_path / "submission.pt", TWO_BIRDS)
    truth = load_pairs("two_birds:scoring", TWO_BIRDS)
    from cvae_opt.metrics import enumerate_solutions, evaluate_samples

    x = sub.x.view(50, 30, 50, 2)
    assert score == pytest.approx(evaluate_samples(TWO_BIRDS, x, truth.y, enumerate_solutions(TWO_BIRDS, truth.y),
                                                   truth.x)["score"])
    assert json.loads((tmp_path / "submission.pt.json").read_text())["mode"] == "raw"
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    study = optuna.load_study(study_name="cvae_re", storage=open_storage(f"sqlite:///{tmp_path}/storage/api.db"))
    assert len(study.trials) == 3
    assert "--trials 3" in study.user_attrs["launch_command"]  # recorded as the equivalent command


def test_the_quickstart_notebook_runs_and_is_committed_without_outputs(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbclient/nbformat are in the dev extra CI installs")
    from nbclient import NotebookClient

    path = ROOT / "examples" / "quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "commit the notebook without outputs"
    nb = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert images >= 4  # history, importance, raw and refined samples
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.get("output_type") == "stream")
    assert "storage/quickstart-submission.pt 1500 pairs" in text
    sub = load_pairs(tmp_path / "storage" / "quickstart-submission.pt", TWO_BIRDS)
    assert len(sub) == 1500


STUDY = {
    "name": "twin", "problem": "two_birds", "data": {"train_size": 600, "val_size": 100},
    "budget": {"epochs": 2}, "objective": {"metric": "score", "direction": "maximize"},
    "sampler": {"name": "tpe", "args": {"n_startup_trials": 2}}, "pruner": {"name": "median"},
    "fixed": {"latent": 4, "hidden": 32, "channels": [8], "kernels": [5], "eval_conditions": 5, "eval_samples": 2},
    "artifacts": {"plots": "none"},
    "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
               "beta": {"type": "float", "low": 0.01, "high": 1.0, "log": True}},
}


def test_a_study_from_python_equals_one_from_the_shell(tmp_path, monkeypatch):
    f = tmp_path / "twin.yaml"
    f.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        py = cvae_opt.run_study(str(f), trials=4, seed=7, storage=f"sqlite:///{tmp_path}/py.db", quiet=True)
    finally:
        torch.set_num_threads(threads)
    r = subprocess.run([sys.executable, "-m", "cvae_opt", "run", "--study", str(f), "--trials", "4", "--seed", "7",
                        "--storage", f"sqlite:///{tmp_path}/sh.db", "--quiet"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    sh = optuna.load_study(study_name="twin", storage=open_storage(f"sqlite:///{tmp_path}/sh.db"))
    a, b = py.trials, sh.trials
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert (x.number, x.params, x.state) == (y.number, y.params, y.state)
        assert x.value == pytest.approx(y.value, rel=1e-6, abs=1e-9) and x.intermediate_values.keys() == y.intermediate_values.keys()
        assert x.user_attrs["config"] == y.user_attrs["config"]
    assert py.user_attrs["launch_command"] == sh.user_attrs["launch_command"].replace("sh.db", "py.db")


@pytest.fixture(scope="module")
def generator():
    cfg = cvae_opt.Config.from_dict({
        "data": {"train_size": 800, "val_size": 100},
        "model": {"latent": 4, "hidden": 32, "channels": [8], "kernels": [5]},
        "train": {"epochs": 1, "batch_size": 200, "eval_conditions": 5, "eval_samples": 2},
    })
    return cvae_opt.train_config(cfg)


def test_measurements_in_every_documented_form(generator, challenge):
    scoring = load_pairs(challenge / "scoring_dataset.pt", TWO_BIRDS)
    by_name = generator.sample("two_birds:scoring", n=5, seed=3)
    by_path = generator.sample(challenge / "scoring_dataset.pt", n=5, seed=3)
    as_tensor = generator.sample(scoring.y, n=5, seed=3)
    as_array = generator.sample(scoring.y.numpy(), n=5, seed=3)
    for s in (by_path, as_tensor, as_array):
        assert torch.equal(s.x, by_name.x) and torch.equal(s.y, scoring.y)
    one = generator.sample(scoring.y[4].numpy().astype(np.float64), n=5, seed=3)  # a single (50, 2) measurement
    assert one.x.shape == (1, 5, 50, 2) and torch.equal(one.y[0], scoring.y[4])
    assert by_name.metadata["mode"] == "raw" and by_name.metadata["samples_per_condition"] == 5
    refined = generator.sample(scoring.y[:4], n=5, refine=20, oversample=3)
    assert refined.metadata["mode"] == "refined" and refined.metadata["refine_steps"] == 20
    assert (sample_misfit(TWO_BIRDS, refined.x, refined.y) <= 0.05).double().mean() > \
        (sample_misfit(TWO_BIRDS, by_name.x[:4], by_name.y[:4]) <= 0.05).double().mean()
    assert cvae_opt.score_samples(as_tensor, truth=scoring)["truth_recall"] == \
        cvae_opt.score_samples(by_name, truth="two_birds:scoring")["truth_recall"]


@pytest.mark.parametrize("call,message", [
    (lambda g: g.sample(torch.zeros(3, 49, 2)), r"measurements of shape \(3, 49, 2\): expected \(50, 2\) or \(M, 50, 2\)"),
    (lambda g: g.sample(torch.full((50, 2), float("nan"))), "measurements must be finite"),
    (lambda g: g.sample("two_birds:nothing"), "unknown built-in data 'two_birds:nothing'"),
    (lambda g: g.sample("two_birds:scoring", draw="coverage"), "this model has a Gaussian latent"),
    (lambda g: g.sample("two_birds:scoring", oversample=0), "oversample >= 1"),
    (lambda g: g.sample("two_birds:scoring", n=0), "must be a positive integer"),
    (lambda g: cvae_opt.load_generator("missing.pt"), "missing.pt: no such checkpoint file"),
    (lambda g: cvae_opt.best_config("nope", storage="sqlite:///:memory:"), "no study named 'nope'"),
])
def test_bad_input_raises_the_one_error_type(generator, call, message):
    with pytest.raises(cvae_opt.UserError, match=message):
        call(generator)


def test_importing_the_package_stays_cheap():
    r = subprocess.run([sys.executable, "-c", "import sys, cvae_opt; print('torch' in sys.modules, sorted(cvae_opt.__all__))"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("False"), r.stdout + r.stderr
    for name in cvae_opt.__all__:
        assert getattr(cvae_opt, name).__doc__, name  # each public call says what it is for
