"""What this machine offers a run, and how a measurement names it: the cores this process may use
(not the machine's count) and the one header line every benchmark prints. No torch here."""

from __future__ import annotations

import os
import platform
from datetime import date
from importlib import metadata


def usable_cores() -> int:
    """The cores this process may run on (taskset, a container's CPU set), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


def machine_line(what: str, packages: tuple[str, ...] = ("torch",)) -> str:
    """`what: DATE, ARCH N usable cores (of M), torch X`: the header of a benchmark's figures."""
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} absent")
    return (f"{what}: {date.today()}, {platform.machine()} {usable_cores()} usable cores (of {os.cpu_count()}), "
            + ", ".join(versions))
