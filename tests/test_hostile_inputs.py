"""Every bad input is one `error:` line and exit 2 (issue 27 item 5): a ragged survey CSV, a survey for a
line problem, NaN/inf sampling options, an output path that is a folder, an SQLite path under a file, a
URL with a port that is not a number, an overlong study name, and pickles holding code. Real processes in
a temporary folder; the checkpoints are untrained (no training anywhere), and `run` is refused before
it draws any data."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from hostile import cli, refused  # noqa: E402  (tests/hostile.py)
from cvae_opt.checkpoints import FORMAT, save_checkpoint
from cvae_opt.config import Config
from cvae_opt.models import build_model
from cvae_opt.problems import TWO_BIRDS, resolve_problem
from cvae_opt.surveys import write_survey

STUDY = Path(__file__).resolve().parent.parent / "studies" / "cvae.yaml"
SMALL = {"latent": 2, "hidden": 16, "prior_hidden": 16, "channels": [4], "kernels": [5]}


class Hostile:
    """Unpickled, it would create marker.txt in the working folder."""

    def __reduce__(self):
        return (Path.touch, (Path("marker.txt"),))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    cfg = Config.from_dict({"model": SMALL})
    save_checkpoint(d / "model.pt", build_model(cfg.model, TWO_BIRDS), cfg)
    grav = resolve_problem("gravity2d")
    g = Config.from_dict({"data": {"problem": "gravity2d"},
                          "model": {"arch": "cvae_re", "body": "mlp", "latent": 2, "hidden": 16}})
    save_checkpoint(d / "grav.pt", build_model(g.model, grav), g)
    x = torch.rand(6, 1, 50, 2) * 0.9 + 0.1
    torch.save(TensorDataset(x, torch.cos(x)), d / "conds.pt")
    survey = write_survey(d / "survey.csv", grav, grav(grav.draw_prior(1, torch.Generator().manual_seed(0), torch.float64)))
    lines = survey.read_text().splitlines()
    lines[3] += ",0.5"  # one row with a column more than the header
    (d / "ragged.csv").write_text("\n".join(lines) + "\n")
    torch.save({"x": torch.zeros(2), "y": Hostile()}, d / "hostile_pairs.pt")
    payload = torch.load(d / "model.pt", weights_only=True)
    assert payload["format"] == FORMAT
    payload["config"]["note"] = Hostile()
    torch.save(payload, d / "hostile_model.pt")
    return d


@pytest.fixture
def cwd(tmp_path, files):
    for f in files.iterdir():
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "outdir").mkdir()
    (tmp_path / "somefile.txt").write_text("not a folder\n")
    return tmp_path


def generate(cwd, *args, checkpoint="model.pt", conditions="conds.pt", out="out.pt"):
    return cli("generate", "--checkpoint", checkpoint, "--conditions", conditions, "--out", out,
               "--samples", 2, *args, cwd=cwd)


def test_ragged_survey_csv(cwd):
    refused(generate(cwd, checkpoint="grav.pt", conditions="ragged.csv"), cwd, "ragged.csv", "columns")


def test_survey_csv_for_a_line_problem(cwd):
    refused(generate(cwd, conditions="survey.csv"), cwd, "survey.csv", "two_birds", "no station positions")


@pytest.mark.parametrize("option,value", [("--temperature", "nan"), ("--temperature", "inf"), ("--refine-lr", "nan"),
                                          ("--min-weight", "nan"), ("--min-weight", "2"), ("--max-spread", "nan"),
                                          ("--max-spread", "0")])
def test_non_finite_sampling_option(cwd, option, value):
    refused(generate(cwd, option, value), cwd, option, "finite")
    assert not (cwd / "out.pt").exists()


def test_generate_out_is_a_folder(cwd):
    refused(generate(cwd, out="outdir"), cwd, "outdir is a directory; give a file path")


def test_plot_out_is_a_folder(cwd):
    r = cli("plot", "--checkpoint", "model.pt", "--conditions", "conds.pt", "--out", "outdir", "--samples", 2, cwd=cwd)
    refused(r, cwd, "outdir is a directory; give a file path")


def test_export_out_is_a_folder(cwd):
    r = cli("export", "--study", "anything", "--storage", "sqlite:///missing.db", "--out", "outdir", cwd=cwd)
    refused(r, cwd, "outdir is a directory; give a file path")
    assert not (cwd / "missing.db").exists()


def run_cmd(cwd, *args):
    return cli("run", "--study", STUDY, "--trials", 1, "--epochs", 1, "--train-size", 10, "--quiet", *args, cwd=cwd)


def test_sqlite_path_under_a_file(cwd):
    refused(run_cmd(cwd, "--storage", "sqlite:///somefile.txt/x.db"), cwd, "somefile.txt is a file, not a folder")
    assert (cwd / "somefile.txt").read_text() == "not a folder\n"


def test_url_port_not_a_number(cwd):
    r = run_cmd(cwd, "--storage", "postgresql://u:secret@localhost:abc/db")
    refused(r, cwd, "port must be a number")
    assert "secret" not in r.stderr  # the password is never shown, even in a URL SQLAlchemy cannot parse


def test_long_study_name_with_a_server_url(cwd):
    r = run_cmd(cwd, "--study-name", "a" * 1000, "--storage", "postgresql://u@localhost:5432/db")
    refused(r, cwd, "--study-name", "more than 200")


def test_hostile_pairs_file(cwd):
    refused(generate(cwd, conditions="hostile_pairs.pt"), cwd, "hostile_pairs.pt", "code or objects that are not tensors")


def test_hostile_checkpoint(cwd):
    refused(generate(cwd, checkpoint="hostile_model.pt"), cwd, "hostile_model.pt", "code or objects that are not tensors")
