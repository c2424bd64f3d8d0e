"""What the ``adpf`` command writes, and what it will not overwrite.

Every output is checked before any work (`check_output`): a folder where a file is expected, a
parent that is a file, a folder that cannot be written into (tried with a temporary file, as
root too), an output that is one of the command's inputs, and an existing file that is not what
the option writes (`OWN_OUTPUT`: an earlier CSV, JSON, patch figure or export of adpf's; an
empty file) are refused with one line. `write_output` writes atomically (a temporary file, then
``os.replace``); through a symbolic link it replaces the link's target and keeps the link; a
named pipe or a device (``/dev/stdout``) is written into as it is; ``-`` is standard output.
"""
from __future__ import annotations

import io
import json
import os
import stat
import sys
import tempfile
import re
import zipfile
from pathlib import Path
from typing import IO, Callable, Iterable

from adpf.checkpoint import atomic_write

#: The name that means standard output (``--csv -``, ``--json -``).
STDOUT = "-"

#: The marker adpf writes into its patch figures (PNG text, PDF and SVG metadata, JPEG comment).
FIGURE_MARK = "adpf predict --save-patches"


class OutputRefused(ValueError):
    """An output path adpf will not write (one line naming the option and the path; exit status 2)."""


def _head(path: Path, size: int = 65536) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def is_csv_output(path: Path) -> bool:
    """An earlier ``adpf predict --csv`` file: its first line is the header of `photos.COLUMNS`."""
    from adpf.photos import COLUMNS

    return _head(path, 4096).split(b"\n", 1)[0].rstrip(b"\r") == ",".join(COLUMNS).encode()


def is_json_output(path: Path) -> bool:
    """An earlier ``adpf predict --json`` (a list of rows) or ``adpf evaluate --json`` (the metrics) file."""
    head = _head(path, 4096).lstrip()
    return head.startswith((b'[\n {\n  "file": ', b"[]", b'{\n "count": '))


def is_figure_output(path: Path) -> bool:
    """An earlier ``adpf predict --save-patches`` figure (it carries `FIGURE_MARK`)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(65536)
        f.seek(max(0, size - 65536))
        tail = f.read()
    return FIGURE_MARK.encode() in head or FIGURE_MARK.encode() in tail


def is_export_output(path: Path) -> bool:
    """An earlier ``adpf export``: a TorchScript archive of ``adpf.export.AgeModel``, or an ONNX
    graph with input ``images`` and outputs ``age`` and ``std``."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            # the class's code is code/__torch__/adpf/export.py, or, when the same process traced
            # AgeModel before, code/__torch__/adpf/export/___torch_mangle_N.py
            return any(re.search(r"code/__torch__/adpf/export(\.py|/___torch_mangle_\d+\.py)$", name)
                       for name in z.namelist())
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # not ONNX (or no onnx package): not an export adpf can recognise
        return False
    return [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["age", "std"]


#: What each kind of output may replace, and how it is described in a refusal.
OWN_OUTPUT: dict[str, tuple[Callable[[Path], bool], str]] = {
    "csv": (is_csv_output, "a CSV written by adpf predict"),
    "json": (is_json_output, "a JSON file written by adpf"),
    "figure": (is_figure_output, "a patch figure written by adpf predict"),
    "export": (is_export_output, "an earlier adpf export"),
}


def is_special(path: Path) -> bool:
    """Whether ``path`` (links followed) is a named pipe, a device or a socket: written into, not replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | Path, option: str, files: tuple[str, ...] = (), kind: str | None = None,
                 inputs: Iterable[str | Path] = (), force: bool = False) -> Path:
    """Refuse, before any work, an output that cannot or must not be written; returns the path.

    ``files``: the output is a folder that receives these files. Otherwise it is a file: ``-``
    (standard output, where ``kind`` is given), a new file, a link, a pipe or a device, or an
    existing file that is not one of ``inputs`` and is `OWN_OUTPUT` ``[kind]`` (any file with
    ``force``). Raises `OutputRefused` naming ``option`` and the path.
    """
    if str(path) == STDOUT and kind in ("csv", "json"):
        return Path(STDOUT)
    p = Path(path)
    if files and p.exists() and not p.is_dir():
        raise OutputRefused(f"{option} {p}: is a file; expected a folder to write {', '.join(files)} into")
    for name in files:
        if (p / name).is_dir():
            raise OutputRefused(f"{option} {p}: {p / name} is a folder; cannot write the file {name} there")
    if not files and p.is_dir():
        raise OutputRefused(f"{option} {p}: is a folder; expected a file name")
    if not files and is_special(p):
        return p
    if not files and p.is_file():
        _check_replaceable(p, option, kind, inputs, force)
    target = p if files else Path(os.path.realpath(p)).parent
    _check_writable(target, p, option)
    return p


def _check_replaceable(p: Path, option: str, kind: str | None, inputs: Iterable[str | Path], force: bool) -> None:
    for item in inputs:
        if _same_file(p, Path(item)):
            raise OutputRefused(f"{option} {p}: is an input of this command ({item}); refusing to overwrite it")
    if force or kind is None or p.stat().st_size == 0:
        return
    recognise, what = OWN_OUTPUT[kind]
    try:
        own = recognise(p)
    except OSError as e:
        raise OutputRefused(f"{option} {p}: exists and cannot be read ({e.strerror}); refusing to overwrite it") \
            from None
    if not own:
        from adpf.photos import IMAGE_SUFFIXES

        it = "an image" if p.suffix.lower() in IMAGE_SUFFIXES and kind != "figure" else "a file"
        raise OutputRefused(f"{option} {p}: exists and is {it}, not {what}; refusing to overwrite it "
                            "(remove it, or choose another name)")


def _check_writable(folder: Path, p: Path, option: str) -> None:
    """Try a temporary file in ``folder``'s nearest existing folder (os.access says yes to root,
    even in /proc)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputRefused(f"{option} {p}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".adpf-write-test-", dir=folder)
    except OSError as e:
        raise OutputRefused(f"{option} {p}: cannot write into {folder} ({e.strerror.lower()})") from None
    os.close(fd)
    os.unlink(probe)


def write_output(path: str | Path, write: Callable[[IO], None], mode: str = "w") -> str:
    """Write an output checked by `check_output`: ``-`` to standard output, a pipe or device
    into itself, anything else atomically (a link's target replaced, the link kept). ``mode``
    "w": ``write`` gets a UTF-8 text file that translates no line ends; "wb": a binary file.
    Returns where it went, as the user should read it."""
    def into(f: IO) -> None:
        if mode == "wb":
            write(f)
            return
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        write(text)
        text.flush()
        text.detach()

    if str(path) == STDOUT:
        sys.stdout.flush()
        into(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return "standard output"
    p = Path(path)
    if is_special(p):
        with open(p, "wb") as f:
            into(f)
        return str(p)
    atomic_write(Path(os.path.realpath(p)), into, mode="wb")
    return str(p)


def write_json_output(path: str | Path, obj) -> str:
    """`write_output` of ``obj`` as indented JSON (NaN refused, as JSON has none)."""
    return write_output(path, lambda f: json.dump(obj, f, indent=1, default=str))
