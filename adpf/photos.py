"""Ages of the faces in photos: files, folders and lists in; one row per face out, batched on the device.

`photo_paths` expands what the user names (files; folders, searched recursively for image files;
list files of one path per line) into one ordered list. `prepare_faces` makes one photo into the
model's inputs the way the training faces were made (the checkpoint's recorded alignment,
``adpf.trained_on``): "dlib" detects the faces with dlib and crops each aligned on the eyes
(``align.align_faces``: the largest, or every face); "resize" takes the photo's central square
(``align.square_resize``, for photos that are aligned crops already). `predict_photos` runs the
model on batches of ``batch_size`` faces (one forward per batch, not per photo) and yields one
`FaceRow` per face, photos in the order given, and one per photo without a face, with the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from adpf.data.align import AlignerMissingError, align_faces, load_image, square_resize
from adpf.data.prepared import images_to_tensor
from adpf.evaluate import model_device, ranked_boxes
from adpf.losses import predict_age

#: File suffixes taken from a folder (any file named explicitly is tried, whatever its suffix).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")

#: The columns of the CSV and the keys of each JSON row.
COLUMNS = ("file", "face", "age", "std", "x0", "y0", "x1", "y1", "aligned", "faces_found", "doubts", "error")


@dataclass
class FaceRow:
    """One face of one photo (or one photo without a usable face).

    face: which face of the photo, 0 the largest (-1 for a photo without a face).
    age, std: the predicted age and the std of the predicted distribution (Eq. 9-10; NaN with an error).
    box: the face in the photo's pixels, upright as its EXIF orientation says: (x0, y0, x1, y1),
        dlib's detection box (its edges, rounded), or the central square (x1/y1 exclusive) without dlib.
    aligned: True when dlib aligned the face on the eyes, False when the central square was resized.
    faces_found: how many faces dlib found in the photo; 1 without dlib.
    doubts: why the alignment may be wrong ("; "-joined, ``align.alignment_doubts``; "" when plausible).
    error: why the photo gave no age ("" when it did).
    image, patch_boxes: the model's input ``(S, S, 3)`` uint8 and its patch boxes ``(n, 4)``
        (kept only when asked for, to draw them).
    """

    file: str
    face: int = -1
    age: float = math.nan
    std: float = math.nan
    box: tuple[int, int, int, int] | None = None
    aligned: bool = False
    faces_found: int = 0
    doubts: str = ""
    error: str = ""
    image: np.ndarray | None = field(default=None, repr=False)
    patch_boxes: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self.file, self.doubts, self.error = map(printable, (self.file, self.doubts, self.error))

    def to_dict(self) -> dict:
        """The row as plain JSON values (the box as x0..y1, None without one)."""
        x0, y0, x1, y1 = self.box if self.box is not None else (None,) * 4
        ok = not self.error
        return {"file": self.file, "face": self.face, "age": round(self.age, 3) if ok else None,
                "std": round(self.std, 3) if ok else None, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                "aligned": self.aligned, "faces_found": self.faces_found, "doubts": self.doubts, "error": self.error}


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that are not UTF-8 (held by Python as lone
    surrogates) written as ``\\xNN``, so that it can be printed and written as UTF-8."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an undecodable byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def photo_paths(items: Iterable[str | Path], lists: Iterable[str | Path] = ()) -> tuple[list[Path], list[str]]:
    """The photos named by ``items`` (files, or folders searched recursively for `IMAGE_SUFFIXES`,
    sorted, hidden files and folders left out) and by the list files ``lists`` (one path per line,
    a file or a folder as on the command line; blank lines and lines starting with # are skipped;
    relative paths are relative to the list's folder; `read_list` caps the lines).

    Returns the paths in that order and the problems found (a folder with no image file, a list
    that cannot be read), each one line naming the path.
    """
    paths, problems = [], []
    named = [Path(item) for item in items]
    for name in lists:
        try:
            named += read_list(Path(name))
        except ValueError as e:
            problems.append(str(e))
    for p in named:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                problems.append(f"{printable(str(p))}: no image file in this folder ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        else:
            paths.append(p)
    return paths, problems


#: A list file's limits: bytes of one line (a path; Linux's PATH_MAX is 4096) and lines.
MAX_LIST_LINE, MAX_LIST_LINES = 4096, 1_000_000


def read_list(lst: Path) -> list[Path]:
    """The paths a list file names, read line by line (a device such as /dev/zero is not read
    into memory); ValueError naming the list when it cannot be read, or holds a line longer than
    `MAX_LIST_LINE` bytes or more than `MAX_LIST_LINES` lines."""
    paths = []
    try:
        with open(lst, "rb") as f:
            for number in range(1, MAX_LIST_LINES + 2):
                raw = f.readline(MAX_LIST_LINE + 1)
                if not raw:
                    return paths
                if number > MAX_LIST_LINES:
                    raise ValueError(f"{lst}: not a list of photos (more than {MAX_LIST_LINES:,} lines)")
                if len(raw) > MAX_LIST_LINE:
                    raise ValueError(f"{lst}: not a list of photos (line {number} is longer than "
                                     f"{MAX_LIST_LINE} bytes)")
                line = raw.decode("utf-8", "surrogateescape").strip()
                if line and not line.startswith("#"):
                    paths.append(lst.parent / line)
    except OSError as e:
        raise ValueError(f"{lst}: cannot read the list ({e.strerror})") from None
    return paths


def prepare_faces(path: str | Path, size: int, alignment: str, all_faces: bool = False) -> list[FaceRow]:
    """The faces of one photo as rows (no age yet), each with the model's input ``(size, size, 3)``
    uint8 in ``image``. ``alignment``: "dlib" (the largest face, or every face with ``all_faces``)
    or "resize" (the central square, one row).

    Raises ``align.AlignmentError`` (unreadable, or no face) naming the file.
    """
    if alignment == "resize":
        rgb = load_image(path)
        h, w = rgb.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return [FaceRow(str(path), face=0, box=(left, top, left + side, top + side), faces_found=1,
                        image=square_resize(rgb, size))]
    return [FaceRow(str(path), face=f.rank, box=tuple(int(round(v)) for v in f.box), aligned=True,
                    faces_found=f.faces, doubts="; ".join(f.doubts), image=f.image)
            for f in align_faces(path, size, all_faces=all_faces)]


def patch_boxes(output, config) -> torch.Tensor | None:
    """The ranked patch boxes ``(B, n, 4)`` of a forward's output (attention maps' boxes for
    AttentionNet alone; None for the plain CNN)."""
    if output.boxes is not None:
        return output.boxes
    return ranked_boxes(output.attention, config) if output.attention is not None else None


@torch.inference_mode()
def predict_photos(model: nn.Module, paths: Sequence[str | Path], alignment: str = "dlib", batch_size: int = 32,
                   all_faces: bool = False, keep_images: int = 0, progress=None) -> Iterator[FaceRow]:
    """The `FaceRow` of every face of ``paths``, photos in order: faces are prepared
    (`prepare_faces`) photo by photo on the CPU and sent through ``model`` (eval mode, on its
    device) ``batch_size`` at a time.

    A photo that cannot be read, has no face, or fails in any other way gets one row with its
    error, and the others go on; so does a face whose output is not finite. A missing dlib
    (``align.AlignerMissingError``) concerns every photo and is raised at once. The first
    ``keep_images`` faces keep their input ``image`` and ``patch_boxes`` (for drawing); the
    others drop the image once predicted. ``progress``: tqdm's ``disable`` (None: a bar on a
    terminal only).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    config, device = model.config, model_device(model)
    pending: list[FaceRow] = []
    kept = 0

    def flush() -> list[FaceRow]:
        nonlocal kept
        faces = [row for row in pending if row.image is not None]
        if faces:
            x = images_to_tensor(np.stack([r.image for r in faces]))
            out = model(x.to(device))
            logits = out.logits.float()
            finite = torch.isfinite(logits).all(dim=-1)
            ages = torch.full((len(faces),), math.nan, device=logits.device)
            stds = ages.clone()
            if finite.any():
                ages[finite], stds[finite] = predict_age(logits[finite], config)
            boxes = patch_boxes(out, config) if kept < keep_images else None
            for i, (row, ok) in enumerate(zip(faces, finite.tolist())):
                if ok:
                    row.age, row.std = float(ages[i]), float(stds[i])
                else:
                    row.error = "the network output is not finite (NaN or inf) for this face"
                if kept < keep_images and boxes is not None:
                    row.patch_boxes = boxes[i].cpu().numpy()
                    kept += 1
                else:
                    row.image = None
        rows = list(pending)
        pending.clear()
        return rows

    try:
        for path in tqdm(paths, desc="predicting", unit="photo", disable=progress, dynamic_ncols=True):
            try:
                pending += prepare_faces(path, config.image_size, alignment, all_faces)
            except AlignerMissingError:  # no photo can be aligned: say so once, not once per photo
                raise
            except Exception as e:  # one bad photo must not stop the batch: report it and go on
                pending.append(FaceRow(str(path), error=getattr(e, "reason", None) or one_line(e)))
            if sum(row.image is not None for row in pending) >= batch_size:
                yield from flush()
        yield from flush()
    finally:
        model.train(was_training)


def one_line(e: Exception) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A value as a CSV cell: empty for None; text that a spreadsheet would run as a formula
    (`FORMULA_STARTS`) behind a ``'``, as OWASP advises."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_rows(rows: Sequence[FaceRow], path: str | Path, fmt: str = "csv") -> str:
    """Write the rows as CSV (``fmt="csv"``: `COLUMNS`, empty cells where a value is missing,
    every cell holding a comma, quote, CR or LF quoted, formulas neutralised by `csv_cell`) or
    JSON (``fmt="json"``: a list of objects with the same keys, null where missing), with
    ``outputs.write_output`` (``-``: standard output; else atomically, through links).
    Returns where they went."""
    import csv
    import json

    from adpf.outputs import write_output

    records = [row.to_dict() for row in rows]
    if fmt == "json":
        return write_output(path, lambda f: json.dump(records, f, indent=1, allow_nan=False))

    def write(f):
        writer = csv.writer(f)  # the excel dialect: CRLF line ends, so a CR or LF in a cell is quoted
        writer.writerow(COLUMNS)
        writer.writerows([csv_cell(record[c]) for c in COLUMNS] for record in records)

    return write_output(path, write)


def choose_alignment(requested: str, trained: str | None) -> str:
    """The alignment to prepare photos with: ``requested`` ("dlib" or "resize"), or for "auto" the
    training's (`trained`: "dlib", "resize", "synthetic" or None), where the drawn faces and an
    unrecorded training mean dlib."""
    if requested != "auto":
        return requested
    return "resize" if trained == "resize" else "dlib"


def training_notes(trained: dict | None, alignment: str, checkpoint: str | Path) -> list[str]:
    """What to tell the user, once, about photos prepared for a model trained on ``trained``
    (``adpf.trained_on``) with ``alignment``: a warning when the model learned from the drawn
    faces, a note when the photos are prepared otherwise than its training faces were (alignment,
    or the fill beyond the photo's edge, ``align.FILL``)."""
    from adpf.data.align import FILL

    trained = trained or {}
    mode, fill = trained.get("alignment"), (trained.get("info") or {}).get("fill")
    if mode == "synthetic":
        return [f"warning: {checkpoint} was trained on the drawn (synthetic) faces, not on photos of people: "
                "its ages for real photos mean little. Train it on real faces first (README, 'A model of real "
                "faces')."]
    if mode in ("dlib", "resize") and alignment != mode:
        return [f"note: {checkpoint} was trained on faces prepared with alignment '{mode}'; these photos get "
                f"'{alignment}'"]
    if mode == "dlib" and fill != FILL:
        said = f"filled '{fill}'" if fill else "prepared without a record of their fill"
        return [f"note: the training faces of {checkpoint} were {said} beyond the photo's edge; these crops are "
                f"filled '{FILL}'"]
    return []
