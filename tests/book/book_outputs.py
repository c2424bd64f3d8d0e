"""Read the chapters executed by ``book/build.py`` (``_build/book-src/book/*.ipynb``).

These checks run with ``make book-check`` after ``make book``; ``make test`` leaves them out.
A missing executed chapter is a failure, not a skip: the check exists to look at it.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXECUTED = REPO / "_build" / "book-src" / "book"


def chapter_stems() -> list[str]:
    """The notebook chapters of ``_toc.yml`` (the MyST files that name a kernel)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    return [Path(f).name for f in files
            if "kernelspec:" in (REPO / f"{f}.md").read_text().split("\n---", 1)[0]]


def executed(stem: str) -> nbformat.NotebookNode:
    path = EXECUTED / f"{stem}.ipynb"
    if not path.exists():
        pytest.fail(f"{path} does not exist: run `make book` "
                    f"(or `python book/build.py --only {stem}`) first")
    return nbformat.read(path, as_version=4)


def source_sha256(stem: str) -> str:
    return hashlib.sha256((REPO / "book" / f"{stem}.md").read_bytes()).hexdigest()[:16]


def _parse(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def glued(stem: str) -> dict:
    """Every value the chapter glued with ``myst_nb.glue``, parsed from its ``text/plain`` form.

    myst-nb stores a glued value as a display output whose metadata holds
    ``scrapbook: {name, mime_prefix}``; with ``display=False`` the mime types carry the prefix
    ``application/papermill.record/``.
    """
    values = {}
    for cell in executed(stem).cells:
        for out in cell.get("outputs", []):
            meta = out.get("metadata", {}).get("scrapbook")
            if meta:
                text = out["data"].get(meta.get("mime_prefix", "") + "text/plain")
                values[meta["name"]] = _parse(text) if text is not None else None
    return values
