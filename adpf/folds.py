"""The paper's evaluation protocols, run fold by fold: every split trained and tested, each fold's
result recorded the moment it finishes, so that an interrupted run goes on where it stopped.

    adpf protocol fgnet-lopo --data data/fgnet-128 --preset paper --recipe paper --out runs/fgnet

=================  ===========================================================================
fgnet-lopo         FG-NET: leave one person out, one fold per subject
morph-setting1     MORPH II Setting I: ``partitions`` random 80/20 partitions by subject
morph-setting2     MORPH II Setting II: train S1 test S2+S3, train S2 test S1+S3
morph-setting3     MORPH II Setting III: White subjects (``images`` of them), ``folds``-fold
cacd               CACD: train on the 1,800 celebrities (``cacd_train="val"``: on the 120), test on the 80
=================  ===========================================================================

The splits are those of ``adpf.data.protocols``; each fold is trained and tested by
``experiments.split_row`` (through ``train.train``, so a fold trained before, here or elsewhere,
is loaded from the cache), as ``experiments.run_protocol`` does unrecorded. The record ``OUT/protocol.json``
holds what the folds' results depend on (``identity``: the protocol and its options, the data's
content hash, the config, the recipe's learning fields, the code version, a hash of every split)
and one row per finished fold. A rerun with the same identity skips the recorded folds; a record
of another identity is never overwritten unless asked (``restart``). The summary is the mean and
sample std over folds (as the paper reports) and, for leave-one-person-out, the MAE pooled over
all test images (each image counts once, however many images its person has).
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Callable

import pandas as pd

from adpf.cache import code_version, data_identity, digest, read_json, write_json
from adpf.config import ADPFConfig
from adpf.data.prepared import Prepared
from adpf.data.protocols import (CACD_CELEBRITIES, Split, cacd_split, leave_one_person_out, morph_setting1,
                                 morph_setting2, morph_setting3)
from adpf.experiments import split_row
from adpf.recipes import SPEED_FIELDS, Recipe

RECORD_FORMAT = "adpf-protocol"
RECORD_VERSION = 1

#: Each protocol's splits from the data's labels and the options (defaults in `DEFAULTS`).
PROTOCOLS: dict[str, Callable[[pd.DataFrame, dict], list[Split]]] = {
    "fgnet-lopo": lambda meta, o: leave_one_person_out(meta),
    "morph-setting1": lambda meta, o: morph_setting1(meta, partitions=o["partitions"]),
    "morph-setting2": lambda meta, o: morph_setting2(meta, seed=o["split_seed"], subset_size=o["subset_size"]),
    "morph-setting3": lambda meta, o: morph_setting3(meta, seed=o["split_seed"], images=o["images"] or None,
                                                     k=o["folds"]),
    "cacd": lambda meta, o: [_cacd(meta, o)],
}

#: The protocols' options: partitions (Setting I: 20), folds and White images (Setting III: 5
#: and 5,492; 0 takes all), subset_size (Setting II: None, the largest possible), the seed of the
#: random splits, and which CACD part to train on ("train" or "val").
DEFAULTS = {"partitions": 20, "folds": 5, "images": 5492, "subset_size": None, "split_seed": 0, "cacd_train": "train"}


def _cacd(meta: pd.DataFrame, options: dict) -> Split:
    split = cacd_split(meta, seed=options["split_seed"])
    if options["cacd_train"] == "val":
        return Split(f"{split.name}-train-on-val", split.val, split.test)
    return split


def split_note(name: str, data: Prepared, options: dict) -> str | None:
    """What a protocol did other than the paper's, to tell the user: CACD's 1,800 / 120 / 80
    celebrities scaled down to a folder of another size (without a ``split`` column); else None."""
    meta = data.meta
    if name != "cacd" or "split" in meta.columns or meta["subject"].nunique() == sum(CACD_CELEBRITIES):
        return None
    split = cacd_split(meta, seed={**DEFAULTS, **options}["split_seed"])
    people = [meta["subject"].iloc[rows].nunique() for rows in (split.train, split.val, split.test)]
    return (f"{data.root} has {meta['subject'].nunique()} subjects, not CACD's 2,000 celebrities (and no 'split' "
            f"column): split in CACD's proportions instead, {people[0]} / {people[1]} / {people[2]} subjects for "
            "train / val / test")


def protocol_splits(name: str, data: Prepared, options: dict | None = None) -> list[Split]:
    """The splits of protocol ``name`` on ``data`` (options over `DEFAULTS`)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name](data.meta, {**DEFAULTS, **(options or {})})


def identity(name: str, options: dict, data: Prepared, splits: list[Split], config: ADPFConfig,
             recipe: Recipe) -> dict:
    """What every fold's result depends on; a record is resumed only under the same identity."""
    learned = {k: v for k, v in recipe.to_dict().items() if k not in SPEED_FIELDS}
    splits_hash = digest([[s.name, s.train.tolist(), s.test.tolist(), s.val.tolist()] for s in splits])
    return _as_json({"protocol": name, "options": {**DEFAULTS, **options}, "data": data_identity(data)["content"],
                     "config": config.to_dict(), "recipe": learned, "code_version": code_version(),
                     "splits": splits_hash})


def _as_json(obj):
    """``obj`` as it reads back from JSON (tuples as lists), so records compare equal."""
    return json.loads(json.dumps(obj, default=str))


class RecordMismatch(ValueError):
    """A record folder holds a run of another protocol, data, config, recipe or code."""


def open_record(path: Path, ident: dict, command: str, restart: bool = False) -> dict:
    """The record at ``path`` to go on with (same identity), or a fresh one where there is none
    (or ``restart``); raises `RecordMismatch` naming what differs otherwise."""
    old = read_json(path)
    if old is not None and not restart:
        if old.get("format") != RECORD_FORMAT or not isinstance(old.get("identity"), dict):
            raise RecordMismatch(f"{path}: not a protocol record of adpf; choose another --out")
        differs = [k for k in ident if old["identity"].get(k) != ident[k]]
        if differs:
            raise RecordMismatch(f"{path}: holds a run with another {', '.join(differs)}; choose another --out, "
                                 "or pass --restart to start it afresh")
        return old
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "command": command, "started": _now(),
            "identity": ident, "folds": [], "finished": None}


def run_folds(name: str, config: ADPFConfig, data: Prepared, recipe: Recipe, out: str | Path,
              options: dict | None = None, command: str = "", max_folds: int | None = None,
              restart: bool = False, progress: bool | None = None, train_progress: bool = False,
              use_cache: bool = True) -> dict:
    """Train and test every fold of protocol ``name`` not yet in ``OUT/protocol.json``, writing the
    record after each fold; returns the record. ``max_folds`` stops after that many folds in all
    (a later call goes on); ``progress``: tqdm's ``disable`` for the bar over folds;
    ``train_progress``: each training's own bars; ``use_cache``: as in ``train.train``.
    """
    from tqdm.auto import tqdm

    options = {**DEFAULTS, **(options or {})}
    splits = protocol_splits(name, data, options)
    path = Path(out) / "protocol.json"
    record = open_record(path, identity(name, options, data, splits, config, recipe), command, restart)
    done = {row["split"] for row in record["folds"]}
    todo = [s for s in splits if s.name not in done]
    if max_folds is not None:
        todo = todo[: max(0, max_folds - len(done))]
    write_json(path, record)
    with tqdm(total=len(splits), initial=len(done), desc=name, unit="fold", disable=progress,
              dynamic_ncols=True) as bar:
        for split in todo:
            row = split_row(config, data, split, recipe, split.name, use_cache=use_cache, progress=train_progress)
            record["folds"].append({**row, "finished": _now()})
            write_json(path, record)
            bar.update()
    record["finished"] = _now() if len(record["folds"]) == len(splits) else None
    record["total_folds"] = len(splits)
    write_json(path, record)
    return record


def summary(record: dict) -> pd.DataFrame:
    """Mean and sample std over the recorded folds of MAE and CS(5), with the fold count and the
    MAE pooled over all test images (Σ MAE_i · n_i / Σ n_i)."""
    folds = pd.DataFrame(record["folds"])
    if folds.empty:
        raise ValueError("the record holds no finished fold yet")
    row = {"folds": len(folds), "of": record.get("total_folds", len(folds)),
           "mae_mean": folds["mae"].mean(), "mae_std": folds["mae"].std(),
           "cs5_mean": folds["cs5"].mean(), "cs5_std": folds["cs5"].std(),
           "mae_pooled": (folds["mae"] * folds["test"]).sum() / folds["test"].sum()}
    return pd.DataFrame([row])


def report(record: dict) -> str:
    """The text ``adpf protocol`` prints: one line per fold, then the mean ± std."""
    folds = pd.DataFrame(record["folds"])
    columns = ["split", "train", "test", "mae", "cs5", "train_seconds", "cached"]
    s = summary(record).iloc[0]
    head = f"{record['identity']['protocol']}: {int(s['folds'])} of {int(s['of'])} folds: "
    if s["folds"] > 1:
        head += (f"MAE {s['mae_mean']:.3f} ± {s['mae_std']:.3f}, CS(5) {s['cs5_mean']:.3f} ± {s['cs5_std']:.3f} "
                 f"(mean ± std over folds); MAE over all test images {s['mae_pooled']:.3f}")
    else:
        head += f"MAE {s['mae_mean']:.3f}, CS(5) {s['cs5_mean']:.3f}"
    return folds[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}") + "\n" + head


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
