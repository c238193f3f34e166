"""Training pairs: synthetic draws from the challenge's prior, and the challenge's TensorDataset files.

Inside the package x is (N, *x_shape) ((N, n_points, 2) for line pairs) and y is (N, n_points, k); line
files use the challenge layout (N, 1, n_points, 2|k), field problems' files (N, *x_shape) and (N, n_points, k). Files are pickles, so they are loaded with `weights_only=True` and only
TensorDataset is allowed through: a hostile file is refused before any of its code can run. Each loaded
tensor is checked (dense, floating point, a storage holding all its elements: `check_stored_tensor`) before
any operation on it, so a stride-0 view claiming a billion rows is refused before it can take the memory.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .config import DEFAULT_CACHE_DIR, DataConfig
from .errors import UserError
from .files import atomic_write
from .families import family_of
from .problems import BENCHMARK_TASKS, Problem
CHALLENGE_DIR = Path(__file__).resolve().parent / "challenge_data"  # shipped with the package
CHALLENGE_FILES = {
    "two_birds:scoring": "scoring_dataset.pt",
    "two_birds:validation": "validation_dataset.pt",
    "two_birds:submission-sample": "two-birds-submission-sample.pt",
}


# held-out synthetic test sets of the built-in field problems: drawn from the prior with their own seed
# (never a training or validation seed), written to the cache on first use; the targets are measured on them
HELD_OUT = {
    "gravity2d:test": ("gravity2d", 50, 777_000_001),
    "gravity2d_blocks:test": ("gravity2d_blocks", 50, 777_000_002),
    "gravity2d_32x64:test": ("gravity2d_32x64", 50, 777_000_003),
    "gravity2d_32x64_blocks:test": ("gravity2d_32x64_blocks", 50, 777_000_004),
}
# the benchmark tasks' ten observations with their true parameters (cvae_opt/benchmark_data, sbibm's own):
# the conditions its C2ST figures are computed on, never training or validation data
TASK_OBSERVATIONS = {f"{name}:observations": name for name in BENCHMARK_TASKS}
HELD_OUT_PREFIXES = tuple(sorted({k.partition(":")[0] + ":" for k in [*HELD_OUT, *TASK_OBSERVATIONS]}))


def challenge_dir() -> Path:
    """The folder of the challenge files: CVAE_OPT_CHALLENGE_DATA if set, else the package's copy."""
    env = os.environ.get("CVAE_OPT_CHALLENGE_DATA")
    return Path(env) if env else CHALLENGE_DIR


def resolve_data_path(name: Path | str) -> Path:
    """A built-in name (`two_birds:scoring`, ...) -> its file; any other name is a path. Users never
    have to type a path into the installed package."""
    text = str(name)
    if text in CHALLENGE_FILES:
        return challenge_dir() / CHALLENGE_FILES[text]
    if text in HELD_OUT:
        from .problems import resolve_problem

        problem_name, n, seed = HELD_OUT[text]
        problem = resolve_problem(problem_name)
        make_pairs(problem, n, seed)
        return cache_file(problem, n, seed, problem.noise, DEFAULT_CACHE_DIR)
    if text in TASK_OBSERVATIONS:
        from .benchmark_tasks import observations

        path = Path(DEFAULT_CACHE_DIR) / f"{TASK_OBSERVATIONS[text]}-observations.pt"
        if not path.is_file():
            theta, y = observations(TASK_OBSERVATIONS[text])
            save_pairs(path, Pairs(theta, y.unsqueeze(-1)), challenge_layout=False)
        return path
    if text.startswith(("two_birds:",) + HELD_OUT_PREFIXES) and not Path(text).exists():
        names = ", ".join([*CHALLENGE_FILES, *HELD_OUT, *TASK_OBSERVATIONS])
        raise UserError(f"unknown built-in data {text!r}; use one of {names} or a file path")
    return Path(name)


@dataclass
class Pairs:
    x: torch.Tensor  # (N, *x_shape): (N, n_points, 2) for line pairs
    y: torch.Tensor  # (N, n_points, k)

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> "Pairs":
        return Pairs(self.x.to(device), self.y.to(device))

    @classmethod
    def from_samples(cls, x: torch.Tensor, y: torch.Tensor) -> "Pairs":
        """The challenge's submission layout of samples x (M, n, *x_shape) for y (M, P, k): rows
        (generated x, its given y), y by y, n rows each."""
        return cls(x.reshape(-1, *x.shape[2:]), repeat_rows(y.cpu(), x.shape[1]).contiguous())


def repeat_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """Each row of t repeated n times in place: (M, ...) -> (M * n, ...), row-major by the M rows."""
    return t.unsqueeze(1).expand(t.shape[0], n, *t.shape[1:]).reshape(t.shape[0] * n, *t.shape[1:])


def draw_models(
    problem: Problem, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """n models from the problem's prior (`draw_prior`: for line pairs, as the challenge draws them),
    drawn in `dtype` on the generator's device, returned as float32."""
    return problem.draw_prior(n, generator, dtype).float()


def noise_of(problem: Problem, noise: float) -> float:
    """The noise on synthetic y: the data config's when set, else the problem's own (0 for line pairs)."""
    return noise if noise > 0 else float(problem.noise)


def draw_pairs(problem: Problem, n: int, generator: torch.Generator, noise: float = 0.0) -> Pairs:
    """n fresh pairs from the prior, drawn on the generator's device (no cache, no copy): what
    `data.fresh` trains on, a new set every epoch."""
    noise = noise_of(problem, noise)
    x = draw_models(problem, n, generator, dtype=torch.float32)
    return Pairs(x, family_of(problem).simulate(problem, x, generator, noise))


def problem_fingerprint(problem: Problem) -> str:
    """What a problem computes, as a short hash: its declared shape and prior, and its forward values
    (to 9 significant digits) on a fixed batch of prior draws. Cached data keyed by it is never reused
    after a user edits their forward function, even under the same name."""
    gen = torch.Generator().manual_seed(20_211_116)
    x = draw_models(problem, 16, gen).double()
    y = family_of(problem).simulate(problem, x, gen).double().cpu().numpy()
    declared = family_of(problem).declared(problem)
    h = hashlib.sha256(repr(declared).encode())
    h.update(" ".join(np.format_float_scientific(v, precision=8) for v in y.ravel()).encode())
    return h.hexdigest()[:16]


def cache_file(problem: Problem, n: int, seed: int, noise: float, cache_dir: Path | str) -> Path:
    """Where `make_pairs` keeps its pairs: named by the problem, keyed by what it computes."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in problem.name)
    return Path(cache_dir) / f"{name}-{problem_fingerprint(problem)}-n{n}-seed{seed}-noise{noise:g}.pt"


def local_cache_dir(cache_dir: Path | str | None) -> str:
    """`cache_dir` when it lies inside the working folder's storage/ (symlinks followed), else the default
    storage/data: for a command that rebuilds pairs from a config it read from a file (`report`, from a
    checkpoint), which must not choose where this command writes."""
    if cache_dir is not None:
        storage = Path(DEFAULT_CACHE_DIR).parent.resolve()
        target = Path(cache_dir).resolve()
        if target == storage or storage in target.parents:
            return str(cache_dir)
    return DEFAULT_CACHE_DIR


def make_pairs(
    problem: Problem,
    n: int,
    seed: int,
    noise: float = 0.0,
    cache_dir: Path | str | None = DEFAULT_CACHE_DIR,
) -> Pairs:
    """Seeded synthetic pairs, cached by what the problem computes, size, seed and noise (None: no cache)."""
    noise = noise_of(problem, noise)
    path = None
    if cache_dir is not None:
        path = cache_file(problem, n, seed, noise, cache_dir)
        if path.exists():
            return load_pairs(path, problem)
    gen = torch.Generator().manual_seed(seed)
    x = draw_models(problem, n, gen)
    pairs = Pairs(x, family_of(problem).simulate(problem, x.double(), gen, noise).float())
    if path is not None:
        save_pairs(path, pairs, challenge_layout=family_of(problem).challenge_layout)
    return pairs


def load_training(d: DataConfig, problem: Problem) -> Pairs:
    """The training pairs a data config names: a file, else seeded synthetic draws (with `fresh`, the
    first epoch's draw: training replaces them every epoch, so they are not cached)."""
    if d.train_file:
        return load_pairs(d.train_file, problem)
    if d.fresh:
        return draw_pairs(problem, d.train_size, torch.Generator().manual_seed(d.seed), d.noise)
    return make_pairs(problem, d.training_pairs, d.seed, d.noise, d.cache_dir)


def load_validation(d: DataConfig, problem: Problem) -> Pairs:
    """The validation pairs: a file, else synthetic draws from a different seed than training, so the
    two never overlap."""
    if d.val_file:
        return load_pairs(d.val_file, problem)
    return make_pairs(problem, d.val_size, d.seed + 1_000_003, d.noise, d.cache_dir)


def load_data(d: DataConfig, problem: Problem) -> tuple[Pairs, Pairs]:
    """Training and validation pairs as a data config says (refused first if the problem cannot honour it)."""
    family_of(problem).check_data(d, problem)
    return load_training(d, problem), load_validation(d, problem)


def save_pairs(path: Path | str, pairs: Pairs, challenge_layout: bool = True) -> Path:
    """Write pairs atomically (temporary file, then rename): line pairs in the challenge layout (unless
    `challenge_layout` is False: the models of a family without it, as they are)."""
    path = Path(path)
    x, y = pairs.x.detach().cpu(), pairs.y.detach().cpu()
    if x.dim() == 3 and x.shape[-1] == 2 and challenge_layout:  # line pairs: the challenge layout
        x, y = x.unsqueeze(1), y.unsqueeze(1)
    ds = TensorDataset(x.contiguous(), y.contiguous())
    atomic_write(path, lambda fh: torch.save(ds, fh))
    return path


def _torch_load(path: Path) -> object:
    try:
        with torch.serialization.safe_globals([TensorDataset]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own text (ANSI codes, advice to load it with weights_only=False, which runs its code) is not shown
        raise UserError(
            f"{path}: refused to load: it holds code or objects that are not tensors; "
            "expected a TensorDataset of (x, y) saved with torch.save"
        ) from None
    except Exception as exc:
        raise UserError(
            f"{path}: not a readable torch file ({type(exc).__name__}); "
            "expected a TensorDataset of (x, y) saved with torch.save"
        ) from None


def check_stored_tensor(t: object, what: str) -> None:
    """What a tensor loaded from a file must be before any operation on it (a reshape, `.float()`,
    `isfinite`) could copy it: a dense floating-point tensor whose storage holds every element. A stride-0
    (`expand`ed) or overlapping view of a few bytes can claim any shape (a 1.7 KB file of 10**11
    elements), and materialising it would take all the memory; it is refused with one line."""
    if not isinstance(t, torch.Tensor):
        raise UserError(f"{what} is a {type(t).__name__}, expected a tensor")
    if t.layout != torch.strided:
        raise UserError(f"{what} is a {str(t.layout).removeprefix('torch.')} tensor; save a dense one (tensor.to_dense())")
    if not t.is_floating_point():
        raise UserError(f"{what} has dtype {t.dtype}, expected a floating-point tensor")
    needed = t.numel() * t.element_size()
    stored = t.untyped_storage().nbytes()
    if stored < needed:
        raise UserError(f"{what} of shape {tuple(t.shape)} is a view of {stored:,} bytes of storage (expanded or "
                        f"overlapping), not the {needed:,} its shape needs; save real data (tensor.contiguous())")


def _as_points(t: torch.Tensor, n_points: int, width: int | None, what: str, path: Path) -> torch.Tensor:
    """(N, 1, P, w), (N, P, w) or row-major flattened (N, P*w) / (N, 1, P*w) -> (N, P, w)."""
    shape = tuple(t.shape)
    expected = f"(N, 1, {n_points}, {width if width else 'k'})"
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    elif t.dim() == 3 and t.shape[1] == 1:
        t = t[:, 0]
        if width and t.shape[1] == n_points * width:
            t = t.reshape(-1, n_points, width)
    elif t.dim() == 2 and width and t.shape[1] == n_points * width:
        t = t.reshape(-1, n_points, width)  # the older flattened y: row-major over (P, w)
    if t.dim() != 3 or t.shape[1] != n_points or (width is not None and t.shape[2] != width) or t.shape[2] < 1:
        raise UserError(f"{path}: {what} has shape {shape}, expected {expected}")
    return t


def _as_field(t: torch.Tensor, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    """(N, *shape), (N, 1, *shape) or flattened (N, prod(shape)) -> (N, *shape)."""
    found = tuple(t.shape)
    size = int(np.prod(shape))
    if t.dim() == len(shape) + 2 and t.shape[1] == 1:
        t = t[:, 0]
    elif t.dim() == 2 and t.shape[1] == size:
        t = t.reshape(-1, *shape)
    if tuple(t.shape[1:]) != shape:
        raise UserError(f"{path}: x has shape {found}, expected (N, {', '.join(map(str, shape))})")
    return t


def load_pairs(path: Path | str, problem: Problem | None = None, n_points: int = 50) -> Pairs:
    """Read a challenge-format file (or a built-in name such as `two_birds:scoring`); refuse anything
    else with one line that says what was found."""
    path = resolve_data_path(path)
    if not path.is_file():
        if str(path).startswith(str(challenge_dir())) and os.environ.get("CVAE_OPT_CHALLENGE_DATA"):
            raise UserError(f"{path}: no such file; CVAE_OPT_CHALLENGE_DATA names a folder without it (unset it to use the shipped copy)")
        raise UserError(f"{path}: no such file")
    obj = _torch_load(path)
    tensors = getattr(obj, "tensors", None) if isinstance(obj, TensorDataset) else obj
    if not isinstance(tensors, (tuple, list)):
        what = f"a TensorDataset of {type(tensors).__name__}" if isinstance(obj, TensorDataset) else f"a {type(obj).__name__}"
        raise UserError(f"{path}: holds {what}, expected a TensorDataset of (x, y)")
    if len(tensors) != 2:
        raise UserError(f"{path}: holds {len(tensors)} tensors, expected 2 (x, y)")
    for i, t in enumerate(tensors):
        check_stored_tensor(t, f"{path}: tensor {i} ({'xy'[i]})")
    if problem is not None:
        n_points = problem.n_points
    if problem is not None and not family_of(problem).challenge_layout:
        x = _as_field(tensors[0], tuple(problem.x_shape), path)
        y = tensors[1]
        if y.dim() == 2 and problem.k == 1:
            y = y.unsqueeze(-1)
        y = _as_points(y, n_points, problem.k, "y", path)
    else:
        x = _as_points(tensors[0], n_points, 2, "x", path)
        y = _as_points(tensors[1], n_points, problem.k if problem is not None else None, "y", path)
    if x.shape[0] != y.shape[0]:
        raise UserError(f"{path}: x has {x.shape[0]} rows but y has {y.shape[0]}; expected one y per x")
    if x.shape[0] == 0:
        raise UserError(f"{path}: holds no pairs")
    for name, t in (("x", x), ("y", y)):
        bad = int((~torch.isfinite(t)).flatten(1).any(1).sum())
        if bad:
            raise UserError(f"{path}: {name} holds NaN or inf in {bad} of {t.shape[0]} rows; expected finite values")
    return Pairs(x.float().contiguous(), y.float().contiguous())
