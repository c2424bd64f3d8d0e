"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, never a pickled
object, so it loads with ``weights_only=True``:

``config``      the ``ADPFConfig`` as a dict (``ADPFConfig.to_dict``)
``model``       the state_dict of the trained network
``stage``       the training stage it belongs to ("attention", "fusion" or "single")
``epoch``       the number of finished epochs of that stage
``optimizer``, ``scheduler``   their state_dicts (for resuming)
``rng``         the random states (``rng_state``), so a resumed run repeats an uninterrupted one
``meta``        anything else JSON-like (history so far and the stage's key; ``trained_on`` in
                ``adpf train --out``'s ``model.pt``)

``checkpoint_dict`` builds it, everywhere one is written.

``save_checkpoint`` writes to a temporary file in the same folder, flushes and fsyncs it, then
renames it over the target with ``os.replace``: a crash leaves the old file or the new one,
never half of one.
"""
from __future__ import annotations

import os
import random
import re
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import IO, Callable

import numpy as np
import torch

from adpf.config import ADPFConfig
from adpf.networks import build_model


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the model it is loaded into."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, fsync it, then
    ``os.replace`` it over ``path``: a crash leaves the old file or the new one, never half.

    The temporary file is ``.<name>.tmp-<pid>-<random>`` (see ``temporary_owner``; an
    interruption removes it, ``adpf.cache.sweep_temporaries`` what a killed process left).
    A new file gets the mode the user's umask gives (``0o666 & ~umask``, as ``open`` would,
    not mkstemp's 0600); a file that is replaced keeps its mode. An ``OSError`` names ``path``,
    never the temporary file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMPORARY_TAG}{os.getpid()}-", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        os.fchmod(fd, new_file_mode(path))
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None:
            raise _naming(e, path) from None
        raise
    _fsync_dir(path.parent)
    return path


#: Marks the temporary files and folders of atomic writes: ``.<name>.tmp-<pid>-<random>``.
TEMPORARY_TAG = ".tmp-"
#: This version's temporaries, and the older ``.<name>.<random>.tmp`` and ``.<name>.tmp-<random>``.
_TEMPORARY = re.compile(r"\..+(\.tmp-((?P<pid>\d+)-)?\w+|\.\w+\.tmp)")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is that of an atomic write's temporary file or folder."""
    return _TEMPORARY.fullmatch(name) is not None


def temporary_owner(name: str) -> int | None:
    """The id of the process that made the temporary ``name``; None when its name holds none."""
    match = _TEMPORARY.fullmatch(name)
    return int(match["pid"]) if match and match["pid"] else None


def temporary_folder(target: str | os.PathLike) -> Path:
    """A new hidden folder beside ``target`` (``.<name>.tmp-<pid>-<random>``) to fill and then
    rename onto it. Its mode is what the user's umask gives (``0o777 & ~umask``), not mkdtemp's
    0700, so the folder it becomes is as readable as one made with ``mkdir``."""
    target = Path(target)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}{TEMPORARY_TAG}{os.getpid()}-", dir=target.parent))
    folder.chmod(0o777 & ~current_umask())
    return folder


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` about ``path`` (a failed write names the target, not its temporary)."""
    return type(error)(error.errno, f"cannot be written ({error.strerror})", str(path))


def new_file_mode(path: Path) -> int:
    """The mode a file written to ``path`` gets: the old file's, or what the umask gives a new one."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so it is never changed, even briefly)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def checkpoint_dict(config: ADPFConfig, weights: dict[str, torch.Tensor], stage: str, epoch: int, *,
                    optimizer: dict | None = None, scheduler: dict | None = None, rng: dict | None = None,
                    meta: dict | None = None) -> dict:
    """A checkpoint in the layout above, for `save_checkpoint`: the one place it is built.

    ``weights`` is the network's state_dict; ``optimizer`` and ``scheduler`` are state_dicts and
    ``rng`` is `rng_state`'s (what resuming needs), ``meta`` JSON-like values; those left None
    are left out.
    """
    state = {"config": config.to_dict(), "model": weights, "stage": stage, "epoch": epoch}
    for name, value in (("optimizer", optimizer), ("scheduler", scheduler), ("rng", rng), ("meta", meta)):
        if value is not None:
            state[name] = value
    return state


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` (a `checkpoint_dict`) to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    return atomic_write(path, lambda f: torch.save(state, f))


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by ``save_checkpoint`` (``weights_only=True``).

    Raises ``CheckpointError`` naming the file when it is missing, corrupted, or not a
    checkpoint of this project.
    """
    path = Path(path)
    if not path.is_file():
        what = "not a regular file (a device, a pipe or a folder)" if path.exists() else "no such file"
        raise CheckpointError(f"checkpoint {path}: {what}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads anyway
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise CheckpointError(f"checkpoint {path}: cannot be read: {_why_unreadable(path, e)}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {path}: not an adpf checkpoint (a PyTorch file, but not a dict "
                              "with 'model' and 'config' as adpf train writes)")
    for name in ("config", "model"):
        if not isinstance(state[name], dict):
            raise CheckpointError(f"checkpoint {path}: not an adpf checkpoint ('{name}' is a "
                                  f"{type(state[name]).__name__}, expected a dict)")
    loose = [k for k, v in state["model"].items() if not isinstance(v, torch.Tensor)]
    if loose:
        raise CheckpointError(f"checkpoint {path}: not an adpf checkpoint ('model' entries that are not "
                              f"tensors: {_short(loose)})")
    return state


def _why_unreadable(path: Path, error: Exception) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in a few words."""
    unsafe = re.search(r"GLOBAL (\S+) was not an allowed global", str(error))
    if unsafe:
        return (f"refused, it holds the Python object {unsafe[1]}, which could run code when loaded "
                "(an unsafe pickle; adpf checkpoints hold only tensors and plain values)")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty (0 bytes)"
    if head == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            return "truncated (its zip archive has no end: the file was cut short or is still being copied)"
        with zipfile.ZipFile(path) as z:
            if any("/code/__torch__/" in name for name in z.namelist()):
                return "a TorchScript file (as adpf export writes), not a checkpoint: give the checkpoint it came from"
            if not any(name.endswith("/data.pkl") for name in z.namelist()):
                return "a zip archive, but not a PyTorch checkpoint"
        return f"damaged (torch: {type(error).__name__})"
    if isinstance(error, EOFError):
        return "truncated (the file ends before its data does)"
    return "not a PyTorch checkpoint (wrong format; adpf checkpoints are written by adpf train)"


def config_from_checkpoint(state: dict, path: str | os.PathLike = "<checkpoint>") -> ADPFConfig:
    """The ``ADPFConfig`` stored in a checkpoint."""
    try:
        return ADPFConfig.from_dict(state["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: bad config ({e})") from e


#: Config fields set after training (the calibration of the ±), not compared by `check_config`.
UNCHECKED_FIELDS = ("std_scale",)


def check_config(state: dict, config: ADPFConfig, path: str | os.PathLike = "<checkpoint>") -> None:
    """Raise ``CheckpointError`` listing every field where the checkpoint's config differs."""
    saved = state["config"]
    wanted = config.to_dict()
    diff = [f"{k}: checkpoint has {saved.get(k)!r}, expected {_plain(v)!r}"
            for k, v in wanted.items() if k not in UNCHECKED_FIELDS and _plain(saved.get(k)) != _plain(v)]
    if diff:
        raise CheckpointError(f"checkpoint {path}: config differs: " + "; ".join(diff))


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def load_model_state(model: torch.nn.Module, state_dict: dict,
                     path: str | os.PathLike = "<checkpoint>") -> None:
    """``model.load_state_dict`` with an error that names the file and every mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise CheckpointError(f"checkpoint {path} does not fit the model: " + ", ".join(parts))
    model.load_state_dict(state_dict)


def _short(keys: list[str], n: int = 5) -> str:
    return str(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def rng_state(loader_generator: torch.Generator | None = None) -> dict:
    """The random states of torch (CPU and CUDA), numpy, python and a DataLoader's generator.

    Stored as tensors and plain numbers so that ``weights_only=True`` can read them back.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def set_rng_state(state: dict, loader_generator: torch.Generator | None = None) -> None:
    """Restore what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """The network a checkpoint holds, built from its stored config, in eval mode on ``map_location``.

    An ADPF comes back with its AttentionNet frozen, as after training.
    """
    state = load_checkpoint(path, map_location)
    model = build_model(config_from_checkpoint(state, path))
    load_model_state(model, state["model"], path)
    if hasattr(model, "freeze_attention"):
        model.freeze_attention()
    return model.to(map_location).eval()
