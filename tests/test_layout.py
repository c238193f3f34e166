"""The package's layers point one way: command modules use library modules, never each other; library
modules never import a command. Reading a study or config file needs no torch."""

import ast
import subprocess
import sys
from pathlib import Path

from cvae_opt.__main__ import COMMANDS, module_name

PACKAGE = Path(__file__).resolve().parents[1] / "cvae_opt"


def imports_of(path: Path) -> set[str]:
    """cvae_opt modules a file imports (at any depth in the file, lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("cvae_opt."):
                out.add(node.module.split(".")[1])
            elif node.module == "cvae_opt":
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("cvae_opt."))
    return out


def test_commands_and_library_modules_point_one_way():
    modules = {p.stem: imports_of(p) for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    commands = {module_name(c) for c in COMMANDS}
    assert commands <= set(modules), commands - set(modules)
    wrong = {m: sorted(deps & commands) for m, deps in modules.items() if deps & commands}
    assert not wrong, f"modules importing a command module: {wrong}"
    # `from cvae_opt import NAME` is never ambiguous between an API call and a command module
    import cvae_opt

    assert not set(cvae_opt.__all__) & commands
    # the dispatcher only reaches commands by name
    assert imports_of(PACKAGE / "__main__.py") <= {"cli"}


def test_reading_configs_and_study_files_needs_no_torch():
    code = ("import sys; from cvae_opt.studies import load_study; from cvae_opt.config import Config; "
            "load_study('cvae_re'); Config.from_yaml_file('studies/best/cvae_re.yaml'); "
            "print(sorted(m for m in ('torch', 'optuna', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
