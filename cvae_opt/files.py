"""Files: atomic writes (a crash or a full disk leaves the old file, or none, never half a file) and
YAML reading with one error line for a malformed file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import yaml

from .errors import UserError, clipped


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def check_out_path(path: Path | str) -> Path:
    """`path` as a Path if a file can be written there: a folder, or a folder path running through a
    file, is one UserError (commands call it on --out before any work; `atomic_write` calls it too)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file path")
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise UserError(f"{path}: {blocking} is a file, not a folder; give a file path in a folder")
    return path


def file_in_the_way(path: Path | str) -> Path | None:
    """The nearest existing ancestor folder of `path` when it is a file (so `path` can never be made), else None."""
    folder = Path(path).parent
    while str(folder) not in ("", ".") and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder if folder.exists() and not folder.is_dir() else None


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write` on a temporary file beside `path`, fsync it, then rename it over `path`. The temporary
    file has a random name and is created exclusively (mkstemp: O_CREAT | O_EXCL, which refuses to follow
    a symlink planted there), and the rename replaces whatever is at `path`, a symlink included, rather than
    writing through it: a link left at a report's history.html is replaced, its target untouched."""
    path = check_out_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


YAML_MAX_BYTES = 1_000_000  # a study or config file is a few kB; anything past 1 MB is refused unread
YAML_MAX_EXPANDED = 10_000_000  # nodes plus scalar characters, every alias counted at its full size


def read_yaml(path: Path | str, what: str = "file") -> Any:
    """A YAML file's content; a missing file or a syntax error is one UserError with its line and column.
    Sizes are checked before memory is spent: a file over 1 MB is refused before it is read, and one whose
    aliases (`*name`, "billion laughs") would expand it past 10 million nodes and characters, or that
    refers to itself, before anything is built from it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    with open(path, "rb") as fh:
        data = fh.read(YAML_MAX_BYTES + 1)
    return parse_yaml(data, path, what)


def parse_yaml(data: bytes | str, path: Path | str, what: str = "file") -> Any:
    """`read_yaml` for text already in memory (a study file recorded in a storage), with the same size
    checks; `path` names it in the messages."""
    if len(data) > YAML_MAX_BYTES:
        raise UserError(f"{path}: a {what} may hold at most {YAML_MAX_BYTES:,} bytes; this one is larger")
    loader = None
    try:
        loader = yaml.SafeLoader(data)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if isinstance(exc, yaml.reader.ReaderError):  # not text: a bad byte or character
            decoding = exc.encoding not in (None, "unicode")
            at = f" at {'byte' if decoding else 'character'} {exc.position}"
            problem = f"not {exc.encoding} text ({exc.reason})" if decoding else \
                f"unacceptable character #x{exc.character:04x}"
        else:
            problem = getattr(exc, "problem", None) or exc
        raise UserError(f"{path}: malformed YAML{at}: {clipped(' '.join(str(problem).split()), 200)}") from None
    except RecursionError:
        raise UserError(f"{path}: malformed YAML: nested too deeply") from None
    except ValueError as exc:  # a value YAML parses but Python refuses (an int of 5,000 digits)
        first = (str(exc).splitlines() or [type(exc).__name__])[0].partition(";")[0]
        raise UserError(f"{path}: malformed YAML: {clipped(first, 120)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_expansion(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose expanded size (nodes plus scalar characters, each alias counted in full)
    passes YAML_MAX_EXPANDED, or that holds itself. Aliases are the same node object, so each distinct
    node is sized once (memoised), in time linear in the file."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            size[key] = 1 + len(node.value)
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
        if done:
            open_.discard(key)
            size[key] = total = 1 + sum(size[id(c)] for c in children)
            if total > YAML_MAX_EXPANDED:
                raise UserError(f"{path}: its aliases (*name) expand it past {YAML_MAX_EXPANDED:,} nodes and "
                                "characters; write the values out instead of nesting aliases")
            continue
        if key in size:
            continue
        if key in open_:
            mark = node.start_mark
            raise UserError(f"{path}: an alias at line {mark.line + 1} refers to a node that holds it "
                            "(a recursive structure); write the values out")
        open_.add(key)
        stack.append((node, True))
        for c in children:
            if id(c) in open_:
                mark = c.start_mark
                raise UserError(f"{path}: an alias refers to the node at line {mark.line + 1} that holds it "
                                "(a recursive structure); write the values out")
            if id(c) not in size:
                stack.append((c, False))
