"""The package's layers point one way: command modules (cvae_opt/commands/) use library modules and never
each other (their shared options live in commands/common.py); library modules never import a command;
the top-level modules named like commands only forward `python -m cvae_opt.NAME`. Reading a study or
config file needs no torch."""

import ast
import subprocess
import sys
from pathlib import Path

from cvae_opt.__main__ import COMMANDS, module_name

PACKAGE = Path(__file__).resolve().parents[1] / "cvae_opt"


def module_of(path: Path) -> str:
    """'workers', 'families.lines', 'commands.run' for a file of the package."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The package modules a file imports (at any depth in the file, lazy imports included), as dotted
    names relative to the package ('commands.common', 'families', 'api')."""
    here = module_of(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                if node.module:
                    out.add(".".join(target))
                else:
                    out.update(".".join(target + [a.name]) for a in node.names)
            elif node.module == "cvae_opt":
                out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("cvae_opt."):
                out.add(node.module.removeprefix("cvae_opt."))
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("cvae_opt.") for a in node.names if a.name.startswith("cvae_opt."))
    return out


def test_commands_and_library_modules_point_one_way():
    files = {module_of(p): p for p in PACKAGE.rglob("*.py") if "builtin_studies" not in p.parts}
    commands = {f"commands.{module_name(c)}" for c in COMMANDS}
    assert commands <= set(files), commands - set(files)
    forwarders = {module_name(c) for c in COMMANDS}
    assert forwarders <= set(files), forwarders - set(files)
    for name, path in files.items():
        deps = imports_of(path)
        if name in forwarders:  # python -m cvae_opt.run: nothing but the command and its runner
            assert deps == {f"commands.{name}", "commands.common"}, (name, deps)
            assert len(path.read_text().splitlines()) < 12, f"{name}.py should only forward"
        elif name in commands:
            wrong = {d for d in deps if d.startswith("commands") and d != "commands.common"}
            assert not wrong, f"command {name} imports another command: {wrong}"
        elif name not in ("__main__", "commands", "commands.common"):
            wrong = {d for d in deps if d == "commands" or d.startswith("commands.") or d in forwarders}
            assert not wrong, f"library module {name} imports a command: {wrong}"
    assert not {d for d in imports_of(files["commands.common"]) if d.startswith("commands")}
    # `from cvae_opt import NAME` is never ambiguous between an API call and a command module
    import cvae_opt

    assert not set(cvae_opt.__all__) & forwarders
    # the dispatcher only reaches commands by name
    assert imports_of(PACKAGE / "__main__.py") <= {"commands.common"}


def test_one_meaning_per_name():
    """The names a newcomer tripped on (issue 24) stay gone: one module per meaning."""
    names = {p.stem for p in PACKAGE.glob("*.py")}
    assert not names & {"plots", "evaluation", "runner", "sampling", "cli"}, names
    from cvae_opt import data, models, refine, studies

    assert not hasattr(models.CVAE, "generate") and not hasattr(refine, "generate_samples")
    assert not hasattr(data, "sample_lines") and not hasattr(studies, "load_study")
    from cvae_opt import problems

    assert not hasattr(problems, "AnyProblem") and not hasattr(problems.LineProblem, "is_lines")


def test_no_module_tests_a_kind_by_flag():
    """What differs between problem kinds is the family's and between latents the latent family's: no
    module outside them tests which kind it has."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "is_lines" not in text, path
        if path.name != "latents.py" and path.parent.name != "families" and path.name != "config.py":
            assert "latent_type ==" not in text and "has_gaussian" not in text, path


def test_reading_configs_and_study_files_needs_no_torch():
    code = ("import sys; from cvae_opt.studies import load_study_file; from cvae_opt.config import Config; "
            "load_study_file('cvae_re'); Config.from_yaml_file('studies/best/cvae_re.yaml'); "
            "print(sorted(m for m in ('torch', 'optuna', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
