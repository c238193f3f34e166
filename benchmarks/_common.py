"""Shared by the benchmark scripts: the header line naming date, machine (usable cores) and versions."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvae_opt.machine import machine_line, usable_cores  # noqa: E402,F401
