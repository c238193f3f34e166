"""What every hostile-input test asserts of a refused command: exit 2, one `error:` line naming the
problem, no traceback, no ANSI escapes or unsafe advice, and no code from the file run."""

from __future__ import annotations

import os
import subprocess
import sys


def cli(module, *args, cwd, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CVAE_OPT_STORAGE")}
    env["OMP_NUM_THREADS"] = "1"
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", f"cvae_opt.{module}", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def refused(r, cwd, *expect):
    """Exit 2, one `error:` line holding every `expect`, no traceback, nothing imported or printed by it."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert "\x1b" not in r.stderr, "ANSI escape in the message"
    assert "weights_only=False" not in r.stderr and "weights_only = False" not in r.stderr
    assert not (cwd / "marker.txt").exists(), "code from the file ran"
    assert "tensor(" not in r.stdout, "builtins:print was called"
    for e in expect:
        assert e in lines[0], r.stderr
    return lines[0]
