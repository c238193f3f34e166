"""Which torch device a run uses: names checked against the machine, workers spread over GPUs."""

from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """auto, cpu, cuda or cuda:N -> a device this machine has; anything else is one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for, but torch sees no CUDA device; use --device cpu or auto")
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            raise UserError(
                f"device {name!r} asked for, but this machine has {n} CUDA device{'s' if n > 1 else ''} "
                f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''}); use one of those, or cuda / auto"
            )
    elif device.type != "cpu":
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bfloat16 matrices in hardware: a CUDA GPU that supports it, a CPU with
    AMX tiles or AVX512-BF16 (elsewhere bfloat16 products are emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, probe, lambda: False)()) for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def resolve_precision(name: str, device: torch.device) -> str:
    """`train.precision` for this run: fp32 or bf16 as given; auto is bf16 where the device multiplies it in
    hardware (`native_bf16`), else fp32. Results then depend on the machine as they do on the thread count."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name


def worker_device(name: str, worker: int, n_cuda: int) -> str:
    """The device of worker `worker` of a multi-process study: with several GPUs, `auto` and `cuda`
    spread the workers over them (worker i on cuda:(i mod n)); an explicit device is kept."""
    if name in ("auto", "cuda") and n_cuda > 1:
        return f"cuda:{worker % n_cuda}"
    return name
