"""The ``adpf`` command: train, evaluate, predict, export, protocol, info, experiments.

    adpf train --data synthetic --recipe book --out runs/adpf
    adpf evaluate runs/adpf
    adpf predict photos/ --checkpoint runs/adpf --csv ages.csv --save-patches patches.png
    adpf export runs/adpf --format onnx --out adpf.onnx
    adpf protocol fgnet-lopo --data data/fgnet-128 --out runs/fgnet-lopo
    adpf info
    adpf experiments ablation --data data/utkface-64 --recipe cpu

Every sub-command has ``--help``. A bad argument, a missing file or a dataset that does not fit
the model ends the command with one line on stderr and exit status 2; outputs are checked
before the work. ``adpf predict`` exits with 1 when it skipped some photos. Ctrl-C ends a
command with one line and status 130 (SIGTERM: 143), after the temporaries are removed;
``adpf train`` names the last checkpoint, from which the same command resumes. ``adpf train`` runs
under ``torchrun`` as it is (DistributedDataParallel, one process per GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import types
import typing
from pathlib import Path

import numpy as np
import torch

import adpf
from adpf import trained_on
from adpf.cache import sweep_temporaries, write_json
from adpf.checkpoint import (CheckpointError, checkpoint_dict, config_from_checkpoint, load_checkpoint,
                             load_model, save_checkpoint)
from adpf.config import PRESETS, ADPFConfig, get_preset
from adpf.data.prepared import Prepared, PreparedFormatError, default_dataset, load_prepared
from adpf.data.protocols import kfold_subjects, subject_split
from adpf.export import TOLERANCE
from adpf.losses import NonFiniteOutputError
from adpf.outputs import STDOUT, check_output, write_json_output, write_output
from adpf.recipes import RECIPES, Recipe, get_recipe

MODEL_FILE = "model.pt"


class UsageError(Exception):
    """A problem with what the user asked for (reported in one line, exit status 2)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is (as Ctrl-C raises KeyboardInterrupt), so that every
    ``finally`` and ``with`` removes its temporaries; ends the command with exit status 143."""


def _raise_terminated(signum, frame):
    raise Terminated()


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (try --help)\n")


# --- shared options ---------------------------------------------------------------------------

def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="config preset (default: cpu)")
    g.add_argument("--variant", choices=["adpf", "attention_only", "plain_cnn", "fixed_patches", "resnet18"],
                   default="adpf", help="ADPF, AttentionNet alone, a baseline, or the ResNet-18 reference (default: adpf)")
    g.add_argument("--heads", type=int, help="number of attention heads (keeps c_head; Table IX)")
    g.add_argument("--self-sum", action="store_true", help="ablation ADPF w/SA: self-attention summed over channels")
    g.add_argument("--no-ranking", action="store_true", help="ablation: patches in head order, not ranked by a_k")
    g.add_argument("--no-diversity", action="store_true", help="ablation: no diversity loss (λ = 0)")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change any ADPFConfig field (JSON value, e.g. --set sigma=3 --set stem_channels=[8,16]); "
                        "repeatable")


def config_changes(args) -> dict:
    """The config fields the model options change (the preset gives the rest)."""
    changes = {"variant": args.variant}
    if args.heads is not None:
        changes["heads"] = args.heads
    if args.self_sum:
        changes["attention"] = "self_sum"
    if args.no_ranking:
        changes["ranking"] = False
    if args.no_diversity:
        changes["diversity_weight"] = 0.0
    changes.update(field_values(args.set, ADPFConfig, "--set"))
    return changes


def field_values(items: list[str], cls, option: str) -> dict:
    """``FIELD=VALUE`` items as changes to the dataclass ``cls``.

    VALUE is JSON (``0.3``, ``[16,32]``, ``true``), a bare word is a string, and ``True`` /
    ``False`` are accepted for a yes-or-no field. A value of the wrong type for its field is an
    error that names the field and the type (``ranking=False`` must not become the string
    "False", which Python reads as true).
    """
    fields, hints, changes = cls.__dataclass_fields__, typing.get_type_hints(cls), {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise UsageError(f"{option} {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = {"True": True, "False": False}.get(text, text)
        value = tuple(value) if isinstance(value, list) else value
        if not _fits(value, hints[name]):
            raise UsageError(f"{option} {item!r}: {name} takes {_type_name(hints[name])}, got {value!r}")
        changes[name] = float(value) if hints[name] is float else value
    return changes


def _fits(value, hint) -> bool:
    """Whether a parsed ``--set`` value has the field's type (an int fits a float field)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(_fits(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"a JSON list, each {_type_name(args[0])}"
    if hint is type(None):
        return "null"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(hint, str(hint))


def config_from_args(args) -> ADPFConfig:
    try:
        return get_preset(args.preset, **config_changes(args))
    except (TypeError, ValueError) as e:
        raise UsageError(f"invalid config: {e}") from e


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and split")
    g.add_argument("--data", default="synthetic",
                   help="a prepared dataset folder, or 'synthetic' for the embedded synthetic faces (default)")
    g.add_argument("--synthetic-n", type=int, default=10_000, help="images of the synthetic set (default: 10000)")
    g.add_argument("--test", type=float, default=0.2, help="share of the images (by subject) to test on (default: 0.2)")
    g.add_argument("--val", type=float, default=0.1, help="share to validate on (default: 0.1)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the subject-exclusive split (default: 0)")
    g.add_argument("--fold", metavar="I/K", help="use fold I of K-fold subject cross-validation instead")


def data_from_args(args, image_size: int) -> Prepared:
    if args.data == "synthetic":
        return load_prepared(default_dataset(image_size=image_size, n=args.synthetic_n,
                                             progress=not getattr(args, "no_progress", False)))
    return check_ages(load_prepared(args.data))


def check_ages(data: Prepared) -> Prepared:
    """``data``, if every age of its meta.csv is a possible one (the data scripts' check,
    ``readers.AGE_LIMIT``); else `PreparedFormatError` naming the first row that is not."""
    from adpf.data.readers import AGE_LIMIT

    ages = data.meta["age"].to_numpy()
    bad = np.flatnonzero(~((ages >= 0) & (ages <= AGE_LIMIT)))
    if len(bad):
        raise PreparedFormatError(f"{Path(data.root) / 'meta.csv'}: row {bad[0]}: age {ages[bad[0]]:g} is not a "
                                  f"possible age (0..{AGE_LIMIT} years){f'; {len(bad)} rows like it' if len(bad) > 1 else ''}")
    return data


def split_from_args(args, data: Prepared):
    if args.fold:
        try:
            i, k = (int(v) for v in args.fold.split("/"))
        except ValueError:
            raise UsageError(f"--fold {args.fold!r}: expected I/K, e.g. 1/5") from None
        if not 1 <= i <= k:
            raise UsageError(f"--fold {args.fold!r}: need 1 <= I <= K")
        return kfold_subjects(data.meta, k, seed=args.split_seed)[i - 1]
    return subject_split(data.meta, train=1 - args.test - args.val, val=args.val, test=args.test,
                         seed=args.split_seed)


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", choices=sorted(RECIPES), default="cpu", help="training recipe (default: cpu)")
    g.add_argument("--epochs", metavar="N|A,F", help="epochs of every stage, or of stage 1 and stage 2")
    g.add_argument("--batch-size", type=int, help="images per step")
    g.add_argument("--lr", type=float, help="initial learning rate")
    g.add_argument("--workers", type=int, help="DataLoader worker processes")
    g.add_argument("--seed", type=int, help="training seed")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    g.add_argument("--compile", action="store_true", help="torch.compile the trained network")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms")
    g.add_argument("--no-cache", action="store_true", help="train afresh even if the cache holds this training")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--set-recipe", action="append", default=[], metavar="FIELD=VALUE",
                   help="change any Recipe field (JSON value, e.g. --set-recipe optimizer=adamw "
                        "--set-recipe clip_grad_norm=null); repeatable")


def recipe_from_args(args):
    changes = field_values(args.set_recipe, Recipe, "--set-recipe")
    if args.epochs:
        try:
            epochs = [int(v) for v in args.epochs.split(",")]
        except ValueError:
            raise UsageError(f"--epochs {args.epochs!r}: expected N or A,F") from None
        if len(epochs) not in (1, 2):
            raise UsageError(f"--epochs {args.epochs!r}: expected N or A,F")
        if min(epochs) < 1:  # 0 epochs would store an untrained network in the cache as a trained one
            raise UsageError(f"--epochs {args.epochs!r}: every stage needs at least 1 epoch")
        changes["attention_epochs"], changes["fusion_epochs"] = epochs[0], epochs[-1]
    for name, field in [("batch_size", "batch_size"), ("lr", "lr"), ("workers", "num_workers"),
                        ("seed", "seed"), ("device", "device")]:
        if getattr(args, name) is not None:
            changes[field] = getattr(args, name)
    if "device" in changes:
        check_device(changes["device"], auto=True)
    if args.no_amp:
        changes["amp"] = False
    if args.compile:
        changes["compile"] = True
    if args.deterministic:
        changes["deterministic"] = True
    try:
        return get_recipe(args.recipe, **changes)
    except ValueError as e:
        raise UsageError(f"invalid recipe: {e}") from e


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# --- sub-commands -----------------------------------------------------------------------------

def cmd_train(args) -> int:
    from adpf.train import train

    config, recipe = config_from_args(args), recipe_from_args(args)
    if args.out:
        check_output(args.out, "--out", files=(MODEL_FILE, "result.json"))
    sweep_cache(args)
    data = data_from_args(args, config.image_size)
    split = split_from_args(args, data)
    try:
        result = train(config, data, split, recipe, use_cache=not args.no_cache, progress=progress_enabled(args))
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: main says where to resume from
        stop.args = (resume_note(config, data, split, recipe, fresh=args.no_cache),)
        raise
    if not is_main_process():
        return 0
    if args.out:
        out = Path(args.out)
        state = load_checkpoint(result.checkpoint)
        save_checkpoint(checkpoint_dict(config_from_checkpoint(state, result.checkpoint), state["model"],
                                        state["stage"], state["epoch"],
                                        meta={"trained_on": trained_on.record(args, data)}), out / MODEL_FILE)
        write_json(out / "result.json", result.to_dict())
    test = result.metrics["test"]
    print(f"{config.variant} on {data.root} ({len(split.train)} train / {len(split.val)} val / "
          f"{len(split.test)} test){' [cached]' if result.cached else ''}")
    print(f"test MAE {test['mae']:.3f}   CS(5) {test['cs'][5]:.3f}")
    for stage, ips in result.throughput.items():
        print(f"stage {stage}: {result.timings[stage]:.1f} s, {ips:.1f} images/s")
    print(f"checkpoint: {Path(args.out) / MODEL_FILE if args.out else result.checkpoint}")
    return 0


def sweep_cache(args) -> None:
    """Remove from the cache the temporaries that killed runs left (``sweep_temporaries``), saying so."""
    if not is_main_process():
        return
    removed = sweep_temporaries()
    if removed:
        print(f"adpf {args.command}: removed {len(removed)} stale temporary file(s) or folder(s) "
              f"({sum(size for _, size in removed) / 1e6:.1f} MB) that killed runs left in the cache: "
              f"{removed[0][0]}" + (" and others" if len(removed) > 1 else ""), file=sys.stderr)


def resume_note(config: ADPFConfig, data: Prepared, split, recipe, fresh: bool) -> str:
    """Where the last checkpoint of an interrupted training is, and how to go on from it."""
    from adpf.cache import data_identity, split_identity
    from adpf.train import as_split, plan_stages

    identity = {"data": data_identity(data), "split": split_identity(as_split(split, len(data)))}
    saved = [s.folder / "checkpoint.pt" for s in plan_stages(config, identity, recipe)
             if (s.folder / "checkpoint.pt").is_file()]
    if not saved:
        return "no epoch had finished, so there is no checkpoint to resume from"
    how = "the same command without --no-cache resumes from it" if fresh else "the same command resumes from it"
    return f"the last checkpoint is {saved[-1]}; {how}"


def checkpoint_path(path: str) -> Path:
    """A checkpoint file, or the ``model.pt`` inside a folder written by ``adpf train --out``."""
    p = Path(path)
    return p / MODEL_FILE if p.is_dir() else p


def cmd_evaluate(args) -> int:
    from torch.utils.data import DataLoader

    from tqdm.auto import tqdm

    from adpf.data.prepared import PreparedFaces
    from adpf.evaluate import format_metrics, predict, summarize

    path = checkpoint_path(args.checkpoint)
    if args.json:
        check_output(args.json, "--json", kind="json", inputs=[path])
    model = load_model(path, device_from_args(args))
    trained = trained_on.read(load_checkpoint(path))
    taken = trained_on.fill_data_options(args, trained)
    if "data" in taken and args.data != "synthetic" and not Path(args.data).is_dir():
        raise UsageError(f"{path} was trained on {args.data}, which is not there any more; pass --data")
    data = data_from_args(args, model.config.image_size)
    if data.image_size != model.config.image_size:
        raise UsageError(f"{data.root}: images are {data.image_size} px, the model takes {model.config.image_size} px")
    if "data" in taken:
        check_same_data(data, trained, path)
    rows = np.arange(len(data)) if args.on == "all" else getattr(split_from_args(args, data), args.on)
    if not len(rows):
        raise UsageError(f"the {args.on} set of this split is empty")
    loader = DataLoader(PreparedFaces(data, rows), batch_size=args.batch_size)
    predictions = predict(model, tqdm(loader, desc="evaluating", unit="batch", disable=progress_disabled(args)))
    metrics = summarize(predictions)
    print(f"{args.on} set of {data.root}: {metrics['count']} images; the model was {trained_on.describe(trained)}")
    print(format_metrics(metrics))
    if args.json:
        write_json_output(args.json, metrics)
    return 0


def check_same_data(data: Prepared, trained: dict, path: Path) -> None:
    """Refuse the recorded training folder when its content is no longer what ``path`` was
    trained on (``trained_on.record``'s content hash; its image count in older checkpoints)."""
    from adpf.cache import data_identity

    then, now = trained.get("content"), data_identity(data)["content"]
    if (then or now) != now or trained.get("count") != len(data):
        raise UsageError(f"{data.root}: its content changed since {path} was trained on it ({trained.get('count')} "
                         f"images then, {len(data)} now); pass --data {data.root} to evaluate on it as it is")


def progress_disabled(args) -> bool | None:
    """tqdm's ``disable``: True with ``--no-progress``, else None (bars only on a terminal)."""
    return True if args.no_progress else None


def progress_enabled(args) -> bool:
    """Whether to draw progress bars: not with ``--no-progress``, and only on a terminal."""
    return not args.no_progress and sys.stderr.isatty()


def device_from_args(args) -> str:
    """``--device``, checked; by default CUDA when available, else the CPU."""
    if args.device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(args.device)


def check_device(text: str, auto: bool = False) -> str:
    """``text`` if it names a device here: cpu, cuda or cuda:N (and auto where ``auto``); else a UsageError."""
    if auto and text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {text}: expected {'auto, ' if auto else ''}cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


#: Faces drawn by ``adpf predict --save-patches`` (the first ones).
PATCH_FIGURE_FACES = 24


def cmd_predict(args) -> int:
    from adpf import photos
    from adpf.data.align import require_aligner

    if args.no_align and args.align != "auto":
        raise UsageError(f"--no-align and --align {args.align}: give one of them (--no-align is --align resize)")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: expected at least 1")
    if not args.photos and not args.list:
        raise UsageError("name the photos (files or folders) or a --list FILE of them")
    path = checkpoint_path(args.checkpoint)
    paths, problems = photos.photo_paths(args.photos, args.list)
    check_predict_outputs(args, [*paths, *args.list, path])
    model = load_model(path, device_from_args(args))
    if args.save_patches and model.config.variant == "plain_cnn":
        raise UsageError("--save-patches needs a model with patches or attention (not plain_cnn)")
    trained = trained_on.read(load_checkpoint(path))
    alignment = photos.choose_alignment("resize" if args.no_align else args.align, (trained or {}).get("alignment"))
    if alignment == "dlib":  # a missing dlib is said once, before any photo (AlignerMissingError: exit 2)
        require_aligner()
    for note in photos.training_notes(trained, alignment, path):
        print(f"adpf predict: {note}", file=sys.stderr)
    for problem in problems:
        print(f"adpf predict: {problem}", file=sys.stderr)
    if not paths:
        raise UsageError("no photos found in " + ", ".join(map(str, [*args.photos, *args.list])))
    rows = []
    try:
        for row in photos.predict_photos(model, paths, alignment, args.batch_size, all_faces=args.all_faces,
                                         keep_images=PATCH_FIGURE_FACES if args.save_patches else 0,
                                         progress=progress_disabled(args)):
            rows.append(row)
            report_row(row, args)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: keep what was predicted
        if rows and (args.csv or args.json):
            stop.args = (f"the {len(rows)} rows predicted so far are written to {write_predictions(rows, args)}",)
        raise
    write_predictions(rows, args)
    faces = [(r.file, r.image, r.age, r.std, r.patch_boxes[None]) for r in rows if r.image is not None]
    if args.save_patches and faces:
        save_patch_figure(faces, args.save_patches)
        print(f"patches of the first {len(faces)} faces drawn in {args.save_patches}", file=report_stream(args))
    return 1 if problems or any(row.error for row in rows) else 0


def check_predict_outputs(args, inputs: list) -> None:
    """``--csv``, ``--json`` and ``--save-patches`` checked before any work (`check_output`):
    none may be one of ``inputs`` or an existing file of another kind; ``-`` (standard output)
    for one of --csv and --json only."""
    if args.csv == STDOUT and args.json == STDOUT:
        raise UsageError("--csv - and --json -: only one of them can go to standard output")
    if args.save_patches:  # a folder resolved to the file in it
        args.save_patches = patch_figure_path(args.save_patches, inputs)
    for option in ("csv", "json"):
        if getattr(args, option):
            check_output(getattr(args, option), f"--{option}", kind=option, inputs=inputs)


def report_stream(args):
    """Where ``adpf predict`` prints its lines: stdout, or stderr when an output goes to stdout."""
    return sys.stderr if STDOUT in (args.csv, args.json) else sys.stdout


def report_row(row, args) -> None:
    """One line per face: the age, or why the photo was skipped (stderr)."""
    from tqdm.auto import tqdm

    if row.error:
        tqdm.write(f"{row.file}: skipped: {row.error}", file=sys.stderr)
        return
    which = f" [face {row.face + 1} of {row.faces_found}]" if args.all_faces and row.faces_found > 1 else ""
    notes = [f"alignment doubtful: {row.doubts}"] if row.doubts else []
    if row.faces_found > 1 and not args.all_faces:
        notes.append(f"{row.faces_found} faces found; the largest, at {row.box}, is used (--all-faces: each)")
    tqdm.write(f"{row.file}{which}: {row.age:.1f} ± {row.std:.1f} years" + "".join(f" ({n})" for n in notes),
               file=report_stream(args))


def write_predictions(rows, args) -> str:
    """Write ``rows`` to ``--csv`` and ``--json`` (those given); returns where, for a message."""
    from adpf.photos import write_rows

    return " and ".join(write_rows(rows, getattr(args, fmt), fmt) for fmt in ("csv", "json") if getattr(args, fmt))


FIGURE_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def patch_figure_path(text: str, inputs: list) -> Path:
    """``--save-patches``: a figure file (one of ``FIGURE_FORMATS``), or a folder (one that exists,
    or a name ending in /) that receives ``patches.png``; anything else is refused (matplotlib
    would add ``.png`` to a name without a suffix and write beside the folder). An existing file
    is replaced only if it is an earlier patch figure (``outputs.FIGURE_MARK``)."""
    p = Path(text)
    if p.is_dir() or text.endswith(("/", os.sep)):
        p = p / "patches.png"
    elif p.suffix.lower() not in FIGURE_FORMATS:
        raise UsageError(f"--save-patches {text}: expected a file name ending in {', '.join(FIGURE_FORMATS)}, "
                         "or a folder")
    return check_output(p, "--save-patches", kind="figure", inputs=inputs)


def save_patch_figure(faces, path: Path) -> None:
    """One panel per face: the face with its ranked boxes P_1..P_n, written atomically with
    ``outputs.FIGURE_MARK`` in its metadata (names in scripts the font lacks show as boxes,
    without matplotlib's warning)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adpf.outputs import FIGURE_MARK
    from adpf.plotting import draw_boxes, grid, show_face

    fig, axes = grid(len(faces), ncols=min(4, len(faces)), size=2.6)
    for ax, (photo, face, age, std, boxes) in zip(axes.flat, faces):
        show_face(ax, face, f"{Path(photo).name}\n{age:.1f} ± {std:.1f} y")
        draw_boxes(ax, boxes[0], labels=[f"P{k + 1}" for k in range(boxes.shape[1])])
    fmt = path.suffix.lower().lstrip(".")
    mark = {"pil_kwargs": {"comment": FIGURE_MARK}} if fmt in ("jpg", "jpeg") else \
        {"metadata": {"Software" if fmt == "png" else "Creator": FIGURE_MARK}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        write_output(path, lambda f: fig.savefig(f, format=fmt, bbox_inches="tight", **mark), mode="wb")
    plt.close(fig)


#: The file name endings of each export format (``adpf export --out``).
EXPORT_SUFFIXES = {"torchscript": (".pt", ".pth", ".ts"), "onnx": (".onnx",)}


def cmd_export(args) -> int:
    from importlib.util import find_spec

    from adpf.export import export

    path = checkpoint_path(args.checkpoint)
    suffixes = EXPORT_SUFFIXES[args.format]
    if not Path(args.out).is_dir() and Path(args.out).suffix.lower() not in suffixes:
        name = {"torchscript": "TorchScript", "onnx": "ONNX"}[args.format]
        raise UsageError(f"--out {args.out}: {name} exports are {' or '.join(suffixes)} files")
    out = check_output(args.out, "--out", kind="export", inputs=[path], force=args.force)
    if args.check < 2:
        raise UsageError(f"--check {args.check}: expected at least 2 faces")
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if args.format == "onnx" and find_spec(m) is None]
    if missing:
        raise UsageError(f"--format onnx needs {', '.join(missing)}: pip install 'adpf[export]'")
    model = load_model(path, "cpu")
    faces, what = trained_on.sample_faces(trained_on.read(load_checkpoint(path)), args.check, model.config.image_size)
    try:
        difference = export(model, out, args.format, faces)
    except ValueError as e:
        if isinstance(e, NonFiniteOutputError):
            raise
        print(f"adpf export: {e}", file=sys.stderr)
        return 1
    size = model.config.image_size
    print(f"wrote {out} ({args.format}): images (B, 3, {size}, {size}) float32 in [0, 1] -> age (B,), std (B,)")
    agree = "the same as the PyTorch model's, to the bit" if difference == 0 else \
        f"within {difference:.2g} years of the PyTorch model's"
    print(f"checked on {len(faces)} {what}: ages and stds {agree}")
    return 0


def cmd_protocol(args) -> int:
    from adpf import folds

    config, recipe = config_from_args(args), recipe_from_args(args)
    out = check_output(args.out, "--out", files=("protocol.json",))
    for name in ("partitions", "folds", "max_folds", "subset_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected at least 1")
    if args.images < 0:
        raise UsageError(f"--images {args.images}: expected a count, or 0 for all")
    data = data_from_args(args, config.image_size)
    if data.image_size != config.image_size:
        raise UsageError(f"{data.root}: images are {data.image_size} px, the model takes {config.image_size} px")
    options = {name: getattr(args, name) for name in folds.DEFAULTS}
    note = folds.split_note(args.name, data, options)
    if note:
        print(f"adpf protocol: note: {note}", file=sys.stderr)
    try:
        record = folds.run_folds(args.name, config, data, recipe, out, options, command=shlex.join(args.argv),
                                 max_folds=args.max_folds, restart=args.restart, progress=progress_disabled(args),
                                 train_progress=progress_enabled(args),
                                 use_cache=not args.no_cache)
    except folds.RecordMismatch as e:
        raise UsageError(str(e)) from None
    print(folds.report(record))
    print(f"record: {out / 'protocol.json'}")
    return 0


def cmd_info(args) -> int:
    from adpf.networks import parameter_table

    for name in [args.preset] if args.preset else sorted(PRESETS):
        config = get_preset(name)
        print(f"preset {name}: {config.image_size}×{config.image_size} input, X = {config.x_size}×{config.x_size}"
              f"×{config.x_channels}, {config.heads} heads, ages {config.age_min}..{config.age_max}")
        print(f"  {'variant':<16}{'AttentionNet':>14}{'FusionNet':>12}{'total':>12}")
        for variant, attention, fusion, total in parameter_table(config):
            print(f"  {variant:<16}{attention:>14,}{fusion:>12,}{total:>12,}")
    print("recipes: " + ", ".join(f"{k} ({r.attention_epochs}+{r.fusion_epochs} epochs, lr {r.lr}, {r.schedule})"
                                  for k, r in RECIPES.items()))
    return 0


def cmd_experiments(args) -> int:
    import pandas as pd

    from adpf.experiments import ABLATIONS, DEFAULT_ROWS, ablation_table, heads_table

    config, recipe = config_from_args(args), recipe_from_args(args)
    if args.out:
        check_output(args.out, "--out")
    sweep_cache(args)
    rows = args.rows.split(",") if args.rows else list(DEFAULT_ROWS)
    unknown = [r for r in rows if r not in ABLATIONS]
    if unknown:
        raise UsageError(f"--rows: unknown {unknown}; choose from {list(ABLATIONS)}")
    try:
        heads = [int(h) for h in args.heads_list.split(",")]
    except ValueError:
        raise UsageError(f"--heads-list {args.heads_list!r}: expected integers like 1,3,5") from None
    changes = {k: v for k, v in config_changes(args).items() if k not in ("heads", "variant")}
    for n in heads if args.table == "heads" else []:  # every row's config, before any training
        try:
            get_preset(args.preset, heads=n, **changes)
        except (TypeError, ValueError) as e:
            raise UsageError(f"--heads-list {args.heads_list!r}: {n} heads: {e}") from None
    if args.seeds and args.seed is not None:
        raise UsageError("--seed and --seeds: give one of them")
    if args.test_on and args.table != "ablation":
        raise UsageError("--test-on goes with the ablation table")
    data = data_from_args(args, config.image_size)
    split = split_from_args(args, data)
    runs = {"seeds": args.seeds, "record": args.record, "command": shlex.join(args.argv),
            "progress": progress_enabled(args)}
    if args.table == "ablation":
        test_on = load_prepared(args.test_on) if args.test_on else None
        table = ablation_table(config, data, split, recipe, rows, attention=args.attention, test_on=test_on, **runs)
    else:
        table = heads_table(data, split, recipe, heads, preset=args.preset, attention=args.attention, **runs,
                            **changes)
    shown = table.drop(columns=["history", "stage_keys", "config_digest", "device"])
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        text = shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".csv":
            shown.to_csv(out, index=False)
        else:
            out.write_text(provenance(args, data, split, recipe) + text + "\n")
    return 0


def provenance(args, data: Prepared, split, recipe) -> str:
    """Comment lines saying when, on what and how a table was made."""
    import datetime
    import platform

    from adpf.train import hardware

    hw = hardware()
    lines = [
        f"adpf {args.command} {args.table}, {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"command: {' '.join(args.argv)}",
        f"data: {data.root} ({data.info.get('name')}, {len(data)} images, {data.image_size}×{data.image_size} px); "
        f"split {getattr(split, 'name', '')}: {len(split.train)} train / {len(split.val)} val / "
        f"{len(split.test)} test (subject-exclusive)",
        f"recipe {args.recipe}: " + ", ".join(f"{k}={v}" for k, v in recipe.to_dict().items()),
        f"hardware: {hw.get('gpu') or platform.processor() or platform.machine()}, {hw['cpu_count']} CPUs, "
        f"{hw['torch_threads']} torch threads, torch {torch.__version__}",
    ]
    return "".join(f"# {line}\n" for line in lines)


# --- the parser -------------------------------------------------------------------------------

def build_parser() -> Parser:
    parser = Parser(prog="adpf", description="Attention-based Dynamic Patch Fusion for face-based age estimation.",
                    epilog="Speed, memory and FLOPs are measured by scripts beside the library, in a source "
                           "checkout: python benchmarks/benchmark.py --help (benchmarks/README.md).")
    parser.add_argument("--version", action="version", version=f"adpf {adpf.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a model (ADPF, an ablation or a baseline)",
                       description="Train ADPF, an ablation or a baseline on a prepared dataset; "
                                   "finished trainings are loaded from the cache.",
                       epilog="Ctrl-C (or SIGTERM) stops the training, names the last checkpoint (saved after "
                              "every epoch) and exits with status 130 (143): the same command resumes from it. "
                              "Exit status: 0 trained, 2 usage error (one line on stderr).")
    add_model_options(p)
    add_data_options(p)
    add_recipe_options(p)
    p.add_argument("--out", help="folder to write model.pt and result.json into")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a prepared dataset",
                       description="MAE, CS(v), MAE and CS by age band, and the calibration of the reported ± "
                                   "of a checkpoint on a prepared dataset. The data and split options default to "
                                   "the ones the checkpoint was trained with (recorded by adpf train --out).")
    p.add_argument("checkpoint", help="a checkpoint file, or a folder written by adpf train --out")
    add_data_options(p)
    p.set_defaults(**dict.fromkeys(trained_on.DATA_DEFAULTS))  # None: take the recorded value
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--on", choices=["test", "val", "train", "all"], default="test",
                   help="which rows of the split to evaluate on (default: test)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("predict", help="estimate the age of faces in photos",
                       description="Align each photo with dlib (68 landmarks, eyes), then print the "
                                   "predicted age ± the standard deviation of the predicted distribution.",
                       epilog="Exit status: 0 every photo was predicted; 1 some photos were skipped (each named "
                              "on stderr with the reason, and in --csv/--json with its error), the others "
                              "predicted; 2 usage error (a bad option, a missing or unreadable checkpoint, no "
                              "photos: one line on stderr); 130 interrupted (the rows predicted so far are written to --csv and "
                              "--json). --csv and --json replace only an earlier adpf CSV or JSON, --save-patches only "
                              "an earlier patch figure, never an input or an image; - is standard output. An age can "
                              "differ by a few hundredths of a year between --batch-size values (float sums in "
                              "another order can move a patch box by a pixel at its threshold).")
    p.add_argument("photos", nargs="*", metavar="PATH", help="photos, or folders (searched recursively for images)")
    p.add_argument("--list", action="append", default=[], metavar="FILE",
                   help="a text file naming one photo per line (relative to the file's folder); repeatable")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file, or a folder written by adpf train --out")
    p.add_argument("--align", choices=["auto", "dlib", "resize"], default="auto",
                   help="dlib: detect the face and crop it aligned on the eyes; resize: the photos are aligned "
                        "crops, take the central square; auto (default): as the training faces were made")
    p.add_argument("--no-align", action="store_true", help="the same as --align resize")
    p.add_argument("--all-faces", action="store_true",
                   help="predict every face dlib finds (default: the largest face of each photo)")
    p.add_argument("--csv", metavar="FILE", help="write one row per face: file, face, age, std, box x0,y0,x1,y1, "
                   "aligned, faces_found, doubts, error")
    p.add_argument("--json", metavar="FILE", help="the same rows as a JSON list")
    p.add_argument("--batch-size", type=int, default=32, help="faces per forward pass (default: 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--save-patches", metavar="OUT.png|DIR", help="draw each face with its ranked patches P1..Pn "
                   "into OUT.png (or .pdf, .svg, .jpg), or into DIR/patches.png")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("export", help="export a checkpoint to TorchScript or ONNX (faces in, ages out)",
                       description="Write the network and the reading of its age distribution as one graph: "
                                   "images (B, 3, S, S) float32 in [0, 1] -> age (B,) and std (B,) in years. "
                                   "The file is kept only if it gives the PyTorch model's ages on --check faces "
                                   "of the training data.",
                       epilog="Exit status: 0 written and checked; 1 the export's ages differ (nothing written); "
                              "2 usage error. ONNX needs the export extra: pip install 'adpf[export]'.")
    p.add_argument("checkpoint", help="a checkpoint file, or a folder written by adpf train --out")
    p.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the file to write (.pt, .pth or .ts for TorchScript; .onnx). An existing file is replaced "
                        "only if it is an earlier adpf export, never if it is the checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing --out file of any kind (still not the "
                                                        "checkpoint)")
    p.add_argument("--check", type=int, default=8, metavar="N",
                   help="faces to compare the export with the PyTorch model on (default: 8); the export is kept "
                        f"when its ages and stds are within {TOLERANCE} years of the PyTorch model's")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("protocol", help="a paper protocol fold by fold (FG-NET LOPO, MORPH II Settings I-III, CACD)",
                       description="Train and test every fold of one of the paper's protocols, recording each "
                                   "fold's result in OUT/protocol.json as it finishes; a rerun skips the finished "
                                   "folds. Prints MAE and CS(5) per fold and their mean ± std over folds.",
                       epilog="Protocols: fgnet-lopo (leave one person out), morph-setting1 (--partitions random "
                              "80/20 splits by subject), morph-setting2 (S1/S2/S3; needs race and gender), "
                              "morph-setting3 (White subjects, --folds folds; needs race), cacd (1,800/120/80 "
                              "celebrities; --cacd-train val trains on the 120). Exit status: 0 done (or "
                              "stopped at --max-folds); 2 usage error, or OUT holds a run of other settings.")
    p.add_argument("name", choices=["cacd", "fgnet-lopo", "morph-setting1", "morph-setting2", "morph-setting3"])
    add_model_options(p)
    p.add_argument("--data", required=True, help="a prepared dataset folder (meta.csv: subject; race and gender "
                                                 "for MORPH II), or 'synthetic'")
    add_recipe_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the record protocol.json")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the random splits (default: 0)")
    p.add_argument("--partitions", type=int, default=20, help="Setting I: random partitions (default: 20)")
    p.add_argument("--folds", type=int, default=5, help="Setting III: cross-validation folds (default: 5)")
    p.add_argument("--images", type=int, default=5492, help="Setting III: images of White subjects (default: "
                                                            "5492, as the paper; 0: all)")
    p.add_argument("--subset-size", type=int, help="Setting II: images in S1 and in S2 (default: the most possible)")
    p.add_argument("--cacd-train", choices=["train", "val"], default="train", help="CACD: the part to train on")
    p.add_argument("--max-folds", type=int, metavar="N", help="stop once N folds are recorded (a rerun goes on)")
    p.add_argument("--restart", action="store_true", help="start the record in OUT afresh")
    p.set_defaults(run=cmd_protocol, synthetic_n=10_000)

    p = sub.add_parser("info", help="parameter counts of every preset and variant")
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("experiments", help="the ablation table (Table VII) or the heads sweep (Table IX)",
                       description="Train (or load from the cache) every row of a table and print it.")
    p.add_argument("table", choices=["ablation", "heads"])
    add_model_options(p)
    add_data_options(p)
    add_recipe_options(p)
    p.add_argument("--rows", help="ablation rows, comma-separated (default: all but 'ADPF (placed boxes)', "
                                  "which is not the paper's)")
    p.add_argument("--heads-list", default="1,2,3,4,5,6,7,8", help="heads of the heads sweep (default: 1..8)")
    p.add_argument("--attention", action="store_true",
                   help="add head overlap and the share of attention on the true regions (synthetic set)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="train every row with each of these training seeds (data and split stay the same)")
    p.add_argument("--record", metavar="FILE.json",
                   help="write the rows to this JSON record after each one; a rerun keeps the finished rows")
    p.add_argument("--test-on", metavar="DATA",
                   help="ablation: also test every model on all faces of this prepared dataset")
    p.add_argument("--out", help="also write the table (.csv, else text)")
    p.set_defaults(run=cmd_experiments)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adpf`` command; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = ["adpf", *argv]
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt as stop:  # Ctrl-C (130) or SIGTERM (143), after every clean-up ran
        what = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        print(f"adpf {args.command}: {what}" + "".join(f"; {a}" for a in stop.args), file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    except OSError as e:  # a file or folder that cannot be read or written, a full disk
        message = f"{e.filename}: {e.strerror}" if e.filename is not None else e
        print(f"adpf {args.command}: error: {message}", file=sys.stderr)
        return 2
    except NonFiniteOutputError as e:  # a diverged or corrupted model: name its checkpoint
        print(f"adpf {args.command}: error: {getattr(args, 'checkpoint', 'the model')}: {e}", file=sys.stderr)
        return 2
    except (UsageError, CheckpointError, PreparedFormatError, KeyError, ValueError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"adpf {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
