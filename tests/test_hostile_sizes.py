"""Sizes are checked before memory is spent (issue 27): a 2 KB `.pt` holding a stride-0 view that claims a
billion rows, a 600-byte "billion laughs" study file (aliases nested 9 deep) and `generate --samples
10000000` are each refused with one `error:` line and exit 2, no traceback, within a small memory bound,
and stored files are left as they were. Real processes, cwd a temporary folder, each under a 4 GB
address-space limit (RLIMIT_AS) so that a regression fails instead of taking the machine's memory; the
child's peak resident memory is read with getrusage(RUSAGE_CHILDREN) in a wrapper process of its own.
No training: the checkpoint is an untrained model."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

from cvae_opt.checkpoints import save_checkpoint
from cvae_opt.config import Config
from cvae_opt.errors import UserError, shown
from cvae_opt.files import YAML_MAX_BYTES, read_yaml
from cvae_opt.models import build_model
from cvae_opt.problems import TWO_BIRDS

ADDRESS_LIMIT = 4 * 1024**3  # the hard guard: an allocation past it fails at once
PEAK_LIMIT_MB = 1500  # what a refused command may use at most (torch and the model: about 300 MB)
SMALL = {"latent": 2, "hidden": 16, "prior_hidden": 16, "channels": [4], "kernels": [5]}

# runs the command under RLIMIT_AS and prints its exit status, output and peak RSS as JSON
WRAPPER = """\
import json, resource, subprocess, sys
limit = int(sys.argv[1])
def guard():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
r = subprocess.run(sys.argv[2:], capture_output=True, text=True, preexec_fn=guard, timeout=120)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "peak_mb": peak}))
"""


def cli(module, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-c", WRAPPER, str(ADDRESS_LIMIT), sys.executable, "-m", f"cvae_opt.{module}", *map(str, args)]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def refused(r, *expect):
    """Exit 2, one `error:` line holding every `expect`, no traceback, peak memory within the bound."""
    lines = r["stderr"].strip().splitlines()
    assert r["rc"] == 2, r["stderr"][-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r["stderr"][-3000:]
    assert "Traceback" not in r["stderr"] + r["stdout"]
    assert r["peak_mb"] < PEAK_LIMIT_MB, f"peak {r['peak_mb']:.0f} MB"
    for e in expect:
        assert e in lines[0], lines[0]
    assert len(lines[0]) < 600, lines[0]
    return lines[0]


@pytest.fixture
def cwd(tmp_path):
    expanded = torch.zeros(1).expand(10**9, 1, 50, 2)  # 400 GB claimed, 4 bytes stored
    torch.save(TensorDataset(expanded, expanded), tmp_path / "laughs.pt")
    assert (tmp_path / "laughs.pt").stat().st_size < 4000
    x = torch.rand(1, 1, 50, 2) * 0.9 + 0.1
    torch.save(TensorDataset(x, torch.cos(x)), tmp_path / "one.pt")
    cfg = Config.from_dict({"model": SMALL})
    save_checkpoint(tmp_path / "model.pt", build_model(cfg.model, TWO_BIRDS), cfg)
    (tmp_path / "out.pt").write_bytes(b"an earlier submission")
    # a valid study whose description is 9 levels of 9 aliases: 9**9 strings once expanded
    lines = ["description:", "  - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  - &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    (tmp_path / "laughs.yaml").write_text("\n".join(lines) + "\nobjective: {metric: score}\nsampler: tpe\n"
                                          "search: {lr: {type: float, low: 1.0e-4, high: 1.0e-2}}\n")
    assert (tmp_path / "laughs.yaml").stat().st_size < 1000
    return tmp_path


STRIDE0 = ("laughs.pt: tensor 0 (x) of shape (1000000000, 1, 50, 2) is a view of 4 bytes of storage "
           "(expanded or overlapping)", "save real data (tensor.contiguous())")


def test_stride0_pairs_file_refused_by_generate(cwd):
    r = cli("generate", "--checkpoint", "model.pt", "--conditions", "laughs.pt", "--samples", 3, "--out", "out.pt", cwd=cwd)
    refused(r, *STRIDE0)
    assert (cwd / "out.pt").read_bytes() == b"an earlier submission"


def test_stride0_pairs_file_refused_by_evaluate(cwd):
    refused(cli("evaluate", "--submission", "laughs.pt", "--problem", "two_birds", cwd=cwd), *STRIDE0)
    refused(cli("evaluate", "--submission", "two_birds:submission-sample", "--truth", "laughs.pt", cwd=cwd), *STRIDE0)


def test_billion_laughs_study_refused(cwd):
    r = cli("run", "--study", "laughs.yaml", "--storage", "sqlite:///s.db", "--trials", 1, cwd=cwd)
    refused(r, "laughs.yaml: its aliases (*name) expand it past 10,000,000 nodes and characters")
    assert not (cwd / "s.db").exists()


def test_generate_refuses_output_past_its_limit(cwd):
    r = cli("generate", "--checkpoint", "model.pt", "--conditions", "one.pt", "--samples", 10_000_000, "--out", "out.pt",
            cwd=cwd)
    refused(r, "1 conditions x 10,000,000 samples of shape (50, 2) need about 4.0 GB, over the limit of 2 GB",
            "--max-output-gb")
    assert (cwd / "out.pt").read_bytes() == b"an earlier submission"
    r = cli("generate", "--checkpoint", "model.pt", "--conditions", "one.pt", "--samples", 2000, "--oversample", 100,
            "--refine", 1, "--max-output-gb", 0.05, "--out", "out.pt", cwd=cwd)
    refused(r, "x 100 oversampled", "about 80.0 MB, over the limit of 0.05 GB")
    # raised, it draws: 1 condition x 200,000 samples (80 MB), decoded in batches
    r = cli("generate", "--checkpoint", "model.pt", "--conditions", "one.pt", "--samples", 200_000, "--out", "out.pt",
            "--max-output-gb", 0.5, cwd=cwd)
    assert r["rc"] == 0, r["stderr"]
    assert r["peak_mb"] < PEAK_LIMIT_MB, r["peak_mb"]
    assert (cwd / "out.pt").stat().st_size > 80_000_000


# -- in-process: nothing here can take much memory --------------------------------------------------
def test_generator_sample_limit():
    from cvae_opt.api import Generator

    cfg = Config.from_dict({"model": SMALL})
    gen = Generator(build_model(cfg.model, TWO_BIRDS), cfg, TWO_BIRDS)
    y = torch.cos(torch.rand(2, 50, 2))
    expect = r"2 conditions x 30 samples of shape \(50, 2\) need about 24,000 bytes.*max_output_bytes="
    with pytest.raises(UserError, match=expect):
        gen.sample(y, 30, max_output_bytes=10_000)
    assert gen.sample(y, 30, max_output_bytes=24_000).x.shape == (2, 30, 50, 2)
    assert gen.sample(y, 30, max_output_bytes=None).x.shape == (2, 30, 50, 2)


def test_yaml_bounds(tmp_path):
    cases = {
        "recursive.yaml": ("a: &x [1, *x]\n", "refers to the node at line 1 that holds it"),
        "deep.yaml": ("[" * 5000 + "]" * 5000, "nested too deeply"),
        "bigint.yaml": ("a: " + "9" * 6000 + "\n", "malformed YAML: Exceeds the limit (4300 digits)"),
        "binary.yaml": (b"a: \xff\xfe\x00", "malformed YAML at byte 3: not utf-8 text"),
        "large.yaml": ("a: '" + "x" * YAML_MAX_BYTES + "'\n", "may hold at most 1,000,000 bytes"),
    }
    for name, (text, message) in cases.items():
        f = tmp_path / name
        f.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(UserError) as exc:
            read_yaml(f, "study file")
        assert message in str(exc.value) and "\n" not in str(exc.value), (name, str(exc.value))
    (tmp_path / "anchors.yaml").write_text("base: &b {lr: 0.001}\nthis: *b\nthose: [*b, *b]\n")  # modest aliases load
    assert read_yaml(tmp_path / "anchors.yaml") == {"base": {"lr": 0.001}, "this": {"lr": 0.001}, "those": [{"lr": 0.001}] * 2}


def test_quoted_values_are_shortened(tmp_path):
    from cvae_opt.studies import load_study_file

    assert shown("cvae") == "'cvae'" and shown(0.5) == "0.5" and shown([1, 2]) == "[1, 2]"
    assert len(shown("x" * 10**6)) <= 80 and len(shown(10**3000)) <= 80 and len(shown([[[[[[0]]]]]] * 10**5)) <= 80
    f = tmp_path / "long.yaml"
    f.write_text("objective: {metric: " + "m" * 500_000 + "}\nsampler: tpe\nsearch: {lr: {type: float, low: 1, high: 2}}\n")
    with pytest.raises(UserError, match=r"objective.metric: unknown metric 'mmm+\.\.\.") as exc:
        load_study_file(str(f))
    assert "m" * 80 not in str(exc.value)
    f.write_text("objective: {metric: score}\nsampler: tpe\nsearch: {" + "k" * 1000 + ": {type: float, low: 1, high: 2}}\n")
    with pytest.raises(UserError, match=r"search\.kkk+\.\.\.: not a config key") as exc:
        load_study_file(str(f))
    assert "k" * 120 not in str(exc.value)


def test_loaded_tensors_checked_before_any_copy(tmp_path):
    from cvae_opt.data import load_pairs

    x = torch.rand(4, 1, 50, 2)
    checks = {
        "ints.pt": (TensorDataset(x.long(), x), "tensor 0 (x) has dtype torch.int64, expected a floating-point tensor"),
        "sparse.pt": (TensorDataset(x, x.reshape(4, 100).to_sparse()), "tensor 1 (y) is a sparse_coo tensor"),
        "overlap.pt": (TensorDataset(x, torch.rand(1, 1, 1, 2).expand(4, 1, 50, 2)),
                       "tensor 1 (y) of shape (4, 1, 50, 2) is a view of 8 bytes of storage (expanded or overlapping), "
                       "not the 1,600 its shape needs"),
        "nontensor.pt": ([x, "y"], "tensor 1 (y) is a str, expected a tensor"),
    }
    for name, (obj, message) in checks.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(UserError) as exc:
            load_pairs(tmp_path / name)
        assert message in str(exc.value), (name, str(exc.value))
    # a real view (a slice of a stored tensor) is fine
    torch.save(TensorDataset(x[:2], torch.cos(x)[:2]), tmp_path / "slice.pt")
    assert load_pairs(tmp_path / "slice.pt").x.shape == (2, 50, 2)
