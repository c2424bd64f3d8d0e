"""Execute the book's chapters with papermill, then build the HTML with Jupyter Book.

    python book/build.py                    # execute every chapter, then build the HTML
    python book/build.py --only 02          # execute one chapter (number or file stem), then the HTML
    python book/build.py --profile paper    # pass profile="paper" to the chapters that declare it
    python book/build.py --no-execute       # rebuild the HTML from the chapters executed before

Each chapter is a MyST Markdown notebook ``book/NN_name.md`` listed in ``_toc.yml``. To add one:
write it with a cell tagged ``parameters``, list it in ``_toc.yml``, glue the numbers its prose
quotes (``myst_nb.glue``), and check them in ``tests/book/``. The build
converts it to ``_build/book-src/book/NN_name.ipynb`` (with ``_config.yml``, ``_toc.yml`` and every
other file of ``book/`` copied beside it), executes it there with papermill on the kernel of the
Python running this script, and finally runs ``jupyter-book build`` with warnings as errors on the
staging tree; the HTML lands in ``_build/book-src/_build/html``. Chapters share trained models
through the library's train-or-load cache in ``.adpf-cache/`` (``ADPF_CACHE_DIR``).

A cell that raises stops its chapter; the remaining chapters still run, the HTML is still built
(so the error can be read there), and the script exits with status 1.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import papermill
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
STAGE = ROOT / "_build" / "book-src"
HTML = STAGE / "_build" / "html"
CACHE = ROOT / ".adpf-cache"
SKIP = {"build.py", "__pycache__", ".ipynb_checkpoints"}


def toc_files(toc: Path = ROOT / "_toc.yml") -> list[str]:
    """Every ``file:`` (and the root) of the table of contents, in reading order."""
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    found.append(node[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(toc.read_text()))
    return found


def is_chapter(path: Path) -> bool:
    """A MyST Markdown notebook (it names a kernel), as opposed to a plain Markdown page."""
    return path.suffix == ".md" and "kernelspec" in jupytext.read(path).metadata


def chapters() -> list[Path]:
    """The notebook chapters of the toc, in reading order."""
    paths = []
    for entry in toc_files():
        path = ROOT / f"{entry}.md"
        if not path.exists():
            raise FileNotFoundError(f"_toc.yml lists {entry!r} but {path} does not exist")
        if is_chapter(path):
            paths.append(path)
    return paths


def select(paths: list[Path], only: str) -> Path:
    """The chapter named by a number (``2``, ``02``) or a file stem (``02_self_attention``)."""
    hits = [p for p in paths if p.stem == only or p.stem.split("_")[0].lstrip("0") == only.lstrip("0")]
    if len(hits) != 1:
        raise SystemExit(f"--only {only!r} matches {len(hits)} chapters; choose one of "
                         f"{[p.stem for p in paths]}")
    return hits[0]


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def stage_tree(chapter_paths: list[Path]) -> None:
    """Copy the config, the toc and every non-chapter file of book/ into the staging tree."""
    (STAGE / "book").mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, STAGE / name)
    sources = set(chapter_paths)
    for path in sorted(BOOK.rglob("*")):
        rel = path.relative_to(BOOK)
        # a chapter's paired .ipynb (jupytext) is the reader's copy, never the staged one
        if path.is_dir() or path in sources or SKIP & set(rel.parts) or path.suffix == ".ipynb":
            continue
        target = STAGE / "book" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def staged(path: Path) -> Path:
    return STAGE / "book" / f"{path.stem}.ipynb"


def declared_parameters(nb: nbformat.NotebookNode) -> set[str]:
    """Names assigned in the cell tagged ``parameters``."""
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse(cell.source)
            return {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)}
    return set()


def execute(path: Path, overrides: dict) -> float:
    """Execute one chapter into the staging tree; return the seconds it took.

    Only the overrides the chapter declares in its ``parameters`` cell are passed, so a chapter
    run with its defaults carries no injected-parameters cell.
    """
    nb = jupytext.read(path)
    nb.metadata["adpf_build"] = {"source": path.relative_to(ROOT).as_posix(),
                                 "source_sha256": source_hash(path)}
    params = {k: v for k, v in overrides.items() if k in declared_parameters(nb)}
    out = staged(path)
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(nb, str(out), parameters=params, kernel_name="python3",
                               cwd=str(out.parent), progress_bar=False)
    seconds = time.perf_counter() - start
    # widgets need a live kernel: the page shows static figures, so drop the saved widget
    # state (otherwise the HTML loads the widget manager for nothing)
    executed = nbformat.read(out, as_version=4)
    if executed.metadata.pop("widgets", None) is not None:
        nbformat.write(executed, out)
    return seconds


def stand_in(path: Path) -> None:
    """An unexecuted copy of a chapter never executed here, so the toc resolves."""
    nb = jupytext.read(path)
    nb.metadata["adpf_build"] = {"source": path.relative_to(ROOT).as_posix(), "source_sha256": None}
    nbformat.write(nb, staged(path))


def is_current(path: Path) -> bool:
    """The staged notebook was executed from the chapter's present source."""
    target = staged(path)
    if not target.exists():
        return False
    meta = nbformat.read(target, as_version=4).metadata.get("adpf_build", {})
    return meta.get("source_sha256") == source_hash(path)


def build_html(strict: bool) -> int:
    """``jupyter-book build`` on the staging tree; with ``strict`` every warning is an error."""
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb if jb.exists() else shutil.which("jupyter-book")), "build", str(STAGE), "--all"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="execute only this chapter (number or file stem)")
    parser.add_argument("--profile", choices=["cpu", "paper"], help="config preset for the chapters")
    parser.add_argument("--device", help="torch device for the chapters (e.g. cuda)")
    parser.add_argument("--seed", type=int, help="random seed for the chapters")
    parser.add_argument("--no-execute", action="store_true", help="rebuild the HTML only")
    args = parser.parse_args(argv)

    paths = chapters()
    stage_tree(paths)
    os.environ.setdefault("ADPF_CACHE_DIR", str(CACHE))
    # the chapters import this checkout's library, installed or not
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    overrides = {k: v for k, v in {"profile": args.profile, "device": args.device,
                                   "seed": args.seed}.items() if v is not None}

    if args.no_execute:
        todo = []
    elif args.only:
        todo = [select(paths, args.only)]
    else:
        todo = paths
    failed = []
    for path in todo:
        print(f"executing {path.relative_to(ROOT)} ...", flush=True)
        try:
            seconds = execute(path, overrides)
            print(f"  {path.stem}: {seconds:.1f} s", flush=True)
        except papermill.PapermillExecutionError as err:
            failed.append(path.stem)
            print(f"  {path.stem}: FAILED in cell {err.exec_count}: {err.ename}: {err.evalue}",
                  flush=True)

    stale = [p.stem for p in paths if p not in todo and not is_current(p)]
    for path in paths:
        if not staged(path).exists():
            stand_in(path)
    if stale:
        print(f"not executed from their present source (built without -W): {stale}", flush=True)
    status = build_html(strict=not stale)
    if status:
        print(f"jupyter-book build failed with status {status}", flush=True)
    if failed:
        print(f"chapters with a failing cell: {failed}", flush=True)
    print(f"HTML: {HTML / 'index.html'}")
    return 1 if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())
