"""Shared by the benchmark scripts: a header line naming date, machine and versions."""

from __future__ import annotations

import os
import platform
from datetime import date

import torch


def machine_line(what: str) -> str:
    return f"{what}: {date.today()}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
