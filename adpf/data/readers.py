"""Readers that list a dataset's images with their labels.

Every reader returns a `pandas.DataFrame` with one row per image: ``path`` (absolute),
``age`` (years, float), ``subject`` (the identity, as the dataset names it), plus the
dataset's extra labels. Files whose names or rows cannot be read are skipped and listed in
``df.attrs["skipped"]`` as ``(path, reason)`` pairs; a layout that yields nothing raises
`DatasetLayoutError` naming the folder or file and what was expected.

Skipped too: ages that no person has (negative, not finite, above `AGE_LIMIT`), naming the
file and, for label files, the row; and label-file paths that leave the dataset's folder
(absolute, or climbing out with ``..``). Ages above the model's class range (0–100) are
real and kept; the data scripts count them (see `adpf.data.scripts_common`).

=========  =======================================  ===================================
reader     layout                                   subject
=========  =======================================  ===================================
FG-NET     ``NNNAaa[a-z].JPG`` (+ optional .pts)    NNN
MORPH II   album-2 CSV (id_num, age, photo, …)      id_num
           or file names ``NNNNNN_NNGAA.JPG``
CACD       ``AA_First_Last_NNNN.jpg``               the celebrity's name
UTKFace    ``age_gender_race_datetime.jpg[.chip.jpg]``  none in the data: each image is its
                                                    own subject (its file name)
AAF        ``images/NNNNNAaa.jpg`` (+ keypoints/)   NNNNN (one photo per person)
folder     any images + CSV ``path, age[, subject]``  the CSV's subject, else the file
=========  =======================================  ===================================
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
UTK_GENDER = {0: "male", 1: "female"}
UTK_RACE = {0: "white", 1: "black", 2: "asian", 3: "indian", 4: "other"}
MORPH_RACE = {"B": "black", "W": "white", "A": "asian", "H": "hispanic", "O": "other"}
MORPH_GENDER = {"M": "male", "F": "female"}
#: AAF numbers its photos so that serials from 07381 on are men.
AAF_FIRST_MALE = 7381
#: The oldest age accepted as a label (the oldest verified person lived to 122).
AGE_LIMIT = 130


class DatasetLayoutError(ValueError):
    """A folder or label file does not have the layout a reader expects."""


def _images_under(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: not a folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def age_problem(age) -> str | None:
    """Why ``age`` (a label as read) is not a possible age in years, or None when it is."""
    value = pd.to_numeric(age, errors="coerce")
    if not np.isfinite(value):
        return f"age {age!r} is not a number"
    if not 0 <= value <= AGE_LIMIT:
        return f"age {age!r} is not a possible age (0..{AGE_LIMIT} years)"
    return None


def _inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` if ``relative`` stays inside ``root`` (not absolute, no ``..``
    climbing out; judged on the text, so links inside ``root`` are the user's own), else None."""
    text = relative.replace("\\", "/")
    parts = PurePosixPath(text).parts
    if text.startswith("/") or (parts and parts[0].endswith(":")) or os.path.normpath(text).split("/")[0] == "..":
        return None
    return root / text


def _frame(rows: list[dict], skipped: list[tuple[str, str]], dataset: str, where: Path, expected: str) -> pd.DataFrame:
    if not rows:
        raise DatasetLayoutError(f"{where}: no {dataset} images found; expected {expected}"
                                 + (f" ({len(skipped)} files skipped, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    df = pd.DataFrame(rows)
    df["age"] = df["age"].astype(float)
    df.attrs["skipped"] = skipped
    df.attrs["dataset"] = dataset
    return df


def _parse_names(root: Path, pattern: re.Pattern, dataset: str, expected: str, make_row) -> pd.DataFrame:
    rows, skipped = [], []
    for p in _images_under(root):
        m = pattern.fullmatch(p.name)
        if m is None:
            skipped.append((str(p), f"name does not match {expected}"))
            continue
        row = make_row(m)
        problem = age_problem(row["age"])
        if problem:
            skipped.append((str(p), f"{problem} (in the file name)"))
        else:
            rows.append({"path": str(p.resolve()), **row})
    return _frame(rows, skipped, dataset, root, expected)


# --------------------------------------------------------------------------- FG-NET

FGNET_NAME = re.compile(r"(\d{3})a(\d{2})([a-z]?)\.jpe?g", re.IGNORECASE)


def read_fgnet(root: str | Path) -> pd.DataFrame:
    """FG-NET: images ``NNNAaa[a-z].JPG`` anywhere under ``root`` (subject NNN, age aa).
    A column ``pts`` holds the matching 68-point ``.pts`` file where one exists (same stem,
    any case), else empty."""
    root = Path(root)
    df = _parse_names(root, FGNET_NAME, "FG-NET", "NNNAaa[a-z].JPG, e.g. 001A02.JPG",
                      lambda m: {"age": int(m[2]), "subject": m[1]})
    pts = {p.stem.lower(): str(p.resolve()) for p in root.rglob("*.pts")}
    df["pts"] = [pts.get(Path(p).stem.lower(), "") for p in df["path"]]
    return df


def read_pts(path: str | Path) -> np.ndarray:
    """A ``.pts`` landmark file (``version``, ``n_points``, ``{ x y … }``; FG-NET's and IBUG's
    format) as ``(n, 2)``, in the file's order. The order differs between sets: IBUG's 68
    points are dlib's, FG-NET's 68 are not (its eyes are points 27–30 and 32–35, 0-based;
    `adpf.data.align.reference_eyes` reads them)."""
    text = Path(path).read_text(errors="replace")
    m = re.search(r"n_points:\s*(\d+)\s*\{(.*?)\}", text, re.S)
    if m is None:
        raise DatasetLayoutError(f"{path}: not a .pts file (expected 'n_points: N' and '{{ x y ... }}')")
    points = np.array(m[2].split(), dtype=np.float64).reshape(-1, 2)
    if len(points) != int(m[1]):
        raise DatasetLayoutError(f"{path}: announces {m[1]} points but holds {len(points)}")
    return points


# --------------------------------------------------------------------------- MORPH II

MORPH_NAME = re.compile(r"(\d{6})_(\d+)([MF])(\d{2})\.jpe?g", re.IGNORECASE)
MORPH_CSV_COLUMNS = ("id_num", "age", "photo")


def read_morph2(root: str | Path, csv: str | Path | None = None) -> pd.DataFrame:
    """MORPH II (album 2).

    With ``csv`` (the album-2 label file, columns id_num, age, photo and optionally gender
    and race as M/F and B/W/A/H/O) the rows come from it and ``photo`` is looked up under
    ``root`` (as written when that stays inside ``root``, else by file name). Without it, labels come from the file names
    ``NNNNNN_NNGAA.JPG`` (subject NNNNNN, image NN, gender G, age AA, e.g. 000001_0M17.JPG);
    names carry no race, so ``race`` is empty (Setting II and III need the CSV).
    """
    root = Path(root)
    if csv is None:
        return _parse_names(root, MORPH_NAME, "MORPH II", "NNNNNN_NNGAA.JPG, e.g. 000001_0M17.JPG",
                            lambda m: {"age": int(m[4]), "subject": m[1], "gender": MORPH_GENDER[m[3].upper()],
                                       "race": ""})
    csv = Path(csv)
    table = _read_csv(csv, MORPH_CSV_COLUMNS)
    by_name = {p.name.lower(): p for p in _images_under(root)}
    rows, skipped = [], []
    for i, r in table.iterrows():
        photo = str(r["photo"]).replace("\\", "/")
        inside = _inside(root, photo)  # a path leaving root is not followed; its file name is looked up inside
        path = inside if inside is not None and inside.is_file() else by_name.get(Path(photo).name.lower())
        problem = age_problem(r["age"])
        if path is None:
            skipped.append((photo, f"{csv.name} row {i + 2}: image not found under {root}"))
        elif problem:
            skipped.append((photo, f"{csv.name} row {i + 2}: {problem}"))
        else:
            rows.append({"path": str(Path(path).resolve()), "age": float(pd.to_numeric(r["age"])),
                         "subject": str(r["id_num"]).zfill(6),
                         "gender": MORPH_GENDER.get(str(r.get("gender", "")).strip().upper(), ""),
                         "race": MORPH_RACE.get(str(r.get("race", "")).strip().upper(), "")})
    return _frame(rows, skipped, "MORPH II", csv, f"rows whose photo exists under {root}")


# --------------------------------------------------------------------------- CACD

CACD_NAME = re.compile(r"(\d{1,3})_(.+)_(\d{4})\.jpe?g", re.IGNORECASE)


def read_cacd(root: str | Path, meta: str | Path | None = None) -> pd.DataFrame:
    """CACD2000: ``AA_First_Last_NNNN.jpg`` (age AA, celebrity First_Last, photo NNNN).

    meta: optional CSV with columns ``name`` and ``rank`` (and any others, e.g. ``birth``,
    ``identity``, ``split``) joined on the celebrity's name; or CACD's own
    ``celebrity2000_meta.mat`` (its ``celebrityData``: name, identity, birth, rank, lfw).
    """
    root = Path(root)
    df = _parse_names(root, CACD_NAME, "CACD", "AA_First_Last_NNNN.jpg, e.g. 53_Robin_Williams_0001.jpg",
                      lambda m: {"age": int(m[1]), "subject": m[2]})
    if meta is None:
        return df
    table = _read_cacd_meta(Path(meta))
    joined = df.merge(table, how="left", left_on="subject", right_on="name").drop(columns="name")
    joined.attrs = df.attrs
    return joined


def _read_cacd_meta(path: Path) -> pd.DataFrame:
    if path.suffix.lower() != ".mat":
        table = _read_csv(path, ("name",))
        table["name"] = table["name"].astype(str).str.replace(" ", "_")
        return table
    from scipy.io import loadmat  # only CACD's .mat needs scipy

    try:
        data = loadmat(path, squeeze_me=True)["celebrityData"]
    except (KeyError, ValueError, NotImplementedError, OSError) as e:
        raise DatasetLayoutError(f"{path}: expected CACD's celebrity2000_meta.mat with celebrityData ({e})") from e
    fields = [f for f in ("name", "identity", "birth", "rank", "lfw") if f in data.dtype.names]
    table = pd.DataFrame({f: np.atleast_1d(data[f].item() if data.shape == () else data[f]) for f in fields})
    table["name"] = table["name"].astype(str).str.replace(" ", "_")
    return table


# --------------------------------------------------------------------------- UTKFace

UTK_NAME = re.compile(r"(\d{1,3})_([01])_([0-4])_(\d+)\.jpg(?:\.chip\.jpg)?", re.IGNORECASE)


def read_utkface(root: str | Path) -> pd.DataFrame:
    """UTKFace: ``age_gender_race_datetime.jpg.chip.jpg`` (gender 0 male / 1 female; race
    0 white, 1 black, 2 asian, 3 indian, 4 other). The few malformed names are skipped and
    listed. UTKFace has no identity labels: each image is its own subject (its file name),
    so "subject-exclusive" splits of UTKFace are image splits."""
    root = Path(root)
    return _parse_names(root, UTK_NAME, "UTKFace", "age_gender_race_datetime.jpg.chip.jpg, e.g. 25_0_1_20170116174525125.jpg.chip.jpg",
                        lambda m: {"age": int(m[1]), "subject": m[0], "gender": UTK_GENDER[int(m[2])],
                                   "race": UTK_RACE[int(m[3])]})


# --------------------------------------------------------------------------- AAF

AAF_NAME = re.compile(r"(\d{5})A(\d{2})\.jpe?g", re.IGNORECASE)


def read_aaf(root: str | Path) -> pd.DataFrame:
    """All-Age-Faces: ``images/NNNNNAaa.jpg`` (serial NNNNN, age aa; serials from 07381 are
    men) and, when present, ``keypoints/NNNNNAaa.txt`` (49 points) in column ``keypoints``."""
    root = Path(root)
    images = root / "images" if (root / "images").is_dir() else root
    df = _parse_names(images, AAF_NAME, "AAF", "images/NNNNNAaa.jpg, e.g. images/00028A02.jpg",
                      lambda m: {"age": int(m[2]), "subject": m[1],
                                 "gender": "male" if int(m[1]) >= AAF_FIRST_MALE else "female"})
    kp = root / "keypoints"
    df["keypoints"] = [str((kp / f"{Path(p).stem}.txt").resolve()) if (kp / f"{Path(p).stem}.txt").is_file() else ""
                       for p in df["path"]]
    return df


# --------------------------------------------------------------------------- any folder

def read_folder(root: str | Path, csv: str | Path) -> pd.DataFrame:
    """Images under ``root`` labelled by a CSV with columns ``path`` (relative to ``root``),
    ``age`` and optionally ``subject`` (else each image is its own subject); other columns
    are kept. Rows whose path leaves ``root``, whose file is missing or whose age is not a
    possible age (`age_problem`) are skipped, naming the CSV row."""
    root, csv = Path(root), Path(csv)
    table = _read_csv(csv, ("path", "age"))
    rows, skipped = [], []
    for i, r in table.iterrows():
        path = _inside(root, str(r["path"]))
        problem = age_problem(r["age"])
        if path is None:
            skipped.append((str(r["path"]), f"{csv.name} row {i + 2}: path {r['path']!r} leaves {root}; refused"))
        elif not path.is_file():
            skipped.append((str(path), f"{csv.name} row {i + 2}: file not found"))
        elif problem:
            skipped.append((str(path), f"{csv.name} row {i + 2}: {problem}"))
        else:
            extra = {k: v for k, v in r.items() if k not in ("path", "age", "subject")}
            subject = r["subject"] if "subject" in table.columns else str(r["path"])
            rows.append({"path": str(path.resolve()), "age": float(pd.to_numeric(r["age"])), "subject": str(subject), **extra})
    return _frame(rows, skipped, "folder", csv, "rows path,age[,subject] whose files exist")


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: label file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DatasetLayoutError(f"{path}: not a readable CSV ({e})") from e
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DatasetLayoutError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    return table
