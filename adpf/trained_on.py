"""What a checkpoint was trained on, recorded in it so that using it needs no repeated options.

``adpf train --out`` stores in ``model.pt``'s ``meta["trained_on"]`` (plain JSON-like values, so
the checkpoint still loads with ``weights_only=True``):

``data``         "synthetic", or the prepared folder's absolute path
``root``         the prepared folder's absolute path (for the synthetic set, its cache folder)
``synthetic_n``  the number of drawn faces (synthetic data only, else None)
``name``, ``image_size``, ``count``   from the prepared folder's info.json
``content``      a hash of the folder's files (``cache.data_identity``), checked by ``adpf evaluate``
``alignment``    how the training faces were made (`alignment_of`)
``info``         the whole info.json (the fill rule and anything else the data scripts record)
``split``        the split options: ``test``, ``val``, ``split_seed``, ``fold``

``adpf evaluate`` takes every data and split option it is not given from there (`fill_data_options`);
``adpf predict`` prepares photos the way the training faces were prepared.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from adpf.data.prepared import Prepared, PreparedFormatError, images_to_tensor, load_prepared

#: The data and split options of ``adpf train``/``adpf evaluate`` and their built-in defaults.
DATA_DEFAULTS = {"data": "synthetic", "synthetic_n": 10_000, "test": 0.2, "val": 0.1, "split_seed": 0, "fold": None}

#: Alignment modes: "synthetic" (the drawn faces, already in a canonical pose), "dlib" (dlib's
#: landmarks, a crop aligned on the eyes), "resize" (the central square resized: sets that come
#: aligned, e.g. UTKFace's crops).
ALIGNMENTS = ("synthetic", "dlib", "resize")


def alignment_of(info: dict) -> str | None:
    """The alignment mode of a prepared folder's info.json (None when it does not say).

    An explicit ``alignment`` field wins; else the synthetic set is "synthetic" and the data
    scripts' ``aligned`` flag means "dlib" (True) or "resize" (False).
    """
    if info.get("alignment") in ALIGNMENTS:
        return info["alignment"]
    if info.get("name") == "synthetic":
        return "synthetic"
    if "aligned" in info:
        return "dlib" if info["aligned"] else "resize"
    return None


def record(args: argparse.Namespace, data: Prepared) -> dict:
    """The ``trained_on`` record of a training run from its options and its loaded data."""
    from adpf.cache import data_identity

    synthetic = args.data == "synthetic"
    return {"content": data_identity(data)["content"],"data": "synthetic" if synthetic else str(Path(data.root).resolve()),
            "root": str(Path(data.root).resolve()), "synthetic_n": args.synthetic_n if synthetic else None,
            "name": data.info.get("name"), "image_size": data.image_size, "count": len(data),
            "alignment": alignment_of(data.info), "info": dict(data.info),
            "split": {"test": args.test, "val": args.val, "split_seed": args.split_seed, "fold": args.fold}}


def read(state: dict) -> dict | None:
    """The ``trained_on`` record of a loaded checkpoint, or None (checkpoints written before it,
    or the cache's stage checkpoints)."""
    meta = state.get("meta")
    record = meta.get("trained_on") if isinstance(meta, dict) else None
    return record if isinstance(record, dict) else None


def fill_data_options(args: argparse.Namespace, trained: dict | None) -> list[str]:
    """Set every data and split option left at None to the recorded value, else its built-in default.

    The recorded fold is used only when none of ``--test``, ``--val``, ``--fold`` was given.
    Returns the names of the options taken from the record.
    """
    recorded = {} if trained is None else {"data": trained.get("data"), "synthetic_n": trained.get("synthetic_n"),
                                           **(trained.get("split") or {})}
    if any(getattr(args, k) is not None for k in ("test", "val", "fold")):
        recorded.pop("fold", None)
    taken = []
    for name, default in DATA_DEFAULTS.items():
        if getattr(args, name) is not None:
            continue
        if recorded.get(name) is not None:
            setattr(args, name, recorded[name])
            taken.append(name)
        else:
            setattr(args, name, default)
    return taken


def describe(trained: dict | None) -> str:
    """One line saying what a checkpoint was trained on."""
    if trained is None:
        return "the checkpoint does not record its training data"
    split = trained.get("split") or {}
    how = f"fold {split['fold']}" if split.get("fold") else \
        f"test {split.get('test')}, val {split.get('val')}, split seed {split.get('split_seed')}"
    return (f"trained on {trained.get('name')} ({trained.get('data')}, {trained.get('count')} images, "
            f"{trained.get('image_size')} px, alignment {trained.get('alignment')}; {how})")


def sample_faces(trained: dict | None, count: int, image_size: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``count`` faces ``(count, 3, S, S)`` in [0, 1] spread evenly over the recorded training
    folder, and what they are; where that folder is gone (or not recorded), uniform noise images
    of the model's size (with a description that says so)."""
    try:
        data = load_prepared(trained["root"]) if trained and trained.get("root") else None
    except PreparedFormatError:
        data = None
    if data is not None and data.image_size == image_size:
        rows = np.unique(np.linspace(0, len(data) - 1, count).round().astype(int))
        faces = images_to_tensor(data.images[rows])
        return faces, f"faces of {data.root}"
    noise = torch.rand(count, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    return noise, "noise images (the training faces are not here)"
