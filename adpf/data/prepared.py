"""The one on-disk format every dataset is prepared into, and the torch `Dataset` over it.

A prepared dataset is a folder::

    images.npy   (N, H, W, 3) uint8, aligned faces (opened memory-mapped)
    meta.csv     one row per image: index (0..N-1), age, subject (int), path (source), extras
    info.json    {"format": "adpf-prepared", "version": 1, "name", "image_size", "count",
                  "subjects", "age_min", "age_max", "region_names", ...}
    masks.npy    (N, R, H, W) bool, optional (the synthetic set's age-region masks)

Folders are written to a temporary sibling and renamed into place, so a folder that exists
is complete. Replacing one (``overwrite=True``, the scripts' ``--overwrite``) is allowed only
for a folder this project wrote (`check_replaceable`): anything else is refused, never deleted.
`default_dataset` draws the embedded synthetic set once into a cache folder.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from adpf.checkpoint import temporary_folder
from adpf.data.synthetic import GENERATOR_VERSION, REGION_NAMES, SyntheticFaceSpec, iter_synthetic_faces

FORMAT = "adpf-prepared"
VERSION = 1
REQUIRED_COLUMNS = ("index", "age", "subject", "path")
#: Everything a prepared folder may hold (``skipped.csv``: what the data scripts could not prepare).
WRITTEN_FILES = ("images.npy", "meta.csv", "info.json", "masks.npy", "skipped.csv")


class PreparedFormatError(ValueError):
    """A prepared folder is missing, incomplete or inconsistent (the message names the file)."""


@dataclass
class Prepared:
    """A loaded prepared folder. images and masks are read-only memory maps."""

    root: Path
    images: np.ndarray
    meta: pd.DataFrame
    info: dict
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(self.info.get("region_names") or ())


# --------------------------------------------------------------------------- writing

def check_replaceable(root: str | Path) -> None:
    """Raise `FileExistsError` (naming ``root`` and why) unless ``root`` is a prepared folder
    this project wrote: a real folder (not a link) whose info.json says ``"format":
    "adpf-prepared"`` and which holds nothing but `WRITTEN_FILES`. Only such a folder may be
    replaced, so a user's photos, notes or subfolders are never deleted by an overwrite."""
    root = Path(root)
    refuse = f"{root} exists and is not a prepared dataset folder"
    if root.is_symlink() or not root.is_dir():
        raise FileExistsError(f"{refuse} ({'a link' if root.is_symlink() else 'not a folder'}); refusing to replace it")
    try:
        info = json.loads((root / "info.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise FileExistsError(f"{refuse} (no info.json with \"format\": \"{FORMAT}\"); refusing to replace it")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in WRITTEN_FILES or not p.is_file())
    if foreign:
        raise FileExistsError(f"{root} holds files adpf did not write ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); refusing to replace it")


class PreparedWriter:
    """Writes a prepared folder in pieces (for sets too large to hold in memory).

    ``with PreparedWriter(root, count, size, name) as w: w.write(start, images); w.finish(meta)``
    The folder appears at ``root`` only when `finish` succeeds. overwrite=True replaces an
    existing ``root`` only if `check_replaceable` allows it (checked before and at the end).
    Extra files (from `WRITTEN_FILES`) may be written into ``tmp`` before `finish`.
    """

    def __init__(self, root: str | Path, count: int, image_size: int, name: str,
                 region_names: tuple[str, ...] | None = None, overwrite: bool = False):
        self.root, self.overwrite = Path(root), overwrite
        if self.root.exists() or self.root.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{self.root} already exists (pass overwrite=True to replace it)")
            check_replaceable(self.root)
        if count < 1:
            raise ValueError(f"{self.root}: a prepared dataset needs at least one image, got count={count}")
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_folder(self.root)  # .<name>.tmp-<pid>-<random>, mode from the umask
        self.count, self.image_size, self.name = count, image_size, name
        self.region_names = tuple(region_names or ())
        self.images = np.lib.format.open_memmap(self.tmp / "images.npy", mode="w+", dtype=np.uint8,
                                                shape=(count, image_size, image_size, 3))
        self.masks = None
        if self.region_names:
            self.masks = np.lib.format.open_memmap(self.tmp / "masks.npy", mode="w+", dtype=bool,
                                                   shape=(count, len(self.region_names), image_size, image_size))

    def write(self, start: int, images: np.ndarray, masks: np.ndarray | None = None) -> None:
        """Store ``images`` ``(n, H, W, 3)`` uint8 (and ``masks`` ``(n, R, H, W)``) at rows start..start+n."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.images.shape[1:]:
            raise ValueError(f"images must be uint8 of shape (n, {self.image_size}, {self.image_size}, 3), "
                             f"got {images.dtype} {images.shape}")
        self.images[start: start + len(images)] = images
        if self.masks is not None:
            if masks is None or masks.shape != (len(images), *self.masks.shape[1:]):
                raise ValueError(f"masks of shape {(len(images), *self.masks.shape[1:])} expected, "
                                 f"got {None if masks is None else masks.shape}")
            self.masks[start: start + len(images)] = masks

    def finish(self, meta: pd.DataFrame, info: dict | None = None) -> Path:
        """Write meta.csv and info.json, then move the folder into place. Returns its path."""
        meta = _check_meta_for_writing(meta, self.count)
        self.images.flush()
        del self.images
        if self.masks is not None:
            self.masks.flush()
            del self.masks
        meta.to_csv(self.tmp / "meta.csv", index=False)
        full_info = {
            "format": FORMAT, "version": VERSION, "name": self.name, "image_size": self.image_size,
            "count": self.count, "subjects": int(meta["subject"].nunique()),
            "age_min": float(meta["age"].min()), "age_max": float(meta["age"].max()),
            "region_names": list(self.region_names), **(info or {}),
        }
        (self.tmp / "info.json").write_text(json.dumps(full_info, indent=2, default=str))
        if self.root.exists() or self.root.is_symlink():
            if not self.overwrite:  # someone else wrote it meanwhile: keep theirs
                raise FileExistsError(f"{self.root} appeared while writing it")
            check_replaceable(self.root)
            shutil.rmtree(self.root)
        os.replace(self.tmp, self.root)
        return self.root

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "PreparedWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if self.tmp.exists():
            self.abort()


def _check_meta_for_writing(meta: pd.DataFrame, count: int) -> pd.DataFrame:
    missing = [c for c in ("age", "subject") if c not in meta.columns]
    if missing:
        raise ValueError(f"meta lacks column(s) {missing}; it needs age and subject (path optional)")
    if len(meta) != count:
        raise ValueError(f"meta has {len(meta)} rows for {count} images")
    meta = meta.reset_index(drop=True).copy()
    meta["age"] = pd.to_numeric(meta["age"], errors="raise").astype(float)
    if not np.isfinite(meta["age"]).all():
        raise ValueError("meta column age holds non-finite values")
    if not pd.api.types.is_integer_dtype(meta["subject"]):
        meta["subject_name"] = meta["subject"].astype(str)
        meta["subject"] = pd.factorize(meta["subject_name"], sort=True)[0]
    meta["index"] = np.arange(count)
    if "path" not in meta.columns:
        meta["path"] = ""
    return meta[list(REQUIRED_COLUMNS) + [c for c in meta.columns if c not in REQUIRED_COLUMNS]]


def write_prepared(root: str | Path, images: np.ndarray, meta: pd.DataFrame, name: str,
                   masks: np.ndarray | None = None, region_names: tuple[str, ...] | None = None,
                   info: dict | None = None, overwrite: bool = False) -> Path:
    """Write in-memory ``images`` ``(N, H, W, 3)`` uint8 and their ``meta`` as a prepared folder.

    A non-integer ``subject`` column (names) is kept as ``subject_name`` and coded 0..S-1.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
        raise ValueError(f"images must have shape (N, S, S, 3), got {images.shape}")
    with PreparedWriter(root, len(images), images.shape[1], name, region_names, overwrite) as w:
        w.write(0, images, masks)
        return w.finish(meta, info)


def write_synthetic_prepared(root: str | Path, n: int, image_size: int = 128, seed: int = 0,
                             spec: SyntheticFaceSpec | None = None, overwrite: bool = False,
                             progress: bool = True) -> Path:
    """Draw the synthetic faces (`iter_synthetic_faces`) straight into a prepared folder, with
    their masks; meta.csv also holds each image's pose, lighting and decoy strengths.

    progress: a bar while drawing, shown only on a terminal (tqdm's own test); False: never."""
    spec = spec or SyntheticFaceSpec()
    metas = []
    with PreparedWriter(root, n, image_size, "synthetic", REGION_NAMES, overwrite) as w, \
            tqdm(total=n, desc="drawing faces", unit="face", disable=None if progress else True) as bar:
        start = 0
        for faces in iter_synthetic_faces(n, image_size, seed, spec):
            w.write(start, faces.images, faces.masks)
            metas.append(faces.params.assign(path=[f"synthetic:{i}" for i in range(start, start + len(faces))]))
            start += len(faces)
            bar.update(len(faces))
        info = {"seed": seed, "generator_version": GENERATOR_VERSION, "spec": asdict(spec)}
        return w.finish(pd.concat(metas, ignore_index=True), info)


def cache_root() -> Path:
    """Where generated data is cached: ``$ADPF_CACHE_DIR``, else ``.adpf-cache`` in the source
    checkout, else ``~/.cache/adpf``."""
    if os.environ.get("ADPF_CACHE_DIR"):
        return Path(os.environ["ADPF_CACHE_DIR"])
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".adpf-cache"
    return Path.home() / ".cache" / "adpf"


def default_dataset(image_size: int = 64, n: int = 10_000, seed: int = 0,
                    cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The embedded default: the synthetic set drawn once into ``cache_dir/data`` (default
    `cache_root`) and reused. Returns the prepared folder; concurrent callers are safe.
    progress: see `write_synthetic_prepared`."""
    name = f"synthetic-s{image_size}-n{n}-seed{seed}-v{GENERATOR_VERSION}"
    root = Path(cache_dir or cache_root()) / "data" / name
    if root.exists():
        load_prepared(root)  # a broken cache entry is an error worth seeing, not silently redrawn
        return root
    try:
        write_synthetic_prepared(root, n, image_size, seed, progress=progress)
    except OSError:
        if not root.exists():  # another process finished first: use its folder
            raise
    return root


# --------------------------------------------------------------------------- reading

def load_prepared(root: str | Path) -> Prepared:
    """Open a prepared folder, checking that its files agree; raises `PreparedFormatError`."""
    root = Path(root)
    if not root.is_dir():
        raise PreparedFormatError(f"{root}: no prepared dataset folder here "
                                  "(expected a folder with images.npy, meta.csv and info.json)")
    for f in ("info.json", "images.npy", "meta.csv"):
        if not (root / f).is_file():
            raise PreparedFormatError(f"{root / f}: missing (a prepared folder holds images.npy, meta.csv, info.json)")
    try:
        info = json.loads((root / "info.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PreparedFormatError(f"{root / 'info.json'}: not valid JSON ({e})") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise PreparedFormatError(f"{root / 'info.json'}: expected \"format\": \"{FORMAT}\"")
    if info.get("version") != VERSION:
        raise PreparedFormatError(f"{root / 'info.json'}: format version {info.get('version')!r}, "
                                  f"this adpf reads version {VERSION}; prepare the dataset again")
    for key in ("image_size", "count"):
        if not isinstance(info.get(key), int):
            raise PreparedFormatError(f"{root / 'info.json'}: field {key!r} must be an integer")
    n, s = info["count"], info["image_size"]
    images = _load_array(root / "images.npy", np.uint8, (n, s, s, 3))
    regions = info.get("region_names") or []
    masks = _load_array(root / "masks.npy", np.bool_, (n, len(regions), s, s)) if regions else None
    try:
        meta = pd.read_csv(root / "meta.csv")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PreparedFormatError(f"{root / 'meta.csv'}: not a readable CSV ({e})") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in meta.columns]
    if missing:
        raise PreparedFormatError(f"{root / 'meta.csv'}: missing column(s) {missing}")
    if len(meta) != n or not np.array_equal(meta["index"].to_numpy(), np.arange(n)):
        raise PreparedFormatError(f"{root / 'meta.csv'}: expected {n} rows with index 0..{n - 1}, got {len(meta)}")
    if not pd.api.types.is_integer_dtype(meta["subject"]) or not pd.api.types.is_numeric_dtype(meta["age"]) \
            or not np.isfinite(meta["age"]).all():
        raise PreparedFormatError(f"{root / 'meta.csv'}: subject must be integers and age finite numbers")
    return Prepared(root, images, meta, info, masks)


def _load_array(path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise PreparedFormatError(f"{path}: missing (info.json announces it)")
    try:
        a = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise PreparedFormatError(f"{path}: not a readable .npy array ({e})") from e
    if a.dtype != dtype or a.shape != shape:
        raise PreparedFormatError(f"{path}: expected {np.dtype(dtype)} of shape {shape} (from info.json), "
                                  f"got {a.dtype} of shape {a.shape}")
    return a


# --------------------------------------------------------------------------- torch dataset

def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """Faces as the models take them: uint8 ``(H, W, 3)`` → float32 ``(3, H, W)`` in [0, 1], or
    uint8 ``(N, H, W, 3)`` → float32 ``(N, 3, H, W)``; each byte v becomes v / 255.

    The one conversion from stored or aligned pixels to the library's image contract (the
    dataset item, ``adpf predict``, the book). A read-only array (a memory map) is copied first;
    the result is a channel-first view of channel-last memory, as the dataset item has always been.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4) \
            or images.shape[-1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        dtype = getattr(images, "dtype", None)
        raise ValueError(f"images_to_tensor expects a uint8 numpy array (H, W, 3) or (N, H, W, 3), "
                         f"got {shape} of dtype {dtype}")
    array = images if images.flags.writeable else np.array(images)
    dims = (2, 0, 1) if images.ndim == 3 else (0, 3, 1, 2)
    return torch.from_numpy(array).permute(*dims).float().div_(255)


def check_augmentation(crop_scale: float = 1.0, colour_jitter: float = 0.0, grayscale: float = 0.0) -> None:
    """The one check of the augmentation's switches beyond the paper's (book/open_choices.md,
    choice 21), for `Recipe`, `PreparedFaces`, `DeviceBatches` and the draws."""
    if not 0 < crop_scale <= 1:
        raise ValueError(f"crop_scale must be in (0, 1], got {crop_scale}")
    if not 0 <= colour_jitter < 1 or not 0 <= grayscale <= 1:
        raise ValueError(f"need 0 <= colour_jitter < 1 and 0 <= grayscale <= 1, got {colour_jitter}, {grayscale}")


def draw_offsets(n: int, size: int, pad: int, generator: torch.Generator | None = None,
                 crop_scale: float = 1.0) -> torch.Tensor:
    """The random geometry of the augmentation for ``n`` faces of side ``size``: ``(n, 4)`` int64
    on the host, columns top and left (where the crop's window starts in the image zero-padded by
    ``pad``), flip (0 or 1, each with probability 1/2) and side (the window's side in pixels).

    crop_scale = 1 (the paper's augmentation): the window is the face's own size (side = size),
    top and left uniform in 0..2·pad. crop_scale < 1 (book/open_choices.md, choice 21): the side
    is uniform in ceil(crop_scale·size)..size, then top and left uniform over every window of that
    side inside the padded image; the window is resized back to ``size`` (`pad_crop_flip`).

    The one draw both training paths use: `pad_crop_flip` (one face on the host, the DataLoader
    path) and `DeviceBatches` (a whole epoch's faces at once, applied by `augment_batch`), so
    the two apply the same distribution of augmentations. With crop_scale = 1 it consumes the
    generator as it always has (corners, then flips), so the default draws what it always drew.
    """
    check_augmentation(crop_scale=crop_scale)
    if crop_scale == 1:
        corner = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
        flip = torch.randint(0, 2, (n, 1), generator=generator)
        return torch.cat([corner, flip, torch.full((n, 1), size, dtype=torch.int64)], dim=1)
    smallest = min(size, max(1, int(np.ceil(crop_scale * size - 1e-9))))
    side = torch.randint(smallest, size + 1, (n, 1), generator=generator)
    room = size + 2 * pad - side + 1  # (n, 1): how many places a window of that side has
    corner = (torch.rand(n, 2, generator=generator, dtype=torch.float64) * room).long().clamp_max(room - 1)
    flip = torch.randint(0, 2, (n, 1), generator=generator)
    return torch.cat([corner, flip, side], dim=1)


def draw_colours(n: int, colour_jitter: float = 0.0, grayscale: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor | None:
    """The random colour change of ``n`` faces (book/open_choices.md, choice 21): ``(n, 4)``
    float32, columns brightness, contrast and saturation factors (each uniform in
    1 ± colour_jitter) and gray (1 with probability ``grayscale``); None when both switches are
    off, which draws nothing (the paper's augmentation changes no colour)."""
    check_augmentation(colour_jitter=colour_jitter, grayscale=grayscale)
    if colour_jitter == 0 and grayscale == 0:
        return None
    factors = 1 + colour_jitter * (2 * torch.rand(n, 3, generator=generator) - 1)
    gray = (torch.rand(n, 1, generator=generator) < grayscale).float()
    return torch.cat([factors, gray], dim=1)


def window_taps(start: torch.Tensor, side: torch.Tensor, size: int, mirrored: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each of ``size`` output pixels reads a window of ``side`` pixels starting at ``start``
    (both ``(B, 1)`` int64), bilinearly with pixel centres aligned (``F.interpolate``'s
    ``align_corners=False``): source coordinate s = (i + 0.5)·side/size − 0.5, clamped to the
    window. Output i reads from size − 1 − i where ``mirrored`` ``(B, 1)`` is true.

    Returns the first tap, the second tap (both ``(B, size)`` int64, absolute) and the second
    tap's weight ``(B, size)`` float32. When side = size every weight is exactly 0 and the first
    tap is start + i: the unscaled crop, pixel for pixel.
    """
    i = torch.arange(size, device=start.device)
    if mirrored is not None:
        i = torch.where(mirrored.bool(), size - 1 - i, i)  # (B, size)
    s = ((i + 0.5) * side / size - 0.5).clamp(min=0).minimum(side - 1.0)  # (B, size) float
    first = s.floor()
    second = (first + 1).minimum(side - 1.0)
    return start + first.long(), start + second.long(), (s - first).float()


def resample_windows(padded: torch.Tensor, offsets: torch.Tensor, size: int) -> torch.Tensor:
    """The augmentation's windows cut from zero-padded faces and resized to ``size``.

    padded: ``(B, size + 2·pad, size + 2·pad, C)`` float; offsets: ``(B, 4)`` int64 (top, left,
    flip, side) as `draw_offsets` gives them. Returns ``(B, size, size, C)``: rows, then columns,
    each a blend of two taps (`window_taps`), mirrored where flip is 1. A window of the face's
    own side is copied exactly (every second tap's weight is 0).
    """
    top, left, flip, side = (offsets[:, k:k + 1] for k in range(4))
    batch = torch.arange(padded.shape[0], device=padded.device)[:, None]  # (B, 1)
    r0, r1, wy = window_taps(top, side, size)
    rows = padded[batch, r0] * (1 - wy)[:, :, None, None] + padded[batch, r1] * wy[:, :, None, None]  # (B, size, Wp, C)
    c0, c1, wx = window_taps(left, side, size, flip)
    y = torch.arange(size, device=padded.device)[None, :, None]
    return rows[batch[:, :, None], y, c0[:, None, :]] * (1 - wx)[:, None, :, None] \
        + rows[batch[:, :, None], y, c1[:, None, :]] * wx[:, None, :, None]  # (B, size, size, C)


def jitter_colours(images: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """The colour switches of the augmentation (book/open_choices.md, choice 21), on ``(B, 3, H, W)``
    images in [0, 1] with ``colours`` ``(B, 4)`` from `draw_colours`: multiply by the brightness
    factor; scale the distance from the face's mean gray level by the contrast factor; scale the
    distance of every pixel from its own gray level (0.299 R + 0.587 G + 0.114 B) by the saturation
    factor; where gray is 1, replace the face by its gray levels; clamp to [0, 1]."""
    weights = images.new_tensor([0.299, 0.587, 0.114])[None, :, None, None]

    def gray(x: torch.Tensor) -> torch.Tensor:
        return (x * weights).sum(1, keepdim=True)  # (B, 1, H, W)

    brightness, contrast, saturation, to_gray = (colours[:, k, None, None, None] for k in range(4))
    x = images * brightness
    mean = gray(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    x = gray(x) + (x - gray(x)) * saturation
    x = torch.where(to_gray.bool(), gray(x).expand_as(x), x)
    return x.clamp(0, 1)


def augment_batch(images: torch.Tensor, offsets: torch.Tensor, pad: int,
                  colours: torch.Tensor | None = None) -> torch.Tensor:
    """`pad_crop_flip` for a batch, on whatever device ``images`` live, without a host sync.

    images: ``(B, H, W, 3)`` uint8 (the stored layout, H = W); offsets: ``(B, 4)`` int64 on the same
    device, as `draw_offsets` gives them (top, left, flip, side); colours: ``(B, 4)`` from
    `draw_colours` or None. Returns ``(B, 3, H, W)`` float32 in [0, 1] in channels-last memory,
    each face equal to ``pad_crop_flip(images_to_tensor(face), None, pad, offsets, colours)``:
    zero padding by ``pad``, the window at (top, left) of ``side`` pixels resized to H × W,
    mirrored when flip is 1, then the colour change. Gathers only (no data-dependent shape, no
    ``.item()``).
    """
    b, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad)).float().div_(255)  # (B, Hp, Wp, 3)
    out = resample_windows(padded, offsets, h).permute(0, 3, 1, 2)
    if colours is not None:
        out = jitter_colours(out, colours)
    return out.contiguous(memory_format=torch.channels_last)


def pad_crop_flip(image: torch.Tensor, masks: torch.Tensor | None, pad: int, offsets: torch.Tensor,
                  colours: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The augmentation of one face: zero-pad by ``pad`` pixels, cut the window ``offsets`` draws
    and resize it to the face's size, flip horizontally when asked, change the colours when
    ``colours`` is given. With windows of the face's own side and no colours (the defaults) this
    is the paper's: a random crop of the original size from the padded face, flipped with
    probability 1/2. Masks move with the image (nearest pixel, never blended); colours leave them alone.

    image: ``(C, H, W)`` float, H = W; masks: ``(R, H, W)`` or None; offsets: ``(4,)`` (top, left,
    flip, side), one row of `draw_offsets`; colours: ``(4,)``, one row of `draw_colours`, or None.
    Returns tensors of the same shapes.
    """
    _, h, w = image.shape
    top, left, flip, side = (int(v) for v in offsets)

    def move(t: torch.Tensor) -> torch.Tensor:
        if side == h:  # the paper's crop: a window of the face's own size, no resampling
            t = torch.nn.functional.pad(t, (pad, pad, pad, pad))[:, top: top + h, left: left + w]
            return t.flip(-1) if flip else t
        padded = torch.nn.functional.pad(t, (pad, pad, pad, pad)).permute(1, 2, 0)[None]
        return resample_windows(padded, offsets[None], h)[0].permute(2, 0, 1)

    moved = move(image)
    if colours is not None:
        moved = jitter_colours(moved[None], colours[None])[0]
    if masks is None:
        return moved, None
    if side == h:
        return moved, move(masks)
    return moved, nearest_masks(masks, pad, top, left, bool(flip), side)


def nearest_masks(masks: torch.Tensor, pad: int, top: int, left: int, flip: bool, side: int) -> torch.Tensor:
    """Masks ``(R, H, W)`` moved as `pad_crop_flip` moves a face with a window of ``side`` pixels at
    (top, left), each output pixel the padded mask's pixel nearest its source coordinate: of the
    two taps `window_taps` blends, the one of larger weight (the second on a tie)."""
    _, h, _ = masks.shape
    padded = torch.nn.functional.pad(masks, (pad, pad, pad, pad))

    def nearest(start: int, mirrored: bool) -> torch.Tensor:  # (h,) int64
        first, second, weight = window_taps(torch.tensor([[start]]), torch.tensor([[side]]), h,
                                            torch.tensor([[mirrored]]))
        return torch.where(weight >= 0.5, second, first)[0]

    return padded[:, nearest(top, False)[:, None], nearest(left, flip)[None, :]]


class PreparedFaces(Dataset):
    """Items of a prepared folder, as CONTRIBUTING.md specifies: a dict with ``image``
    ``(3, H, W)`` float32 in [0, 1], ``age`` float32, ``subject`` int64, ``index`` int64 (the
    row in the folder), where the folder has them ``masks`` ``(R, H, W)`` bool and, when
    augmenting, ``offsets`` ``(4,)`` int64: the draw that moved the face (`draw_offsets`), which
    ``adpf.patches.move_boxes`` reads to move boxes found before the augmentation.

    indices: rows to expose (a protocol's split); default all.
    augment: apply `pad_crop_flip` with ``pad`` pixels (default image_size // 16; the paper
        does not give its padding: book/open_choices.md, choice 9). Random draws use torch's
        global generator, so ``torch.manual_seed`` and DataLoader worker seeding make them
        reproducible.
    crop_scale, colour_jitter, grayscale: the augmentation's switches beyond the paper's
        (`draw_offsets`, `draw_colours`; book/open_choices.md, choice 21); the defaults are off.
    """

    def __init__(self, root: str | Path | Prepared, indices=None, augment: bool = False, pad: int | None = None,
                 crop_scale: float = 1.0, colour_jitter: float = 0.0, grayscale: float = 0.0):
        data = root if isinstance(root, Prepared) else load_prepared(root)
        self.root = data.root
        self._data: Prepared | None = data
        n = len(data)
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1 or (len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n)):
            raise IndexError(f"{self.root}: indices must be a 1-D array of rows in 0..{n - 1}")
        self.ages = data.meta["age"].to_numpy(np.float32)
        self.subjects = data.meta["subject"].to_numpy(np.int64)
        self.region_names = data.region_names
        self.augment = augment
        self.pad = data.image_size // 16 if pad is None else pad
        self.crop_scale, self.colour_jitter, self.grayscale = crop_scale, colour_jitter, grayscale
        check_augmentation(crop_scale, colour_jitter, grayscale)  # now, not in a worker

    @property
    def data(self) -> Prepared:
        if self._data is None:  # reopened lazily in DataLoader workers
            self._data = load_prepared(self.root)
        return self._data

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}  # memory maps are reopened, never pickled

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.indices[i])
        image = images_to_tensor(self.data.images[j])
        masks = None if self.data.masks is None else torch.from_numpy(np.array(self.data.masks[j]))
        item = {"age": torch.tensor(self.ages[j]), "subject": torch.tensor(self.subjects[j]),
                "index": torch.tensor(j, dtype=torch.int64)}
        if self.augment:
            item["offsets"] = draw_offsets(1, image.shape[-1], self.pad, crop_scale=self.crop_scale)[0]
            colours = draw_colours(1, self.colour_jitter, self.grayscale)
            image, masks = pad_crop_flip(image, masks, self.pad, item["offsets"],
                                         None if colours is None else colours[0])
        item["image"] = image
        if masks is not None:
            item["masks"] = masks
        return item


class DeviceBatches:
    """Batches of some rows of a prepared dataset held on ``device`` as uint8 and augmented there:
    the training loop's data without a DataLoader, a worker or a per-batch copy.

    Each batch is a dict like a collated `PreparedFaces` batch: ``image`` ``(B, 3, H, W)``
    float32 in [0, 1] (channels-last memory) on ``device``; ``age`` ``(B,)`` float32 and
    ``index`` ``(B,)`` int64 (the row in the folder), on ``device`` for training and on the host
    otherwise (what ``evaluate.predict`` reads); training batches also hold ``offsets``
    ``(B, 4)`` int64 on ``device``, as `PreparedFaces` items do.

    train=True: every epoch (every ``iter``) a fresh order (``randperm``) and the augmentation's
    offsets and colours (`draw_offsets`, `draw_colours`; ``pad`` and the switches as in
    `PreparedFaces`) are drawn from ``generator`` on the
    host, once, and copied to the device in one non-blocking copy; each batch is then a gather
    and `augment_batch` on the device. As the DataLoader path drops a last incomplete batch
    (unless the rows are fewer than one batch), so does this. The generator is the stage's, saved
    in its checkpoint, so a resumed stage draws what an uninterrupted one would.
    train=False: the rows in order, unaugmented, the last batch possibly short.
    Memory: the rows' uint8 images, 49 KB a face at 128 px (2.1 GB for MORPH II's 44,000).
    """

    def __init__(self, data: Prepared, indices, batch_size: int, device: torch.device | str, train: bool,
                 pad: int | None = None, generator: torch.Generator | None = None, crop_scale: float = 1.0,
                 colour_jitter: float = 0.0, grayscale: float = 0.0):
        self.device, self.train, self.batch_size = torch.device(device), train, batch_size
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        self.pad = data.image_size // 16 if pad is None else pad
        self.size = data.image_size
        check_augmentation(crop_scale, colour_jitter, grayscale)
        self.crop_scale, self.colour_jitter, self.grayscale = crop_scale, colour_jitter, grayscale
        self.generator = generator
        self.images = torch.from_numpy(np.ascontiguousarray(data.images[self.indices.numpy()])).to(self.device)
        ages = torch.from_numpy(data.meta["age"].to_numpy(np.float32)[self.indices.numpy()])
        self.ages = ages.to(self.device) if train else ages
        self.rows = self.indices.to(self.device) if train else self.indices

    def __len__(self) -> int:
        n = len(self.indices)
        if self.train:
            return max(1, n // self.batch_size) if n else 0
        return -(-n // self.batch_size)

    def __iter__(self):
        if not self.train:
            for start in range(0, len(self.indices), self.batch_size):
                part = slice(start, start + self.batch_size)
                yield {"image": self.images[part].permute(0, 3, 1, 2).float().div_(255),
                       "age": self.ages[part], "index": self.rows[part]}
            return
        order, offsets, colours = self._draw_epoch()
        size = min(self.batch_size, len(self.indices))
        for step in range(len(self)):
            part = slice(step * size, (step + 1) * size)
            take, moved = order[part], offsets[part]
            yield {"image": augment_batch(self.images[take], moved, self.pad,
                                          None if colours is None else colours[part]),
                   "age": self.ages[take], "index": self.rows[take], "offsets": moved}

    def _draw_epoch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One epoch's order ``(N,)``, offsets ``(N, 4)`` and colours ``(N, 4)`` or None, drawn on the
        host and moved to the device without waiting (pinned memory, non-blocking: no host sync)."""
        n = len(self.indices)
        drawn = torch.cat([torch.randperm(n, generator=self.generator)[:, None],
                           draw_offsets(n, self.size, self.pad, self.generator, self.crop_scale)], dim=1)
        colours = draw_colours(n, self.colour_jitter, self.grayscale, self.generator)
        if self.device.type == "cuda":
            drawn = drawn.pin_memory().to(self.device, non_blocking=True)
            colours = None if colours is None else colours.pin_memory().to(self.device, non_blocking=True)
        return drawn[:, 0], drawn[:, 1:], colours
