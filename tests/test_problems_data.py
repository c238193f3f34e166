import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from cvae_opt.data import Pairs, load_pairs, make_pairs, problem_fingerprint, draw_models, save_pairs
from cvae_opt.errors import UserError
from cvae_opt.metrics import enumerate_solutions
from cvae_opt.problems import TWO_BIRDS, ends_from_unit, resolve_problem, unit_from_ends


def ends(x):
    return torch.stack([x[:, 0, 0], x[:, -1, 0], x[:, 0, 1], x[:, -1, 1]], dim=1)


def test_two_birds_formula():
    x = torch.rand(7, 50, 2, dtype=torch.float64)
    y = TWO_BIRDS(x)
    assert y.shape == (7, 50, 2)
    assert torch.allclose(y[..., 0], torch.cos(49 * x[..., 0] + 42 * x[..., 1]))
    assert torch.allclose(y[..., 1], torch.cos(56 * x[..., 0] + 63 * x[..., 1]))
    assert TWO_BIRDS(torch.rand(3, 4, 50, 2)).shape == (3, 4, 50, 2)  # any leading batch shape


def test_generator_reproduces_the_challenge_distribution(challenge):
    x = draw_models(TWO_BIRDS, 200_000, torch.Generator().manual_seed(0)).double()
    e = ends(x).numpy()
    s0, e0, s1, e1 = e.T
    assert e.min() >= 0.1 and e.max() <= 1.0
    assert (s0 >= e0).all() and (e1 >= s1).all()  # x0 descends, x1 ascends
    t = torch.linspace(0, 1, 50, dtype=torch.float64)
    line = ends(x)[:, [0, 2]].unsqueeze(1) + (ends(x)[:, [1, 3]] - ends(x)[:, [0, 2]]).unsqueeze(1) * t[:, None]
    assert (x - line).abs().max() < 1e-6  # exactly straight
    # x0 end ~ U(0.1, 1); x1 start ~ U(0.1, 1)
    for v in (e0, s1):
        assert abs(v.mean() - 0.55) < 0.005 and abs(v.std() - 0.9 / 12**0.5) < 0.005
    # start/end correlate at about 0.66, the channels are independent
    assert abs(np.corrcoef(s0, e0)[0, 1] - 0.66) < 0.02
    assert abs(np.corrcoef(s1, e1)[0, 1] - 0.66) < 0.02
    assert abs(np.corrcoef(s0, s1)[0, 1]) < 0.01
    # and it matches the challenge's own validation file
    v = ends(load_pairs(challenge / "validation_dataset.pt", TWO_BIRDS).x.double()).numpy()
    for j in range(4):
        assert abs(v[:, j].mean() - e[:, j].mean()) < 0.02
        assert abs(v[:, j].std() - e[:, j].std()) < 0.02


def test_make_pairs_is_seeded_cached_and_noisy(tmp_path):
    a = make_pairs(TWO_BIRDS, 500, seed=3, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and "two_birds" in files[0].name and "n500" in files[0].name and "seed3" in files[0].name
    b = make_pairs(TWO_BIRDS, 500, seed=3, cache_dir=tmp_path)  # from the cache
    c = make_pairs(TWO_BIRDS, 500, seed=3, cache_dir=None)  # recomputed
    assert torch.equal(a.x, b.x) and torch.equal(a.x, c.x) and torch.equal(a.y, c.y)
    assert not torch.equal(a.x, make_pairs(TWO_BIRDS, 500, seed=4, cache_dir=None).x)
    assert (TWO_BIRDS(a.x.double()) - a.y).abs().max() < 1e-6
    noisy = make_pairs(TWO_BIRDS, 500, seed=3, noise=0.1, cache_dir=tmp_path)
    assert torch.equal(noisy.x, a.x)
    assert abs(float((noisy.y - a.y).std()) - 0.1) < 0.01
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_the_cache_is_read_and_an_edited_forward_function_gets_fresh_data(tmp_path, monkeypatch):
    a = make_pairs(TWO_BIRDS, 300, seed=5, cache_dir=tmp_path)
    (f,) = tmp_path.glob("*.pt")
    # the cached file is what the next call returns: mark it, and the mark comes back (no recomputation)
    save_pairs(f, Pairs(a.x, a.y + 1.0))
    assert torch.equal(make_pairs(TWO_BIRDS, 300, seed=5, cache_dir=tmp_path).y, a.y + 1.0)

    # a user's forward function edited under the same import path: new y, a new cache file
    (tmp_path / "mine.py").write_text("import torch\ndef forward(x):\n    return torch.cos(9 * x[..., :1] + 5 * x[..., 1:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    old = make_pairs(resolve_problem("mine:forward"), 300, seed=5, cache_dir=tmp_path / "c")
    (tmp_path / "mine.py").write_text("import torch\ndef forward(x):\n    return torch.cos(9 * x[..., :1] - 5 * x[..., 1:])\n")
    import importlib
    import sys

    importlib.reload(sys.modules["mine"])
    edited = resolve_problem("mine:forward")
    new = make_pairs(edited, 300, seed=5, cache_dir=tmp_path / "c")
    assert torch.equal(new.x, old.x) and not torch.allclose(new.y, old.y)
    assert (edited(new.x.double()) - new.y).abs().max() < 1e-6  # y is what the edited function computes
    assert len(list((tmp_path / "c").glob("mine_forward-*.pt"))) == 2
    # the key is stable for one function and differs between functions
    assert problem_fingerprint(edited) == problem_fingerprint(resolve_problem("mine:forward"))
    assert problem_fingerprint(edited) != problem_fingerprint(TWO_BIRDS)


@pytest.mark.parametrize("name", ["scoring_dataset.pt", "validation_dataset.pt"])
def test_loader_reads_challenge_pairs(challenge, name):
    p = load_pairs(challenge / name, TWO_BIRDS)
    assert p.x.shape[1:] == (50, 2) and p.y.shape == p.x.shape
    assert (TWO_BIRDS(p.x.double()) - p.y.double()).abs().max() < 1e-4


def test_loader_reads_the_submission_sample(challenge):
    p = load_pairs(challenge / "two-birds-submission-sample.pt", TWO_BIRDS)
    assert p.x.shape == (1500, 50, 2)
    # its x are generated, not true; but every given y is two_birds of some exact line pair
    given = torch.unique(p.y.flatten(1), dim=0).view(-1, 50, 2)
    assert len(given) == 50
    sols = enumerate_solutions(TWO_BIRDS, given)
    for g, s in zip(given, sols):
        assert len(s) >= 1
        assert (TWO_BIRDS(torch.tensor(s)) - g.double()).abs().max(dim=-1).values.max(dim=-1).values.min() < 1e-4


def test_flattened_y_is_row_major(tmp_path, challenge):
    p = load_pairs(challenge / "scoring_dataset.pt", TWO_BIRDS)
    f = tmp_path / "flat.pt"
    torch.save(TensorDataset(p.x.unsqueeze(1), p.y.reshape(len(p), 100)), f)
    q = load_pairs(f, TWO_BIRDS)
    assert torch.equal(q.y, p.y)


def test_save_and_load_round_trip(tmp_path):
    p = make_pairs(TWO_BIRDS, 64, seed=1, cache_dir=None)
    f = save_pairs(tmp_path / "d.pt", p)
    raw = torch.load(f, weights_only=False)
    assert isinstance(raw, TensorDataset) and raw.tensors[0].shape == (64, 1, 50, 2)
    q = load_pairs(f, TWO_BIRDS)
    assert torch.equal(p.x, q.x) and torch.equal(p.y, q.y)


class Evil:
    def __reduce__(self):
        return (Path.touch, (Path(EVIL_MARK),))


EVIL_MARK = "/nonexistent"


def bad_files(tmp_path):
    global EVIL_MARK
    x = torch.rand(4, 1, 50, 2)
    cases = {}
    f = tmp_path / "dict.pt"
    torch.save({"x": x}, f)
    cases["dict"] = (f, "holds a dict")
    f = tmp_path / "shape.pt"
    torch.save(TensorDataset(torch.rand(4, 1, 49, 2), x), f)
    cases["shape"] = (f, "shape (4, 1, 49, 2)")
    f = tmp_path / "three.pt"
    torch.save(TensorDataset(x, x, x), f)
    cases["three"] = (f, "3 tensors")
    f = tmp_path / "nan.pt"
    y = x.clone()
    y[2, 0, 5, 1] = float("nan")
    torch.save(TensorDataset(x, y), f)
    cases["nan"] = (f, "NaN")
    f = tmp_path / "garbage.pt"
    f.write_bytes(b"this is not a torch file")
    cases["garbage"] = (f, "not a readable torch file")
    EVIL_MARK = str(tmp_path / "payload-ran")
    f = tmp_path / "evil.pt"
    with open(f, "wb") as fh:
        pickle.dump(Evil(), fh)
    cases["evil"] = (f, "refused")
    return cases


@pytest.mark.parametrize("case", ["dict", "shape", "three", "nan", "garbage", "evil"])
def test_bad_files_are_refused_with_one_line(tmp_path, case):
    f, expect = bad_files(tmp_path)[case]
    with pytest.raises(UserError) as e:
        load_pairs(f, TWO_BIRDS)
    msg = str(e.value)
    assert str(f) in msg and expect in msg and "\n" not in msg
    assert not (tmp_path / "payload-ran").exists()


def test_unit_map_round_trip_and_box():
    u = torch.rand(1000, 4, dtype=torch.float64)
    e = ends_from_unit(u, (0.1, 1.0), (-1, 1))
    assert e.min() >= 0.1 and e.max() <= 1.0
    assert (e[:, 0] >= e[:, 1]).all() and (e[:, 3] >= e[:, 2]).all()
    assert torch.allclose(unit_from_ends(e, (0.1, 1.0), (-1, 1)), u, atol=1e-6)


def write_module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def test_user_problems_resolve_and_are_checked(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "myprobs", """
        import numpy as np
        import torch
        from cvae_opt.problems import LineProblem

        def one(x):
            return torch.sin(7 * x[..., :1] + 3 * x[..., 1:])

        def three(x):
            return torch.stack([torch.cos(49 * x[..., 0] + 42 * x[..., 1]), torch.cos(56 * x[..., 0] + 63 * x[..., 1]),
                                x[..., 0] * x[..., 1]], dim=-1)

        def flat(x):
            return x.sum(-1)

        def numpy_one(x):
            return torch.as_tensor(np.cos(x.detach().numpy()))

        BOXED = LineProblem("boxed", one, 1, box=(0.2, 0.8))
    """)
    assert resolve_problem("myprobs:one").k == 1
    assert resolve_problem("myprobs:three").k == 3
    assert resolve_problem("myprobs:BOXED").box == (0.2, 0.8)
    for spec, expect in [
        ("myprobs:flat", r"expected \(2, 3, 50, k\)"),
        ("myprobs:numpy_one", "without gradient"),
        ("myprobs:missing", "has no attribute"),
        ("no_such_module_xyz:f", "cannot import module"),
        ("nonsense", "unknown problem"),
    ]:
        with pytest.raises(UserError, match=expect):
            resolve_problem(spec)


def test_the_challenge_files_ship_with_the_package_under_built_in_names(monkeypatch, tmp_path):
    import hashlib

    import cvae_opt.data as data

    monkeypatch.delenv("CVAE_OPT_CHALLENGE_DATA", raising=False)
    sizes = {"two_birds:scoring": 50, "two_birds:validation": 3000, "two_birds:submission-sample": 1500}
    for name, n in sizes.items():
        path = data.resolve_data_path(name)
        assert path.parent == data.CHALLENGE_DIR and path.is_file()
        assert len(load_pairs(name, TWO_BIRDS)) == n
    # byte for byte the public starter kit's files (checksums in the README beside them)
    readme = (data.CHALLENGE_DIR / "README.md").read_text()
    for f in data.CHALLENGE_FILES.values():
        assert hashlib.sha256((data.CHALLENGE_DIR / f).read_bytes()).hexdigest() + "  " + f in readme
    with pytest.raises(UserError, match="unknown built-in data 'two_birds:scoring_dataset'; use one of two_birds:scoring"):
        load_pairs("two_birds:scoring_dataset", TWO_BIRDS)
    # the override: another folder with files of the same names
    sub = load_pairs("two_birds:scoring", TWO_BIRDS)
    save_pairs(tmp_path / "scoring_dataset.pt", type(sub)(sub.x[:3], sub.y[:3]))
    monkeypatch.setenv("CVAE_OPT_CHALLENGE_DATA", str(tmp_path))
    assert len(load_pairs("two_birds:scoring", TWO_BIRDS)) == 3
    with pytest.raises(UserError, match="CVAE_OPT_CHALLENGE_DATA names a folder without it"):
        load_pairs("two_birds:validation", TWO_BIRDS)
