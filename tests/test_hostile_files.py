"""Nothing from a file decides which code runs (issue 27): a checkpoint's config or a submission's metadata
naming a problem or latent type by import path (`builtins:print`, a module in the working folder, which
`python -m` puts on sys.path) is refused with one error line naming the fix, before anything is imported;
the same spec given by the user (--problem, --latent-type, problem=) loads it. Real processes, cwd a
temporary folder holding `evil.py`, which writes marker.txt when imported. No training: the checkpoints
are built from untrained models (a few seconds in all, most of it process start-up)."""

import json
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.artifacts import upload_artifact
from torch.utils.data import TensorDataset

from hostile import cli, refused  # noqa: E402  (tests/hostile.py)
from cvae_opt.checkpoints import FORMAT, save_checkpoint
from cvae_opt.config import Config
from cvae_opt.data import make_pairs, save_pairs
from cvae_opt.errors import UserError
from cvae_opt.models import build_model
from cvae_opt.problems import TWO_BIRDS
from cvae_opt.storage import artifact_store

TESTS = Path(__file__).resolve().parent
TOY = "toy_problem:PRODUCT"
EVIL = """\
from pathlib import Path
Path("marker.txt").write_text("evil.py was imported")
def make(x):
    return x
class Cls:
    pass
"""
SMALL = {"latent": 2, "hidden": 16, "prior_hidden": 16, "channels": [4], "kernels": [5]}


def hostile_checkpoint(path, problem="two_birds", latent_type="gaussian"):
    """A real two-birds checkpoint whose config was rewritten to name other code."""
    cfg = Config.from_dict({"model": SMALL})
    save_checkpoint(path, build_model(cfg.model, TWO_BIRDS), cfg)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT
    payload["config"]["data"]["problem"] = problem
    payload["config"]["model"]["latent_type"] = latent_type
    torch.save(payload, path)
    return path


@pytest.fixture
def cwd(tmp_path):
    (tmp_path / "evil.py").write_text(EVIL)
    x = torch.rand(6, 1, 50, 2) * 0.9 + 0.1
    torch.save(TensorDataset(x, torch.cos(x)), tmp_path / "conds.pt")
    return tmp_path


@pytest.mark.parametrize("spec", ["evil:make", "builtins:print"])
def test_a_checkpoint_naming_a_problem_by_import_path_is_refused(cwd, spec):
    hostile_checkpoint(cwd / "h.pt", problem=spec)
    r = cli("generate", "--checkpoint", "h.pt", "--conditions", "conds.pt", "--samples", 2, "--out", "s.pt", cwd=cwd)
    line = refused(r, cwd, "checkpoint h.pt", f"problem {spec!r} by import path", f"pass --problem {spec}")
    assert f"problem={spec!r}" in line
    assert not (cwd / "s.pt").exists()


def test_plot_and_a_stored_latent_type_by_import_path_are_refused(cwd):
    hostile_checkpoint(cwd / "p.pt", problem="evil:make")
    r = cli("plot", "--checkpoint", "p.pt", "--conditions", "conds.pt", "--out", "p.png", cwd=cwd)
    refused(r, cwd, "pass --problem evil:make")
    hostile_checkpoint(cwd / "l.pt", latent_type="evil:Cls")
    r = cli("generate", "--checkpoint", "l.pt", "--conditions", "conds.pt", "--out", "s.pt", cwd=cwd)
    refused(r, cwd, "model.latent_type 'evil:Cls' by import path", "pass --latent-type evil:Cls", "latent_type='evil:Cls'")


def test_the_api_refuses_too_and_a_given_spec_must_be_the_stored_one(cwd, monkeypatch):
    import cvae_opt

    monkeypatch.syspath_prepend(str(cwd))  # evil is importable, as it is for `python -m` in that folder
    monkeypatch.chdir(cwd)
    hostile_checkpoint(cwd / "h.pt", problem="evil:make", latent_type="evil:Cls")
    with pytest.raises(UserError, match=r"pass --problem evil:make \(or problem='evil:make'\)"):
        cvae_opt.load_generator(cwd / "h.pt")
    with pytest.raises(UserError, match=r"names problem 'evil:make', but --problem \(or problem=\) gives 'toy_problem:PRODUCT'"):
        cvae_opt.load_generator(cwd / "h.pt", problem=TOY)
    with pytest.raises(UserError, match="pass --latent-type evil:Cls"):
        cvae_opt.load_generator(cwd / "h.pt", problem="evil:make")  # the problem vouched for, the latent not
    builtin = hostile_checkpoint(cwd / "b.pt")  # built-in names load as before, with or without the spec
    assert cvae_opt.load_generator(builtin).problem.name == "two_birds"
    assert cvae_opt.load_generator(builtin, problem="two_birds", latent_type="gaussian").problem.name == "two_birds"
    with pytest.raises(UserError, match="names problem 'two_birds', but --problem .* gives 'evil:make'; drop --problem"):
        cvae_opt.load_generator(builtin, problem="evil:make")
    hostile_checkpoint(cwd / "n.pt", problem="evil:make\nerror: forged")  # shown escaped: still one line
    with pytest.raises(UserError, match="neither a built-in name nor an import path") as exc:
        cvae_opt.load_generator(cwd / "n.pt")
    assert "\n" not in str(exc.value)
    assert "evil" not in sys.modules and not (cwd / "marker.txt").exists()


def write_submission(folder, name, problem):
    x = torch.rand(4, 1, 50, 2) * 0.9 + 0.1
    torch.save(TensorDataset(x, torch.cos(x)[:, :, :, :2]), folder / name)
    (folder / f"{name}.json").write_text(json.dumps({"problem": problem, "samples_per_condition": 1}))
    return name


@pytest.mark.parametrize("spec", ["evil:make", "builtins:print"])
def test_submission_metadata_naming_a_problem_by_import_path_is_refused(cwd, spec):
    sub = write_submission(cwd, "sub.pt", spec)
    r = cli("evaluate", "--submission", sub, cwd=cwd)
    refused(r, cwd, f"submission metadata {sub}.json names problem {spec!r} by import path", f"pass --problem {spec}")
    if spec == "evil:make":
        r = cli("evaluate", "--submission", sub, "--problem", "two_birds", cwd=cwd)
        refused(r, cwd, "names problem 'evil:make', but --problem (or problem=) gives 'two_birds'")


def test_report_refuses_a_best_checkpoint_naming_a_problem_by_import_path(cwd):
    ck = hostile_checkpoint(cwd / "h.pt", problem="evil:make")
    study = optuna.create_study(study_name="h", storage=f"sqlite:///{cwd}/h.db")
    trial = study.ask()
    trial.set_user_attr("config", torch.load(ck, weights_only=True)["config"])
    trial.set_user_attr("checkpoint_artifact", upload_artifact(
        artifact_store=artifact_store(cwd / "art"), file_path=str(ck), study_or_trial=trial))
    study.tell(trial, 1.0)
    r = cli("report", "--study", "h", "--storage", f"sqlite:///{cwd}/h.db", "--artifacts", "art", "--out", "rep", cwd=cwd)
    refused(r, cwd, "checkpoint rep/best_model.pt names problem 'evil:make'", "pass --problem evil:make")
    assert not (cwd / "rep" / "index.html").exists()


def test_the_same_spec_given_by_the_user_loads_a_user_problem(cwd, monkeypatch):
    """The positive path, with the harmless toy problem of tests/toy_problem.py: an untrained model."""
    monkeypatch.syspath_prepend(str(TESTS))
    from toy_problem import PRODUCT

    cfg = Config.from_dict({"data": {"problem": TOY}, "model": {"hidden": 16, "latent": 2}})
    save_checkpoint(cwd / "toy.pt", build_model(cfg.model, PRODUCT), cfg)
    save_pairs(cwd / "tconds.pt", make_pairs(PRODUCT, 3, seed=5, cache_dir=None), challenge_layout=False)
    r = cli("generate", "--checkpoint", "toy.pt", "--conditions", "tconds.pt", "--samples", 2, "--out", "sub.pt",
            "--problem", TOY, cwd=cwd, pythonpath=TESTS)
    assert r.returncode == 0, r.stderr
    assert json.loads((cwd / "sub.pt.json").read_text())["problem"] == TOY
    r = cli("evaluate", "--submission", "sub.pt", cwd=cwd, pythonpath=TESTS)
    refused(r, cwd, f"pass --problem {TOY}")
    r = cli("evaluate", "--submission", "sub.pt", "--problem", TOY, cwd=cwd, pythonpath=TESTS)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["problem"] == "toy_product" and out["samples_per_condition"] == 2
