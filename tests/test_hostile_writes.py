"""Every write stays where it belongs: study names that cannot be one folder name are refused by `run` and
`report` before anything is written, report files are written by rename and never through a symlink left
at their path, and a report caches the pairs it rebuilds only under the working folder's storage/,
whatever cache_dir the best checkpoint's config names. Commands run as real processes in a tmp folder."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from cvae_opt.data import local_cache_dir
from cvae_opt.errors import UserError
from cvae_opt.files import atomic_write_text, read_yaml
from cvae_opt.studies import STUDIES_DIR, check_study_name

SMOKE = ["--trials", "1", "--epochs", "1", "--train-size", "300"]


def cli(module, *args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", f"cvae_opt.{module}", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def write_study(path: Path, name="tiny", **data) -> Path:
    spec = {
        "name": name, "problem": "two_birds", "data": {"train_size": 300, "val_size": 50, **data},
        "budget": {"epochs": 1}, "objective": {"metric": "score", "direction": "maximize"},
        "sampler": {"name": "random", "args": {"seed": 1}}, "pruner": None,
        "fixed": {"latent": 4, "hidden": 16, "channels": [4], "kernels": [5], "eval_conditions": 5, "eval_samples": 3},
        "artifacts": {"plots": "none"},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(r: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


# -- the rule ----------------------------------------------------------------------------------------


def test_shipped_and_ordinary_names_pass():
    names = [(read_yaml(f) or {}).get("name") or f.stem for f in STUDIES_DIR.glob("*.yaml")]
    assert "cvae_re" in names and "gravity_re_blocks" in names
    for name in [*names, "tiny", "tiny-nop", "X", "pg-cut-1a2b3c4d", "a..b", "v1.2", "my study", "étude", "x" * 200]:
        assert check_study_name(name) == name


@pytest.mark.parametrize("name, why", [
    ("", "is empty"), ("../escape", "path separator"), ("a/b", "path separator"), ("a\\b", "path separator"),
    ("..", "starts with '.'"), (".", "starts with '.'"), (".hidden", "starts with '.'"),
    ("bad\nname", "control"), ("nul\x00", "control"), ("esc\x1b[31m", "control"), ("x" * 201, "201 characters"),
    ("é" * 130, "255 bytes"),
])
def test_names_that_cannot_be_a_folder_name_are_refused(name, why):
    with pytest.raises(UserError) as e:
        check_study_name(name)
    msg = str(e.value)
    assert why in msg and "\n" not in msg and "--study-name NAME of letters, digits" in msg


def test_report_cache_dir_stays_under_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_cache_dir("storage/data") == "storage/data"
    assert local_cache_dir("storage/other/cache") == "storage/other/cache"
    assert local_cache_dir(str(tmp_path / "storage" / "x")) == str(tmp_path / "storage" / "x")
    for outside in ("/tmp/elsewhere", "../../x", "storage/../x", ".", str(tmp_path / "data"), None):
        assert local_cache_dir(outside) == "storage/data", outside
    (tmp_path / "storage").mkdir()
    os.symlink(tmp_path.parent, tmp_path / "storage" / "link")  # a link inside storage/ pointing out of it
    assert local_cache_dir("storage/link/x") == "storage/data"


# -- run and report refuse before writing -----------------------------------------------------------


def test_run_refuses_a_study_name_that_is_no_folder_name(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    study = write_study(cwd / "tiny.yaml")
    marker = f"escape-{uuid.uuid4().hex[:8]}"
    before = tree(tmp_path)
    for name, why in ((f"../{marker}", "path separator"), (f"sub/{marker}", "path separator"),
                      (f"bad\x1b{marker}", "control or unprintable character"), ("x" * 201, "201 characters")):
        r = cli("run", "--study", study, "--study-name", name, *SMOKE, cwd=cwd)
        refused(r, "--study-name: study name", why, "--study-name NAME of letters, digits")
    # the study file's own name: the same rule, and the fix names both ways out
    bad = write_study(cwd / "bad.yaml", name=f"../../{marker}")
    r = cli("run", "--study", bad, *SMOKE, cwd=cwd)
    refused(r, f"{bad}: name: study name", "path separator", "set name: or pass --study-name NAME")
    assert tree(tmp_path) == before | {"cwd/bad.yaml"}  # no storage/, no artifacts, nothing beside cwd
    assert not list(tmp_path.parent.glob(f"{marker}*")) and not list(tmp_path.parent.parent.glob(f"{marker}*"))


def test_report_refuses_a_study_name_that_is_no_folder_name(tmp_path):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    before = tree(tmp_path)
    r = cli("report", "--study", "../../x", cwd=cwd)
    refused(r, "--study: study name '../../x'", "path separator", "give --out FOLDER")
    assert tree(tmp_path) == before  # refused before the storage was opened: no storage/cvae_opt.db either


# -- a real report: no write through a symlink, no data cache outside storage/ -----------------------


def test_report_replaces_symlinks_and_caches_only_under_storage(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    elsewhere = tmp_path / "elsewhere"  # the study's cache_dir, outside the working folder
    study = write_study(work / "tiny.yaml", cache_dir=str(elsewhere))
    r = cli("run", "--study", study, *SMOKE, cwd=work)
    assert r.returncode == 0, r.stderr
    assert list(elsewhere.glob("*.pt"))  # the run used it: the study file is the user's own
    for f in elsewhere.iterdir():
        f.unlink()
    elsewhere.rmdir()

    target = outside / "victim.html"
    target.write_text("untouched")
    rep = work / "reports" / "tiny"
    rep.mkdir(parents=True)
    os.symlink(target, rep / "history.html")
    os.symlink(outside / "planted.js", rep / "plotly.min.js")  # dangling: plotly's write_html would create it
    r = cli("report", "--study", "tiny", cwd=work)
    assert r.returncode == 0, r.stderr

    assert target.read_text() == "untouched" and not (outside / "planted.js").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["victim.html"]
    for name in ("history.html", "plotly.min.js", "index.html"):
        assert (rep / name).is_file() and not (rep / name).is_symlink(), name
    assert 'src="plotly.min.js"' in (rep / "history.html").read_text()  # still offline, beside its bundle
    assert (rep / "plotly.min.js").stat().st_size > 1_000_000
    assert not [p for p in rep.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    # the validation pairs were rebuilt under storage/data, not the checkpoint's cache_dir
    assert not elsewhere.exists()
    assert [p.name.split("-")[2] for p in (work / "storage" / "data").glob("*.pt")] == ["n50"]


def test_atomic_write_replaces_a_symlink_rather_than_following_it(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    link = tmp_path / "d" / "f.txt"
    link.parent.mkdir()
    os.symlink(target, link)
    atomic_write_text(link, "new")
    assert target.read_text() == "keep" and not link.is_symlink() and link.read_text() == "new"
    assert sorted(os.listdir(link.parent)) == ["f.txt"]
