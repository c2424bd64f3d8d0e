"""The embedded default dataset: drawn faces whose age shows only in known local regions.

A fresh machine has no face data, so by default the project draws its own. Every face is a
person (face shape, skin tone, hair, eye spacing …) seen in a pose (rotation, scale, shift),
under a lighting gradient, in front of a background. Age is visible **only** in four local
regions, each with a ground-truth mask; decoy textures that do **not** depend on age sit
elsewhere. Because the pose and the person move the regions, a patch cropped at a fixed place
misses them: the model has to find them.

Three modules make the set: this one draws at random who is seen and how (`_sample_people`,
`_sample_images`) and hands out the faces; `adpf.data.aging` is the age model (which regions
age, how strongly, from what age); `adpf.data.render` draws the pictures and the masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd

from adpf.data.aging import REGION_AGES, REGION_NAMES, line_weights, region_strength
from adpf.data.render import Scratch, draw_people, image_frames, make_grid, opencv_threads, render_images

__all__ = ["GENERATOR_VERSION", "REGION_AGES", "REGION_NAMES", "SyntheticFaceSpec", "SyntheticFaces",
           "iter_synthetic_faces", "line_weights", "make_synthetic_faces", "region_strength"]

#: Bumped whenever the drawing changes, so cached datasets drawn by an older version are redrawn.
GENERATOR_VERSION = 2

_SKIN_LIGHT = np.array([0.96, 0.80, 0.69])
_SKIN_DARK = np.array([0.36, 0.23, 0.15])
_HAIR = np.array([[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.30, 0.15],
                  [0.85, 0.70, 0.42], [0.60, 0.26, 0.10]])
_IRIS = np.array([[0.35, 0.20, 0.08], [0.18, 0.10, 0.05], [0.25, 0.45, 0.70], [0.30, 0.50, 0.30]])


@dataclass(frozen=True)
class SyntheticFaceSpec:
    """What to draw. Ages are whole years drawn uniformly from ``age_min..age_max``.

    images_per_subject: consecutive images share a person (the last may have fewer).
    max_rotation_deg, scale_range, max_shift: the pose (shift as a fraction of the
        half-width of the image).
    max_light: the lighting gradient multiplies the picture by up to 1 ± max_light.
    noise_std: range of the per-image standard deviation of the (uniform) pixel noise,
        in units of the full intensity range.
    """

    age_min: int = 10
    age_max: int = 80
    images_per_subject: int = 10
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shift: float = 0.12
    max_light: float = 0.3
    noise_std: tuple[float, float] = (0.01, 0.03)

    def __post_init__(self) -> None:
        if not 0 <= self.age_min < self.age_max:
            raise ValueError(f"need 0 <= age_min < age_max, got {self.age_min}, {self.age_max}")
        if self.images_per_subject < 1:
            raise ValueError(f"images_per_subject must be >= 1, got {self.images_per_subject}")


@dataclass
class SyntheticFaces:
    """A batch of drawn faces.

    images: ``(N, H, W, 3)`` uint8. ages: ``(N,)`` float32 years. subjects: ``(N,)`` int64.
    masks: ``(N, R, H, W)`` bool, one channel per name in ``region_names``.
    params: one row per image: the pose, lighting, decoy strengths and the person's
        wrinkle gain (what the book needs to explain a picture).
    """

    images: np.ndarray
    ages: np.ndarray
    subjects: np.ndarray
    masks: np.ndarray
    region_names: tuple[str, ...] = REGION_NAMES
    params: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __len__(self) -> int:
        return len(self.images)


def make_synthetic_faces(n: int, image_size: int = 128, seed: int = 0,
                         spec: SyntheticFaceSpec | None = None,
                         ages: np.ndarray | None = None) -> SyntheticFaces:
    """Draw ``n`` faces at ``image_size``×``image_size``, deterministically from ``seed``.

    ages: optional ``(n,)`` ages that replace the drawn ones while everything else (people,
    poses, lighting, decoys, noise) stays the same: the same faces, older or younger.
    """
    plan = _Plan(n, image_size, seed, spec or SyntheticFaceSpec(), ages)
    faces = plan.empty(slice(0, n))
    for people, rows in plan.chunks():
        plan.draw(people, faces.images[rows], faces.masks[rows])
    return faces


def iter_synthetic_faces(n: int, image_size: int = 128, seed: int = 0,
                         spec: SyntheticFaceSpec | None = None,
                         ages: np.ndarray | None = None) -> Iterator[SyntheticFaces]:
    """`make_synthetic_faces`, a few people at a time (bounded memory for large ``n``)."""
    plan = _Plan(n, image_size, seed, spec or SyntheticFaceSpec(), ages)
    for people, rows in plan.chunks():
        faces = plan.empty(rows)
        plan.draw(people, faces.images, faces.masks)
        yield faces


class _Plan:
    """Everything drawn at random before any picture: the people, each image's parameters
    (age, pose, lighting, decoys) and the noise generator; then the pictures, a chunk of
    people at a time (8: one numpy call serves them all, and its arrays stay small)."""

    people_per_chunk = 8

    def __init__(self, n: int, image_size: int, seed: int, spec: SyntheticFaceSpec, ages: np.ndarray | None):
        if n < 1 or image_size < 16:
            raise ValueError(f"need n >= 1 and image_size >= 16, got n={n}, image_size={image_size}")
        rng = np.random.default_rng(seed)
        self.per_subject = spec.images_per_subject
        self.people = _sample_people(math.ceil(n / self.per_subject), rng)
        self.params = _sample_images(n, spec, rng)
        if ages is not None:
            ages = np.asarray(ages, dtype=np.float64)
            if ages.shape != (n,):
                raise ValueError(f"ages must have shape ({n},), got {ages.shape}")
            self.params["age"] = ages
        self.params["subject"] = np.arange(n) // self.per_subject
        self.params["wrinkle_gain"] = self.people["wrinkle_gain"][self.params["subject"]]
        self.columns = {k: v.to_numpy() for k, v in self.params.items()}
        self.noise_rng = np.random.default_rng([seed, 1])
        self.grid = make_grid(image_size)
        self.scratch = Scratch(image_size, self.per_subject)

    def chunks(self) -> Iterator[tuple[slice, slice]]:
        """A few people at a time and the rows of their images."""
        n, step = len(self.params), self.people_per_chunk
        for start in range(0, len(self.people["face_w"]), step):
            yield slice(start, start + step), slice(start * self.per_subject, min((start + step) * self.per_subject, n))

    def empty(self, rows: slice) -> SyntheticFaces:
        """The faces of ``rows``, their pictures and masks not drawn yet."""
        S, m = self.grid.size, rows.stop - rows.start
        params = self.params.iloc[rows].reset_index(drop=True)
        return SyntheticFaces(images=np.empty((m, S, S, 3), np.uint8),
                              ages=params["age"].to_numpy(np.float32),
                              subjects=params["subject"].to_numpy(np.int64),
                              masks=np.empty((m, len(REGION_NAMES), S, S), bool), params=params)

    def draw(self, people: slice, images: np.ndarray, masks: np.ndarray) -> None:
        """Draw the images of ``people`` into ``images`` and ``masks`` (their rows only)."""
        first = people.start * self.per_subject
        frames = image_frames(self.grid, {k: v[first:first + len(images)] for k, v in self.columns.items()})
        drawn = draw_people({k: v[people] for k, v in self.people.items()}, self.grid)
        with opencv_threads(1):  # on pictures this small its parallel loops cost more CPU than they save
            render_images(drawn, frames, self.per_subject, self.noise_rng, self.scratch, images, masks)


# --------------------------------------------------------------------------- sampling

def _sample_people(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    tone = u(0, 1)[:, None]
    skin = _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone + rng.uniform(-0.03, 0.03, (n, 3))
    hair = _HAIR[rng.integers(0, len(_HAIR), n)] * rng.uniform(0.85, 1.15, (n, 1))
    return {
        "face_w": u(0.50, 0.60), "face_h": u(0.70, 0.80), "jaw": u(0.0, 0.35),
        "skin": np.clip(skin, 0, 1),
        "eye_dx": u(0.22, 0.27), "eye_y": u(-0.12, -0.05),
        "eye_w": u(0.085, 0.105), "eye_h": u(0.035, 0.048),
        "iris": _IRIS[rng.integers(0, len(_IRIS), n)],
        "brow_up": u(0.09, 0.12), "brow_t": u(0.016, 0.028),
        "nose_len": u(0.19, 0.25), "nose_w": u(0.06, 0.085),
        "mouth_gap": u(0.12, 0.16), "mouth_w": u(0.07, 0.095),
        "hair": np.clip(hair, 0, 1), "hairline": u(-0.62, -0.52),
        "hair_vol": u(1.04, 1.22), "hair_len": u(-0.15, 0.55),
        "clothes": rng.uniform(0.1, 0.9, (n, 3)), "neck_w": u(0.17, 0.24),
        "stripe_f": u(25, 50), "stripe_a": u(0, np.pi), "stripe_p": u(0, 2 * np.pi),
        "spot_f": u(35, 55), "spot_a": u(0, np.pi), "spot_p": rng.uniform(0, 2 * np.pi, (n, 2)),
        "line_phase": rng.uniform(0, 2 * np.pi, (n, 5)), "line_jitter": rng.uniform(-0.1, 0.1, (n, 5)),
        "wrinkle_gain": u(0.8, 1.2),
    }


def _sample_images(n: int, spec: SyntheticFaceSpec, rng: np.random.Generator) -> pd.DataFrame:
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    gray = rng.uniform(0.15, 0.85, (n, 1))
    bg0 = 0.6 * gray + 0.4 * rng.uniform(0, 1, (n, 3))
    bg1 = 0.6 * gray + 0.4 * rng.uniform(0, 1, (n, 3))
    p = {
        "age": rng.integers(spec.age_min, spec.age_max + 1, n).astype(np.float64),
        "rotation_deg": u(-spec.max_rotation_deg, spec.max_rotation_deg),
        "scale": u(*spec.scale_range),
        "shift_x": u(-spec.max_shift, spec.max_shift), "shift_y": u(-spec.max_shift, spec.max_shift),
        "light": u(0, spec.max_light), "light_angle": u(0, 2 * np.pi),
        "noise_std": u(*spec.noise_std),
        "decoy_cheeks": u(0, 1), "decoy_clothes": u(0, 1), "decoy_background": u(0, 1),
        "bg_angle": u(0, 2 * np.pi), "bg_freq": u(4, 14), "bg_phase": u(0, 2 * np.pi),
    }
    for c in range(3):
        p[f"bg0_{c}"], p[f"bg1_{c}"] = bg0[:, c], bg1[:, c]
    return pd.DataFrame(p)

