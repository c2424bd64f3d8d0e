"""Train-or-load: every training stage is stored under a key made from everything that determines it.

A stage's key hashes (as canonical JSON, SHA-256):

- the stage ("attention", "fusion" or "single") and the config fields the stage depends on,
- the data identity (the prepared folder's info.json and a content hash of its files),
- the split (a hash of its train/val/test indices),
- the recipe fields that change the result (all but ``adpf.recipes.SPEED_FIELDS``),
- the code version (adpf's version and a hash of the source files that shape a training),
- for stage 2, the key of the stage-1 model it starts from.

ADPF's stage 1 *is* an AttentionNet trained alone: its key uses ``attention_config(config)``,
which drops the fields that only FusionNet reads (the patch and fusion sizes, ranking), so
ADPF, AttentionNet alone, ADPF w/o ranking and every patch-rule variant share one stage-1
model, while w/SA and w/o diversity (which change AttentionNet) get their own.

Layout under ``cache_root()`` (``$ADPF_CACHE_DIR``, else ``.adpf-cache`` in a source
checkout, else ``~/.cache/adpf``; the same folder ``adpf.data.prepared`` caches data in)::

    runs/<stage>-<key>/checkpoint.pt   the stage's latest epoch (model, optimizer, RNG, history)
    runs/<stage>-<key>/stage.json      written once the stage is finished
    runs/<stage>-<key>/result.json     the TrainResult, in the folder of a run's last stage

Atomic writes go through hidden temporaries beside their target (``adpf.checkpoint.atomic_write``
and the dataset writer's folders in ``data/``). An interruption (Ctrl-C, SIGTERM) removes them;
what a killed process left, ``sweep_temporaries`` removes at the start of the next
``adpf train`` or ``adpf experiments``.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import os
import shutil
import time
import tokenize
from pathlib import Path

import numpy as np

import adpf
from adpf.checkpoint import atomic_write, is_temporary, temporary_owner
from adpf.config import ADPFConfig
from adpf.data.prepared import Prepared, cache_root

#: Fields only FusionNet and the patch rule read; AttentionNet does not depend on them.
FUSION_ONLY_FIELDS = ("fusion_channels", "patch_size", "patch_channels", "patch_stream", "ranking", "rank_by",
                      "patch_threshold", "patch_baseline", "patch_min_frac", "patch_max_frac", "reference_width", "fusion_head",
                      "fusion_stem_stride", "fusion_block", "patch_placement", "patch_dropout")

#: The source files that shape what a training produces: the model, its losses, the patch rule,
#: the config, the training loop (with its learning-rate schedule), the processes it runs in
#: (``distributed.py``: DDP wrapping, shared BatchNorm statistics; kept here to be safe, though a
#: single process never runs its code) and the prepared data's augmentation. Their hash is part of
#: every cache key and of every recorded experiment (``code_version``); an edit to any other
#: file (the command line, evaluation, plotting, data preparation, the book's setting) keeps
#: the cache and the records current. ``recipes.py`` holds values only, and every value that
#: changes a result is itself in each key (``adpf.train.plan_stages``), so it is not hashed.
#: The data itself is identified by its content hash.
SHAPING_FILES = ("attention.py", "rmhha.py", "losses.py", "patches.py", "networks.py", "config.py",
                 "train.py", "distributed.py", "data/prepared.py")


def attention_config(config: ADPFConfig) -> ADPFConfig:
    """The ``attention_only`` config of the AttentionNet inside ``config`` (ADPF's stage 1).

    Fusion-only fields are reset to the ``ADPFConfig`` defaults, so every config whose
    AttentionNet is the same maps to the same config (and the same stage-1 key).
    """
    defaults = ADPFConfig.__dataclass_fields__
    return config.replace(variant="attention_only",
                          **{f: defaults[f].default for f in FUSION_ONLY_FIELDS})


def digest(obj) -> str:
    """A short SHA-256 of ``obj`` as canonical JSON (sorted keys; tuples as lists)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """adpf's version and a hash of the model and training code (``SHAPING_FILES``)."""
    return source_version(Path(adpf.__file__).parent)


def source_version(root: Path) -> str:
    """``version+hash`` of the code of ``SHAPING_FILES`` under the package folder ``root``.

    What is hashed is each file's code without its comments and docstrings (`code_tokens`), so
    an edit to the documentation keeps the cache and the records current; any edit to the code
    changes the version.
    """
    h = hashlib.sha256(adpf.__version__.encode())
    for name in SHAPING_FILES:
        h.update(name.encode())
        h.update("\0".join(code_tokens((root / name).read_text())).encode())
    return f"{adpf.__version__}+{h.hexdigest()[:12]}"


def code_tokens(source: str) -> list[str]:
    """The tokens of Python ``source`` that make its code: no comments, blank lines or docstrings
    (the string that opens a module, class or function); indentation kept as markers."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings.add((first.lineno, first.col_offset))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
    # Python 3.12 tokenizes an f-string into FSTRING_START ... FSTRING_END; earlier versions give
    # one STRING token. Each f-string is kept as its source text, one token, on every version.
    fstring_start, fstring_end = getattr(tokenize, "FSTRING_START", None), getattr(tokenize, "FSTRING_END", None)
    lines = source.splitlines(keepends=True)
    tokens, open_at, depth = [], None, 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if fstring_start is not None and tok.type == fstring_start:
            open_at = tok.start if depth == 0 else open_at
            depth += 1
            continue
        if depth:
            if tok.type == fstring_end:
                depth -= 1
                if depth == 0:
                    tokens.append(_source_between(lines, open_at, tok.end))
            continue
        if tok.type in skip or (tok.type == tokenize.STRING and tok.start in docstrings):
            continue
        tokens.append({tokenize.INDENT: "<indent>", tokenize.DEDENT: "<dedent>",
                       tokenize.NEWLINE: "<newline>"}.get(tok.type, tok.string))
    return tokens


def _source_between(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    """The source text from ``start`` to ``end`` ((row, column), rows from 1), as tokenize gives them."""
    (r0, c0), (r1, c1) = start, end
    if r0 == r1:
        return lines[r0 - 1][c0:c1]
    return lines[r0 - 1][c0:] + "".join(lines[r0:r1 - 1]) + lines[r1 - 1][:c1]


def data_identity(data: Prepared) -> dict:
    """What identifies a prepared dataset: its info.json and a hash of its files' contents."""
    files = [data.root / f for f in ("images.npy", "meta.csv", "masks.npy")]
    return {"info": data.info,
            "content": _content_hash(*((str(f), *_stamp(f)) for f in files if f.is_file()))}


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _content_hash(*files: tuple[str, int, int]) -> str:
    """BLAKE2 of the files' bytes (memoised on path, size and mtime: a folder is hashed once)."""
    h = hashlib.blake2b(digest_size=16)
    for path, _, _ in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def split_identity(split: dict[str, np.ndarray]) -> dict:
    """Sizes and a hash of a split's index arrays."""
    return {"sizes": {k: int(len(v)) for k, v in split.items()},
            "hash": digest({k: np.asarray(v).tolist() for k, v in split.items()})}


def stage_dir(stage: str, key: str) -> Path:
    """The folder of one stage's checkpoint and records."""
    return cache_root() / "runs" / f"{stage}-{key}"


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temporary file in the same folder, then ``os.replace``)."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=1, default=str), mode="w")


def read_json(path: Path) -> dict | None:
    """The JSON in ``path``, or None when the file does not exist or is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


#: Seconds a temporary must have been left untouched before ``sweep_temporaries`` removes it.
STALE_AFTER = 3600.0


def sweep_temporaries(root: str | os.PathLike | None = None,
                      stale_after: float = STALE_AFTER) -> list[tuple[Path, int]]:
    """Remove the temporaries that killed runs left in the cache; returns each one removed and its bytes.

    Looked at: the hidden temporaries (``adpf.checkpoint.is_temporary``) directly in ``root``
    (default ``cache_root()``), in ``data/``, in ``runs/`` and in each ``runs/<stage>-<key>/``.
    A temporary is stale when the process whose id its name holds is not alive on this
    machine (names without an id come from older versions) and neither it nor anything
    directly in it has changed for ``stale_after`` seconds. The age rule keeps the
    temporaries of a writer on another machine that shares the cache, where the id means
    nothing; a writer's files change as it writes.
    """
    root = Path(root) if root is not None else cache_root()
    runs = root / "runs"
    folders = [root, root / "data", runs, *(p for p in _entries(runs) if p.is_dir() and not p.is_symlink())]
    now, removed = time.time(), []
    for folder in folders:
        for entry in _entries(folder):
            if not is_temporary(entry.name):
                continue
            owner = temporary_owner(entry.name)
            if owner is not None and _alive(owner):
                continue
            try:
                if now - _last_change(entry) < stale_after:
                    continue
                size = _size(entry)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except FileNotFoundError:  # its writer finished, or another run swept it, meanwhile
                continue
            removed.append((entry, size))
    return removed


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _last_change(entry: Path) -> float:
    """The newest modification time of ``entry`` and, for a folder, of what is directly in it."""
    times = [entry.lstat().st_mtime]
    if entry.is_dir() and not entry.is_symlink():
        times += [child.lstat().st_mtime for child in _entries(entry)]
    return max(times)


def _size(entry: Path) -> int:
    if entry.is_dir() and not entry.is_symlink():
        return sum(p.lstat().st_size for p in entry.rglob("*") if not p.is_dir())
    return entry.lstat().st_size
